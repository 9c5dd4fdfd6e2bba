"""`talk` (aliases `ask`, `tell`): a private word with the bridge's agent.

The command reads the caller, their name and room in the reactor thread, does only the
HTTP call in a thread (`deferToThread`), and shows the answer to the caller alone from the
Deferred's callback, back in the reactor thread. After `WORLDBRIDGE_THINKING_AFTER`
seconds without an answer the caller sees "Timmy is thinking…".

Add the cmdset to your CharacterCmdSet (`commands/default_cmdsets.py`):

    from worldbridge_evennia.commands import WorldbridgeCmdSet
    ...
        def at_cmdset_creation(self):
            super().at_cmdset_creation()
            self.add(WorldbridgeCmdSet)
"""

from evennia import CmdSet, Command
from evennia.commands.default.comms import CmdPage
from evennia.utils import logger
from evennia.utils.ansi import raw
from twisted.internet import reactor, threads

from . import chat
from . import conf as _conf
from . import world


def ask(caller, payload, conf, clock=reactor, call_in_thread=threads.deferToThread):
    """Send `payload` to the bridge and show the outcome to `caller` only.

    Returns the Deferred (fired after the caller has been told)."""
    agent = raw(conf.agent_name)
    thinking = clock.callLater(conf.thinking_after_s, caller.msg, f"{agent} is thinking…")

    def stop_thinking(outcome):
        if thinking.active():
            thinking.cancel()
        return outcome

    def show_reply(answer):
        caller.msg(f"|c{agent}|n: {raw(answer['response'])}")

    def show_error(failure):
        if failure.check(chat.ChatError):
            caller.msg(f"|r{agent} could not answer:|n {raw(str(failure.value))}")
        else:
            logger.log_trace(f"[worldbridge] talk failed: {failure.getErrorMessage()}")
            caller.msg(f"|r{agent} could not answer:|n an error in the game (see the server log)")

    d = call_in_thread(chat.post_chat, conf.url, payload, conf.http_token, conf.timeout_s)
    d.addBoth(stop_thinking)
    d.addCallbacks(show_reply, show_error)
    return d


class CmdTalk(Command):
    """
    talk to the agent (Timmy) privately

    Usage:
      talk <message>
      ask <message>
      tell <message>

    The agent answers you alone; others in the room do not see it.
    """

    key = "talk"
    aliases = ["ask", "tell"]
    locks = "cmd:all()"
    help_category = "Communication"
    arg_regex = r"\s|$"

    def func(self):
        conf = _conf.load()
        caller = self.caller
        message = self.args.strip()
        agent = raw(conf.agent_name)
        if not message:
            caller.msg(f"Usage: talk <message>  (a private word with {agent})")
            return
        payload = world.chat_payload(caller, message)
        caller.msg(f'You say to {agent}, "{raw(message)}"')
        ask(caller, payload, conf)


class CmdPageNoTell(CmdPage):
    """
    send a private message to another account

    Usage:
      page <account> <message>
      page[/switches] [<account>,<account>,... = <message>]
      page/last <message>

    (`tell` is the bridge's `talk`; use `page` to message other players.)
    """

    # CmdPage's alias `tell` would collide with CmdTalk's: Evennia's cmdset merge treats
    # commands sharing any alias as the same command and would drop `page` altogether.
    aliases = []


class WorldbridgeCmdSet(CmdSet):
    """`talk`/`ask`/`tell`, plus `page` without its `tell` alias (see CmdPageNoTell)."""

    key = "worldbridge"

    def at_cmdset_creation(self):
        self.add(CmdTalk())
        self.add(CmdPageNoTell())
