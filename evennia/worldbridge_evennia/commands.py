"""`talk` (aliases `ask`, `tell`): a private word with the bridge's agent; `@worldevent`:
an admin raises a world event (fire, rain…) in their room, shown here and sent to the bridge.

The command reads the caller, their name and room in the reactor thread, does only the
HTTP call in a thread (`deferToThread`), and shows the answer to the caller alone from the
Deferred's callback, back in the reactor thread. After `WORLDBRIDGE_THINKING_AFTER`
seconds without an answer the caller sees "Timmy is thinking…". The reply streams: each
part the bridge sends is shown as it arrives (one message per part, the crisis protocol
first when it fires); a bridge that does not stream gives the whole reply at once.

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
from evennia.utils.ansi import raw, strip_ansi
from twisted.internet import reactor, threads

from . import chat
from . import conf as _conf
from . import events
from . import protocol as wire
from . import world


def ask(
    caller,
    payload,
    conf,
    clock=reactor,
    call_in_thread=threads.deferToThread,
    from_thread=reactor.callFromThread,
):
    """Send `payload` to the bridge and show the outcome to `caller` only: each streamed
    part as it arrives, else the whole reply.

    Returns the Deferred (fired after the caller has been told)."""
    agent = raw(conf.agent_name)
    thinking = clock.callLater(conf.thinking_after_s, caller.msg, f"{agent} is thinking…")
    shown = []

    def stop_thinking(outcome):
        if thinking.active():
            thinking.cancel()
        return outcome

    def show_part(text):
        stop_thinking(None)
        if text.strip():
            shown.append(text)
            caller.msg(f"|c{agent}|n: {raw(text.strip())}")

    def on_part(text):
        # From the HTTP thread: shown in the reactor thread, before the final answer.
        from_thread(show_part, text)

    def show_reply(answer):
        if shown:
            return
        caller.msg(f"|c{agent}|n: {raw(answer['response'])}")

    def show_error(failure):
        if failure.check(chat.ChatError):
            caller.msg(f"|r{agent} could not answer:|n {raw(str(failure.value))}")
        else:
            logger.log_trace(f"[worldbridge] talk failed: {failure.getErrorMessage()}")
            caller.msg(f"|r{agent} could not answer:|n an error in the game (see the server log)")

    d = call_in_thread(
        chat.post_chat, conf.url, payload, conf.http_token, conf.timeout_s, on_part
    )
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


class CmdWorldEvent(Command):
    """
    raise a world event (fire, rain, growth…) in your room

    Usage:
      @worldevent <kind> <message>

    Examples:
      @worldevent fire The forge flares
      @worldevent rain A warm rain starts to fall.

    Everyone in your room sees it at once, and it goes to the bridge: the bridge's
    other games show it in their room of that name, and kinds listed in the bridge's
    federation.event_kinds (fire, rain, growth, storm and quake by default) reach every
    world of its federation. Scripts call worldbridge_evennia.events.world_event().
    """

    key = "@worldevent"
    locks = "cmd:perm(worldevent) or perm(Builder)"
    help_category = "Building"

    def func(self):
        caller = self.caller
        try:
            kind, message = events.parse_command(strip_ansi(self.args or ""))
        except events.WorldEventError as e:
            caller.msg(str(e))
            return
        room = caller.location
        if room is None:
            caller.msg("You are nowhere: a world event needs a room.")
            return
        try:
            sent = events.world_event(room, kind, message)
        except events.WorldEventError as e:
            caller.msg(f"{events.USAGE}\n{str(e).capitalize()}.")
            return
        shown = wire.render({"type": "event", "event": kind, "message": message},
                            _conf.load().agent_name, raw)
        room.msg_contents(text=(shown, {"type": "say"}))
        if sent:
            caller.msg(f"The {raw(kind)} in {raw(room.key)} is sent to the bridge.")
        else:
            caller.msg(f"The link to the bridge is down: the {raw(kind)} happened in this "
                       "game only.")


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
    """`talk`/`ask`/`tell`, `@worldevent` (Builder and up), and `page` without its `tell`
    alias (see CmdPageNoTell)."""

    key = "worldbridge"

    def at_cmdset_creation(self):
        self.add(CmdTalk())
        self.add(CmdWorldEvent())
        self.add(CmdPageNoTell())
