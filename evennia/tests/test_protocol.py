"""Framing, parsing, rendering and settings parsing; pure Python, no Evennia needed."""

import json
import unittest

from worldbridge_evennia import conf
from worldbridge_evennia import protocol as wire
from worldbridge_evennia.protocol import LINE_TOO_LONG, LineBuffer


def feed_in_pieces(data, cuts, max_line_bytes=wire.MAX_LINE_BYTES):
    buf = LineBuffer(max_line_bytes)
    out = []
    last = 0
    for cut in list(cuts) + [len(data)]:
        out += buf.feed(data[last:cut])
        last = cut
    return out


class LineBufferTest(unittest.TestCase):
    def test_every_split_point_gives_the_same_lines(self):
        data = b'{"type":"ping","id":1}\r\n\n{"type":"say","message":"h\xc3\xa9"}\n{"partial"'
        want = [b'{"type":"ping","id":1}', b'{"type":"say","message":"h\xc3\xa9"}']
        for i in range(len(data) + 1):
            self.assertEqual(feed_in_pieces(data, [i]), want, f"split at {i}")
        for i in range(len(data) + 1):
            for j in range(i, len(data) + 1):
                self.assertEqual(feed_in_pieces(data, [i, j]), want, f"split at {i},{j}")

    def test_byte_by_byte(self):
        data = b'{"a":1}\n{"b":2}\n'
        self.assertEqual(feed_in_pieces(data, range(1, len(data))), [b'{"a":1}', b'{"b":2}'])

    def test_a_line_at_the_cap_passes_one_over_is_reported_once_and_skipped(self):
        ok = b"x" * 10
        over = b"y" * 11
        data = ok + b"\n" + over + b"\n" + b"z\n"
        for i in range(len(data) + 1):
            self.assertEqual(feed_in_pieces(data, [i], 10), [ok, LINE_TOO_LONG, b"z"],
                             f"split at {i}")

    def test_an_endless_line_is_reported_once_and_memory_stays_bounded(self):
        buf = LineBuffer(16)
        out = []
        for _ in range(100):
            out += buf.feed(b"a" * 7)
            self.assertLessEqual(len(buf._buf), 16)
        self.assertEqual(out, [LINE_TOO_LONG])
        self.assertEqual(buf.feed(b"tail\nnext\n"), [b"next"])

    def test_crlf_counts_only_the_line(self):
        self.assertEqual(feed_in_pieces(b"x" * 10 + b"\r\n", [], 10), [b"x" * 10])


class ParseTest(unittest.TestCase):
    def assert_error(self, line, code):
        with self.assertRaises(wire.ProtocolError) as e:
            wire.parse(line)
        self.assertEqual(e.exception.code, code)

    def test_objects_with_a_type_parse(self):
        self.assertEqual(wire.parse(b'{"type":"welcome","protocol":1}'),
                         {"type": "welcome", "protocol": 1})

    def test_bad_lines(self):
        self.assert_error(b"\xff\xfe", "bad_json")
        self.assert_error(b"{nope", "bad_json")
        self.assert_error(b"[1,2]", "bad_json")
        self.assert_error(b'"text"', "bad_json")
        self.assert_error(b'{"id":1}', "missing_field")
        self.assert_error(b'{"type":7}', "missing_field")

    def test_encode_is_one_line_and_round_trips(self):
        msg = {"type": "say", "message": "two\nlines and \u00e9 and \u2028"}
        line = wire.encode(msg)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(json.loads(line), msg)
        self.assertEqual(LineBuffer().feed(line), [line[:-1]])

    def test_hello(self):
        self.assertEqual(wire.hello("mygame"),
                         {"type": "hello", "world": "mygame", "kind": "evennia", "protocol": 1})
        self.assertEqual(wire.hello("g", "s3cret")["token"], "s3cret")

    def test_major_version(self):
        self.assertEqual(wire.major_version(1), 1)
        self.assertEqual(wire.major_version("1.0"), 1)
        self.assertEqual(wire.major_version("2.3"), 2)
        self.assertIsNone(wire.major_version("x"))
        self.assertIsNone(wire.major_version(True))


class RenderTest(unittest.TestCase):
    def render(self, msg):
        return wire.render(msg, "Timmy", lambda s: s.replace("|", "||"))

    def test_say_from_the_bridge(self):
        self.assertEqual(
            self.render({"type": "say", "event": "message", "user_id": "a1",
                         "username": "Alice", "room": "Limbo", "message": "hello"}),
            'Alice (via bridge) says, "hello"')

    def test_markup_in_bridge_text_is_escaped(self):
        self.assertEqual(self.render({"type": "say", "username": "A|rB", "message": "x|ny"}),
                         'A||rB (via bridge) says, "x||ny"')

    def test_username_falls_back_to_user_id(self):
        self.assertEqual(self.render({"type": "say", "user_id": "u7", "message": "m"}),
                         'u7 (via bridge) says, "m"')

    def test_presence(self):
        self.assertEqual(self.render({"type": "presence", "event": "enter", "username": "Bob"}),
                         "Bob (via bridge) arrives.")
        self.assertEqual(self.render({"type": "presence", "event": "leave", "username": "Bob"}),
                         "Bob (via bridge) leaves.")
        self.assertIsNone(self.render({"type": "presence", "event": "dance", "username": "B"}))

    def test_visitors_from_other_worlds(self):
        # What the bridge relays into a portal room (src/federation/portal.rs `incoming`).
        self.assertEqual(
            self.render({"type": "say", "event": "message", "user_id": "alice@mac",
                         "username": "Alice@mac", "room": "Gate", "message": "hi Gate",
                         "origin": "mac"}),
            'Alice@mac says, "hi Gate"')
        self.assertEqual(self.render({"type": "presence", "event": "enter",
                                      "username": "Alice@mac"}),
                         "Alice@mac arrives from mac.")
        self.assertEqual(self.render({"type": "presence", "event": "leave",
                                      "username": "Alice@mac"}),
                         "Alice@mac leaves.")
        self.assertEqual(self.render({"type": "say", "username": "A|r@m|x", "message": "x"}),
                         'A||r@m||x says, "x"')

    def test_an_at_sign_alone_is_not_a_world(self):
        self.assertEqual(wire.remote_world("Alice@mac"), "mac")
        for name in ("@mac", "Alice@", "Alice", "me@the bar"):
            self.assertEqual(wire.remote_world(name), "", name)

    def test_speak_and_event(self):
        self.assertEqual(self.render({"type": "speak", "text": "Welcome."}),
                         'Timmy says, "Welcome."')
        self.assertEqual(self.render({"type": "event", "event": "fire",
                                      "message": "The forge flares."}),
                         "[fire] The forge flares.")
        self.assertEqual(self.render({"type": "event", "event": "fire"}), "[fire]")

    def test_nothing_to_show(self):
        self.assertIsNone(self.render({"type": "say", "username": "A"}))
        self.assertIsNone(self.render({"type": "speak"}))
        self.assertIsNone(self.render({"type": "event"}))
        self.assertIsNone(self.render({"type": "ok"}))


class ConfTest(unittest.TestCase):
    def test_defaults(self):
        c = conf.from_mapping(lambda name, default: default)
        self.assertEqual(c.url, "http://127.0.0.1:4004")
        self.assertEqual(c.line, ("127.0.0.1", 4005))
        self.assertEqual(c.world, "evennia")
        self.assertEqual(c.agent_name, "Timmy")
        self.assertEqual(c.token, "")
        self.assertEqual(c.thinking_after_s, 2.0)

    def test_values(self):
        values = {"WORLDBRIDGE_URL": "http://h:1/", "WORLDBRIDGE_LINE": "[::1]:7",
                  "WORLDBRIDGE_TOKEN": "t", "WORLDBRIDGE_WORLD": "w"}
        c = conf.from_mapping(lambda name, default: values.get(name, default))
        self.assertEqual((c.url, c.line, c.token, c.http_token, c.world),
                         ("http://h:1", ("::1", 7), "t", "t", "w"))
        off = conf.from_mapping(lambda name, default: None if name == "WORLDBRIDGE_LINE"
                                else default)
        self.assertIsNone(off.line)

    def test_hostport(self):
        self.assertEqual(conf.parse_hostport("example.org"), ("example.org", 4005))
        self.assertEqual(conf.parse_hostport("[::1]"), ("::1", 4005))
        for bad in ["", "h:0", "h:99999", "h:x", "::1", "[::1", ":80", "[::1]x"]:
            with self.assertRaises(ValueError, msg=bad):
                conf.parse_hostport(bad)


if __name__ == "__main__":
    unittest.main()
