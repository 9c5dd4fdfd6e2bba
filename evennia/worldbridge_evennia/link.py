"""The persistent line-protocol link from the Evennia Server process to the bridge.

A Twisted client (`BridgeLinkFactory`, a `ReconnectingClientFactory` like Evennia's own
IRC/Grapevine bots use) dials the bridge's line port, says `hello`, waits for `welcome`,
then sends what the game reports (presence, says, room snapshots) and hands what the
bridge sends to a *world* object: the Evennia side lives in `world.py`, so this module
needs only Twisted and can be tested with a fake world.

Everything here runs in the reactor thread; nothing blocks. While the link is down or not
yet welcomed, `send` drops messages (and says so in its return value): on every welcome
the world's `resync()` re-reports who is where and the leaves that could not be sent go
first, so presence heals; says made while the bridge was away are lost.
"""

import hashlib
import itertools

from twisted.application.service import Service
from twisted.internet import protocol, reactor, task
from twisted.internet.interfaces import IPushProducer
from twisted.python import log
from zope.interface import implementer

from . import protocol as wire

# Reconnect backoff: 1 s doubling to 30 s, with Twisted's jitter; reset on welcome.
INITIAL_DELAY_S = 1.0
MAX_DELAY_S = 30.0
DEFAULT_HEARTBEAT_S = 30


def _log(text):
    log.msg(f"[worldbridge] {text}")


# The link that is up and welcomed, if any; `send` goes through it.
_current = None


def current():
    """The welcomed link, or None."""
    return _current


def send(msg):
    """Send `msg` on the current link; False when there is none (the message is dropped)."""
    link = _current
    return link is not None and link.send(msg)


# Leaves that could not be sent (no link): sent on the next welcome unless the user is
# back by then, so the bridge does not keep someone who logged out while it was away.
_unsent_leaves = {}


def send_presence(msg):
    """Send a `presence`; a leave that cannot go now is kept for the next welcome."""
    uid = msg.get("user_id")
    if msg.get("event") != "leave":
        _unsent_leaves.pop(uid, None)
        return send(msg)
    if send(msg):
        _unsent_leaves.pop(uid, None)
        return True
    _unsent_leaves[uid] = msg
    return False


def send_room(snapshot):
    """Send a `room` snapshot unless this link already sent the same one."""
    link = _current
    return link is not None and link.send_room(snapshot)


@implementer(IPushProducer)
class BridgeLink(protocol.Protocol):
    """One connection to the bridge: `connecting` → `hello_sent` → `ready`."""

    def __init__(self, world, conf, clock=None):
        self.world = world
        self.conf = conf
        self.clock = clock or reactor
        self.buffer = wire.LineBuffer()
        self.state = "connecting"
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.heartbeat = None
        self.last_rx = 0.0
        self.paused = False
        self.dropped = 0
        self.rooms_sent = {}
        self.bridge_world = None
        self._ids = itertools.count(1)

    # -- Twisted hooks ------------------------------------------------------------------

    def connectionMade(self):
        self.last_rx = self._now()
        # A streaming producer: Twisted pauses us when the socket's write buffer is full,
        # so a bridge that stops reading cannot make the game's memory grow.
        self.transport.registerProducer(self, True)
        self._write(wire.hello(self.conf.world, self.conf.token))
        self.state = "hello_sent"
        peer = self.transport.getPeer()
        _log(f"connected to the bridge at {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}")

    def dataReceived(self, data):
        self.last_rx = self._now()
        for line in self.buffer.feed(data):
            if line is wire.LINE_TOO_LONG:
                self._write(wire.error("line_too_long", "a line from the bridge was over 64 KiB"))
                continue
            try:
                msg = wire.parse(line)
            except wire.ProtocolError as e:
                _log(f"bad line from the bridge: {e.message}")
                self._write(wire.error(e.code, e.message))
                continue
            try:
                self.handle(msg)
            except Exception:  # a bug in one message's handling must not kill the link
                log.err(None, f"[worldbridge] handling a {msg.get('type')!r} message failed")

    def connectionLost(self, reason=protocol.connectionDone):
        global _current
        if self.heartbeat is not None and self.heartbeat.running:
            self.heartbeat.stop()
        if _current is self:
            _current = None
        was = self.state
        self.state = "closed"
        _log(f"link to the bridge closed ({reason.getErrorMessage()}) in state {was}")

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.dropped:
            _log(f"the bridge is reading again; {self.dropped} message(s) were dropped")
            self.dropped = 0

    def stopProducing(self):
        self.paused = True

    # -- sending ------------------------------------------------------------------------

    def send(self, msg):
        """Send a game message if the link is ready and the bridge keeps up."""
        if self.state != "ready":
            return False
        if self.paused:
            if not self.dropped:
                _log("the bridge is not reading; dropping messages until it does")
            self.dropped += 1
            return False
        line = wire.encode(msg)
        if len(line) - 1 > wire.MAX_LINE_BYTES:
            _log(f"a {msg.get('type')!r} message is {len(line) - 1} bytes, over the line "
                 f"protocol's {wire.MAX_LINE_BYTES}; not sent")
            return False
        self.transport.write(line)
        return True

    def send_room(self, snapshot):
        """Send a `room` snapshot unless this connection already sent the same one (a
        digest per room name is kept, not the snapshot)."""
        name = snapshot.get("name")
        digest = hashlib.sha1(wire.encode(snapshot)).digest()
        if self.rooms_sent.get(name) == digest:
            return True
        if self.send(snapshot):
            self.rooms_sent[name] = digest
            return True
        return False

    def _write(self, msg):
        self.transport.write(wire.encode(msg))

    def _now(self):
        return self.clock.seconds()

    # -- receiving ----------------------------------------------------------------------

    def handle(self, msg):
        kind = msg["type"]
        msg_id = msg.get("id")
        if kind == "welcome":
            self._welcomed(msg)
        elif kind == "ping":
            pong = {"type": "pong"}
            if msg_id is not None:
                pong["id"] = msg_id
            self._write(pong)
        elif kind in ("speak", "say", "presence", "event"):
            self.world.deliver(msg)
        elif kind == "act":
            self._write(self.world.act(msg))
        elif kind == "observe":
            self._write(self.world.observe(msg))
        elif kind == "error":
            self._bridge_error(msg)
        elif kind in ("ok", "pong", "reply", "result", "perception"):
            pass  # answers; the link sends nothing that waits for them
        elif kind == "hello":
            self._write(wire.error("bad_field", "the bridge accepted this connection; "
                                   "the game says hello", msg_id))
        else:
            self._write(wire.error("unknown_type", f"unknown message type {kind!r}", msg_id))

    def _welcomed(self, msg):
        global _current
        if wire.major_version(msg.get("protocol", wire.PROTOCOL)) != wire.PROTOCOL:
            _log(f"the bridge speaks protocol {msg.get('protocol')!r}, this package speaks "
                 f"{wire.PROTOCOL}; closing")
            self.transport.loseConnection()
            return
        hb = msg.get("heartbeat_s", DEFAULT_HEARTBEAT_S)
        if isinstance(hb, (int, float)) and not isinstance(hb, bool) and hb > 0:
            self.heartbeat_s = min(max(float(hb), 1.0), 300.0)
        self.bridge_world = msg.get("world")
        self.state = "ready"
        self.rooms_sent = {}
        if self.factory is not None:
            self.factory.resetDelay()
        _current = self
        _log(f"welcomed by the bridge (world {self.bridge_world!r}, heartbeat "
             f"{self.heartbeat_s:g} s)")
        self.heartbeat = task.LoopingCall(self._beat)
        self.heartbeat.clock = self.clock
        self.heartbeat.start(self.heartbeat_s, now=False)
        resync = self.world.resync()
        present = {m.get("user_id") for m in resync if m.get("type") == "presence"}
        for uid, leave in list(_unsent_leaves.items()):
            if uid not in present:
                self.send(leave)
        _unsent_leaves.clear()
        for out in resync:
            if out.get("type") == "room":
                self.send_room(out)
            else:
                self.send(out)

    def _bridge_error(self, msg):
        code = msg.get("code")
        text = msg.get("error")
        if code == "unauthorized":
            _log(f"the bridge refused this game: {text} (check WORLDBRIDGE_TOKEN against the "
                 "bridge's line.token)")
        else:
            _log(f"the bridge answered an error: {code}: {text}")

    def _beat(self):
        """Ping a quiet bridge; drop a silent one (the factory then reconnects)."""
        quiet = self._now() - self.last_rx
        if quiet > 3 * self.heartbeat_s:
            _log(f"nothing from the bridge for {quiet:.0f} s; reconnecting")
            self.transport.abortConnection()
        elif quiet >= self.heartbeat_s:
            self._write({"type": "ping", "id": f"ev-{next(self._ids)}"})


class BridgeLinkFactory(protocol.ReconnectingClientFactory):
    """Builds a `BridgeLink` per connection and reconnects with backoff."""

    initialDelay = INITIAL_DELAY_S
    maxDelay = MAX_DELAY_S
    factor = 2.0

    def __init__(self, world, conf):
        self.world = world
        self.conf = conf
        self.delay = self.initialDelay

    def buildProtocol(self, addr):
        link = BridgeLink(self.world, self.conf)
        link.factory = self
        return link

    def clientConnectionFailed(self, connector, reason):
        _log(f"cannot reach the bridge at {connector.host}:{connector.port} "
             f"({reason.getErrorMessage()}); retrying")
        super().clientConnectionFailed(connector, reason)


class BridgeLinkService(Service):
    """A Twisted service that keeps the link up while the Evennia Server runs."""

    name = "worldbridge_link"

    def __init__(self, world, conf):
        self.world = world
        self.conf = conf
        self.factory = None
        self.connector = None

    def startService(self):
        super().startService()
        host, port = self.conf.line
        self.factory = BridgeLinkFactory(self.world, self.conf)
        self.connector = reactor.connectTCP(host, port, self.factory, timeout=10)
        _log(f"linking to the bridge at {host}:{port} as world {self.conf.world!r}")

    def stopService(self):
        super().stopService()
        if self.factory is not None:
            self.factory.stopTrying()
        if self.connector is not None:
            self.connector.disconnect()
