//! Start-up: read the config into listeners, workers, the store and the app, and log
//! what the bridge serves. [`Bridge::new`] does it all before the first poll.

use super::*;
use crate::app::AppError;
use crate::store::StoreError;

/// Why a bridge could not start. Each says what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the event loop: {0}")]
    Poll(io::Error),
    #[error("waker: {0}")]
    Waker(io::Error),
    #[error("cannot listen on {addr} ({serves}): {source}")]
    Listen {
        addr: SocketAddr,
        serves: &'static str,
        source: io::Error,
    },
    #[error("register {addr}: {source}")]
    Register { addr: SocketAddr, source: io::Error },
    /// The persona file, or the agent's worker threads.
    #[error("{0}")]
    Agent(String),
    #[error("cannot start the workshop state watcher: {0}")]
    Watcher(io::Error),
    #[error("cannot start the workshop inbox writer: {0}")]
    Inbox(io::Error),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Cluster(crate::store::cluster::ClusterError),
    #[error("cannot watch signals: {0}")]
    Signals(io::Error),
    /// The peers' sync threads.
    #[error("{0}")]
    PeerSync(String),
}

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Http,
    Line,
}

impl ListenerKind {
    /// What a listener of this kind serves, in words.
    pub(super) fn serves(self) -> &'static str {
        match self {
            ListenerKind::Http => "http, websocket",
            ListenerKind::Line => "line protocol",
        }
    }
}

/// Whether a failed bind of `addr` means this machine has no IPv6 (then a listener
/// whose name also resolved to an IPv4 address goes on without it).
fn ipv6_missing(addr: SocketAddr, e: &io::Error) -> bool {
    // EAFNOSUPPORT: the kernel has no IPv6 at all.
    addr.is_ipv6() && (e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97))
}

/// One INFO line for each file, directory and peer this bridge will use.
fn log_setup(cfg: &Config) {
    use crate::config::expand_home;
    let or_none = |s: &str, none: &str| match s.is_empty() {
        true => none.to_string(),
        false => expand_home(s),
    };
    log::info!("world: {}", cfg.world);
    log::info!(
        "world file: {}",
        or_none(
            &cfg.rooms.world_file,
            "the built-in world (rooms.world_file is empty)"
        )
    );
    log::info!(
        "workshop state file: {}",
        or_none(
            &cfg.workshop.state_file,
            "none (workshop.state_file is empty)"
        )
    );
    log::info!("workshop inbox: {}", expand_home(&cfg.workshop.inbox_dir));
    let peers: Vec<String> = cfg
        .federation
        .peers
        .iter()
        .map(|p| format!("{} at {}", p.world, p.url))
        .collect();
    log::info!(
        "federation peers: {}",
        match peers.is_empty() {
            true => "none (no [[federation.peers]])".to_string(),
            false => peers.join(", "),
        }
    );
    let dials: Vec<String> = cfg
        .line
        .dial
        .iter()
        .map(|d| format!("{} ({}) at {}", d.world, d.kind, d.addr))
        .collect();
    log::info!(
        "game dials: {}",
        match dials.is_empty() {
            true => "none (no [[line.dial]]; games connect to the line listener)".to_string(),
            false => dials.join(", "),
        }
    );
    log::info!(
        "data directory: {}",
        match (cfg.store.memory, &cfg.cluster) {
            (true, Some(_)) => "none ([cluster]: the world is kept in Redis)".to_string(),
            (false, Some(_)) => format!(
                "{} (its lock only: [cluster] keeps the world in Redis)",
                expand_home(&cfg.store.data_dir)
            ),
            (true, None) => "none (--memory: nothing is written to disk)".to_string(),
            (false, None) => expand_home(&cfg.store.data_dir),
        }
    );
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

impl Bridge {
    /// Bind every listener of `cfg` and start the agent workers.
    pub fn new(cfg: Config) -> Result<Bridge, StartError> {
        log_setup(&cfg);
        let poll = Poll::new().map_err(StartError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(StartError::Waker)?);
        let mut listeners = Vec::new();
        let kinds = cfg
            .http
            .listen
            .iter()
            .map(|a| (*a, ListenerKind::Http))
            .chain(cfg.line.listen.iter().map(|a| (*a, ListenerKind::Line)));
        let kinds: Vec<(SocketAddr, ListenerKind)> = kinds.collect();
        for &(addr, kind) in &kinds {
            let mut sock = match bind(addr) {
                Ok(s) => s,
                // `localhost` resolved to ::1 too, and this machine has no IPv6.
                Err(e)
                    if ipv6_missing(addr, &e)
                        && kinds.iter().any(|(a, k)| *k == kind && a.is_ipv4()) =>
                {
                    log::warn!(
                        "not listening on {addr} ({}): {e}; IPv6 seems unavailable, the other addresses serve",
                        kind.serves()
                    );
                    continue;
                }
                Err(source) => {
                    return Err(StartError::Listen {
                        addr,
                        serves: kind.serves(),
                        source,
                    })
                }
            };
            let token = Token(LISTENER_BASE + listeners.len());
            poll.registry()
                .register(&mut sock, token, Interest::READABLE)
                .map_err(|source| StartError::Register { addr, source })?;
            let addr = sock.local_addr().unwrap_or(addr);
            listeners.push(Listener { sock, addr, kind });
        }
        let limits = Limits {
            head_max: cfg.http.header_max_bytes,
            body_max: cfg.http.body_max_bytes,
        };
        let line_limits = LineLimits {
            max_line: cfg.line.max_line_bytes,
            max_queued: cfg.line.max_queued_bytes,
        };
        let (requests_tx, requests) = crossbeam_channel::unbounded();
        let persona = prompt::load_persona(&cfg.agent.persona_file).map_err(StartError::Agent)?;
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
            Some(AgentPool::start(&cfg.agent, persona, tx, wake).map_err(StartError::Agent)?)
        };
        let ws_limits = WsLimits {
            max_message_bytes: cfg.gateway.max_message_bytes,
            max_queued_bytes: cfg.gateway.max_queued_bytes,
            max_queued_messages: cfg.gateway.max_queued_messages,
        };
        // The Workshop's state file is read on a thread of its own, and its inbox written
        // on another: disk I/O never runs on the loop.
        let (state_tx, workshop_rx) = crossbeam_channel::unbounded();
        let watcher = if cfg.workshop.state_file.is_empty() {
            None
        } else {
            let w = waker.clone();
            let path = crate::config::expand_home(&cfg.workshop.state_file);
            let every = Duration::from_secs(cfg.workshop.poll_s);
            let wake = Arc::new(move || {
                let _ = w.wake();
            });
            Some(
                StateWatcher::spawn(path.into(), every, state_tx, wake)
                    .map_err(StartError::Watcher)?,
            )
        };
        let inbox_dir = crate::config::expand_home(&cfg.workshop.inbox_dir);
        let (inbox_tx, inbox_rx) = crossbeam_channel::unbounded();
        let w = waker.clone();
        let inbox = Inbox::spawn(inbox_dir.into(), cfg.workshop.inbox_queue, move |written| {
            let _ = inbox_tx.send(written);
            let _ = w.wake();
        })
        .map_err(StartError::Inbox)?;
        let mut app = App::new(cfg)?;
        if let Some(pool) = pool {
            app.attach_pool(pool);
        }
        app.attach_inbox(inbox);
        if app.cfg.cluster.is_some() {
            // A node of a cluster keeps the world in Redis, not in a data directory.
            let w = waker.clone();
            let wake = Arc::new(move || {
                let _ = w.wake();
            });
            let settings = crate::store::cluster::ClusterSettings::from_config(&app.cfg)
                .unwrap_or_else(|| unreachable!("[cluster] is in the config"));
            log::info!(
                "cluster: node {} of world {} over {}",
                settings.node,
                settings.world,
                settings.shown_url()
            );
            // The data directory is this node's alone: its lock (and its world key).
            let lock = match app.cfg.store.memory {
                true => None,
                false => {
                    let dir = crate::config::expand_home(&app.cfg.store.data_dir);
                    Some(crate::store::lock_data_dir(std::path::Path::new(&dir))?)
                }
            };
            let store = crate::store::cluster::ClusterStore::start(settings, wake)
                .map_err(StartError::Cluster)?;
            app.attach_cluster(store, lock);
        } else if !app.cfg.store.memory {
            let dir = std::path::PathBuf::from(crate::config::expand_home(&app.cfg.store.data_dir));
            let w = waker.clone();
            let wake = Arc::new(move || {
                let _ = w.wake();
            });
            let (store, loaded) = Store::open(&dir, &app.cfg.world, app.retention(), wake)?;
            app.attach_store(store, loaded);
        }
        app.load_world_key()?;
        if let Some(f) = &mut app.fed {
            let w = waker.clone();
            let wake = Arc::new(move || {
                let _ = w.wake();
            });
            let limits = crate::app::peer_sync::SyncLimits {
                timeout: Duration::from_millis(app.cfg.federation.timeout_ms),
                pages_max: app.cfg.federation.pages_max,
            };
            f.sync = Some(
                crate::app::peer_sync::PeerSync::start(f.core.peers(), limits, wake)
                    .map_err(StartError::PeerSync)?,
            );
        }
        app.recover_travel();
        app.forget_feed_presence(crate::world::time::now_ms());
        Ok(Bridge {
            poll,
            listeners,
            conns: Slab::default(),
            open: OpenCounts::default(),
            app,
            waker,
            replies,
            requests,
            requests_tx,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            limits,
            line_limits,
            ws_limits,
            ws_write: WriteQueue::default(),
            fanout: FanoutLog::default(),
            ws_members: Vec::new(),
            ws_again: Vec::new(),
            workshop_rx,
            inbox_rx,
            watcher,
            last_sweep: Instant::now(),
            drain_until: None,
            held_http: HeldHttp::new(),
            shapes: Shapes::new(),
        })
    }

    /// Stop gracefully on SIGINT and SIGTERM (the binary does this; tests use a handle).
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM]).map_err(StartError::Signals)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(StartError::Signals)?;
        self.signals = Some(signals);
        Ok(())
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Handles to the games this bridge links, as the agent sees them: observe / act /
    /// speak through the bridge's links, from any thread.
    pub fn worlds(&self) -> Worlds {
        Worlds {
            tx: self.requests_tx.clone(),
            waker: self.waker.clone(),
            wait: self.app.game_timeout() + crate::app::games::HANDLE_GRACE,
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
}

#[cfg(test)]
mod tests {
    use super::ipv6_missing;
    use std::io;

    #[test]
    fn only_an_ipv6_address_the_machine_lacks_is_skipped() {
        let v6 = "[::1]:4004".parse().unwrap();
        let v4 = "127.0.0.1:4004".parse().unwrap();
        let not_here = io::Error::from(io::ErrorKind::AddrNotAvailable);
        let no_family = io::Error::from_raw_os_error(97);
        let in_use = io::Error::from(io::ErrorKind::AddrInUse);
        assert!(ipv6_missing(v6, &not_here));
        assert!(ipv6_missing(v6, &no_family));
        assert!(!ipv6_missing(v6, &in_use), "a port in use is an error");
        assert!(!ipv6_missing(v4, &not_here), "IPv4 is never skipped");
    }
}
