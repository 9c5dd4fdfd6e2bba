"""The link's conversation with a bridge, over Twisted's in-memory transport and clock.

Needs Twisted (it comes with Evennia) but not Evennia: the world is a fake that records
what the link hands it.
"""

import json
import unittest

from twisted.internet import task
from twisted.internet.testing import StringTransport

from worldbridge_evennia import conf as _conf
from worldbridge_evennia import link


class FakeWorld:
    def __init__(self):
        self.delivered = []
        self.snapshot = [
            {"type": "room", "name": "Limbo", "desc": "", "exits": {}, "objects": []},
            {"type": "presence", "event": "enter", "user_id": "g#1", "username": "Ann",
             "room": "Limbo"},
        ]

    def resync(self):
        return list(self.snapshot)

    def deliver(self, msg):
        self.delivered.append(msg)

    def act(self, msg):
        return {"type": "result", "id": msg["id"], "ok": True}

    def observe(self, msg):
        return {"type": "perception", "id": msg["id"], "world": "g"}


class FakeFactory:
    def __init__(self):
        self.resets = 0

    def resetDelay(self):
        self.resets += 1


def make_conf(token=""):
    values = {"WORLDBRIDGE_WORLD": "g", "WORLDBRIDGE_TOKEN": token}
    return _conf.from_mapping(lambda name, default: values.get(name, default))


class LinkTest(unittest.TestCase):
    def setUp(self):
        link._unsent_leaves.clear()
        self.clock = task.Clock()
        self.world = FakeWorld()
        self.link = link.BridgeLink(self.world, make_conf("s3cret"), clock=self.clock)
        self.link.factory = FakeFactory()
        self.transport = StringTransport()
        self.link.makeConnection(self.transport)

    def tearDown(self):
        self.link.connectionLost()

    def sent(self):
        """The lines written since the last call, as JSON."""
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.decode("utf-8").splitlines()]

    def receive(self, *msgs):
        self.link.dataReceived(b"".join(json.dumps(m).encode() + b"\n" for m in msgs))

    def welcome(self, **extra):
        msg = {"type": "welcome", "world": "bridge-w", "kind": "bridge", "protocol": 1,
               "heartbeat_s": 30}
        msg.update(extra)
        self.receive(msg)

    def test_hello_first_then_nothing_until_welcome(self):
        self.assertEqual(self.sent(), [{"type": "hello", "world": "g", "kind": "evennia",
                                        "protocol": 1, "token": "s3cret"}])
        self.assertFalse(link.send({"type": "say", "message": "early"}))
        self.assertEqual(self.sent(), [])

    def test_welcome_resyncs_presence_and_resets_the_backoff(self):
        self.sent()
        self.welcome()
        self.assertEqual(self.sent(), self.world.snapshot)
        self.assertEqual(self.link.factory.resets, 1)
        self.assertIs(link.current(), self.link)
        self.assertTrue(link.send({"type": "say", "message": "hi"}))
        self.assertEqual(self.sent(), [{"type": "say", "message": "hi"}])

    def test_the_same_room_snapshot_is_sent_once_per_connection(self):
        self.welcome()
        self.sent()
        snap = {"type": "room", "name": "Limbo", "desc": "", "exits": {}, "objects": []}
        self.assertTrue(link.send_room(snap))
        self.assertEqual(self.sent(), [])
        changed = dict(snap, desc="Now with a lamp.")
        link.send_room(changed)
        self.assertEqual(self.sent(), [changed])

    def test_ping_gets_pong_with_the_same_id(self):
        self.sent()
        self.receive({"type": "ping", "id": "wb-3"}, {"type": "ping"})
        self.assertEqual(self.sent(), [{"type": "pong", "id": "wb-3"}, {"type": "pong"}])

    def test_bridge_events_go_to_the_world(self):
        self.welcome()
        self.sent()
        say = {"type": "say", "event": "message", "user_id": "x", "username": "Xa",
               "room": "Limbo", "message": "hello", "timestamp": "t", "seq": 4,
               "origin": "local"}
        speak = {"type": "speak", "text": "hi", "room": "Limbo"}
        self.receive(say, speak, {"type": "ok"}, {"type": "pong", "id": "ev-1"})
        self.assertEqual(self.world.delivered, [say, speak])
        self.assertEqual(self.sent(), [])

    def test_act_and_observe_are_answered(self):
        self.welcome()
        self.sent()
        self.receive({"type": "act", "id": "wb-1", "protocol_version": "1.0",
                      "action": "message", "args": {"text": "x"}},
                     {"type": "observe", "id": "wb-2"})
        self.assertEqual(self.sent(), [{"type": "result", "id": "wb-1", "ok": True},
                                       {"type": "perception", "id": "wb-2", "world": "g"}])

    def test_bad_lines_get_errors_and_the_link_lives_on(self):
        self.sent()
        self.link.dataReceived(b"not json\n" + b'{"type":"mystery","id":9}\n')
        errors = self.sent()
        self.assertEqual([(e["type"], e["code"]) for e in errors],
                         [("error", "bad_json"), ("error", "unknown_type")])
        self.assertEqual(errors[1]["id"], 9)
        self.assertFalse(self.transport.disconnecting)
        self.link.dataReceived(b"y" * 70000 + b"\n")
        self.assertEqual([e["code"] for e in self.sent()], ["line_too_long"])
        self.receive({"type": "ping", "id": 1})
        self.assertEqual(self.sent(), [{"type": "pong", "id": 1}])

    def test_a_quiet_bridge_is_pinged_and_a_silent_one_dropped(self):
        self.welcome(heartbeat_s=10)
        self.sent()
        self.clock.advance(10)
        self.assertEqual([m["type"] for m in self.sent()], ["ping"])
        self.receive({"type": "pong", "id": "ev-1"})
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting, "over 3 heartbeats of silence drops the link")

    def test_a_newer_major_protocol_closes(self):
        self.sent()
        self.welcome(protocol=2)
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(link.current())

    def test_a_bridge_that_stops_reading_makes_sends_drop(self):
        self.welcome()
        self.sent()
        self.link.pauseProducing()
        self.assertFalse(link.send({"type": "say", "message": "lost"}))
        self.link.resumeProducing()
        self.assertTrue(link.send({"type": "say", "message": "kept"}))
        self.assertEqual(self.sent(), [{"type": "say", "message": "kept"}])

    def test_a_message_over_the_line_cap_is_not_sent(self):
        self.welcome()
        self.sent()
        self.assertFalse(link.send({"type": "say", "message": "x" * 70000}))
        self.assertEqual(self.sent(), [])
        self.assertTrue(link.send({"type": "say", "message": "fits"}))
        self.assertEqual(len(self.sent()), 1)

    def test_leaves_made_while_down_go_first_on_the_next_welcome(self):
        self.sent()
        gone = {"type": "presence", "event": "leave", "user_id": "g#2", "username": "Bo",
                "room": "Limbo"}
        back = dict(gone, user_id="g#1", username="Ann")
        self.assertFalse(link.send_presence(gone))
        self.assertFalse(link.send_presence(back))  # Ann is in resync's snapshot again
        self.welcome()
        self.assertEqual(self.sent(), [gone] + self.world.snapshot)
        self.link.connectionLost()
        again = link.BridgeLink(self.world, make_conf(), clock=self.clock)
        again.factory = FakeFactory()
        transport = StringTransport()
        again.makeConnection(transport)
        again.dataReceived(b'{"type":"welcome","protocol":1}\n')
        lines = [json.loads(x) for x in transport.value().splitlines()]
        self.assertNotIn(gone, lines, "a leave is sent once")
        again.connectionLost()

    def test_an_enter_cancels_a_pending_leave(self):
        leave = {"type": "presence", "event": "leave", "user_id": "g#2", "room": "Limbo"}
        link.send_presence(leave)
        link.send_presence(dict(leave, event="enter", room="Garden"))
        self.sent()
        self.welcome()
        self.assertEqual(self.sent(), self.world.snapshot)

    def test_after_close_sends_are_dropped(self):
        self.welcome()
        self.link.connectionLost()
        self.assertIsNone(link.current())
        self.assertFalse(link.send({"type": "say", "message": "x"}))


if __name__ == "__main__":
    unittest.main()
