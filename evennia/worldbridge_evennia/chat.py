"""One `POST /bridge/chat` over urllib: the blocking half of `talk`, run in a thread.

With `on_part`, the chat asks to stream (`"stream": true`): each `event: part` of the
bridge's server-sent events is handed to `on_part(text)` as it arrives (from this
thread), and the `done` event's JSON is the answer. A bridge that does not stream answers
plain JSON, which is taken as before.

Nothing here touches Evennia; the command reads what it needs from Evennia objects in
the reactor thread and hands plain values to `post_chat`.
"""

import json
import socket
import urllib.error
import urllib.request

MAX_REPLY_BYTES = 1024 * 1024

# The bridge is a local or LAN service: environment proxies (http_proxy) must not
# capture requests to it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ChatError(Exception):
    """Why the agent's answer did not come; `str()` is a short sentence for the player."""


def _error_sentence(status, body):
    try:
        err = json.loads(body.decode("utf-8"))
        sentence = err.get("error") if isinstance(err, dict) else None
    except ValueError:
        sentence = None
    if not isinstance(sentence, str) or not sentence:
        sentence = "the bridge refused the request"
    return f"{sentence} (HTTP {status})"


def post_json(url, path, payload, token, timeout, max_bytes, error, refusal, on_event=None):
    """POST `payload` as JSON to `{url}{path}`; the decoded answer, or `error(sentence)`
    raised for a refusal (`refusal(status, body)` words it), a timeout, an unreachable
    bridge or an answer that is not JSON. Shared by `talk` and the travel exit.

    With `on_event`, an answer of server-sent events is read as it comes: each event goes
    to `on_event(name, data)`, which returns the answer to end with (or None to go on)."""
    accept = "text/event-stream, application/json" if on_event else "application/json"
    headers = {"Content-Type": "application/json", "Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(payload).encode("utf-8"),
        headers=headers,
        method="POST",
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            kind = resp.headers.get("Content-Type", "")
            if on_event and kind.startswith("text/event-stream"):
                return _read_events(resp, max_bytes, on_event, error)
            body = resp.read(max_bytes)
    except urllib.error.HTTPError as e:
        raise error(refusal(e.code, e.read(4096))) from None
    except (TimeoutError, socket.timeout):
        raise error(f"the bridge did not answer within {timeout:g} s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise error(f"the bridge did not answer within {timeout:g} s") from None
        detail = getattr(reason, "strerror", None) or str(reason)
        raise error(f"the bridge at {url} is not reachable ({detail})") from None
    except OSError as e:
        raise error(f"the bridge at {url} is not reachable ({e.strerror or e})") from None
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError:
        raise error("the bridge sent an answer that is not JSON") from None


def _read_events(resp, max_bytes, on_event, error):
    """Read `event:` / `data:` blocks until `on_event` returns an answer."""
    name, data, read = "message", [], 0
    for raw_line in resp:
        read += len(raw_line)
        if read > max_bytes:
            raise error("the bridge's answer is too long")
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line == "" and data:
            try:
                value = json.loads("\n".join(data))
            except ValueError:
                raise error("the bridge sent an event that is not JSON") from None
            answer = on_event(name, value)
            if answer is not None:
                return answer
            name, data = "message", []
    raise error("the bridge ended the stream without an answer")


def post_chat(url, payload, token="", timeout=60.0, on_part=None):
    """POST `payload` to `{url}/bridge/chat`; the bridge's JSON answer, or ChatError.

    With `on_part`, the reply streams: `on_part(text)` is called for each part."""
    on_event = None
    if on_part is not None:
        payload = dict(payload, stream=True)

        def on_event(name, data):
            if name == "part" and isinstance(data, dict) and isinstance(data.get("text"), str):
                on_part(data["text"])
            elif name == "done":
                return data
            elif name == "error":
                sentence = data.get("error") if isinstance(data, dict) else None
                raise ChatError(sentence or "the agent failed to answer")
            return None

    answer = post_json(
        url, "/bridge/chat", payload, token, timeout, MAX_REPLY_BYTES, ChatError,
        _error_sentence, on_event,
    )
    if not isinstance(answer, dict) or not isinstance(answer.get("response"), str):
        raise ChatError("the bridge sent an answer without a `response`")
    return answer
