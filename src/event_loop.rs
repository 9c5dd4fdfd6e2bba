//! The one mio event loop: it owns every socket and all live state, and never blocks.
//!
//! Each iteration: poll → dispatch readiness by token → drain worker completions (woken
//! through `mio::Waker`) → deliver answers to parked connections → expire deadlines.
//! Sockets are registered once for read and write, edge-triggered; connections read and
//! write until `WouldBlock` and remember a readable edge they have not drained yet.

use crate::agent::pool::AgentPool;
use crate::agent::{prompt, AgentReply};
use crate::app::App;
use crate::calls::ReplyTo;
use crate::codec::http::{Limits, Request, Response};
use crate::config::Config;
use crate::conn::http::{Drive, Expiry, HttpConn, HttpHandler};
use crate::conn::{ConnId, Slab};
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    Line,
}

struct Listener {
    sock: TcpListener,
    addr: SocketAddr,
    kind: ListenerKind,
}

enum Conn {
    Http(HttpConn),
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
    app: App,
    waker: Arc<Waker>,
    replies: Receiver<AgentReply>,
    stop: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    limits: Limits,
    last_sweep: Instant,
    drain_until: Option<Instant>,
}

/// Bind a listening socket with socket2: address reuse and a real backlog.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// The `HttpHandler` view of the app, for one connection's drive.
struct Routes<'a>(&'a mut App);

impl HttpHandler for Routes<'_> {
    fn handle(&mut self, id: ConnId, req: Request) -> crate::conn::http::Handled {
        crate::api::handle(self.0, id, req)
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
    /// Bind every listener of `cfg` and start the agent workers.
    pub fn new(cfg: Config) -> Result<Bridge, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| format!("waker: {e}"))?);
        let mut listeners = Vec::new();
        let kinds = cfg
            .http
            .listen
            .iter()
            .map(|a| (*a, ListenerKind::Http))
            .chain(cfg.line.listen.iter().map(|a| (*a, ListenerKind::Line)));
        for (addr, kind) in kinds {
            let mut sock =
                bind(addr).map_err(|e| format!("cannot listen on {addr} ({kind:?}): {e}"))?;
            let token = Token(LISTENER_BASE + listeners.len());
            poll.registry()
                .register(&mut sock, token, Interest::READABLE)
                .map_err(|e| format!("register {addr}: {e}"))?;
            let addr = sock.local_addr().unwrap_or(addr);
            listeners.push(Listener { sock, addr, kind });
        }
        let limits = Limits {
            head_max: cfg.http.header_max_bytes,
            body_max: cfg.http.body_max_bytes,
        };
        let persona = prompt::load_persona(&cfg.agent.persona_file)?;
        let (tx, replies) = crossbeam_channel::unbounded();
        // The builtin persona answers inline on the loop; only backends that do I/O get
        // worker threads.
        let pool = if cfg.agent.backend == "builtin" {
            None
        } else {
            let w = waker.clone();
            let wake = Arc::new(move || {
                let _ = w.wake();
            });
            Some(AgentPool::start(&cfg.agent, persona, tx, wake)?)
        };
        let mut app = App::new(cfg)?;
        if let Some(pool) = pool {
            app.attach_pool(pool);
        }
        Ok(Bridge {
            poll,
            listeners,
            conns: Slab::default(),
            app,
            waker,
            replies,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            limits,
            last_sweep: Instant::now(),
            drain_until: None,
        })
    }

    /// Stop gracefully on SIGINT and SIGTERM (the binary does this; tests use a handle).
    pub fn handle_signals(&mut self) -> Result<(), String> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        self.signals = Some(signals);
        Ok(())
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Bound addresses of one kind (with the real port where the config said `:0`).
    pub fn addrs(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.addr)
            .collect()
    }

    /// Serve until stopped; then finish in-flight work (at most [`DRAIN_MAX`]) and return.
    pub fn run(mut self) -> Result<(), String> {
        for l in &self.listeners {
            log::info!(
                "listening on {} ({})",
                l.addr,
                match l.kind {
                    ListenerKind::Http => "http, websocket",
                    ListenerKind::Line => "line protocol",
                }
            );
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
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
                                let Some(Conn::Http(c)) = self.conns.get_mut(id) else {
                                    continue;
                                };
                                c.mark_readable();
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
        let sweep = SWEEP_EVERY.saturating_sub(self.last_sweep.elapsed());
        match self.app.calls.next_deadline() {
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
            let (mut stream, peer) = match self.listeners[li].sock.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on {} failed: {e}", self.listeners[li].addr);
                    return;
                }
            };
            if self.conns.len() >= self.app.cfg.http.max_connections || kind == ListenerKind::Line {
                // Line links arrive with the game-links work; until then refuse cleanly.
                if kind == ListenerKind::Line {
                    use std::io::Write;
                    let _ = stream.write_all(
                        b"{\"type\":\"error\",\"code\":\"unsupported\",\"error\":\"this bridge does not speak the line protocol yet\"}\n",
                    );
                } else {
                    self.app.metrics.connections_rejected += 1;
                    log::debug!("connection from {peer} refused: max_connections reached");
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.conns.next_id();
            let token = Token(CONN_BASE + id.idx as usize);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("register connection from {peer}: {e}");
                continue;
            }
            self.conns
                .insert(Conn::Http(HttpConn::new(stream, peer, Instant::now())));
            self.app.metrics.connections_accepted += 1;
            self.app.connections_open = self.conns.len();
            log::trace!("conn={} peer={peer} accepted", id.idx);
        }
    }

    fn drive(&mut self, id: ConnId) {
        let now = Instant::now();
        let outcome = match self.conns.get_mut(id) {
            Some(Conn::Http(c)) => c.drive(id, &mut Routes(&mut self.app), &self.limits, now),
            None => return,
        };
        if outcome == Drive::Close {
            self.close(id);
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(Conn::Http(mut c)) = self.conns.remove(id) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            log::trace!("conn={} peer={} closed", id.idx, c.peer);
            self.app.metrics.connections_closed += 1;
            self.app.connections_open = self.conns.len();
        }
    }

    fn drain_replies(&mut self) {
        let now = Instant::now();
        while let Ok(reply) = self.replies.try_recv() {
            self.app.on_reply(reply, now);
        }
    }

    /// Send every ready answer to the connection that waits for it (if still there).
    fn deliver_ready(&mut self) {
        while !self.app.ready.is_empty() {
            let batch = std::mem::take(&mut self.app.ready);
            let now = Instant::now();
            for (to, resp) in batch {
                let ReplyTo::Http(id) = to;
                let status = resp.status;
                let keep = !self.app.shutting_down;
                let delivered = match self.conns.get_mut(id) {
                    Some(Conn::Http(c)) => c.deliver(resp, keep, now),
                    None => None,
                };
                match delivered {
                    Some(d) => {
                        self.app.metrics.count_request(d.route, status);
                        self.app.metrics.request_latency.observe(d.waited);
                        self.drive(id);
                    }
                    None => log::debug!(
                        "answer for a connection that has gone away; dropped on the wire"
                    ),
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.app.tick(now, crate::time::now_ms());
        self.deliver_ready();
        let head = Duration::from_secs(self.app.cfg.http.header_timeout_s);
        let idle = Duration::from_secs(self.app.cfg.http.keepalive_idle_s);
        for id in self.conns.ids() {
            let expiry = match self.conns.get_mut(id) {
                Some(Conn::Http(c)) => {
                    let e = c.expired(now, head, idle);
                    if e == Some(Expiry::Header) {
                        c.time_out();
                    }
                    e
                }
                None => None,
            };
            match expiry {
                Some(Expiry::Header) => self.drive(id),
                Some(Expiry::Idle) => self.close(id),
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

    /// While stopping: close every connection with nothing in progress.
    fn close_idle(&mut self) {
        let now = Instant::now();
        let far = Duration::from_secs(u64::MAX / 4);
        for id in self.conns.ids() {
            let idle = matches!(self.conns.get_mut(id), Some(Conn::Http(c)) if !c.is_parked() && c.expired(now, far, Duration::ZERO).is_some());
            if idle {
                self.close(id);
            }
        }
    }

    /// After the loop: answer what still waits, stop the workers.
    fn finish(&mut self) {
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
            self.close(id);
        }
        if let Some(pool) = self.app.pool.take() {
            pool.shutdown(Duration::from_secs(2));
        }
        log::info!("stopped");
    }
}
