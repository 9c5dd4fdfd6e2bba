"""One `POST /bridge/travel` over urllib (the blocking half of a `TravelExit`, run in a
thread), and the lines a traveller sees.

Nothing here touches Evennia: the exit reads the user id and world in the reactor thread
and hands plain values to `post_travel`. The bridge answers once the travel is decided:
200 `{"ok": true, "world": "vps", "room": "The Bridge", …}`, or 409 `travel_refused` /
404 `not_here` with a sentence ("world vps is offline").
"""

import json
import socket
import urllib.error
import urllib.request

from .chat import _OPENER

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
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{url}/bridge/travel",
        data=json.dumps({"user_id": user_id, "to_world": to_world}).encode("utf-8"),
        headers=headers,
        method="POST",
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            body = resp.read(MAX_REPLY_BYTES)
    except urllib.error.HTTPError as e:
        raise TravelError(_refusal(e.code, e.read(4096))) from None
    except (TimeoutError, socket.timeout):
        raise TravelError(f"the bridge did not answer within {timeout:g} s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise TravelError(f"the bridge did not answer within {timeout:g} s") from None
        detail = getattr(reason, "strerror", None) or str(reason)
        raise TravelError(f"the bridge at {url} is not reachable ({detail})") from None
    except OSError as e:
        raise TravelError(f"the bridge at {url} is not reachable ({e.strerror or e})") from None
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError:
        raise TravelError("the bridge sent an answer that is not JSON") from None
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
