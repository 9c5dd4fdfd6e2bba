"""The package's settings, read from the game's `settings.py` with defaults.

| setting | default | meaning |
|---|---|---|
| `WORLDBRIDGE_URL` | `"http://127.0.0.1:4004"` | the bridge's HTTP API (`talk`) |
| `WORLDBRIDGE_LINE` | `"127.0.0.1:4005"` | the bridge's line port; `None` or `""` turns the link off |
| `WORLDBRIDGE_WORLD` | `"evennia"` | this game's world id (`hello`, user ids) |
| `WORLDBRIDGE_TOKEN` | `""` | the bridge's `line.token` (and `http.token` unless the next is set) |
| `WORLDBRIDGE_HTTP_TOKEN` | `WORLDBRIDGE_TOKEN` | bearer token for the HTTP API |
| `WORLDBRIDGE_AGENT_NAME` | `"Timmy"` | the agent's name in what players see |
| `WORLDBRIDGE_THINKING_AFTER` | `2.0` | seconds before "Timmy is thinking…" |
| `WORLDBRIDGE_TIMEOUT` | `60.0` | seconds `talk` waits for the bridge |
"""

from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:4004"
DEFAULT_LINE = "127.0.0.1:4005"
DEFAULT_LINE_PORT = 4005


@dataclass(frozen=True)
class Conf:
    url: str
    line: tuple  # (host, port) or None when the link is off
    world: str
    token: str
    http_token: str
    agent_name: str
    thinking_after_s: float
    timeout_s: float


def parse_hostport(text, default_port=DEFAULT_LINE_PORT):
    """`"host:port"`, `"[::1]:port"`, `"host"` to (host, port); ValueError when bad."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"bad address {text!r} (write an IPv6 address as [addr]:port)")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}")
    if port == "":
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


def from_mapping(get):
    """Build a Conf from `get(name, default)` (e.g. `getattr(settings, ...)`)."""
    line = get("WORLDBRIDGE_LINE", DEFAULT_LINE)
    token = get("WORLDBRIDGE_TOKEN", "") or ""
    http_token = get("WORLDBRIDGE_HTTP_TOKEN", None)
    return Conf(
        url=(get("WORLDBRIDGE_URL", DEFAULT_URL) or DEFAULT_URL).rstrip("/"),
        line=parse_hostport(line) if line else None,
        world=get("WORLDBRIDGE_WORLD", "evennia") or "evennia",
        token=token,
        http_token=token if http_token is None else http_token,
        agent_name=get("WORLDBRIDGE_AGENT_NAME", "Timmy") or "Timmy",
        thinking_after_s=float(get("WORLDBRIDGE_THINKING_AFTER", 2.0)),
        timeout_s=float(get("WORLDBRIDGE_TIMEOUT", 60.0)),
    )


def load():
    """The Conf from Django's settings (the game's `server/conf/settings.py`)."""
    from django.conf import settings

    return from_mapping(lambda name, default: getattr(settings, name, default))
