"""One `POST /bridge/chat` over urllib: the blocking half of `talk`, run in a thread.

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


def post_json(url, path, payload, token, timeout, max_bytes, error, refusal):
    """POST `payload` as JSON to `{url}{path}`; the decoded answer, or `error(sentence)`
    raised for a refusal (`refusal(status, body)` words it), a timeout, an unreachable
    bridge or an answer that is not JSON. Shared by `talk` and the travel exit."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
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


def post_chat(url, payload, token="", timeout=60.0):
    """POST `payload` to `{url}/bridge/chat`; the bridge's JSON answer, or ChatError."""
    answer = post_json(
        url, "/bridge/chat", payload, token, timeout, MAX_REPLY_BYTES, ChatError, _error_sentence
    )
    if not isinstance(answer, dict) or not isinstance(answer.get("response"), str):
        raise ChatError("the bridge sent an answer without a `response`")
    return answer
