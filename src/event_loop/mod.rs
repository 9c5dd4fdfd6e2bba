//! The one mio event loop: it owns every socket and all live state, and never blocks.
//!
//! Each iteration: poll → dispatch readiness by token → drain worker completions (woken
//! through `mio::Waker`) → deliver answers to parked connections → expire deadlines.
//! Sockets are registered once for read and write, edge-triggered; connections read and
//! write until `WouldBlock` and remember a readable edge they have not drained yet.

use crate::agent::pool::AgentPool;
use crate::agent::{prompt, AgentReply};
use crate::app::calls::ReplyTo;
use crate::app::outbox::WsOut;
use crate::app::outcome::Reply;
use crate::app::stream::Part;
use crate::app::{Answer, App};
use crate::codec::http::{Limits, Request, Response};
use crate::config::Config;
use crate::conn::fanout::{FanoutLog, WriteQueue};
use crate::conn::http::{Expiry, HttpConn, HttpHandler};
use crate::conn::line::{Heartbeat, LineConn, LineLimits};
use crate::conn::ws::{Inbound, Sent, Shared, WsConn, WsLimits};
use crate::conn::{ConnId, Slab};
use crate::conn::{Drive, Feed};
use crate::doors::game::{LoopRequest, Target, Worlds};
use crate::doors::http::{HeldHttp, Shape, Shapes};
use crate::doors::line::{reply_line, request_line, LineRoutes};
use crate::feeds::workshop::inbox::{Inbox, Written};
use crate::feeds::workshop::watcher::{StateUpdate, StateWatcher};
use crate::store::Store;
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod start;
mod ws_write;
pub use start::ListenerKind;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const LISTENER_BASE: usize = 16;
const CONN_BASE: usize = 1 << 20;
/// How often deadlines are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Longest a graceful stop waits for in-flight work.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Listen backlog.
const BACKLOG: i32 = 1024;
/// WebSocket connections written per loop iteration. On loopback one write costs a few
/// microseconds, so a slice is about a millisecond: the longest input waits behind a
/// fan-out to thousands.
const WS_WRITE_SLICE: usize = 256;
/// Close code and reason WebSocket clients get when the bridge stops.
const CLOSE_STOPPING: (u16, &str) = (1001, "the bridge is stopping");

struct Listener {
    sock: TcpListener,
    addr: SocketAddr,
    kind: ListenerKind,
}

enum Conn {
    Http(HttpConn),
    Line(LineConn),
    /// An HTTP connection after an accepted upgrade: the socket and the bytes read past
    /// the request head moved in.
    Ws(Box<WsSession>),
}

/// The kinds of connection that each have their own cap (`http.max_connections`,
/// `line.max_connections`, `websocket.max_connections`), so a crowd of one kind cannot
/// lock out the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Http = 0,
    Line = 1,
    Ws = 2,
}

/// Open connections of each [`Surface`].
#[derive(Debug, Default)]
struct OpenCounts([usize; 3]);

impl OpenCounts {
    fn get(&self, s: Surface) -> usize {
        self.0[s as usize]
    }
    fn add(&mut self, s: Surface) {
        self.0[s as usize] += 1;
    }
    fn remove(&mut self, s: Surface) {
        self.0[s as usize] = self.0[s as usize].saturating_sub(1);
    }
}

struct WsSession {
    conn: WsConn,
    feed: Feed,
}

impl Conn {
    fn surface(&self) -> Surface {
        match self {
            Conn::Http(_) => Surface::Http,
            Conn::Line(_) => Surface::Line,
            Conn::Ws(_) => Surface::Ws,
        }
    }

    fn mark_readable(&mut self) {
        match self {
            Conn::Http(c) => c.mark_readable(),
            Conn::Line(c) => c.mark_readable(),
            Conn::Ws(s) => s.conn.mark_readable(),
        }
    }

    fn sock(&mut self) -> &mut TcpStream {
        match self {
            Conn::Http(c) => &mut c.sock,
            Conn::Line(c) => &mut c.sock,
            Conn::Ws(s) => &mut s.conn.sock,
        }
    }

    fn peer(&self) -> SocketAddr {
        match self {
            Conn::Http(c) => c.peer,
            Conn::Line(c) => c.peer,
            Conn::Ws(s) => s.conn.peer,
        }
    }
}

/// The WebSocket session at `id`, if that is what it is.
fn ws_session(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut WsSession> {
    match conns.get_mut(id) {
        Some(Conn::Ws(s)) => Some(s),
        _ => None,
    }
}

/// Stops a running [`Bridge`] from another thread (tests, embedding).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// One bridge: listeners bound, workers started, ready to [`run`](Bridge::run).
pub struct Bridge {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    /// Open connections per surface, for the per-surface caps.
    open: OpenCounts,
    app: App,
    waker: Arc<Waker>,
    replies: Receiver<AgentReply>,
    /// Calls from [`LinkWorld`] handles on other threads.
    requests: Receiver<LoopRequest>,
    requests_tx: Sender<LoopRequest>,
    stop: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    limits: Limits,
    line_limits: LineLimits,
    ws_limits: WsLimits,
    /// WebSocket connections with something to write (frames, log frames, a close), in
    /// the order they were first given it; written [`WS_WRITE_SLICE`] per iteration.
    ws_write: WriteQueue,
    /// The gateway's broadcasts, kept once for all its members.
    fanout: FanoutLog,
    /// The connections that joined `fanout` (registered gateway clients).
    ws_members: Vec<ConnId>,
    /// WebSocket connections whose read budget ran out with input still waiting.
    ws_again: Vec<ConnId>,
    /// The Workshop state file watcher's reports.
    workshop_rx: Receiver<StateUpdate>,
    /// What became of visitor messages handed to the inbox writer.
    inbox_rx: Receiver<Written>,
    watcher: Option<StateWatcher>,
    last_sweep: Instant,
    drain_until: Option<Instant>,
    /// HTTP answers the door rendered, waiting for their store batch.
    held_http: HeldHttp,
    /// How parked HTTP answers are shown when not as plain JSON (event streams).
    shapes: Shapes,
}

/// A connection accepted past its surface's cap: what was already sent is read and
/// dropped (so closing does not reset the answer away), the answer is written once (a
/// fresh socket's buffer takes it whole), and the socket is closed. HTTP gets `503` with
/// `Retry-After` and the usual JSON error; a line link gets an `error` line.
fn refuse_over_cap(mut stream: TcpStream, kind: ListenerKind, key: &str, cap: usize) {
    use std::io::{Read, Write};
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let message = format!(
        "the bridge has {cap} {} connections open ({key}.max_connections); try again shortly",
        if kind == ListenerKind::Http {
            "HTTP"
        } else {
            "line"
        }
    );
    let mut out = Vec::new();
    match kind {
        ListenerKind::Http => {
            let resp = crate::codec::http::Response::error(503, "too_many_connections", &message)
                .with_header("Retry-After", "1");
            crate::codec::http::encode(&resp, false, false, &mut out);
        }
        ListenerKind::Line => {
            let line = serde_json::json!({"type": "error", "code": "too_many_connections", "error": message});
            out = format!("{line}\n").into_bytes();
        }
    }
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// The `HttpHandler` view of the app, for one connection's drive (and its peer's address).
struct Routes<'a>(
    &'a mut App,
    &'a mut HeldHttp,
    &'a mut Shapes,
    std::net::IpAddr,
);

impl HttpHandler for Routes<'_> {
    fn handle(&mut self, id: ConnId, req: Request) -> crate::conn::http::Handled {
        crate::doors::http::handle(self.0, self.1, self.2, id, self.3, req)
    }

    fn rejected(&mut self, err: &crate::codec::http::HttpError) {
        log::debug!("bad request: {} {}", err.status, err.message);
        self.0.metrics.count_request("bad_request", err.status);
    }

    fn keep_alive_allowed(&self) -> bool {
        !self.0.shutting_down
    }
}

impl Bridge {
    /// Serve until stopped; then finish in-flight work (at most [`DRAIN_MAX`]) and return.
    pub fn run(mut self) -> Result<(), io::Error> {
        for l in &self.listeners {
            log::info!("listening on {} ({})", l.addr, l.kind.serves());
        }
        let mut events = Events::with_capacity(1024);
        loop {
            // Whatever this iteration changed goes to the store before we sleep.
            self.app.flush_store();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io::Error::new(e.kind(), format!("poll failed: {e}")));
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    Token(t) if (LISTENER_BASE..CONN_BASE).contains(&t) => {
                        self.accept(t - LISTENER_BASE)
                    }
                    Token(t) => {
                        if let Some(id) = self.conns.id_at(t - CONN_BASE) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                if let Some(c) = self.conns.get_mut(id) {
                                    c.mark_readable();
                                }
                            }
                            self.drive(id);
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) && !self.app.shutting_down {
                self.begin_shutdown();
            }
            self.drain_replies();
            self.drain_peers();
            self.drain_requests();
            self.drain_workshop();
            self.drain_inbox();
            self.drive_again();
            self.drain_store();
            self.deliver_ready();
            let now = Instant::now();
            if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
                self.last_sweep = now;
                self.sweep(now);
            }
            if let Some(until) = self.drain_until {
                if self.conns.is_empty() || now >= until {
                    break;
                }
            }
        }
        self.finish();
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        if !self.ws_again.is_empty() || !self.ws_write.is_empty() || !self.app.out.frames.is_empty()
        {
            // Input is waiting that no new edge will announce, or a fan-out is half
            // written.
            return Duration::ZERO;
        }
        let sweep = SWEEP_EVERY.saturating_sub(self.last_sweep.elapsed());
        let next = [
            self.app.next_call_deadline(),
            self.app.links.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(d) => sweep.min(d.saturating_duration_since(Instant::now())),
            None => sweep,
        }
    }

    fn on_signals(&mut self) {
        let mut got = false;
        if let Some(s) = &mut self.signals {
            for sig in s.pending() {
                log::info!("signal {sig} received: stopping");
                got = true;
            }
        }
        if got {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn accept(&mut self, li: usize) {
        let Some(l) = self.listeners.get(li) else {
            return;
        };
        let kind = l.kind;
        loop {
            let (stream, peer) = match self.listeners[li].sock.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on {} failed: {e}", self.listeners[li].addr);
                    return;
                }
            };
            let (surface, cap, key) = match kind {
                ListenerKind::Http => (Surface::Http, self.app.cfg.http.max_connections, "http"),
                ListenerKind::Line => (Surface::Line, self.app.cfg.line.max_connections, "line"),
            };
            if self.open.get(surface) >= cap {
                self.app.metrics.connections_rejected += 1;
                log::warn!("connection from {peer} refused: {key}.max_connections ({cap}) reached");
                refuse_over_cap(stream, kind, key, cap);
                continue;
            }
            let now = Instant::now();
            let conn = match kind {
                ListenerKind::Http => Conn::Http(HttpConn::new(stream, peer, now)),
                ListenerKind::Line => {
                    Conn::Line(LineConn::accepted(stream, peer, &self.line_limits, now))
                }
            };
            if let Some(id) = self.register(conn) {
                if kind == ListenerKind::Line {
                    self.app
                        .links
                        .open(id, peer, None, crate::world::time::now_ms());
                    log::info!("conn={} peer={peer} line link accepted", id.idx);
                }
                self.drive(id);
            }
        }
    }

    /// Register a new connection's socket and put it in the slab.
    fn register(&mut self, mut conn: Conn) -> Option<ConnId> {
        let peer = conn.peer();
        let _ = conn.sock().set_nodelay(true);
        let id = self.conns.next_id();
        let token = Token(CONN_BASE + id.idx as usize);
        if let Err(e) = self.poll.registry().register(
            conn.sock(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("register connection with {peer}: {e}");
            return None;
        }
        self.open.add(conn.surface());
        self.app.ws_connections = self.open.get(Surface::Ws);
        self.conns.insert(conn);
        self.app.metrics.connections_accepted += 1;
        self.app.set_connections_open(self.conns.len());
        log::trace!("conn={} peer={peer} open", id.idx);
        Some(id)
    }

    /// Start a non-blocking connect for dial `d`.
    fn dial(&mut self, d: usize) {
        let addr = self.app.links.dials[d].cfg.addr;
        let now = Instant::now();
        match TcpStream::connect(addr) {
            Ok(stream) => {
                let conn = Conn::Line(LineConn::dialing(stream, addr, d, &self.line_limits, now));
                match self.register(conn) {
                    Some(id) => {
                        self.app
                            .links
                            .open(id, addr, Some(d), crate::world::time::now_ms())
                    }
                    None => self.app.links.dial_failed(
                        d,
                        "could not register the socket",
                        now,
                        crate::world::time::now_ms(),
                    ),
                }
            }
            Err(e) => {
                let why = format!("connect to {addr} failed: {e}");
                log::debug!("dial {}: {why}", self.app.links.dials[d].cfg.world);
                self.app
                    .links
                    .dial_failed(d, &why, now, crate::world::time::now_ms());
            }
        }
    }

    fn drive(&mut self, id: ConnId) {
        let now = Instant::now();
        let outcome = match self.conns.get_mut(id) {
            Some(Conn::Http(c)) => {
                let peer = c.peer.ip();
                Ok(c.drive(
                    id,
                    &mut Routes(&mut self.app, &mut self.held_http, &mut self.shapes, peer),
                    &self.limits,
                    now,
                ))
            }
            Some(Conn::Line(c)) => {
                c.drive(id, &mut LineRoutes(&mut self.app), &self.line_limits, now)
            }
            Some(Conn::Ws(_)) => return self.drive_ws(id),
            None => return,
        };
        // What the requests did reaches the rooms' game links now, so a later event
        // from a link cannot take it for its own.
        self.app.route_events(None);
        match outcome {
            Ok(Drive::Open) => {}
            Ok(Drive::Close) => self.close(id, None),
            Ok(Drive::Upgrade) => self.upgrade(id),
            Err(why) => self.close(id, Some(&why)),
        }
    }

    /// The `101` is out: the HTTP connection becomes a WebSocket connection in place,
    /// its socket and unread bytes moving with it.
    fn upgrade(&mut self, id: ConnId) {
        let feed = match self.conns.get_mut(id) {
            Some(Conn::Http(c)) => c.upgrade_to(),
            _ => None,
        };
        let Some(feed) = feed else {
            return;
        };
        let (limits, now) = (self.ws_limits, Instant::now());
        self.open.remove(Surface::Http);
        self.open.add(Surface::Ws);
        self.app.ws_connections = self.open.get(Surface::Ws);
        self.conns.replace_with(id, |c| match c {
            Conn::Http(h) => {
                let (sock, peer, rx) = h.into_parts();
                Conn::Ws(Box::new(WsSession {
                    conn: WsConn::new(sock, peer, rx.to_vec(), limits, now),
                    feed,
                }))
            }
            other => other,
        });
        let peer = self.conns.get_mut(id).map(|c| c.peer());
        log::info!(
            "conn={} peer={} websocket open: {}",
            id.idx,
            peer.map_or_else(|| "?".into(), |p| p.to_string()),
            feed.name()
        );
        let now_ms = crate::world::time::now_ms();
        match feed {
            Feed::Gateway {
                since,
                bound,
                epoch,
            } => {
                self.app.gateway_open(id, since, bound, now_ms);
                if let Some(e) = epoch {
                    self.app.gateway.resume_epoch(id, e.to_string());
                }
            }
            Feed::Workshop => self.app.workshop_open(id, now_ms),
        }
        self.drive_ws(id);
    }

    /// Read and write one WebSocket connection; what it said goes to its feed.
    fn drive_ws(&mut self, id: ConnId) {
        let now = Instant::now();
        let mut inbound = Inbound::default();
        let (outcome, feed, again) = match self.conns.get_mut(id) {
            Some(Conn::Ws(s)) => {
                let shared = Shared {
                    log: &self.fanout,
                    me: id,
                };
                let d = s.conn.drive(now, &mut inbound, shared);
                (d, s.feed, s.conn.wants_drive())
            }
            _ => return,
        };
        let now_ms = crate::world::time::now_ms();
        if inbound.heard {
            match feed {
                Feed::Gateway { .. } => self.app.gateway_heard(id, now_ms),
                Feed::Workshop => self.app.workshop_heard(id, now_ms),
            }
        }
        for text in &inbound.texts {
            match feed {
                Feed::Gateway { .. } => self.app.gateway_text(id, text, now_ms),
                Feed::Workshop => self.app.workshop_text(id, text.as_str(), now_ms),
            }
        }
        // As for HTTP and line requests: what the frames did (a visitor entering, a
        // gateway say) goes out now, ahead of any reply a worker sends back later.
        if !inbound.texts.is_empty() {
            self.app.route_events(None);
        }
        match outcome {
            Drive::Close => self.close(id, None),
            _ if again => self.ws_again.push(id),
            _ => {}
        }
    }

    /// Connections that still had input when their read budget ran out.
    fn drive_again(&mut self) {
        for id in std::mem::take(&mut self.ws_again) {
            self.drive_ws(id);
        }
    }

    /// The inbox writer's reports.
    fn drain_inbox(&mut self) {
        while let Ok(written) = self.inbox_rx.try_recv() {
            self.app
                .inbox_written(written, crate::world::time::now_ms());
        }
    }

    /// The Workshop state watcher's reports.
    fn drain_workshop(&mut self) {
        while let Ok(update) = self.workshop_rx.try_recv() {
            self.app
                .workshop_state(update, crate::world::time::now_ms());
        }
    }

    fn close(&mut self, id: ConnId, why: Option<&str>) {
        let Some(mut conn) = self.conns.remove(id) else {
            return;
        };
        self.open.remove(conn.surface());
        self.shapes.remove(&id);
        self.app.ws_connections = self.open.get(Surface::Ws);
        let _ = self.poll.registry().deregister(conn.sock());
        if let Conn::Line(c) = &conn {
            log::info!(
                "conn={} peer={} line link closed{}",
                id.idx,
                c.peer,
                why.map(|w| format!(": {w}")).unwrap_or_default()
            );
            self.app.link_closed(id, why, Instant::now());
        } else if let Conn::Ws(s) = &conn {
            if let Some(at) = self.ws_members.iter().position(|m| *m == id) {
                self.ws_members.swap_remove(at);
            }
            let reason = match s.conn.close_reason() {
                Some(r) => format!(
                    "{} by {}{}",
                    r.code,
                    if r.by_peer { "the peer" } else { "us" },
                    if r.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.reason)
                    }
                ),
                None => why.unwrap_or("dropped").to_string(),
            };
            log::info!(
                "conn={} peer={} websocket closed ({}): {reason}; {} in, {} out",
                id.idx,
                s.conn.peer,
                s.feed.name(),
                s.conn.messages_in,
                s.conn.messages_out
            );
            let now_ms = crate::world::time::now_ms();
            match s.feed {
                Feed::Gateway { .. } => self.app.gateway_closed(id, now_ms),
                Feed::Workshop => self.app.workshop_closed(id, now_ms),
            }
        } else {
            log::trace!("conn={} peer={} closed", id.idx, conn.peer());
        }
        self.app.metrics.connections_closed += 1;
        self.app.set_connections_open(self.conns.len());
    }

    /// The store's reports: durable answers go out, failed ones become 503s. Then this
    /// iteration's changes go to the store as one batch.
    fn drain_store(&mut self) {
        let news: Vec<_> = match &self.app.cluster {
            Some(c) => c.store.news.try_iter().collect(),
            None => Vec::new(),
        };
        for n in news {
            self.app.on_cluster(n);
        }
        let events: Vec<_> = match &self.app.store {
            Some(s) => s.events.try_iter().collect(),
            None => return,
        };
        for ev in events {
            self.app.on_store(ev);
        }
        self.app.flush_store();
    }

    /// Calls from `LinkWorld` handles: the same paths as the HTTP routes, answered on
    /// the caller's channel.
    fn drain_requests(&mut self) {
        while let Ok(req) = self.requests.try_recv() {
            let (answer, reply) = match req {
                LoopRequest::Act {
                    world,
                    player,
                    cmd,
                    reply,
                } => {
                    let to = ReplyTo::Channel(reply.clone());
                    (self.app.act(&world, player.as_deref(), &cmd, to), reply)
                }
                LoopRequest::Observe {
                    world,
                    player,
                    reply,
                } => {
                    let to = ReplyTo::Channel(reply.clone());
                    (self.app.observe(&world, player.as_deref(), true, to), reply)
                }
                LoopRequest::Speak {
                    world,
                    target,
                    text,
                    reply,
                } => {
                    let (room, user) = match &target {
                        Target::Everyone => (None, None),
                        Target::Room(r) => (Some(r.as_str()), None),
                        Target::Player(p) => (None, Some(p.as_str())),
                    };
                    let to = ReplyTo::Channel(reply.clone());
                    let answer = self.app.speak_anywhere(Some(&world), room, user, &text, to);
                    (answer, reply)
                }
            };
            if let Answer::Now(now) = answer {
                let _ = reply.send(now);
            }
        }
    }

    /// Write the lines queued for links (relayed events, requests to games). A link that
    /// cannot take them is not reading: it is dropped as a slow consumer.
    fn flush_line_out(&mut self) {
        self.app.route_events(None);
        let batch = std::mem::take(&mut self.app.out.lines);
        let mut touched = Vec::new();
        for (id, bytes) in batch {
            let ok = match self.conns.get_mut(id) {
                Some(Conn::Line(c)) => c.queue(&bytes, &self.line_limits),
                _ => continue,
            };
            if ok {
                touched.push(id);
            } else {
                self.app.metrics.line_slow_consumers += 1;
                log::warn!(
                    "conn={} line link dropped: it stopped reading ({} bytes waiting, line.max_queued_bytes)",
                    id.idx,
                    self.line_limits.max_queued
                );
                self.close(id, Some("slow consumer: it stopped reading"));
            }
        }
        touched.dedup();
        for id in touched {
            self.drive(id);
        }
    }

    /// The peers' threads finished syncs: merge what they brought.
    fn drain_peers(&mut self) {
        let outcomes: Vec<_> = match self.app.fed.as_ref().and_then(|f| f.sync.as_ref()) {
            Some(s) => s.outcomes.try_iter().collect(),
            None => return,
        };
        let travels: Vec<_> = match self.app.fed.as_ref().and_then(|f| f.sync.as_ref()) {
            Some(s) => s.travels.try_iter().collect(),
            None => Vec::new(),
        };
        let now_ms = crate::world::time::now_ms();
        for o in outcomes {
            self.app.on_peer_outcome(o, now_ms);
        }
        for t in travels {
            self.app.on_travel_outcome(t, now_ms);
        }
    }

    fn drain_replies(&mut self) {
        let now = Instant::now();
        while let Ok(reply) = self.replies.try_recv() {
            self.app.on_reply(reply, now);
        }
    }

    /// Send every ready answer to the connection that waits for it (if still there),
    /// then the lines queued for links.
    fn deliver_ready(&mut self) {
        // Delivering can make more work (a pipelined request behind a parked one); a
        // bound keeps one iteration from running away.
        for _ in 0..64 {
            self.deliver_answers();
            self.flush_line_out();
            self.queue_ws_out();
            if self.app.out.is_empty() {
                break;
            }
        }
        self.write_ws_slice();
    }

    fn deliver_answers(&mut self) {
        while !self.app.out.answers.is_empty()
            || !self.app.out.released.is_empty()
            || !self.app.out.parts.is_empty()
        {
            let now = Instant::now();
            // A reply's parts go before its final answer.
            for (to, part) in std::mem::take(&mut self.app.out.parts) {
                self.deliver_part(to, part, now);
            }
            for (id, failed) in std::mem::take(&mut self.app.out.released) {
                let held = self.held_http.remove(&id);
                let resp = match (failed, held) {
                    (Err(refusal), _) => Response::from(refusal),
                    (Ok(fix), Some(mut resp)) => {
                        crate::app::cluster::renumber(&mut resp.body, &fix);
                        resp
                    }
                    (Ok(_), None) => continue,
                };
                self.deliver_http(id, resp, now);
            }
            let batch = std::mem::take(&mut self.app.out.answers);
            for (to, reply) in batch {
                let id = match to {
                    ReplyTo::Http(id) => id,
                    ReplyTo::Line { conn, id, user_id } => {
                        let mut line = Vec::new();
                        reply_line(&id, &user_id, &reply, &mut line);
                        self.app.out.lines.push((conn, line));
                        continue;
                    }
                    ReplyTo::LineRequest { conn, id } => {
                        let mut line = Vec::new();
                        request_line(id.as_ref(), &reply, &mut line);
                        self.app.out.lines.push((conn, line));
                        continue;
                    }
                    ReplyTo::Channel(tx) => {
                        let _ = tx.send(reply);
                        continue;
                    }
                    ReplyTo::Bark {
                        room,
                        workshop,
                        reply_id,
                    } => {
                        self.app.bark_reply(&room, workshop, reply_id, reply);
                        continue;
                    }
                    ReplyTo::Remote { node, id } => {
                        self.app.reply_to_node(&node, id, reply);
                        continue;
                    }
                };
                if let Some(shape) = self.shapes.remove(&id) {
                    self.end_stream(id, &shape, reply, now);
                    continue;
                }
                self.deliver_http(id, crate::doors::http::render(reply), now);
            }
        }
    }

    /// A part of a streamed reply, to where the request waits.
    fn deliver_part(&mut self, to: ReplyTo, part: Part, now: Instant) {
        match to {
            ReplyTo::Http(id) => {
                let Some(shape) = self.shapes.get(&id) else {
                    return;
                };
                let bytes = crate::doors::http::render_part(shape, &part);
                if let Some(Conn::Http(c)) = self.conns.get_mut(id) {
                    if c.stream_send(&bytes, now) {
                        self.drive(id);
                    }
                }
            }
            ReplyTo::Line { conn, id, .. } => {
                let mut line = Vec::new();
                crate::doors::line::part_line(&id, &part, &mut line);
                self.app.out.lines.push((conn, line));
            }
            ReplyTo::Bark {
                room,
                workshop,
                reply_id: Some(reply_id),
            } => self.app.bark_part(&room, workshop, reply_id, &part),
            ReplyTo::Remote { node, id } => self.app.part_to_node(&node, id, part),
            ReplyTo::LineRequest { .. } | ReplyTo::Channel(_) | ReplyTo::Bark { .. } => {}
        }
    }

    /// The final answer of a streamed HTTP request: its last event, then the end of the
    /// body. A request whose stream never began (a refusal before the first byte) gets
    /// its plain answer.
    fn end_stream(&mut self, id: ConnId, shape: &Shape, reply: Reply, now: Instant) {
        let keep = !self.app.shutting_down;
        // A refusal before the first part keeps its status; anything else ends the stream
        // (an answer with no part at all opens and closes it).
        let delivered = match self.conns.get_mut(id) {
            Some(Conn::Http(c)) if c.is_streaming() || (c.may_stream() && reply.is_ok()) => {
                c.stream_end(&crate::doors::http::render_end(shape, reply), keep, now)
            }
            Some(Conn::Http(_)) => {
                let resp = crate::doors::http::render_plain(shape, reply);
                return self.deliver_http(id, resp, now);
            }
            _ => None,
        };
        if let Some(d) = delivered {
            self.app.metrics.count_request(d.route, 200);
            self.app.metrics.request_latency.observe(d.waited);
            self.drive(id);
        }
    }

    /// Write an answer to the HTTP connection parked for it, if it is still there.
    fn deliver_http(&mut self, id: ConnId, resp: Response, now: Instant) {
        let status = resp.status;
        let keep = !self.app.shutting_down;
        let delivered = match self.conns.get_mut(id) {
            Some(Conn::Http(c)) => c.deliver(resp, keep, now),
            _ => None,
        };
        match delivered {
            Some(d) => {
                self.app.metrics.count_request(d.route, status);
                self.app.metrics.request_latency.observe(d.waited);
                self.drive(id);
            }
            None => {
                log::debug!("answer for a connection that has gone away; dropped on the wire")
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.app.tick(now, crate::world::time::now_ms());
        self.app.ws_tick(crate::world::time::now_ms());
        self.deliver_ready();
        if !self.app.shutting_down {
            for d in self.app.links.dials_due(now) {
                self.dial(d);
            }
        }
        let head = Duration::from_secs(self.app.cfg.http.header_timeout_s);
        let idle = Duration::from_secs(self.app.cfg.http.keepalive_idle_s);
        let beat = Duration::from_secs(self.app.cfg.line.heartbeat_s);
        let ping = Duration::from_secs(self.app.cfg.http.sse_ping_s);
        for id in self.conns.ids() {
            match self.conns.get_mut(id) {
                Some(Conn::Http(c)) => {
                    if c.ping_due(now, ping) {
                        c.stream_send(crate::doors::http::SSE_PING, now);
                        self.drive(id);
                        continue;
                    }
                    let e = c.expired(now, head, idle);
                    if e == Some(Expiry::Header) {
                        c.time_out();
                    }
                    match e {
                        Some(Expiry::Header) => self.drive(id),
                        Some(Expiry::Idle) => self.close(id, None),
                        None => {}
                    }
                }
                // A close handshake that did not finish within its grace period.
                Some(Conn::Ws(s)) if s.conn.expired(now) => {
                    self.close(id, Some("the close handshake timed out"));
                }
                Some(Conn::Ws(_)) => {}
                Some(Conn::Line(c)) => match c.heartbeat(now, beat) {
                    Heartbeat::Fine => {}
                    Heartbeat::Ping => {
                        c.ping_sent = Some(now);
                        let ping = b"{\"type\":\"ping\"}\n";
                        if c.queue(ping, &self.line_limits) {
                            self.drive(id);
                        }
                    }
                    Heartbeat::Dead => {
                        let why = if c.is_connecting() {
                            "connect timed out"
                        } else {
                            "silent: no answer to ping"
                        };
                        self.close(id, Some(why));
                    }
                },
                None => {}
            }
        }
        if self.app.shutting_down {
            self.close_idle();
        }
    }

    fn begin_shutdown(&mut self) {
        log::info!("stopping: no new connections; finishing in-flight work");
        self.app.shutting_down = true;
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
        self.listeners.clear();
        self.drain_until =
            Some(Instant::now() + DRAIN_MAX.min(self.app.agent_timeout() + Duration::from_secs(1)));
        self.close_idle();
    }

    /// While stopping: close every connection with nothing in progress (game links are
    /// told why first).
    fn close_idle(&mut self) {
        let now = Instant::now();
        let far = Duration::from_secs(u64::MAX / 4);
        for id in self.conns.ids() {
            let idle = match self.conns.get_mut(id) {
                Some(Conn::Http(c)) => {
                    !c.is_parked() && c.expired(now, far, Duration::ZERO).is_some()
                }
                Some(Conn::Line(c)) => {
                    let bye = b"{\"type\":\"error\",\"code\":\"shutting_down\",\"error\":\"the bridge is stopping\"}\n";
                    let _ = c.queue(bye, &self.line_limits);
                    c.close_after_flush();
                    false
                }
                Some(Conn::Ws(s)) => {
                    s.conn.close(CLOSE_STOPPING.0, CLOSE_STOPPING.1);
                    false
                }
                None => false,
            };
            if idle {
                self.close(id, None);
            } else {
                self.drive(id);
            }
        }
    }

    /// After the loop: answer what still waits, stop the workers.
    fn finish(&mut self) {
        // Let the store make the last changes durable, and send what waited for them.
        self.app.flush_store();
        if let Some(events) = self.app.store.as_ref().map(|s| s.events.clone()) {
            let until = Instant::now() + Duration::from_secs(5);
            while self.app.has_held() && Instant::now() < until {
                if let Ok(ev) = events.recv_timeout(Duration::from_millis(100)) {
                    self.app.on_store(ev);
                    self.deliver_ready();
                }
            }
        }
        // The same for the cluster's log: held answers go out once applied.
        if let Some(news) = self.app.cluster.as_ref().map(|c| c.store.news.clone()) {
            let until = Instant::now() + Duration::from_secs(5);
            while self.app.has_held() && Instant::now() < until {
                if let Ok(n) = news.recv_timeout(Duration::from_millis(100)) {
                    self.app.on_cluster(n);
                    self.deliver_ready();
                }
            }
        }
        let waiting: Vec<ConnId> = self.conns.ids();
        for id in waiting {
            if let Some(Conn::Http(c)) = self.conns.get_mut(id) {
                let resp = Response::error(
                    503,
                    "shutting_down",
                    "the bridge is stopping; try again shortly",
                );
                if c.deliver(resp, false, Instant::now()).is_some() {
                    self.drive(id);
                }
            }
            self.close(id, Some("the bridge is stopping"));
        }
        if let Some(pool) = self.app.take_pool() {
            pool.shutdown(Duration::from_secs(2));
        }
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        // Visitor messages already taken are written before the process goes.
        if let Some(inbox) = self.app.take_inbox() {
            inbox.finish();
        }
        self.app.flush_store();
        if let Some(mut store) = self.app.store.take() {
            store.close();
        }
        if let Some(mut c) = self.app.cluster.take() {
            c.store.close();
        }
        log::info!("stopped");
    }
}
