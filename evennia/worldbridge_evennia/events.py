"""World events raised in this game: `world_event(room, kind, message, federate=None)`.

A world event (a fire, rain, growth…) is the line protocol's `event` message. The bridge
shows it in its room of that name to its other game links and in `GET
/bridge/room/<room>/events`; a kind listed in the bridge's `federation.event_kinds` (fire,
rain, growth, storm, quake by default) also reaches every world of its federation, where it
shows in the room of the same name, or, where there is none, in that world's portal rooms.

`federate` overrides the bridge's rule: None leaves it to `federation.event_kinds`, True
sends it to every world (`scope: "federation"`), False keeps it in this world (`scope:
"local"`).

Pure Python over `link` (no Evennia import), so it is tested without a game; the
`@worldevent` command (`commands.py`) is its in-game face.
"""

from . import link

# The bridge's cap on names (an event's kind), in UTF-8 bytes.
MAX_KIND_BYTES = 256

USAGE = ("Usage: @worldevent <kind> <message>  "
         "(e.g. @worldevent fire The forge flares)")


class WorldEventError(ValueError):
    """A world event that cannot be sent as asked; `str()` is a sentence for the user."""


def _room_name(room):
    name = getattr(room, "key", room)
    if not isinstance(name, str) or not name.strip():
        raise WorldEventError("a world event needs a room (a room object or its name)")
    return name


def event_message(room, kind, message=None, federate=None):
    """The line-protocol `event` for a world event of `kind` in `room` (an Evennia room
    or its key); WorldEventError when an argument is unusable."""
    name = _room_name(room)
    if not isinstance(kind, str) or not kind.strip():
        raise WorldEventError("a world event needs a kind, e.g. fire, rain or growth")
    kind = kind.strip()
    if len(kind.encode("utf-8")) > MAX_KIND_BYTES:
        raise WorldEventError(f"the kind is longer than {MAX_KIND_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in kind):
        raise WorldEventError("the kind must not contain control characters")
    if message is not None and not isinstance(message, str):
        raise WorldEventError(f"the message must be text, not {type(message).__name__}")
    if federate not in (None, True, False):
        raise WorldEventError(f"federate must be None, True or False, not {federate!r}")
    msg = {"type": "event", "room": name, "event": kind}
    if message:
        msg["message"] = message
    if federate is True:
        msg["scope"] = "federation"
    elif federate is False:
        msg["scope"] = "local"
    return msg


def world_event(room, kind, message=None, federate=None):
    """Send a world event to the bridge over the game's link.

    Returns True when it was sent, False when the link to the bridge is down (the event is
    then dropped: nothing is queued). Raises WorldEventError on unusable arguments."""
    return link.send(event_message(room, kind, message, federate))


def parse_command(args):
    """`(kind, message)` from `@worldevent`'s arguments; WorldEventError(USAGE) when
    either is missing."""
    parts = (args or "").strip().split(None, 1)
    if len(parts) < 2 or not parts[1].strip():
        raise WorldEventError(USAGE)
    return parts[0], parts[1].strip()
