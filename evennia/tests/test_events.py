"""`world_event()` and `@worldevent`'s argument parsing: the `event` line the bridge gets,
over a real BridgeLink on Twisted's in-memory transport, and the refusals."""

import json
import unittest

from twisted.internet import task
from twisted.internet.testing import StringTransport

from test_link import FakeFactory, FakeWorld, make_conf
from worldbridge_evennia import events, link


class Room:
    def __init__(self, key):
        self.key = key


class EventMessageTest(unittest.TestCase):
    def test_scope_follows_federate(self):
        self.assertEqual(events.event_message(Room("The Forge"), "fire", "The forge flares"),
                         {"type": "event", "room": "The Forge", "event": "fire",
                          "message": "The forge flares"})
        self.assertEqual(events.event_message("The Forge", "bell", None, True),
                         {"type": "event", "room": "The Forge", "event": "bell",
                          "scope": "federation"})
        self.assertEqual(events.event_message("The Forge", " fire ", "here only", False)["scope"],
                         "local")

    def test_unusable_arguments_are_refused_with_a_sentence(self):
        for args, want in [
            ((None, "fire"), "needs a room"),
            ((Room(""), "fire"), "needs a room"),
            (("Limbo", ""), "needs a kind"),
            (("Limbo", 5), "needs a kind"),
            (("Limbo", "fi\x01re"), "control characters"),
            (("Limbo", "x" * 257), "longer than 256 bytes"),
            (("Limbo", "fire", 7), "must be text, not int"),
            (("Limbo", "fire", "m", "yes"), "federate must be None, True or False"),
        ]:
            with self.assertRaisesRegex(events.WorldEventError, want):
                events.event_message(*args)

    def test_command_arguments(self):
        self.assertEqual(events.parse_command("  fire The forge   flares "),
                         ("fire", "The forge   flares"))
        for bad in ["", "   ", "fire", "fire   "]:
            with self.assertRaises(events.WorldEventError) as e:
                events.parse_command(bad)
            self.assertEqual(str(e.exception), events.USAGE)


class WorldEventOverTheLinkTest(unittest.TestCase):
    def setUp(self):
        link._unsent_leaves.clear()
        self.link = link.BridgeLink(FakeWorld(), make_conf(), clock=task.Clock())
        self.link.factory = FakeFactory()
        self.transport = StringTransport()
        self.link.makeConnection(self.transport)

    def tearDown(self):
        self.link.connectionLost()

    def sent(self):
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.decode("utf-8").splitlines()]

    def test_sent_once_welcomed_and_refused_while_the_link_is_down(self):
        self.sent()
        self.assertFalse(events.world_event("Limbo", "rain", "Rain."), "not welcomed yet")
        self.assertEqual(self.sent(), [])
        self.link.dataReceived(json.dumps({"type": "welcome", "world": "w", "kind": "bridge",
                                           "protocol": 1}).encode() + b"\n")
        self.sent()
        self.assertTrue(events.world_event(Room("Limbo"), "rain", "Rain.", federate=False))
        self.assertEqual(self.sent(), [{"type": "event", "room": "Limbo", "event": "rain",
                                        "message": "Rain.", "scope": "local"}])
        self.link.connectionLost()
        self.assertFalse(events.world_event("Limbo", "rain", "Rain."), "link closed")


if __name__ == "__main__":
    unittest.main()
