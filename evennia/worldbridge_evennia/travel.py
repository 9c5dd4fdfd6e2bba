"""One `POST /bridge/travel` over urllib (the blocking half of a `TravelExit`, run in a
thread), and the lines a traveller sees.

Nothing here touches Evennia: the exit reads the user id and world in the reactor thread
and hands plain values to `post_travel`. The bridge answers once the travel is decided:
200 `{"ok": true, "world": "vps", "room": "The Bridge", …}`, or 409 `travel_refused` /
404 `not_here` with a sentence ("world vps is offline").
"""

import json

from .chat import post_json

MAX_REPLY_BYTES = 64 * 1024


class TravelError(Exception):
    """Why the travel did not happen; `str()` is one sentence for the traveller."""


def _refusal(status, body):
    try:
        err = json.loads(body.decode("utf-8"))
        sentence = err.get("error") if isinstance(err, dict) else None
    except ValueError:
        sentence = None
    if not isinstance(sentence, str) or not sentence:
        return f"the bridge refused the travel (HTTP {status})"
    return sentence


def post_travel(url, user_id, to_world, token="", timeout=60.0):
    """Ask the bridge at `url` to move `user_id` to `to_world`; its answer (a dict with
    `world` and `room`), or TravelError with the bridge's sentence."""
    payload = {"user_id": user_id, "to_world": to_world}
    answer = post_json(
        url, "/bridge/travel", payload, token, timeout, MAX_REPLY_BYTES, TravelError, _refusal
    )
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        raise TravelError("the bridge sent an answer without `ok`")
    return answer


# -- what the traveller sees (`escape` makes bridge text literal, as in protocol.render) --


def departing_line(to_world, escape=lambda s: s):
    return f"You step through the gateway toward {escape(to_world)}…"


def arrived_line(answer, to_world, escape=lambda s: s):
    world = answer.get("world") if isinstance(answer.get("world"), str) else to_world
    room = answer.get("room")
    if isinstance(room, str) and room:
        return f"You arrive in {escape(room)}, in {escape(world)}."
    return f"You arrive in {escape(world)}."


def refused_line(sentence, escape=lambda s: s):
    return f"The gateway stays closed: {escape(sentence)}."


def returned_line(from_world, room, escape=lambda s: s):
    """What a traveller sees when the bridge brings them back into this game."""
    where = f" into {escape(room)}" if room else ""
    return f"You step back through the gateway from {escape(from_world)}{where}."
