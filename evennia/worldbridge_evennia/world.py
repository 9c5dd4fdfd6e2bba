"""The Evennia side of the link: what the game reports and how bridge messages show up.

Game → bridge: `presence` when a puppeted character enters or leaves a room (including
logging in and out), `say` for room speech, and a `room` snapshot (name, description,
exits, objects) of each room a character enters. The typeclass mixin
(`typeclasses.py`) calls the `on_*` functions from Evennia's hooks.

Bridge → game: `speak`, `say`, `presence` and `event` are shown in the named room(s),
found by key like the bridge names them; `act` and `observe` are answered. A `presence`
enter about one of our own characters that travelled away is its return: it is moved into
that room and reported again.

Everything here runs in the reactor thread (hooks, commands and the link all do), so it
may touch Evennia objects directly.
"""

from evennia.utils.ansi import raw, strip_ansi
from evennia.utils.utils import inherits_from

from . import conf as _conf
from . import link
from . import protocol as wire

_ROOM = "evennia.objects.objects.DefaultRoom"
_CHARACTER = "evennia.objects.objects.DefaultCharacter"


def user_id(character, world=None):
    """The bridge's id for a character: `<world>#<dbid>`, stable across renames."""
    return f"{world or _conf.load().world}#{character.id}"


def _own_dbid(uid, world):
    """The dbid in one of this game's user ids, else None."""
    if not isinstance(uid, str):
        return None
    prefix, sep, dbid = uid.rpartition("#")
    if sep and prefix == world and dbid.isdigit():
        return int(dbid)
    return None


def away(character):
    """The world a character travelled to (a `TravelExit`), else None. An away character
    is the other world's now: the game reports nothing about it to the bridge."""
    return character.attributes.get("worldbridge_away")


def _puppeted(obj):
    return obj is not None and obj.sessions.count() > 0


def _reported(obj):
    """Puppeted and not away: a character the bridge hears about."""
    return _puppeted(obj) and not away(obj)


def _plain(text):
    """Evennia markup stripped, for the bridge and the other worlds."""
    return strip_ansi(text or "")


# -- game → bridge -------------------------------------------------------------------------


# A snapshot stays far below the line protocol's 64 KiB per line.
MAX_DESC_CHARS = 8000
MAX_OBJECTS = 100


def room_snapshot(room):
    """A `room` message for `room`: name, plain-text description, exits as
    {exit key: destination key}, and the keys of the things in it (not characters)."""
    exits = {}
    for ex in room.contents_get(content_type="exit"):
        if ex.destination is not None:
            exits[ex.key] = ex.destination.key
    objects = [obj.key for obj in room.contents_get(content_type="object")][:MAX_OBJECTS]
    desc = _plain(room.db.desc)
    if len(desc) > MAX_DESC_CHARS:
        desc = desc[: MAX_DESC_CHARS - 1] + "…"
    snapshot = {
        "type": "room",
        "name": room.key,
        "desc": desc,
        "exits": exits,
        "objects": objects,
    }
    if getattr(room, "worldbridge_portal", False):
        # A GatewayRoom: its says federate and other worlds' says show here.
        snapshot["portal"] = True
    return snapshot


def presence(character, event, room, world=None):
    msg = {
        "type": "presence",
        "event": event,
        "user_id": user_id(character, world),
        "username": character.key,
    }
    if room is not None:
        msg["room"] = room.key
    return msg


def chat_payload(character, message):
    """The `POST /bridge/chat` body for `character` saying `message` to the agent."""
    payload = {
        "user_id": user_id(character),
        "username": character.key,
        "message": message,
    }
    if character.location is not None:
        payload["room"] = character.location.key
    return payload


def on_enter(character, room):
    """`character` (puppeted) is now in `room`: snapshot the room, then presence."""
    if room is None or not _reported(character):
        return
    link.send_room(room_snapshot(room))
    link.send_presence(presence(character, "enter", room))


def on_leave(character, room):
    if room is None or away(character):
        return
    link.send_presence(presence(character, "leave", room))


def on_move(character, source, destination):
    if not _reported(character) or source is destination:
        return
    on_leave(character, source)
    on_enter(character, destination)


def on_say(character, message):
    room = character.location
    if room is None or not _reported(character):
        return
    link.send(
        {
            "type": "say",
            "user_id": user_id(character),
            "username": character.key,
            "room": room.key,
            "message": _plain(message),
        }
    )


# -- bridge → game -------------------------------------------------------------------------


def _sessions():
    import evennia

    return evennia.SESSION_HANDLER.get_sessions() if evennia.SESSION_HANDLER else []


def _puppets():
    """Puppeted characters, each once, in connection order."""
    seen = []
    for sess in _sessions():
        puppet = sess.get_puppet()
        if puppet is not None and puppet not in seen:
            seen.append(puppet)
    return seen


def find_rooms(name):
    """Rooms whose key (or alias) is `name`, case-insensitively; Evennia keys need not
    be unique, and the bridge knows rooms by key, so a message goes to all of them."""
    import evennia

    if not isinstance(name, str) or not name:
        return []
    return [obj for obj in evennia.search_object(name, exact=True, use_dbref=False)
            if inherits_from(obj, _ROOM)]


def _find_puppet(name):
    for puppet in _puppets():
        if puppet.key.lower() == str(name).lower():
            return puppet
    return None


def _show(receivers, text):
    for obj in receivers:
        obj.msg(text=(text, {"type": "say"}))


class EvenniaWorld:
    """What `link.BridgeLink` calls into."""

    def __init__(self, conf):
        self.conf = conf

    def resync(self):
        """On every welcome: each puppet's room snapshot and `enter`, so the bridge's
        presence matches the game after a restart on either side."""
        out = []
        for puppet in _puppets():
            if puppet.location is not None and not away(puppet):
                out.append(room_snapshot(puppet.location))
                out.append(presence(puppet, "enter", puppet.location, self.conf.world))
        return out

    def _about_own_character(self, msg):
        """True for events about this game's own characters: Evennia showed them already
        (e.g. the presence the bridge makes when a `talk` puts a player in a room)."""
        dbid = _own_dbid(msg.get("user_id"), self.conf.world)
        if dbid is None:
            return False
        import evennia

        return bool(evennia.search_object(f"#{dbid}"))

    def _welcome_back(self, msg):
        """A traveller of this game came back: the bridge placed them in one of its
        gateway rooms here (a `presence` enter about a character of ours that is marked
        away). Move them into that room while still away (so nothing is reported: the
        bridge has them there already), then clear the mark: from now on the game
        reports them again. True when it was such a return."""
        if msg.get("type") != "presence" or msg.get("event") != "enter":
            return False
        dbid = _own_dbid(msg.get("user_id"), self.conf.world)
        if dbid is None:
            return False
        import evennia

        from . import travel

        returning = [o for o in evennia.search_object(f"#{dbid}") if away(o)]
        if not returning:
            return False
        rooms = find_rooms(msg.get("room"))
        for character in returning:
            from_world = away(character)
            if rooms and character.location != rooms[0]:
                character.move_to(rooms[0], quiet=True, move_type="teleport")
            character.attributes.remove("worldbridge_away")
            character.msg(travel.returned_line(from_world, rooms[0].key if rooms else None, raw))
        return True

    def deliver(self, msg):
        if self._welcome_back(msg):
            return
        text = wire.render(msg, self.conf.agent_name, raw)
        if text is None:
            return
        kind = msg["type"]
        if kind in ("say", "presence") and self._about_own_character(msg):
            return
        if kind == "speak" and msg.get("user_id") is not None:
            dbid = _own_dbid(msg.get("user_id"), self.conf.world)
            if dbid is not None:
                import evennia

                _show([o for o in evennia.search_object(f"#{dbid}") if _puppeted(o)], text)
            return
        room = msg.get("room")
        if kind == "speak" and not room:
            for sess in _sessions():
                sess.msg(text=(text, {"type": "say"}))
            return
        for found in find_rooms(room):
            _show([o for o in found.contents if _puppeted(o)], text)

    def act(self, msg):
        msg_id = msg.get("id")

        def result(ok, data=None, code=None, error=None):
            out = {"type": "result", "id": msg_id, "ok": ok}
            if data is not None:
                out["data"] = data
            if not ok:
                out["code"] = code
                out["error"] = error
            return out

        major = wire.major_version(msg.get("protocol_version", "1.0"))
        if major is None or major > 1:
            return result(False, code="unsupported_version",
                          error=f"protocol_version {msg.get('protocol_version')!r} is not 1.x")
        action = msg.get("action")
        args = msg.get("args") if isinstance(msg.get("args"), dict) else {}
        if action == "message":
            text = args.get("text")
            if not isinstance(text, str) or not text:
                return result(False, code="missing_field", error="message needs `text`")
            line = f"{raw(self.conf.agent_name)}: {raw(text)}"
            to = args.get("to")
            if to:
                puppet = _find_puppet(to)
                if puppet is None:
                    return result(False, code="not_found", error=f"no player {to!r} is online")
                _show([puppet], line)
                return result(True, {"to": [puppet.key]})
            for sess in _sessions():
                sess.msg(text=(line, {"type": "say"}))
            return result(True, {"to": [p.key for p in _puppets()]})
        if action == "teleport":
            cell = args.get("cell")
            rooms = find_rooms(cell)
            if not rooms:
                return result(False, code="not_found", error=f"no room {cell!r} in this game")
            player = msg.get("player")
            puppet = _find_puppet(player) if player else next(iter(_puppets()), None)
            if puppet is None:
                return result(False, code="not_found", error="no such player is online")
            if not puppet.move_to(rooms[0], move_type="teleport"):
                return result(False, code="bad_field", error=f"{puppet.key} cannot go there")
            return result(True, {"player": puppet.key, "cell": rooms[0].key})
        return result(False, code="bad_field",
                      error=f"action {action!r} is not supported by the Evennia package "
                            "(supported: message, teleport)")

    def observe(self, msg):
        out = {
            "type": "perception",
            "protocol_version": "1.0",
            "world": self.conf.world,
            "players": [p.key for p in _puppets()],
        }
        if msg.get("id") is not None:
            out["id"] = msg.get("id")
        player = msg.get("player")
        puppet = _find_puppet(player) if player else next(iter(_puppets()), None)
        if puppet is not None:
            out["player"] = puppet.key
            room = puppet.location
            if room is not None:
                out["cell"] = room.key
                nearby = []
                for obj in room.contents:
                    if obj is puppet or inherits_from(obj, "evennia.objects.objects.DefaultExit"):
                        continue
                    kind = "player" if inherits_from(obj, _CHARACTER) else "object"
                    # Same room: the contract's `distance` is 0 for a game without
                    # coordinates.
                    nearby.append({"name": obj.key, "kind": kind, "distance": 0.0})
                out["nearby"] = nearby
        return out
