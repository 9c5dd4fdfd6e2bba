"""`post_travel` against a real local HTTP server, and the lines a traveller sees."""

import socket
import unittest

from fakebridge import FakeBridgeTest
from worldbridge_evennia import travel


class PostTravelTest(FakeBridgeTest):
    def test_arrival_and_what_was_sent(self):
        self.server.answers.append((200, {"ok": True, "user_id": "g#4", "world": "vps",
                                          "room": "The Bridge",
                                          "message": "Alice left for vps"}))
        answer = travel.post_travel(self.url, "g#4", "vps", token="tok", timeout=5)
        self.assertEqual(answer["room"], "The Bridge")
        path, headers, body = self.server.seen[0]
        self.assertEqual(path, "/bridge/travel")
        self.assertEqual(body, {"user_id": "g#4", "to_world": "vps"})
        self.assertEqual(headers["Authorization"], "Bearer tok")
        self.assertEqual(travel.arrived_line(answer, "vps"), "You arrive in The Bridge, in vps.")

    def test_refusals_are_the_bridges_sentence(self):
        self.server.answers.append((409, {"error": "world vps is offline",
                                          "code": "travel_refused"}))
        with self.assertRaises(travel.TravelError) as e:
            travel.post_travel(self.url, "g#4", "vps", timeout=5)
        self.assertEqual(str(e.exception), "world vps is offline")
        self.assertEqual(travel.refused_line(str(e.exception)),
                         "The gateway stays closed: world vps is offline.")
        self.server.answers.append((404, {"error": "g#4 is not in this world (local)",
                                          "code": "not_here"}))
        with self.assertRaisesRegex(travel.TravelError, "^g#4 is not in this world"):
            travel.post_travel(self.url, "g#4", "vps", timeout=5)
        self.server.answers.append((502, b"<html>bad gateway</html>"))
        with self.assertRaisesRegex(travel.TravelError, r"refused the travel \(HTTP 502\)"):
            travel.post_travel(self.url, "g#4", "vps", timeout=5)

    def test_an_answer_of_the_wrong_shape(self):
        self.server.answers.append((200, b"not json"))
        with self.assertRaisesRegex(travel.TravelError, "not JSON"):
            travel.post_travel(self.url, "g#4", "vps", timeout=5)
        self.server.answers.append((200, {"world": "vps"}))
        with self.assertRaisesRegex(travel.TravelError, "without `ok`"):
            travel.post_travel(self.url, "g#4", "vps", timeout=5)

    def test_nothing_listening(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaisesRegex(travel.TravelError, "is not reachable"):
            travel.post_travel(f"http://127.0.0.1:{port}", "g#4", "vps", timeout=5)


class LinesTest(unittest.TestCase):
    def test_lines(self):
        esc = lambda s: s.replace("|", "||")  # noqa: E731
        self.assertEqual(travel.departing_line("vps"), "You step through the gateway toward vps…")
        self.assertEqual(travel.arrived_line({"ok": True}, "v|ps", esc), "You arrive in v||ps.")
        self.assertEqual(travel.arrived_line({"ok": True, "world": "vps", "room": "B|r"},
                                             "x", esc),
                         "You arrive in B||r, in vps.")
        self.assertEqual(travel.refused_line("a|b", esc), "The gateway stays closed: a||b.")
        self.assertEqual(travel.returned_line("v|ps", "The G|ate", esc),
                         "You step back through the gateway from v||ps into The G||ate.")
        self.assertEqual(travel.returned_line("vps", None),
                         "You step back through the gateway from vps.")


if __name__ == "__main__":
    unittest.main()
