"""A Character mixin that reports moves, logins, logouts and says to the bridge; a
gateway room (a portal to the other worlds) and a travel exit (into another world).

Put the Character mixin first in your Character's bases (`typeclasses/characters.py`):

    from worldbridge_evennia.typeclasses import WorldbridgeCharacterMixin

    class Character(WorldbridgeCharacterMixin, ObjectParent, DefaultCharacter):
        ...

Why hooks and not signals: Evennia 5 has puppet signals but no move or say signal, and
`at_post_move` also sees teleports and scripted moves that `SIGNAL_EXIT_TRAVERSED` misses.
Each hook calls Evennia's own first, so what players see does not change.

`GatewayRoom` (or `WorldbridgeGatewayRoomMixin` first in your Room's bases) sends its
snapshot with `"portal": true`: says in it reach the other worlds' portal rooms, and
theirs are shown in it (`Alice@mac says, "…"`). `TravelExit` (with
`@set <exit>/destination_world = vps`) asks the bridge to move the character to that
world; see `TravelExit` for what happens in this game.
"""

from evennia.objects.objects import DefaultExit, DefaultRoom
from evennia.utils import logger
from evennia.utils.ansi import raw
from twisted.internet import threads

from . import conf as _conf
from . import travel
from . import world


class WorldbridgeCharacterMixin:
    def at_post_puppet(self, **kwargs):
        super().at_post_puppet(**kwargs)
        world.on_enter(self, self.location)

    def at_post_unpuppet(self, account=None, session=None, **kwargs):
        # DefaultCharacter stows the character away (location None) when its last session
        # goes, so remember the room first.
        room = self.location
        super().at_post_unpuppet(account=account, session=session, **kwargs)
        if not self.sessions.count():
            world.on_leave(self, room)

    def at_post_move(self, source_location, move_type="move", **kwargs):
        super().at_post_move(source_location, move_type=move_type, **kwargs)
        world.on_move(self, source_location, self.location)

    def at_say(self, message, msg_self=None, msg_location=None, receivers=None,
               msg_receivers=None, **kwargs):
        super().at_say(message, msg_self=msg_self, msg_location=msg_location,
                       receivers=receivers, msg_receivers=msg_receivers, **kwargs)
        # Whispers and says aimed at chosen receivers stay in the game.
        if not kwargs.get("whisper") and not receivers:
            world.on_say(self, message)


class WorldbridgeGatewayRoomMixin:
    """Makes a Room a portal room on the bridge (its snapshot says `portal: true`)."""

    worldbridge_portal = True


class GatewayRoom(WorldbridgeGatewayRoomMixin, DefaultRoom):
    """A Room that is a portal to the bridge's other worlds."""


def go(character, exit_obj, to_world, conf, call_in_thread=threads.deferToThread):
    """Ask the bridge to move `character` to `to_world`; on success mark it away and move
    it to `exit_obj.destination`, on refusal leave it where it is. Returns the Deferred
    (fired after the traveller has been told)."""
    uid = world.user_id(character, conf.world)
    character.ndb.worldbridge_travelling = to_world
    character.msg(travel.departing_line(to_world, raw))

    def arrived(answer):
        character.ndb.worldbridge_travelling = None
        character.msg(travel.arrived_line(answer, to_world, raw))
        # The bridge now has the character in `to_world`: from here on this game
        # reports nothing about it (see world.away), so mark it before it moves.
        character.db.worldbridge_away = answer.get("world") or to_world
        holding = exit_obj.destination
        if holding is not None and holding != character.location:
            character.move_to(holding, quiet=True, move_type="traverse")

    def refused(failure):
        character.ndb.worldbridge_travelling = None
        if failure.check(travel.TravelError):
            character.msg(travel.refused_line(str(failure.value), raw))
        else:
            logger.log_trace(f"[worldbridge] travel failed: {failure.getErrorMessage()}")
            character.msg(travel.refused_line("an error in the game (see the server log)"))

    d = call_in_thread(travel.post_travel, conf.url, uid, to_world, conf.http_token,
                       conf.timeout_s)
    d.addCallbacks(arrived, refused)
    return d


class TravelExit(DefaultExit):
    """An exit into another world of the federation.

    `@set <exit>/destination_world = vps` names the world. Traversing it calls the
    bridge's `POST /bridge/travel` in a thread (the reactor never waits): on success the
    traveller is told where they arrived, marked away (`db.worldbridge_away = "vps"`,
    the bridge is the authority that they are in the other world now, so this game
    reports nothing more about them) and moved quietly to the exit's destination, a
    holding room the owner makes ("Beyond the Gateway"). On refusal they see the
    bridge's sentence and stay. When the other world sends them home, the link moves
    them into the bridge's gateway room here and clears the mark
    (`world.EvenniaWorld`).
    Without `destination_world` it is an ordinary exit.
    """

    def at_traverse(self, traversing_object, target_location, **kwargs):
        to_world = self.attributes.get("destination_world")
        if not to_world:
            return super().at_traverse(traversing_object, target_location, **kwargs)
        if traversing_object.ndb.worldbridge_travelling:
            traversing_object.msg("You are already stepping through the gateway.")
            return None
        return go(traversing_object, self, str(to_world), _conf.load())
