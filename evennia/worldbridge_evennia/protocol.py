"""The line protocol's framing, parsing and the text players see for bridge messages.

Pure Python (no Evennia, no Twisted) so it can be tested on its own. The contract is
docs/line-protocol.md in the worldbridge repository: one JSON object per
line, UTF-8, `\\n`-terminated, a trailing `\\r` dropped, at most 64 KiB per line.
"""

import json

PROTOCOL = 1
MAX_LINE_BYTES = 65536


class _TooLong:
    """Marks a line that went over the cap; its bytes were discarded."""

    def __repr__(self):
        return "LINE_TOO_LONG"


LINE_TOO_LONG = _TooLong()


class ProtocolError(Exception):
    """A line that breaks the contract; `code` is the contract's snake_case error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class LineBuffer:
    """Splits a byte stream into lines.

    `feed` returns the complete lines found so far (bytes, without the newline or a
    trailing `\\r`; empty lines are skipped) and `LINE_TOO_LONG` once for each line
    longer than `max_line_bytes`, whose bytes up to the next newline are dropped.
    A partial line stays buffered; the buffer never holds more than the cap.
    """

    def __init__(self, max_line_bytes=MAX_LINE_BYTES):
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data):
        out = []
        self._buf += data
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self._buf[start:nl])
            start = nl + 1
            if self._discarding:
                # The tail of a line already reported as too long.
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line_bytes:
                out.append(LINE_TOO_LONG)
            elif line:
                out.append(line)
        del self._buf[:start]
        if len(self._buf) > self.max_line_bytes:
            # Still no newline and already over the cap: report it now, drop the rest of
            # the line as it arrives.
            if not self._discarding:
                out.append(LINE_TOO_LONG)
            self._discarding = True
            self._buf.clear()
        return out


def parse(line):
    """One line (bytes) to a message dict, or raise ProtocolError (`bad_json`)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_json", "the line is not UTF-8") from None
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise ProtocolError("bad_json", f"the line is not JSON ({e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "the line is not a JSON object")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("missing_field", "every message needs a string `type`")
    return msg


def encode(msg):
    """A message dict to one line of bytes, newline included."""
    # json.dumps escapes control characters, so the line never contains a raw newline.
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def error(code, message, msg_id=None):
    """An `error` message as the contract shapes it."""
    out = {"type": "error", "code": code, "error": message}
    if msg_id is not None:
        out["id"] = msg_id
    return out


def hello(world, token=None):
    """The first line a game sends after connecting."""
    msg = {"type": "hello", "world": world, "kind": "evennia", "protocol": PROTOCOL}
    if token:
        msg["token"] = token
    return msg


def major_version(value):
    """The major part of a version given as 1, "1", "1.0"; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        if head.isdigit():
            return int(head)
    return None


def _text(value):
    """A field from the bridge as display text (absent or non-string values become "")."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value)


def remote_world(name):
    """`mac` for `Alice@mac` (how the bridge names a visitor from another world), else
    "" for a local name."""
    user, sep, world = name.rpartition("@")
    return world if sep and user and world and " " not in world else ""


def render(msg, agent_name, escape=lambda s: s):
    """The line players see for a bridge `speak`, `say`, `presence` or `event`.

    `escape` makes bridge-supplied text literal for the game's markup (Evennia:
    `evennia.utils.ansi.raw`). Returns None when there is nothing to show.
    """
    kind = msg.get("type")
    if kind == "speak":
        text = _text(msg.get("text"))
        if not text:
            return None
        return f'{escape(agent_name)} says, "{escape(text)}"'
    name = _text(msg.get("username")) or _text(msg.get("user_id")) or "Someone"
    who = escape(name)
    # `Alice@mac`: a visitor from another world, relayed into a portal room.
    home = remote_world(name)
    if kind == "say":
        message = _text(msg.get("message"))
        if not message:
            return None
        if home:
            return f'{who} says, "{escape(message)}"'
        return f'{who} (via bridge) says, "{escape(message)}"'
    if kind == "presence":
        event = msg.get("event")
        if event == "enter":
            return f"{who} arrives from {escape(home)}." if home else f"{who} (via bridge) arrives."
        if event == "leave":
            return f"{who} leaves." if home else f"{who} (via bridge) leaves."
        return None
    if kind == "event":
        name = _text(msg.get("event"))
        message = _text(msg.get("message"))
        if name and message:
            return f"[{escape(name)}] {escape(message)}"
        if message:
            return escape(message)
        if name:
            return f"[{escape(name)}]"
        return None
    return None
