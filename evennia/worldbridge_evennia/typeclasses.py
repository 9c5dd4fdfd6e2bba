"""A Character mixin that reports moves, logins, logouts and says to the bridge.

Put it first in your Character's bases (`typeclasses/characters.py`):

    from worldbridge_evennia.typeclasses import WorldbridgeCharacterMixin

    class Character(WorldbridgeCharacterMixin, ObjectParent, DefaultCharacter):
        ...

Why hooks and not signals: Evennia 5 has puppet signals but no move or say signal, and
`at_post_move` also sees teleports and scripted moves that `SIGNAL_EXIT_TRAVERSED` misses.
Each hook calls Evennia's own first, so what players see does not change.
"""

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
