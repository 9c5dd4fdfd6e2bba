//! One WebSocket connection after the handshake: the socket and the bytes already read past
//! the HTTP head move in from the HTTP connection; frames are read and written through
//! tungstenite's `WebSocketContext` over the non-blocking socket.
//!
//! Owns: framing and its caps (message size, read buffer, tungstenite's write buffer), the
//! outbound queue with its per-connection caps (bytes and messages: past either the peer
//! is a slow consumer and is closed with 1008, and nobody else waits for it), pings and
//! pongs, and the close handshake in both directions. What the text messages mean
//! belongs to the feeds (`world::gateway`, `workshop`).
//!
//! I/O happens only in [`WsConn::drive`] (and the first attempt of a close): `send` only
//! queues, so a fan-out to many connections costs one write per connection, not one per
//! message. A connection that [joined](WsConn::join) its feed's shared log
//! ([`super::fanout`]) also writes the broadcast frames from its cursor on, in the order
//! they came between its own.

use super::fanout::{Backlog, FanoutLog};
use super::{ConnId, Drive};
use mio::net::TcpStream;
use mio::Interest;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

/// tungstenite's read buffer per connection. Eagerly allocated, so it is small: most
/// traffic is short JSON, and a bigger message just takes more reads.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are collected up to this many bytes before a write to the socket (and all of
/// them are written at the end of a drive): a burst to one peer becomes a few writes
/// instead of one per frame. Small, because tungstenite keeps its write buffer's
/// capacity for the life of the connection.
const WRITE_BATCH_BYTES: usize = 4 * 1024;
/// A queue that grew past this many slots in a burst gives the memory back once empty.
const QUEUE_KEEP: usize = 16;
/// Most messages read from one connection per drive, so one busy peer cannot hold the
/// loop; [`WsConn::wants_drive`] tells the loop to come back.
const READ_BUDGET: usize = 64;
/// How long a closing connection may take to finish the close handshake (or, after a
/// protocol error, to read our close frame) before the socket is simply dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A close frame's reason is at most 123 bytes (RFC 6455 §5.5: control payload ≤ 125).
const REASON_MAX: usize = 123;

/// The caps a peer's traffic is held to, from `Config` (`gateway.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest message (and frame) a peer may send; past it: close 1009.
    pub max_message_bytes: usize,
    /// Bytes waiting in our queue for a peer that does not read; past it: close 1008.
    pub max_queued_bytes: usize,
    /// Messages waiting in our queue; past it: close 1008.
    pub max_queued_messages: usize,
}

impl WsLimits {
    fn config(&self) -> WebSocketConfig {
        let max_message = self.max_message_bytes.max(1);
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BATCH_BYTES)
            // Messages are fed to tungstenite only while the socket takes bytes, so its
            // buffer holds at most one batch plus one message (ours may be a little
            // larger than a peer's, e.g. with the gateway's `seq` stamp).
            .max_write_buffer_size(WRITE_BATCH_BYTES + max_message + 64 * 1024)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
    }
}

/// Why a connection closed, for the disconnect log and the feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code sent or received; 1006 when the peer vanished without one.
    pub code: u16,
    pub reason: String,
    /// The peer started the close (or vanished); false when we did.
    pub by_peer: bool,
}

/// What one drive read: text messages, and whether any frame at all arrived (a pong
/// counts: it is what the heartbeat waits for).
#[derive(Debug, Default)]
pub struct Inbound {
    pub texts: Vec<Utf8Bytes>,
    pub heard: bool,
}

/// What [`WsConn::send`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The connection is closing: the message is dropped.
    Dropped,
    /// This message would have passed a queue cap: the connection is now closing with
    /// 1008 and its queue is dropped.
    SlowConsumer,
}

impl Sent {
    pub fn is_queued(self) -> bool {
        self == Sent::Queued
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A close frame went out (or came in): finish the handshake, at most until `since +
    /// CLOSE_GRACE`.
    Closing {
        since: Instant,
    },
    /// The peer broke the protocol: our close frame is queued and what the peer still
    /// sends is read and thrown away, so the kernel does not answer it with a reset that
    /// would destroy the close frame before the peer reads it.
    Discarding {
        since: Instant,
        shut: bool,
    },
}

enum Outbound {
    Text(Utf8Bytes),
    Ping,
}

/// A frame for this connection alone, and the shared log's head when it was queued:
/// the log's frames before that position go out first.
struct Queued {
    at: u64,
    out: Outbound,
}

/// What a drive may write besides the connection's own queue: its feed's shared log,
/// and its own id (a broadcast may be for everyone but it).
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub log: &'a FanoutLog,
    pub me: ConnId,
}

/// One WebSocket connection.
pub struct WsConn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    ctx: WebSocketContext,
    limits: WsLimits,
    phase: Phase,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// A member of the shared log: the next position to write.
    cursor: Option<u64>,
    /// A readable edge was seen and reading has not hit `WouldBlock` since.
    readable: bool,
    /// tungstenite holds bytes the socket refused: wait for it to take them before
    /// feeding more.
    tx_blocked: bool,
    close_reason: Option<CloseReason>,
    pub connected: Instant,
    pub last_heard: Instant,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl WsConn {
    /// Take over a socket whose `101 Switching Protocols` has been queued or written;
    /// `leftover` is what the HTTP connection had read past the request head (a client may
    /// send its first frame right behind the handshake).
    pub fn new(
        sock: TcpStream,
        peer: SocketAddr,
        leftover: Vec<u8>,
        limits: WsLimits,
        now: Instant,
    ) -> WsConn {
        WsConn {
            sock,
            peer,
            ctx: WebSocketContext::from_partially_read(
                leftover,
                Role::Server,
                Some(limits.config()),
            ),
            limits,
            phase: Phase::Open,
            queue: VecDeque::new(),
            queued_bytes: 0,
            cursor: None,
            // Leftover bytes, or data that arrived before we registered: read at once.
            readable: true,
            tx_blocked: false,
            close_reason: None,
            connected: now,
            last_heard: now,
            messages_in: 0,
            messages_out: 0,
        }
    }

    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    /// Open: messages may still be sent to it.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Why it closed (or is closing), once known.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// Bytes and messages waiting in our queue.
    pub fn queued(&self) -> (usize, usize) {
        (self.queued_bytes, self.queue.len())
    }

    /// From now on, write the shared log's frames too (from its head on). Once only; a
    /// closing connection does not join.
    pub fn join(&mut self, log: &FanoutLog) {
        if self.phase == Phase::Open && self.cursor.is_none() {
            self.cursor = Some(log.head());
        }
    }

    /// The next log position this member writes (`None`: not a member, or closing).
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// What this member has not written of the log; `None` when some of it was dropped.
    fn backlog(&self, log: &FanoutLog) -> Option<Backlog> {
        match self.cursor {
            Some(c) => log.backlog(c),
            None => Some(Backlog::default()),
        }
    }

    /// Whether what waits for this peer (its queue, the log frames it has not written,
    /// and `more` messages of `more_bytes`) passes a queue cap; log frames it will never
    /// get (trimmed past its cursor) count as past.
    fn past_caps(&self, log: &FanoutLog, more: usize, more_bytes: usize) -> bool {
        self.backlog(log).is_none_or(|b| {
            self.queued_bytes + b.bytes + more_bytes > self.limits.max_queued_bytes
                || self.queue.len() + b.messages + more > self.limits.max_queued_messages
        })
    }

    /// Past a queue cap, counting the log frames it has not written: a slow consumer.
    pub fn lagging(&self, log: &FanoutLog) -> bool {
        self.phase == Phase::Open && self.past_caps(log, 0, 0)
    }

    /// Close with 1008: what is queued is dropped, and nobody else waits for it.
    pub fn close_slow(&mut self) {
        log::debug!(
            "peer={} slow consumer: {} bytes in {} messages queued, log cursor {:?}",
            self.peer,
            self.queued_bytes,
            self.queue.len(),
            self.cursor
        );
        self.close(1008, "slow consumer: messages were not read in time");
    }

    /// The readiness this connection waits for now (rustls' `interest()` pattern): write
    /// readiness only while something waits to be written.
    pub fn interest(&self) -> Interest {
        if self.tx_blocked || !self.queue.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }

    /// Unread input is known to be waiting (the read budget ran out): drive again soon,
    /// without waiting for another edge.
    pub fn wants_drive(&self) -> bool {
        self.readable && !matches!(self.phase, Phase::Discarding { .. })
    }

    /// Queue a text message for this connection alone (after what `log` holds now). It
    /// is not queued when the connection is closing, or when it would pass a queue cap
    /// (log frames not yet written count): then the connection is closed now with 1008
    /// "slow consumer" (its queue is dropped), and nobody else waits for it.
    pub fn send(&mut self, text: Utf8Bytes, log: &FanoutLog) -> Sent {
        if self.phase != Phase::Open {
            return Sent::Dropped;
        }
        let len = text.len();
        if self.past_caps(log, 1, len) {
            self.close_slow();
            return Sent::SlowConsumer;
        }
        self.queued_bytes += len;
        self.queue.push_back(Queued {
            at: log.head(),
            out: Outbound::Text(text),
        });
        Sent::Queued
    }

    /// Queue a ping (the heartbeat); a live peer answers with a pong.
    pub fn ping(&mut self, log: &FanoutLog) {
        if self.phase == Phase::Open {
            self.queue.push_back(Queued {
                at: log.head(),
                out: Outbound::Ping,
            });
        }
    }

    /// Start the close handshake with `code` and `reason`; what is still queued is
    /// dropped. The caller then drives the connection (and drops it when it says Close,
    /// or when [`WsConn::expired`]).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.phase != Phase::Open {
            return;
        }
        let reason = truncate(reason, REASON_MAX);
        self.close_reason = Some(CloseReason {
            code,
            reason: reason.to_string(),
            by_peer: false,
        });
        self.queue.clear();
        self.queued_bytes = 0;
        self.cursor = None;
        self.phase = Phase::Closing {
            since: Instant::now(),
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason),
        };
        // Queues the frame and tries one write; a full socket or buffer is fine here, the
        // grace period bounds how long we wait.
        let _ = self.ctx.close(&mut self.sock, Some(frame));
    }

    /// A closing connection that took longer than [`CLOSE_GRACE`]: drop it.
    pub fn expired(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Open => false,
            Phase::Closing { since } | Phase::Discarding { since, .. } => {
                now.duration_since(since) > CLOSE_GRACE
            }
        }
    }

    /// Read what has arrived (text into `inbound`), answer pings, write what is queued;
    /// until `WouldBlock` or the read budget is spent. `Close` = drop the socket now.
    pub fn drive(&mut self, now: Instant, inbound: &mut Inbound, shared: Shared<'_>) -> Drive {
        if let Phase::Discarding { .. } = self.phase {
            return self.discard();
        }
        let mut budget = READ_BUDGET;
        while self.readable && budget > 0 && self.ctx.can_read() {
            match self.ctx.read(&mut self.sock) {
                Ok(msg) => {
                    inbound.heard = true;
                    self.last_heard = now;
                    match msg {
                        Message::Text(t) => {
                            budget -= 1;
                            // After we sent a close frame, data still in flight is dropped.
                            if self.phase == Phase::Open {
                                self.messages_in += 1;
                                inbound.texts.push(t);
                            }
                        }
                        Message::Binary(_) => {
                            return self
                                .fail(1003, "binary messages are not supported: send JSON as text")
                        }
                        Message::Close(frame) => {
                            if self.close_reason.is_none() {
                                self.close_reason = Some(CloseReason {
                                    code: frame.as_ref().map_or(1005, |f| u16::from(f.code)),
                                    reason: frame
                                        .as_ref()
                                        .map(|f| f.reason.as_str().to_string())
                                        .unwrap_or_default(),
                                    by_peer: true,
                                });
                            }
                            if self.phase == Phase::Open {
                                self.queue.clear();
                                self.queued_bytes = 0;
                                self.cursor = None;
                                self.phase = Phase::Closing { since: now };
                            }
                            // The reply is queued inside tungstenite; the next read or
                            // flush sends it and then reports ConnectionClosed.
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.read_error(e),
            }
        }
        self.write_queued(shared)
    }

    /// Move queued messages (and the log's frames due before each) into tungstenite
    /// while the socket takes bytes, then flush.
    fn write_queued(&mut self, shared: Shared<'_>) -> Drive {
        if self.phase == Phase::Open && self.cursor.is_some_and(|c| c < shared.log.base()) {
            // Frames it never wrote were dropped: it was not keeping up.
            self.close_slow();
        }
        while self.phase == Phase::Open && !self.tx_blocked {
            if let Some(mut at) = self.cursor {
                let upto = self.queue.front().map_or(shared.log.head(), |q| q.at);
                while at < upto && !self.tx_blocked {
                    let Some(entry) = shared.log.get(at) else {
                        break;
                    };
                    at += 1;
                    if entry.except != Some(shared.me) {
                        if let Err(e) = self.write_one(Message::Text(entry.frame.clone())) {
                            return self.write_error(e);
                        }
                    }
                }
                self.cursor = Some(at);
                if self.tx_blocked {
                    break;
                }
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let msg = match q.out {
                Outbound::Text(t) => {
                    self.queued_bytes -= t.len();
                    Message::Text(t)
                }
                Outbound::Ping => Message::Ping(Default::default()),
            };
            if let Err(e) = self.write_one(msg) {
                return self.write_error(e);
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP {
            self.queue.shrink_to(QUEUE_KEEP);
        }
        match self.ctx.flush(&mut self.sock) {
            Ok(()) => self.tx_blocked = false,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => self.tx_blocked = true,
            Err(e) => return self.write_error(e),
        }
        Drive::Open
    }

    /// Hand one message to tungstenite; a full socket sets `tx_blocked` (the frame is in
    /// tungstenite's buffer and goes out with the next flush).
    fn write_one(&mut self, msg: Message) -> Result<(), WsError> {
        let len = match &msg {
            Message::Text(t) => t.len(),
            _ => 0,
        };
        match self.ctx.write(&mut self.sock, msg) {
            Ok(()) => self.messages_out += u64::from(len > 0),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.messages_out += u64::from(len > 0);
                self.tx_blocked = true;
            }
            Err(WsError::WriteBufferFull(_)) => {
                // Only one message larger than the whole buffer gets here (the buffer
                // is empty when we feed it): a bug upstream, not the peer's.
                log::warn!(
                    "peer={} dropped an outbound message of {len} bytes: larger than the write buffer",
                    self.peer
                );
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn read_error(&mut self, e: WsError) -> Drive {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => Drive::Close,
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                log::debug!(
                    "peer={} sent a message of {size} bytes (max {max_size})",
                    self.peer
                );
                self.fail(1009, &format!("message too big: at most {max_size} bytes"))
            }
            WsError::Capacity(e) => self.fail(1009, &e.to_string()),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.vanished("the peer closed the connection without a close frame")
            }
            WsError::Protocol(p) => {
                log::debug!("peer={} broke the WebSocket protocol: {p}", self.peer);
                self.fail(1002, &p.to_string())
            }
            WsError::Utf8(_) => {
                log::debug!("peer={} sent a text message that is not UTF-8", self.peer);
                self.fail(1007, "text messages must be valid UTF-8")
            }
            WsError::Io(e) => self.vanished(&e.to_string()),
            other => {
                log::debug!("peer={} read failed: {other}", self.peer);
                self.vanished(&other.to_string())
            }
        }
    }

    fn write_error(&mut self, e: WsError) -> Drive {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => Drive::Close,
            // Writing after a close frame: nothing more to say; the handshake goes on.
            WsError::Protocol(ProtocolError::SendAfterClosing) => Drive::Open,
            other => self.vanished(&other.to_string()),
        }
    }

    /// The peer is gone (reset, EOF without close): drop now.
    fn vanished(&mut self, why: &str) -> Drive {
        if self.close_reason.is_none() {
            self.close_reason = Some(CloseReason {
                code: 1006,
                reason: why.to_string(),
                by_peer: true,
            });
        }
        Drive::Close
    }

    /// The peer broke the rules: send a close frame with `code`, then discard its input
    /// until it closes or the grace period ends.
    fn fail(&mut self, code: u16, reason: &str) -> Drive {
        let reason = truncate(reason, REASON_MAX);
        if self.close_reason.is_none() {
            self.close_reason = Some(CloseReason {
                code,
                reason: reason.to_string(),
                by_peer: false,
            });
        }
        self.queue.clear();
        self.queued_bytes = 0;
        self.cursor = None;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason),
        };
        let _ = self.ctx.close(&mut self.sock, Some(frame));
        self.phase = Phase::Discarding {
            since: Instant::now(),
            shut: false,
        };
        self.discard()
    }

    /// Flush our close frame, then half-close (the peer's reader sees EOF after the
    /// frame), reading and dropping whatever the peer still sends until it closes.
    fn discard(&mut self) -> Drive {
        let Phase::Discarding { since, shut } = self.phase else {
            return Drive::Open;
        };
        if !shut {
            match self.ctx.flush(&mut self.sock) {
                Ok(()) | Err(WsError::ConnectionClosed) => {
                    let _ = self.sock.shutdown(Shutdown::Write);
                    self.phase = Phase::Discarding { since, shut: true };
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Drive::Close,
            }
        }
        let mut sink = [0u8; 4096];
        loop {
            match self.sock.read(&mut sink) {
                Ok(0) => return Drive::Close,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Drive::Open;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Drive::Close,
            }
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::http::{decode, Limits};
    use crate::codec::ws_handshake;
    use bytes::BytesMut;
    use mio::{Events, Poll, Token};
    use std::io::Write;
    use std::net::TcpListener;
    use tungstenite::stream::MaybeTlsStream;

    type Client = tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>>;

    const ME: ConnId = ConnId { idx: 7, gen: 0 };

    const LIMITS: WsLimits = WsLimits {
        max_message_bytes: 1024,
        max_queued_bytes: 64 * 1024,
        max_queued_messages: 100,
    };

    /// A server side over a real socket, driven by a mio poll like the event loop does.
    struct Server {
        poll: Poll,
        events: Events,
        conn: WsConn,
        inbound: Inbound,
        closed: bool,
        /// The shared log (empty unless a test fills it).
        log: FanoutLog,
    }

    impl Server {
        /// Accept one connection and do the handshake with our own codec.
        fn accept(listener: &TcpListener, limits: WsLimits) -> Server {
            let (mut std_sock, peer) = listener.accept().unwrap();
            std_sock
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = BytesMut::new();
            let limits_http = Limits {
                head_max: 16 * 1024,
                body_max: 0,
            };
            let req = loop {
                if let Some(req) = decode(&mut buf, &limits_http).unwrap() {
                    break req;
                }
                let mut chunk = [0u8; 1024];
                let n = std_sock.read(&mut chunk).unwrap();
                assert!(n > 0, "client went away during the handshake");
                buf.extend_from_slice(&chunk[..n]);
            };
            let resp = ws_handshake::accept(&req).expect("a valid upgrade");
            std_sock.write_all(&resp).unwrap();
            std_sock.set_nonblocking(true).unwrap();
            let mut sock = TcpStream::from_std(std_sock);
            let poll = Poll::new().unwrap();
            poll.registry()
                .register(&mut sock, Token(1), Interest::READABLE | Interest::WRITABLE)
                .unwrap();
            Server {
                poll,
                events: Events::with_capacity(16),
                conn: WsConn::new(sock, peer, buf.to_vec(), limits, Instant::now()),
                inbound: Inbound::default(),
                closed: false,
                log: FanoutLog::default(),
            }
        }

        /// Poll once (up to `wait`) and drive.
        fn turn(&mut self, wait: Duration) {
            if self.closed {
                return;
            }
            let wait = if self.conn.wants_drive() {
                Duration::ZERO
            } else {
                wait
            };
            self.poll.poll(&mut self.events, Some(wait)).unwrap();
            if self
                .events
                .iter()
                .any(|e| e.is_readable() || e.is_read_closed())
            {
                self.conn.mark_readable();
            }
            let shared = Shared {
                log: &self.log,
                me: ME,
            };
            if self.conn.drive(Instant::now(), &mut self.inbound, shared) == Drive::Close
                || self.conn.expired(Instant::now())
            {
                // What the event loop does: drop the socket (here: close it, keep the state).
                let _ = self.conn.sock.shutdown(Shutdown::Both);
                self.closed = true;
            }
        }

        /// Turn until `f` holds or 5 s pass.
        fn until(&mut self, what: &str, mut f: impl FnMut(&mut Server) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !f(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                self.turn(Duration::from_millis(20));
            }
        }

        fn texts(&mut self) -> Vec<String> {
            std::mem::take(&mut self.inbound.texts)
                .into_iter()
                .map(|t| t.as_str().to_string())
                .collect()
        }
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    /// A tungstenite client connected in a thread while the server accepts.
    fn pair(limits: WsLimits) -> (Server, Client) {
        let l = listener();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (ws, resp) = tungstenite::connect(format!("ws://{addr}/ws/matrix")).unwrap();
            assert_eq!(resp.status(), 101);
            ws
        });
        let server = Server::accept(&l, limits);
        let client = t.join().unwrap();
        if let MaybeTlsStream::Plain(s) = client.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (server, client)
    }

    /// The client reads in a thread while the server keeps turning.
    fn client_reads<T: Send + 'static>(
        server: &mut Server,
        mut client: Client,
        f: impl FnOnce(&mut Client) -> T + Send + 'static,
    ) -> (Client, T) {
        let t = std::thread::spawn(move || {
            let r = f(&mut client);
            (client, r)
        });
        while !t.is_finished() {
            server.turn(Duration::from_millis(5));
        }
        t.join().unwrap()
    }

    #[test]
    fn text_both_ways_with_tungstenite_client() {
        let (mut server, mut client) = pair(LIMITS);
        client.send(Message::text("hello from the client")).unwrap();
        server.until("the text", |s| !s.inbound.texts.is_empty());
        assert_eq!(server.texts(), vec!["hello from the client"]);
        assert!(server.inbound.heard);

        for i in 0..3 {
            assert!(server
                .conn
                .send(Utf8Bytes::from(format!("reply {i}")), &server.log)
                .is_queued());
        }
        assert_eq!(
            server.conn.interest(),
            Interest::READABLE | Interest::WRITABLE
        );
        server.turn(Duration::ZERO);
        assert_eq!(server.conn.interest(), Interest::READABLE);
        for i in 0..3 {
            assert_eq!(client.read().unwrap(), Message::text(format!("reply {i}")));
        }
        assert_eq!(server.conn.messages_in, 1);
        assert_eq!(server.conn.messages_out, 3);
    }

    #[test]
    fn a_frame_sent_with_the_handshake_is_not_lost() {
        let l = listener();
        let addr = l.local_addr().unwrap();
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        // The handshake and a masked text frame "hi" in one write.
        let mut bytes =
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_vec();
        bytes.extend_from_slice(&masked(0x81, b"hi"));
        raw.write_all(&bytes).unwrap();
        let mut server = Server::accept(&l, LIMITS);
        server.until("the leftover frame", |s| !s.inbound.texts.is_empty());
        assert_eq!(server.texts(), vec!["hi"]);
    }

    /// A client frame: FIN + opcode, masked with a fixed key.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let key = [1u8, 2, 3, 4];
        let mut f = vec![first, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn a_member_writes_log_frames_and_its_own_in_the_order_they_were_queued() {
        let (mut server, mut client) = pair(LIMITS);
        server.log.push("before joining".into(), None);
        server.conn.join(&server.log);
        server.log.push("b1".into(), None);
        assert!(server.conn.send("own1".into(), &server.log).is_queued());
        server.log.push("not for me".into(), Some(ME));
        server
            .log
            .push("b2".into(), Some(ConnId { idx: 8, gen: 0 }));
        assert!(server.conn.send("own2".into(), &server.log).is_queued());
        server.log.push("b3".into(), None);
        server.turn(Duration::ZERO);
        for want in ["b1", "own1", "b2", "own2", "b3"] {
            assert_eq!(client.read().unwrap(), Message::text(want));
        }
        assert_eq!(server.conn.cursor(), Some(server.log.head()));
        assert_eq!(server.conn.messages_out, 5);
        // Trimmed past its cursor (it fell behind): closed as a slow consumer.
        server.log.push("b4".into(), None);
        server.log.push("b5".into(), None);
        server.log.scanned(server.log.head(), 8);
        server.turn(Duration::ZERO);
        assert_eq!(server.conn.close_reason().map(|r| r.code), Some(1008));
        assert_eq!(server.conn.cursor(), None);
    }

    #[test]
    fn log_frames_count_against_the_queue_caps() {
        let limits = WsLimits {
            max_queued_messages: 3,
            ..LIMITS
        };
        let (mut server, _client) = pair(limits);
        server.conn.join(&server.log);
        server.log.push("1".into(), None);
        server.log.push("2".into(), None);
        assert!(!server.conn.lagging(&server.log));
        server.log.push("3".into(), None);
        server.log.push("4".into(), None);
        assert!(server.conn.lagging(&server.log), "4 behind, at most 3");
        assert_eq!(
            server.conn.send("own".into(), &server.log),
            Sent::SlowConsumer
        );
    }

    #[test]
    fn pings_are_answered_and_server_pings_are_heard() {
        let (mut server, client) = pair(LIMITS);
        let (client, got) = client_reads(&mut server, client, |c| {
            c.send(Message::Ping(b"are you there".to_vec().into()))
                .unwrap();
            c.read().unwrap()
        });
        assert_eq!(got, Message::Pong(b"are you there".to_vec().into()));

        server.inbound.heard = false;
        server.conn.ping(&server.log);
        server.turn(Duration::ZERO);
        let (_client, got) = client_reads(&mut server, client, |c| {
            let m = c.read().unwrap();
            // Reading the ping queued the pong; flush sends it.
            c.flush().unwrap();
            m
        });
        assert!(matches!(got, Message::Ping(_)), "{got:?}");
        server.until("the pong", |s| s.inbound.heard);
    }

    #[test]
    fn client_close_is_answered_and_recorded() {
        let (mut server, client) = pair(LIMITS);
        let (_client, end) = client_reads(&mut server, client, |c| {
            c.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap();
            loop {
                match c.read() {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            }
        });
        assert!(matches!(end, WsError::ConnectionClosed), "{end:?}");
        server.until("the server side to close", |s| s.closed);
        let why = server.conn.close_reason().unwrap();
        assert_eq!(
            (why.code, why.reason.as_str(), why.by_peer),
            (1000, "bye", true)
        );
    }

    #[test]
    fn server_close_sends_code_and_reason() {
        let (mut server, client) = pair(LIMITS);
        assert!(server
            .conn
            .send("dropped when closing".into(), &server.log)
            .is_queued());
        server
            .conn
            .close(1000, "replaced by a new connection for agentId a");
        assert!(!server.conn.is_open());
        assert_eq!(
            server.conn.send("after close".into(), &server.log),
            Sent::Dropped
        );
        let (_client, msgs) = client_reads(&mut server, client, |c| {
            let mut got = Vec::new();
            loop {
                match c.read() {
                    Ok(m) => got.push(m),
                    Err(_) => break got,
                }
            }
        });
        assert_eq!(
            msgs,
            vec![Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "replaced by a new connection for agentId a".into()
            }))]
        );
        server.until("the handshake to finish", |s| s.closed);
        assert!(!server.conn.close_reason().unwrap().by_peer);
    }

    /// The close frame a raw client reads: (code, reason).
    fn read_close(raw: &mut std::net::TcpStream) -> (u16, String) {
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match raw.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
        let start = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        let f = &all[start..];
        assert!(f.len() >= 4, "no close frame: {all:?}");
        assert_eq!(f[0], 0x88, "a close frame");
        let len = (f[1] & 0x7f) as usize;
        let code = u16::from_be_bytes([f[2], f[3]]);
        (code, String::from_utf8_lossy(&f[4..2 + len]).into_owned())
    }

    fn raw_pair(limits: WsLimits) -> (Server, std::net::TcpStream) {
        let l = listener();
        let mut raw = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        raw.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
        (Server::accept(&l, limits), raw)
    }

    /// Send `bytes` from a raw client; return the close the server answers with.
    fn close_for(bytes: Vec<u8>) -> (u16, String) {
        let (mut server, mut raw) = raw_pair(LIMITS);
        raw.write_all(&bytes).unwrap();
        let t = std::thread::spawn(move || read_close(&mut raw));
        server.until("the server to close", |s| s.closed);
        t.join().unwrap()
    }

    #[test]
    fn bad_input_gets_the_right_close_code() {
        // Unmasked client frame: protocol error.
        let (code, reason) = close_for(vec![0x81, 0x02, b'h', b'i']);
        assert_eq!(code, 1002, "{reason}");
        // Text that is not UTF-8.
        assert_eq!(close_for(masked(0x81, &[0xff, 0xfe])).0, 1007);
        // Binary.
        let (code, reason) = close_for(masked(0x82, b"\x00\x01"));
        assert_eq!(code, 1003);
        assert!(reason.contains("binary"), "{reason}");
        // Reserved opcode.
        assert_eq!(close_for(masked(0x83, b"x")).0, 1002);
        // A continuation without a start.
        assert_eq!(close_for(masked(0x80, b"x")).0, 1002);
    }

    #[test]
    fn oversized_message_is_closed_with_1009() {
        let (mut server, mut client) = pair(LIMITS);
        // Whole frame too big: refused at the header.
        client
            .send(Message::text("x".repeat(LIMITS.max_message_bytes + 1)))
            .unwrap();
        let (_client, got) = client_reads(&mut server, client, |c| loop {
            match c.read() {
                Ok(Message::Close(f)) => break f,
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        });
        let f = got.expect("a close frame with a code");
        assert_eq!(u16::from(f.code), 1009);
        assert!(f.reason.contains("1024"), "{}", f.reason);
        server.until("the socket to close", |s| s.closed);

        // Many small fragments adding up past the cap.
        let (mut server, mut raw) = raw_pair(LIMITS);
        let mut bytes = masked(0x01, &[b'a'; 100]);
        for _ in 0..20 {
            bytes.extend(masked(0x00, &[b'a'; 100]));
        }
        raw.write_all(&bytes).unwrap();
        let t = std::thread::spawn(move || read_close(&mut raw));
        server.until("the server to close", |s| s.closed);
        assert_eq!(t.join().unwrap().0, 1009);
    }

    #[test]
    fn slow_consumer_is_closed_with_1008_and_memory_is_bounded() {
        let limits = WsLimits {
            max_queued_bytes: 256 * 1024,
            max_queued_messages: 10_000,
            ..LIMITS
        };
        let (mut server, raw) = raw_pair(limits);
        let chunk: Utf8Bytes = "y".repeat(8 * 1024).into();
        let mut sent = 0usize;
        // The client never reads: the kernel buffers fill, then our queue does.
        while server.conn.send(chunk.clone(), &server.log).is_queued() {
            sent += chunk.len();
            server.turn(Duration::ZERO);
            let (bytes, _) = server.conn.queued();
            assert!(bytes <= limits.max_queued_bytes);
            assert!(sent < 256 << 20, "never hit the cap");
        }
        assert!(!server.conn.is_open());
        assert_eq!(server.conn.queued(), (0, 0), "the queue is dropped");
        let why = server.conn.close_reason().unwrap().clone();
        assert_eq!(why.code, 1008);
        assert!(why.reason.contains("slow consumer"));
        // It never answers: the grace period ends it.
        let t0 = Instant::now();
        server.until("the grace period", |s| s.closed);
        assert!(t0.elapsed() <= CLOSE_GRACE + Duration::from_secs(1));
        drop(raw);
    }

    #[test]
    fn message_count_cap_applies_too() {
        let limits = WsLimits {
            max_queued_messages: 3,
            ..LIMITS
        };
        let (server, _client) = pair(limits);
        let (mut conn, log) = (server.conn, server.log);
        // Without a drive nothing is written: the fourth waits behind three.
        assert!(conn.send("1".into(), &log).is_queued());
        assert!(conn.send("2".into(), &log).is_queued());
        assert!(conn.send("3".into(), &log).is_queued());
        assert_eq!(conn.send("4".into(), &log), Sent::SlowConsumer);
        assert_eq!(conn.send("5".into(), &log), Sent::Dropped);
        assert_eq!(conn.close_reason().map(|r| r.code), Some(1008));
    }

    #[test]
    fn reason_truncation_keeps_utf8() {
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
