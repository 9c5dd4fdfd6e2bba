//! Cluster mode's store: one Redis shared by every node of a world, reached from two
//! threads of this node so the loop never waits on it.
//!
//! - The **writer** appends what the loop proposes: each loop iteration's new events are
//!   one [`Proposal`]; proposals that queued while the last append ran go to Redis
//!   together, as one script call (group commit). The script numbers every event with the
//!   world-wide `seq` (`INCR`) and adds it to the world's stream under the id `<seq>-0`,
//!   atomically, so the order of the stream is the order of the numbers. It also keeps
//!   this node's liveness key fresh and pings, so the loop learns within about a second
//!   that Redis went away or came back.
//! - The **reader** follows the stream (`XREAD BLOCK`) from the start, and hands every
//!   entry to the loop in order, its own node's included: the loop applies events only
//!   from here, so every node applies the same events in the same order.
//!
//! Keys, all under `wb:{<world>}:` (one Redis Cluster hash slot per world): `seq` (the
//! last number given), `epoch` (made with the first append into an empty Redis: when
//! Redis loses its data, the next append starts a new epoch, a new stream and numbers
//! from 1), `log` (the stream: fields `epoch`, `node`, `k` (the kind: [`KIND_EVENT`],
//! [`KIND_GATEWAY`], [`KIND_ROOM`] or [`KIND_LINK`]), `t` (epoch ms), `e` (the JSON)), `node:<id>` (liveness, expiring
//! after `cluster.node_ttl_s`), `nodes` (the set of node ids that have run), `reap:<id>`
//! (a lock: the node cleaning up after a dead one).
//!
//! Dead nodes: the writer checks every 250 ms which nodes of the set have lost their
//! liveness key; for each, the one node that takes its `reap:` lock reports
//! [`News::NodeDead`], and the loop proposes the dead node's `leave`s and `agent_left`s
//! with [`Proposal::forget`] naming it: once they are in the log, the writer takes the
//! node out of the set. If the cleaning node dies first, its lock expires and another
//! node cleans up.
//!
//! Sessions: a node talks to the agent for a user only while it holds the user's lease
//! `lease:<user>` (taken with [`Request::Lease`], waiting while another node holds it);
//! with the lease it gets the stored session `session:<user>`, and when the call is done
//! the session is stored and the lease given back with the next append. A chat that
//! arrives while a live node holds the lease is forwarded to it ([`News::Owned`]): nodes
//! send each other messages through `inbox:<node>` streams ([`Request::Send`]), which the
//! reader follows beside the log ([`News::Inbox`]).
//!
//! Nothing here knows the world: events travel as JSON text.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Client, Connection, IntoConnectionInfo, Script, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod fed;
use fed::{FedOp, FedState};

/// Numbers and appends entries. KEYS: seq, epoch, log, this node's last-append mark, the
/// federation lease. ARGV: the stream's MAXLEN, the node id, the group's last batch id,
/// the number of federation-op arguments, those ([`fed::FedOp`]s, four each), then
/// (kind, epoch ms, JSON) triples. Returns {epoch, {seq, …}}; with federation ops from a
/// node that no longer holds the lease, the error `NOTLEADER` and nothing written. The
/// mark (`<run>/<batch> <epoch> <seq,…>`) lets the node learn, after a reply it never
/// got, whether this append happened.
const APPEND_HEAD: &str = r"
local nfed = tonumber(ARGV[4])
if nfed > 0 and redis.call('GET', KEYS[5]) ~= ARGV[2] then
  return redis.error_reply('NOTLEADER this node no longer holds the federation lease')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SET', KEYS[2], epoch)
end
local seqs = {}
for i = 5 + nfed, #ARGV, 3 do
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], seq .. '-0', 'epoch', epoch,
             'node', ARGV[2], 'k', ARGV[i], 't', ARGV[i + 1], 'e', ARGV[i + 2])
  seqs[#seqs + 1] = seq
end
redis.call('SET', KEYS[4], ARGV[3] .. ' ' .. epoch .. ' ' .. table.concat(seqs, ','),
           'PX', 86400000)
";

/// The end of the append script.
const APPEND_TAIL: &str = r"
return {epoch, seqs}
";

/// The whole append script: numbering and appending, federation's rows, the answer.
fn append_script() -> Script {
    Script::new(&format!(
        "{APPEND_HEAD}\nlocal p = string.sub(KEYS[5], 1, -7)\nlocal first, last = 5, 4 + nfed\n{}{APPEND_TAIL}",
        fed::APPLY_OPS
    ))
}

/// Takes a user's session lease for this node (free, or already ours) and returns the
/// stored session. KEYS: the lease, the session. ARGV: this node, the lease in ms, the
/// liveness keys' prefix. Returns {1, session JSON or "", 0} when taken; {0, holder, 1}
/// when another node holds it and is alive (its liveness key exists), {0, holder, 0}
/// when its holder is gone (the lease runs out within `node_ttl_s`).
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, holder, redis.call('EXISTS', ARGV[3] .. holder)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local session = redis.call('GET', KEYS[2])
if not session then session = '' end
return {1, session, 0}
";

/// Renews the leases this node holds (while their calls are under way). KEYS: the
/// leases. ARGV: this node, the lease in ms.
const RENEW: &str = r"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
return 0
";

/// Gives a lease back if this node holds it. KEYS: the lease. ARGV: this node.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One call of the append script for `records` and federation's `ops`, by this node;
/// `marker` goes into the node's last-append mark (the run and batch it answers for).
fn append_call<'a, 'r>(
    script: &'a Script,
    keys: &Keys,
    settings: &ClusterSettings,
    marker: String,
    records: impl Iterator<Item = &'r Record>,
    ops: &[&FedOp],
) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    call.key(&keys.seq)
        .key(&keys.epoch)
        .key(&keys.log)
        .key(keys.mark(&settings.node))
        .key(keys.fed("leader"))
        .arg(settings.log_max)
        .arg(&settings.node)
        .arg(marker)
        .arg(ops.len() * 4);
    for op in ops {
        call.arg(op.op).arg(&op.key).arg(op.num).arg(&op.json);
    }
    for r in records {
        call.arg(r.kind).arg(r.ts_ms).arg(&r.body);
    }
    call
}

/// How long a node's inbox lives after its last message.
const INBOX_TTL_MS: u64 = 3_600_000;

/// How often a lease another node holds is asked for again.
const LEASE_RETRY: Duration = Duration::from_millis(25);

/// How often the writer checks that Redis answers while it has nothing to append.
const PING_EVERY: Duration = Duration::from_millis(250);
/// How long the reader waits in one `XREAD BLOCK` (then it checks the epoch).
const BLOCK_MS: u64 = 1000;
/// Most entries one read hands the loop.
const READ_COUNT: usize = 1000;
/// Pause before connecting again after Redis failed.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What a node needs to reach the world's Redis (from `[cluster]`). Its `Debug` hides the
/// URL's password, as [`ClusterSettings::shown_url`] does.
#[derive(Clone)]
pub struct ClusterSettings {
    /// The URL as configured, password and all: shown only through `shown_url`.
    pub redis_url: String,
    pub world: String,
    pub node: String,
    pub node_ttl: Duration,
    /// A dead node's presence is gone within this (the clean-up lock's bound).
    pub presence_ttl: Duration,
    pub log_max: usize,
    pub timeout: Duration,
    /// How long a stored session lives unwritten (`sessions.idle_timeout_s`).
    pub session_ttl: Duration,
    /// Whether this world federates (`[[federation.peers]]`): the nodes then elect the
    /// one that runs federation.
    pub federation: bool,
    /// With `rediss://`: the CA file Redis's certificate must chain to (`None`: the
    /// system's roots) and this node's client certificate and key files.
    pub tls_ca_file: Option<String>,
    pub tls_client: Option<(String, String)>,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis_url", &self.shown_url())
            .field("world", &self.world)
            .field("node", &self.node)
            .field("node_ttl", &self.node_ttl)
            .field("presence_ttl", &self.presence_ttl)
            .field("log_max", &self.log_max)
            .field("timeout", &self.timeout)
            .field("session_ttl", &self.session_ttl)
            .field("federation", &self.federation)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

impl ClusterSettings {
    /// The Redis URL as logs and errors show it (no password).
    pub fn shown_url(&self) -> String {
        crate::config::redis_url_shown(&self.redis_url)
    }

    /// The settings of `[cluster]` (`None` without it).
    pub fn from_config(cfg: &crate::config::Config) -> Option<ClusterSettings> {
        let c = cfg.cluster.as_ref()?;
        Some(ClusterSettings {
            redis_url: c.redis_url.clone(),
            world: cfg.world.clone(),
            node: c.node_name(),
            node_ttl: Duration::from_secs(c.node_ttl_s),
            presence_ttl: Duration::from_secs(c.presence_ttl_s),
            log_max: c.log_max,
            timeout: Duration::from_millis(c.timeout_ms),
            session_ttl: Duration::from_secs(cfg.sessions.idle_timeout_s),
            federation: !cfg.federation.peers.is_empty(),
            tls_ca_file: (!c.tls_ca_file.trim().is_empty())
                .then(|| crate::config::expand_home(&c.tls_ca_file)),
            tls_client: (!c.tls_cert_file.trim().is_empty()).then(|| {
                (
                    crate::config::expand_home(&c.tls_cert_file),
                    crate::config::expand_home(&c.tls_key_file),
                )
            }),
        })
    }
}

/// The Redis keys of one world.
#[derive(Debug, Clone)]
pub struct Keys {
    pub seq: String,
    pub epoch: String,
    pub log: String,
    prefix: String,
}

impl Keys {
    pub fn new(world: &str) -> Keys {
        let prefix = format!("wb:{{{world}}}:");
        Keys {
            seq: format!("{prefix}seq"),
            epoch: format!("{prefix}epoch"),
            log: format!("{prefix}log"),
            prefix,
        }
    }

    /// A user's session (its JSON; it expires after `sessions.idle_timeout_s` unwritten).
    pub fn session(&self, user: &str) -> String {
        format!("{}session:{user}", self.prefix)
    }

    /// The lease of the node that talks to the agent for a user now.
    pub fn lease(&self, user: &str) -> String {
        format!("{}lease:{user}", self.prefix)
    }

    /// What a node's last append was (batch, epoch, numbers).
    pub fn mark(&self, node: &str) -> String {
        format!("{}last:{node}", self.prefix)
    }

    /// A node's liveness key.
    pub fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    /// A node's inbox: the stream other nodes send it forwarded chats and their answers
    /// through (see `app::forward`).
    pub fn inbox(&self, node: &str) -> String {
        format!("{}inbox:{node}", self.prefix)
    }

    /// The set of the world's nodes.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The lock of the node cleaning up after `node`.
    pub fn reap(&self, node: &str) -> String {
        format!("{}reap:{node}", self.prefix)
    }

    /// A key of federation's state (`fed:<name>`; see [`fed`]).
    pub fn fed(&self, name: &str) -> String {
        format!("{}fed:{name}", self.prefix)
    }
}

/// An entry that is a world event (say, presence, world event, bark).
pub const KIND_EVENT: &str = "event";
/// An entry that is a frame of the Matrix gateway (a client's broadcast or directed
/// message, the bridge's publications, agents joining and leaving).
pub const KIND_GATEWAY: &str = "gateway";

/// An entry that is a world event of federation scope (a world event sent with
/// `"scope": "federation"`, or of a kind in `federation.event_kinds`): it federates.
pub const KIND_FED_EVENT: &str = "fevent";

/// An entry that is a room's description as a game link reported it (its `RoomSpec`).
pub const KIND_ROOM: &str = "room";

/// An entry that says a node now holds (or no longer holds) a world's game link
/// (`{"world", "node", "up"}`): every node knows where to send that world's requests.
pub const KIND_LINK: &str = "link";

/// One entry to append: what kind, when it happened and its JSON.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: &'static str,
    pub ts_ms: u64,
    pub body: String,
}

/// The new events of one loop iteration (`batch` is the loop's batch id).
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    pub batch: u64,
    pub records: Vec<Record>,
    /// Dead nodes whose clean-up these records are: once appended, they leave the set.
    pub forget: Vec<String>,
    /// Sessions to store (user, JSON), written with the records.
    pub sessions: Vec<(String, String)>,
    /// Sessions to delete (their users left the world for another).
    pub forget_sessions: Vec<String>,
    /// Session leases this node gives back once the sessions are stored.
    pub release: Vec<String>,
    /// Federation's rows to store with the records (only while this node runs it).
    pub fed: Vec<FedOp>,
}

/// What the loop asks of the writer.
#[derive(Debug, Clone)]
pub enum Request {
    Propose(Proposal),
    /// Take `user`'s session lease (waiting while another node holds it), then report
    /// [`News::Leased`] with the stored session. With `forward`, a lease held by a live
    /// node is reported ([`News::Owned`]) instead of waited for.
    Lease {
        user: String,
        forward: bool,
    },
    /// Add a message to `node`'s inbox.
    Send {
        node: String,
        body: String,
    },
    /// Read every stored session, then report [`News::Sessions`] with this ticket.
    Sessions(u64),
}

/// One entry of the world's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub epoch: String,
    /// The node that appended it.
    pub node: String,
    /// [`KIND_EVENT`], [`KIND_GATEWAY`] or [`KIND_ROOM`].
    pub kind: String,
    pub ts_ms: u64,
    /// The event's JSON.
    pub body: String,
}

/// What the Redis threads tell the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum News {
    /// A batch is in the log: its events got these numbers, in order.
    Appended {
        batch: u64,
        epoch: String,
        seqs: Vec<u64>,
    },
    /// These batches are not in the log: Redis refused them or could not be reached.
    /// `unknown`: Redis stopped answering while they were being written, and has not
    /// said since whether they were (within `cluster.timeout_ms`): they may be.
    Failed {
        batches: Vec<u64>,
        error: String,
        unknown: bool,
    },
    /// Entries of the log, in order.
    Entries(Vec<Entry>),
    /// The log this node was reading is gone (Redis lost its data): what the node holds
    /// of it is void; entries of the new log (`epoch`, if any yet) follow from the start.
    Reset { epoch: Option<String> },
    /// `node` stopped refreshing its liveness key, and this node took the lock to clean
    /// up after it.
    NodeDead { node: String },
    /// Every stored session's JSON (`GET /bridge/sessions`), for the request with this
    /// ticket; or why Redis could not say.
    Sessions {
        ticket: u64,
        sessions: Result<Vec<String>, String>,
    },
    /// `node`, alive, holds `user`'s session lease (a lease asked for with `forward`):
    /// the call goes to it.
    Owned { user: String, node: String },
    /// Messages from this node's inbox, in order.
    Inbox(Vec<String>),
    /// This node now holds `user`'s session lease; `session` is the stored session's
    /// JSON (`None`: there is none).
    Leased {
        user: String,
        session: Option<String>,
    },
    /// The nodes alive now (their liveness keys exist), this one included, sorted.
    Nodes(Vec<String>),
    /// Who runs federation now (`None`: nobody, or unknown since this node lost the
    /// lease). `state`: this node has just taken the lease (or must start again from
    /// what Redis holds), and this is federation's stored state.
    Federation {
        leader: Option<String>,
        state: Option<Box<FedState>>,
    },
    /// Redis answers again.
    Up,
    /// Redis does not answer (the error, as a sentence).
    Down { error: String },
}

/// This node's handle on the Redis threads.
pub struct ClusterStore {
    pub settings: ClusterSettings,
    tx: Option<Sender<Request>>,
    /// What the threads report; the loop drains it.
    pub news: Receiver<News>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Why the cluster store could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL or a TLS file (the message names the key).
    #[error("{0}")]
    Client(String),
    #[error("cannot start the cluster's Redis threads: {0}")]
    Thread(std::io::Error),
}

impl ClusterStore {
    /// Start the writer and the reader; `wake` wakes the loop after each report.
    pub fn start(
        settings: ClusterSettings,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<ClusterStore, ClusterError> {
        let client = client(&settings).map_err(ClusterError::Client)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (news_tx, news) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let report = Reporter { tx: news_tx, wake };
        let mut writer = Writer {
            link: Link::new(client.clone(), settings.timeout, settings.timeout),
            keys: Keys::new(&settings.world),
            settings: settings.clone(),
            script: append_script(),
            leader: Script::new(fed::LEADER),
            leading: Leading::default(),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            held: Default::default(),
            live: Vec::new(),
            report: report.clone(),
            up: None,
            leases: Vec::new(),
            unsure: None,
            queued: Vec::new(),
            run_id: run_id(),
        };
        let mut reader = Reader {
            link: Link::new(
                client,
                settings.timeout,
                settings.timeout + Duration::from_millis(BLOCK_MS),
            ),
            keys: Keys::new(&settings.world),
            inbox: Keys::new(&settings.world).inbox(&settings.node),
            inbox_last: None,
            report,
            last: "0-0".into(),
            epoch: None,
            stop: stop.clone(),
        };
        let w = std::thread::Builder::new()
            .name("cluster-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(ClusterError::Thread)?;
        let r = std::thread::Builder::new()
            .name("cluster-reader".into())
            .spawn(move || reader.run())
            .map_err(ClusterError::Thread)?;
        Ok(ClusterStore {
            settings,
            tx: Some(tx),
            news,
            stop,
            threads: vec![w, r],
        })
    }

    /// Hand a batch of new events to the writer.
    pub fn propose(&self, proposal: Proposal) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Propose(proposal));
        }
    }

    /// Ask for every stored session ([`News::Sessions`] with `ticket`).
    pub fn sessions(&self, ticket: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Sessions(ticket));
        }
    }

    /// Ask for `user`'s session lease ([`News::Leased`] when this node has it; with
    /// `forward`, [`News::Owned`] when a live node holds it).
    pub fn lease(&self, user: &str, forward: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Lease {
                user: user.to_string(),
                forward,
            });
        }
    }

    /// Send `body` to `node`'s inbox.
    pub fn send_to(&self, node: &str, body: String) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Send {
                node: node.to_string(),
                body,
            });
        }
    }

    /// Finish the appends already proposed, then stop both threads.
    pub fn close(&mut self) {
        self.tx = None;
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ClusterStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[derive(Clone)]
struct Reporter {
    tx: Sender<News>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Reporter {
    fn send(&self, news: News) {
        let _ = self.tx.send(news);
        (self.wake)();
    }
}

/// One connection to Redis, made again after any failure.
struct Link {
    client: Client,
    con: Option<Connection>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Link {
    fn new(client: Client, connect_timeout: Duration, read_timeout: Duration) -> Link {
        Link {
            client,
            con: None,
            connect_timeout,
            read_timeout,
        }
    }

    fn get(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.con.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(self.connect_timeout)?;
            con.set_read_timeout(Some(self.read_timeout))?;
            con.set_write_timeout(Some(self.connect_timeout))?;
            self.con = Some(con);
        }
        match &mut self.con {
            Some(c) => Ok(c),
            None => unreachable!("connected just above"),
        }
    }

    /// Run `f` on the connection; any error drops it (the next call connects again).
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let result = self.get().and_then(f);
        result.map_err(|e| {
            self.con = None;
            describe(&e)
        })
    }
}

/// An append that got no answer.
struct Unsure {
    group: Vec<Proposal>,
    since: Instant,
    /// The loop was told it may or may not have happened.
    told: bool,
}

/// A number for this run of the process (nanoseconds since the epoch at start, mixed
/// with the pid): two runs of one node id do not share one.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// A Redis error as a sentence for health and logs.
fn describe(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        format!(
            "Redis refused this node's password: check the one in `cluster.redis_url` against \
             Redis's `requirepass` or ACL user ({e})"
        )
    } else if e.code() == Some("NOAUTH") || e.to_string().contains("\"NOAUTH\"") {
        // (A pipeline's error names its commands' codes only in its text.)
        format!(
            "Redis asks for a password and `cluster.redis_url` has none: write \
             redis://:PASSWORD@host:port ({e})"
        )
    } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) {
        format!(
            "Redis refused this node's user a key or command: its ACL must allow this world's \
             keys (~wb:{{<world>}}:*) and the commands in docs/cluster.md ({e})"
        )
    } else if e.to_string().contains("invalid peer certificate") {
        // (rustls's words, through the io error.)
        format!(
            "this node does not trust Redis's TLS certificate: `cluster.tls_ca_file` must \
             hold the CA that signed it, and it must name the host of `cluster.redis_url` ({e})"
        )
    } else if e.to_string().contains("received fatal alert") {
        format!(
            "Redis refused this node's TLS connection: it asks for a client certificate \
             (`cluster.tls_cert_file`, `cluster.tls_key_file`) signed by the CA of its \
             `tls-ca-cert-file` ({e})"
        )
    } else if e.is_timeout() {
        format!("Redis did not answer in time ({e})")
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        format!("Redis is unreachable ({e})")
    } else {
        format!("Redis refused ({e})")
    }
}

/// What the writer knows of the federation lease.
#[derive(Debug, Default)]
struct Leading {
    /// This node holds it, and has handed the loop the stored state.
    loaded: bool,
    /// This node holds it (as of the last beat or append).
    holds: bool,
    /// The holder last reported to the loop.
    told: Option<String>,
}

struct Writer {
    link: Link,
    keys: Keys,
    settings: ClusterSettings,
    script: Script,
    /// Takes or renews the federation lease.
    leader: Script,
    leading: Leading,
    acquire: Script,
    renew: Script,
    release: Script,
    /// Users whose session lease this node holds (renewed with the liveness key).
    held: std::collections::HashSet<String>,
    /// The live nodes last reported.
    live: Vec<String>,
    report: Reporter,
    /// Whether Redis answered last time (`None` before the first try).
    up: Option<bool>,
    /// Users whose session lease this node waits for (and whether a live holder is
    /// reported instead).
    leases: Vec<(String, bool)>,
    /// A group whose append got no answer (the connection broke, or Redis took too
    /// long): whether it happened is asked of Redis before anything else is appended,
    /// so a change answered 503 is one that was not appended.
    unsure: Option<Unsure>,
    /// Proposals that arrived while `unsure` was unresolved.
    queued: Vec<Proposal>,
    /// This run of the node, in the last-append mark (a restarted node counts batches
    /// from 1 again).
    run_id: u64,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Request>) {
        let beat_every = self.settings.node_ttl / 2;
        let mut last_beat: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            let wait = match self.leases.is_empty() {
                true => PING_EVERY,
                false => LEASE_RETRY,
            };
            let mut group = Vec::new();
            let mut session_lists = Vec::new();
            let mut sends = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    for r in std::iter::once(first).chain(rx.try_iter()) {
                        match r {
                            Request::Propose(p) => group.push(p),
                            Request::Lease { user, forward } => self.leases.push((user, forward)),
                            Request::Send { node, body } => sends.push((node, body)),
                            Request::Sessions(ticket) => session_lists.push(ticket),
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.unsure.is_some() {
                self.queued.append(&mut group);
                self.resolve();
                self.tell_unsure();
            }
            if self.unsure.is_none() && !self.queued.is_empty() {
                group.splice(0..0, std::mem::take(&mut self.queued));
            }
            if !group.is_empty() {
                if self.unsure.is_some() {
                    self.queued = group;
                } else {
                    self.append(group);
                }
            }
            if !sends.is_empty() {
                let result = self.send_all(sends);
                self.note(result.err());
            }
            if !self.leases.is_empty() {
                let result = self.take_leases();
                self.note(result.err());
            }
            // After the appends: a listing's SCAN never delays a group commit.
            for ticket in session_lists {
                let keys = self.keys.clone();
                let sessions = self.link.run(|c| stored_sessions(c, &keys));
                self.report.send(News::Sessions { ticket, sessions });
            }
            if last_check.elapsed() < PING_EVERY {
                continue;
            }
            last_check = Instant::now();
            let beat_due = last_beat.is_none_or(|t| t.elapsed() >= beat_every);
            let result = match beat_due {
                true => self.beat().map(|()| last_beat = Some(Instant::now())),
                false => Ok(()),
            };
            // Which nodes are gone (this also tells whether Redis answers).
            let result = result.and_then(|()| self.find_dead());
            self.note(result.err());
        }
        // Stopping: this node's liveness key goes, so the others need not wait for it,
        // and so does the federation lease if it holds it (another node takes over now).
        let key = self.keys.node(&self.settings.node);
        let _ = self
            .link
            .run(|c| redis::cmd("DEL").arg(&key).query::<i64>(c));
        if self.leading.holds {
            let (lease, node, release) =
                (self.keys.fed("leader"), &self.settings.node, &self.release);
            let _ = self
                .link
                .run(|c| release.key(&lease).arg(node).invoke::<i64>(c));
        }
    }

    /// Add messages to other nodes' inboxes, in order, in one pipeline. An inbox is
    /// capped (`cluster.log_max`) and expires an hour after its last message, so a dead
    /// node's leaves nothing for long.
    fn send_all(&mut self, sends: Vec<(String, String)>) -> Result<(), String> {
        let mut p = redis::pipe();
        for (node, body) in &sends {
            let inbox = self.keys.inbox(node);
            p.cmd("XADD")
                .arg(&inbox)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.settings.log_max)
                .arg("*")
                .arg("m")
                .arg(body)
                .ignore();
            p.cmd("PEXPIRE").arg(&inbox).arg(INBOX_TTL_MS).ignore();
        }
        let result = self.link.run(|c| p.query::<()>(c));
        if let Err(e) = &result {
            // The waiting side's deadline answers for what was lost.
            log::warn!("cluster: {} messages to other nodes lost: {e}", sends.len());
        }
        result
    }

    /// Ask for the leases this node waits for; report those it gets (and, for those
    /// asked with `forward`, the live node that holds them).
    fn take_leases(&mut self) -> Result<(), String> {
        let ttl_ms = (self.settings.node_ttl.as_millis() as u64).max(1);
        let alive_prefix = self.keys.node("");
        let mut waiting = Vec::new();
        for (user, forward) in std::mem::take(&mut self.leases) {
            let (lease, session) = (self.keys.lease(&user), self.keys.session(&user));
            let node = self.settings.node.clone();
            let acquire = &self.acquire;
            let got = self.link.run(|c| {
                acquire
                    .key(&lease)
                    .key(&session)
                    .arg(&node)
                    .arg(ttl_ms)
                    .arg(&alive_prefix)
                    .invoke::<(i64, String, i64)>(c)
            });
            match got {
                Ok((1, stored, _)) => {
                    self.held.insert(user.clone());
                    self.report.send(News::Leased {
                        user,
                        session: Some(stored).filter(|s| !s.is_empty()),
                    })
                }
                Ok((_, holder, 1)) if forward => {
                    self.report.send(News::Owned { user, node: holder })
                }
                Ok(_) => waiting.push((user, forward)),
                Err(e) => {
                    waiting.push((user, forward));
                    self.leases.extend(waiting);
                    return Err(e);
                }
            }
        }
        self.leases = waiting;
        Ok(())
    }

    /// Refresh this node's liveness key (and its place in the set of nodes).
    fn beat(&mut self) -> Result<(), String> {
        let key = self.keys.node(&self.settings.node);
        let nodes = self.keys.nodes();
        let ttl_ms = (self.settings.node_ttl.as_millis() as u64).max(1);
        let now = crate::world::time::now_ms();
        let node = self.settings.node.clone();
        let leases: Vec<String> = self.held.iter().map(|u| self.keys.lease(u)).collect();
        if !leases.is_empty() {
            let renew = &self.renew;
            self.link.run(|c| {
                let mut call = renew.prepare_invoke();
                for k in &leases {
                    call.key(k);
                }
                call.arg(&node).arg(ttl_ms).invoke::<i64>(c)
            })?;
        }
        self.link.run(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(now)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(&nodes)
                .arg(&node)
                .ignore()
                .query::<()>(c)
        })?;
        match self.settings.federation {
            true => self.lead(ttl_ms),
            false => Ok(()),
        }
    }

    /// Take or renew the federation lease; tell the loop who holds it, and, when this
    /// node has just taken it (or must start again), federation's stored state.
    fn lead(&mut self, ttl_ms: u64) -> Result<(), String> {
        let (lease, node) = (self.keys.fed("leader"), self.settings.node.clone());
        let leader = &self.leader;
        let (code, holder): (i64, String) = self
            .link
            .run(|c| leader.key(&lease).arg(&node).arg(ttl_ms).invoke(c))?;
        self.leading.holds = code > 0;
        if code == 2 {
            // Just taken (perhaps again, after Redis lost its data): start from Redis.
            self.leading.loaded = false;
        }
        if code > 0 && !self.leading.loaded {
            let keys = self.keys.clone();
            let state = self.link.run(|c| fed::read_state(c, &keys))?;
            log::info!(
                "cluster: this node runs federation now ({} stored events, {} trust entries)",
                state.events.len(),
                state.trust.len()
            );
            self.leading.loaded = true;
            self.leading.told = Some(holder.clone());
            self.report.send(News::Federation {
                leader: Some(holder),
                state: Some(Box::new(state)),
            });
        } else if self.leading.told.as_deref() != Some(holder.as_str()) {
            if code == 0 {
                self.leading.loaded = false;
                log::info!("cluster: node {holder} runs federation");
            }
            self.leading.told = Some(holder.clone());
            self.report.send(News::Federation {
                leader: Some(holder),
                state: None,
            });
        }
        Ok(())
    }

    /// A group with federation ops was not written, or may not have been: the loop
    /// starts federation again from what Redis holds (at the next beat, if this node
    /// still holds the lease).
    fn fed_unsure(&mut self, group: &[Proposal], lost_lease: bool) {
        if group.iter().all(|p| p.fed.is_empty()) && !lost_lease {
            return;
        }
        self.leading.loaded = false;
        if lost_lease {
            log::warn!("cluster: this node no longer holds the federation lease");
            self.leading.holds = false;
            self.leading.told = None;
            self.report.send(News::Federation {
                leader: None,
                state: None,
            });
        }
    }

    /// Nodes of the set whose liveness key is gone: for each whose clean-up lock this
    /// node takes, [`News::NodeDead`].
    fn find_dead(&mut self) -> Result<(), String> {
        let nodes_key = self.keys.nodes();
        let members: Vec<String> = self
            .link
            .run(|c| redis::cmd("SMEMBERS").arg(&nodes_key).query(c))?;
        let others: Vec<String> = (members.into_iter())
            .filter(|n| *n != self.settings.node)
            .collect();
        let keys: Vec<String> = others.iter().map(|n| self.keys.node(n)).collect();
        let alive: Vec<bool> = match keys.is_empty() {
            true => Vec::new(),
            false => self.link.run(|c| {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("EXISTS").arg(k);
                }
                p.query(c)
            })?,
        };
        let mut live: Vec<String> = (others.iter().zip(&alive))
            .filter(|(_, a)| **a)
            .map(|(n, _)| n.clone())
            .chain([self.settings.node.clone()])
            .collect();
        live.sort();
        if live != self.live {
            self.live = live.clone();
            self.report.send(News::Nodes(live));
        }
        // If this node dies while cleaning up, another takes over when the lock expires:
        // the dead node's presence is still gone within `presence_ttl_s` of its death.
        let lock = self
            .settings
            .presence_ttl
            .saturating_sub(self.settings.node_ttl);
        let lock_ms = (lock.as_millis() as u64).max(1000);
        for (node, _) in others.into_iter().zip(alive).filter(|(_, a)| !a) {
            let lock = self.keys.reap(&node);
            let me = self.settings.node.clone();
            let took: Option<String> = self.link.run(|c| {
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&me)
                    .arg("NX")
                    .arg("PX")
                    .arg(lock_ms)
                    .query(c)
            })?;
            if took.is_some() {
                log::warn!("cluster: node {node} is gone; cleaning up after it");
                self.report.send(News::NodeDead { node });
            }
        }
        Ok(())
    }

    /// Append a group of proposals with one script call.
    fn append(&mut self, group: Vec<Proposal>) {
        // Connected first: a failure here means nothing was sent.
        if let Err(e) = self.link.get() {
            self.link.con = None;
            let error = describe(&e);
            log::warn!("cluster: append failed: {error}");
            self.note(Some(error.clone()));
            self.fed_unsure(&group, false);
            return self.report.send(News::Failed {
                batches: group.iter().map(|p| p.batch).collect(),
                error,
                unknown: false,
            });
        }
        let last = group.last().map_or(0, |p| p.batch);
        let records = group.iter().flat_map(|p| &p.records);
        let ops: Vec<&FedOp> = group.iter().flat_map(|p| &p.fed).collect();
        let marker = format!("{}/{last}", self.run_id);
        let invocation = append_call(
            &self.script,
            &self.keys,
            &self.settings,
            marker,
            records,
            &ops,
        );
        let mut unsure = false;
        let answer = self.link.run(|c| {
            invocation
                .invoke::<(String, Vec<u64>)>(c)
                .inspect_err(|e| unsure = e.is_io_error() || e.is_timeout())
        });
        match answer {
            Ok((epoch, seqs)) => self.appended(group, epoch, seqs),
            Err(error) if unsure => {
                log::warn!("cluster: no answer to an append ({error}): asking Redis whether it happened before anything else");
                self.note(Some(error));
                self.unsure = Some(Unsure {
                    group,
                    since: Instant::now(),
                    told: false,
                });
            }
            Err(error) if error.contains("NOTLEADER") => {
                // Redis answered: it is up; this node's federation is not.
                self.fed_unsure(&group, true);
                self.report.send(News::Failed {
                    batches: group.iter().map(|p| p.batch).collect(),
                    error: "this node no longer runs federation".into(),
                    unknown: false,
                });
            }
            Err(error) => {
                log::warn!("cluster: append failed: {error}");
                self.note(Some(error.clone()));
                self.fed_unsure(&group, false);
                self.report.send(News::Failed {
                    batches: group.iter().map(|p| p.batch).collect(),
                    error,
                    unknown: false,
                });
            }
        }
    }

    /// A group is in the log: the dead nodes it cleaned up after leave the set, and
    /// each proposal's numbers go to the loop.
    fn appended(&mut self, group: Vec<Proposal>, epoch: String, seqs: Vec<u64>) {
        self.store_sessions(&group);
        let forget: Vec<String> = group.iter().flat_map(|p| p.forget.clone()).collect();
        if !forget.is_empty() {
            // Their clean-up is in the log: they leave the set of nodes.
            let (nodes, locks) = (self.keys.nodes(), forget.iter().map(|n| self.keys.reap(n)));
            let locks: Vec<String> = locks.collect();
            let gone = self.link.run(|c| {
                redis::pipe()
                    .cmd("SREM")
                    .arg(&nodes)
                    .arg(&forget)
                    .ignore()
                    .cmd("DEL")
                    .arg(&locks)
                    .ignore()
                    .query::<()>(c)
            });
            if let Err(e) = gone {
                log::warn!("cluster: could not take {forget:?} out of the nodes: {e}");
            }
        }
        let mut seqs = seqs.into_iter();
        for p in group {
            let mine: Vec<u64> = seqs.by_ref().take(p.records.len()).collect();
            self.report.send(News::Appended {
                batch: p.batch,
                epoch: epoch.clone(),
                seqs: mine,
            });
        }
        self.note(None);
    }

    /// The sessions of the calls an appended group answers are stored, then their
    /// leases given back. If Redis fails here the records stand; the lease runs out by
    /// itself (`node_ttl_s`), and the conversation goes on from the last stored turn.
    fn store_sessions(&mut self, group: &[Proposal]) {
        let sessions: Vec<(String, &String)> = (group.iter())
            .flat_map(|p| &p.sessions)
            .map(|(u, json)| (self.keys.session(u), json))
            .collect();
        let users: Vec<&String> = group.iter().flat_map(|p| &p.release).collect();
        let gone: Vec<String> = (group.iter())
            .flat_map(|p| &p.forget_sessions)
            .map(|u| self.keys.session(u))
            .collect();
        if sessions.is_empty() && users.is_empty() && gone.is_empty() {
            return;
        }
        let releases: Vec<String> = users.iter().map(|u| self.keys.lease(u)).collect();
        let session_ms = (self.settings.session_ttl.as_millis() as u64).max(1);
        let (release, node) = (&self.release, self.settings.node.clone());
        let stored = self.link.run(|c| {
            if !sessions.is_empty() || !gone.is_empty() {
                let mut p = redis::pipe();
                for (key, json) in &sessions {
                    p.cmd("SET")
                        .arg(key)
                        .arg(*json)
                        .arg("PX")
                        .arg(session_ms)
                        .ignore();
                }
                for key in &gone {
                    p.cmd("DEL").arg(key).ignore();
                }
                p.query::<()>(c)?;
            }
            for key in &releases {
                release.key(key).arg(&node).invoke::<i64>(c)?;
            }
            Ok(())
        });
        for u in users {
            self.held.remove(u);
        }
        if let Err(e) = stored {
            log::warn!("cluster: sessions not stored after an append: {e}");
        }
    }

    /// An append still unresolved after `cluster.timeout_ms`: the loop answers its
    /// changes that they may or may not have been stored (never 503: that means not).
    fn tell_unsure(&mut self) {
        let timeout = self.settings.timeout;
        let Some(u) = self
            .unsure
            .as_mut()
            .filter(|u| !u.told && u.since.elapsed() >= timeout)
        else {
            return;
        };
        u.told = true;
        let batches = u.group.iter().map(|p| p.batch).collect();
        if u.group.iter().any(|p| !p.fed.is_empty()) {
            self.leading.loaded = false;
        }
        self.report.send(News::Failed {
            batches,
            error: "Redis stopped answering while the change was being written".into(),
            unknown: true,
        });
    }

    /// After an append that got no answer: did it happen? Redis keeps this node's last
    /// append; until Redis answers, nothing else is appended.
    fn resolve(&mut self) {
        let Some(unsure) = self.unsure.take() else {
            return;
        };
        let group = &unsure.group;
        let mark = self.keys.mark(&self.settings.node);
        let got: Result<Option<String>, String> =
            self.link.run(|c| redis::cmd("GET").arg(&mark).query(c));
        let last = group.last().map_or(0, |p| p.batch);
        match got {
            Err(e) => {
                self.note(Some(e));
                self.unsure = Some(unsure);
            }
            Ok(mark) => {
                self.note(None);
                let mut parts = mark.as_deref().unwrap_or("").splitn(3, ' ');
                let batch = parts.next();
                let epoch = parts.next().unwrap_or("").to_string();
                let seqs: Vec<u64> = (parts.next().unwrap_or("").split(','))
                    .filter_map(|n| n.parse().ok())
                    .collect();
                let happened = batch == Some(format!("{}/{last}", self.run_id).as_str());
                log::info!(
                    "cluster: the append without an answer (batch {last}) {}",
                    if happened {
                        "did happen"
                    } else {
                        "did not happen"
                    }
                );
                match (happened, unsure.told) {
                    (true, false) => self.appended(unsure.group, epoch, seqs),
                    // Told already: its entries come through the reader as any other.
                    (true, true) => self.store_sessions(&unsure.group),
                    (false, false) => {
                        self.fed_unsure(&unsure.group, false);
                        self.report.send(News::Failed {
                            batches: group.iter().map(|p| p.batch).collect(),
                            error: "Redis did not answer the write".into(),
                            unknown: false,
                        })
                    }
                    (false, true) => self.fed_unsure(&unsure.group, false),
                }
            }
        }
    }

    /// Tell the loop when Redis stops or starts answering.
    fn note(&mut self, error: Option<String>) {
        match (error, self.up) {
            (None, Some(true)) => {}
            (None, _) => {
                self.up = Some(true);
                log::info!("cluster: Redis answers ({})", self.settings.shown_url());
                self.report.send(News::Up);
            }
            (Some(_), Some(false)) => {}
            (Some(error), _) => {
                self.up = Some(false);
                log::warn!("cluster: {error}");
                self.report.send(News::Down { error });
            }
        }
    }
}

struct Reader {
    link: Link,
    keys: Keys,
    /// This node's inbox, and the id of its last message read (`None` before the first
    /// read: what a former run of this node id left there is skipped).
    inbox: String,
    inbox_last: Option<String>,
    report: Reporter,
    /// The id of the last entry handed to the loop.
    last: String,
    /// The epoch of the entries read so far (`None` before the first).
    epoch: Option<String>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(&mut self) {
        let mut failing = false;
        while !self.stop.load(Ordering::SeqCst) {
            match self.round() {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        log::warn!("cluster: reading the log: {e}");
                    }
                    failing = true;
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }

    /// Check the epoch, then read what follows the last entry (waiting up to a second).
    fn round(&mut self) -> Result<(), String> {
        let key = self.keys.epoch.clone();
        let current: Option<String> = self.link.run(|c| redis::cmd("GET").arg(&key).query(c))?;
        if self.epoch.is_some() && current != self.epoch {
            self.restart(current);
            return Ok(());
        }
        let inbox = self.inbox.clone();
        let inbox_last = match &self.inbox_last {
            Some(id) => id.clone(),
            None => {
                let newest: StreamRangeReply = self.link.run(|c| {
                    redis::cmd("XREVRANGE")
                        .arg(&inbox)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query(c)
                })?;
                let id = (newest.ids.first()).map_or_else(|| "0-0".to_string(), |m| m.id.clone());
                self.inbox_last = Some(id.clone());
                id
            }
        };
        let (log, last) = (self.keys.log.clone(), self.last.clone());
        let reply: Option<StreamReadReply> = self.link.run(|c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&log)
                .arg(&inbox)
                .arg(&last)
                .arg(&inbox_last)
                .query(c)
        })?;
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        for k in reply.into_iter().flat_map(|r| r.keys) {
            if k.key != inbox {
                ids.extend(k.ids);
                continue;
            }
            for m in k.ids {
                match m.map.get("m") {
                    Some(Value::BulkString(b)) => {
                        messages.push(String::from_utf8_lossy(b).into_owned())
                    }
                    _ => log::warn!("cluster: inbox message {} has no `m`; skipped", m.id),
                }
                self.inbox_last = Some(m.id);
            }
        }
        if !messages.is_empty() {
            self.report.send(News::Inbox(messages));
        }
        let mut entries = Vec::new();
        for id in ids {
            let entry = parse_entry(&id)?;
            match &self.epoch {
                Some(e) if *e != entry.epoch => {
                    // The log was replaced between the epoch check and this read.
                    self.restart(Some(entry.epoch));
                    return Ok(());
                }
                Some(_) => {}
                None => self.epoch = Some(entry.epoch.clone()),
            }
            self.last = id.id.clone();
            entries.push(entry);
        }
        if !entries.is_empty() {
            self.report.send(News::Entries(entries));
        }
        Ok(())
    }

    /// The log was lost: say so, and read the new one from its start.
    fn restart(&mut self, epoch: Option<String>) {
        log::warn!(
            "cluster: the log of epoch {:?} is gone (Redis lost its data); now {:?}",
            self.epoch,
            epoch
        );
        self.epoch = None;
        self.last = "0-0".into();
        self.report.send(News::Reset { epoch });
    }
}

/// An entry as the reader hands it on; a malformed one is an error (someone else wrote
/// into this world's keys).
fn parse_entry(id: &StreamId) -> Result<Entry, String> {
    let text = |field: &str| -> Result<String, String> {
        match id.map.get(field) {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone())
                .map_err(|_| format!("log entry {}: `{field}` is not UTF-8", id.id)),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            _ => Err(format!("log entry {}: no `{field}`", id.id)),
        }
    };
    let number = |field: &str| -> Result<u64, String> {
        text(field)?
            .parse()
            .map_err(|_| format!("log entry {}: `{field}` is not a number", id.id))
    };
    let seq = (id.id.split('-').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("log entry {}: the id is not <seq>-0", id.id))?;
    Ok(Entry {
        seq,
        epoch: text("epoch")?,
        node: text("node")?,
        kind: text("k")?,
        ts_ms: number("t")?,
        body: text("e")?,
    })
}

/// Everything a world's Redis holds, read at once (`worldbridge export` with a cluster
/// config): the log's entries in order and the stored sessions' JSON.
#[derive(Debug, Default)]
pub struct Dump {
    pub entries: Vec<Entry>,
    pub sessions: Vec<String>,
    /// Federation's stored state (empty when the world does not federate).
    pub fed: FedState,
}

/// A client for the world's Redis whose connections send at once (`TCP_NODELAY`: the
/// redis crate leaves Nagle's algorithm on, and every entry of the log is a small write
/// someone is waiting for); over `rediss://`, with the certificate files of `settings`
/// (read now: a file that cannot be read is an error naming its key).
fn client(settings: &ClusterSettings) -> Result<Client, String> {
    let shown = settings.shown_url();
    let bad_url = |e: redis::RedisError| format!("cluster.redis_url {shown:?}: {e}");
    let info = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    let info = info.set_tcp_settings(tcp);
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Client::open(info).map_err(bad_url);
    }
    let read =
        |key: &str, path: &str| std::fs::read(path).map_err(|e| format!("`{key}` {path:?}: {e}"));
    let root_cert = match &settings.tls_ca_file {
        Some(path) => Some(read("cluster.tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match &settings.tls_client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cluster.tls_cert_file", cert)?,
            client_key: read("cluster.tls_key_file", key)?,
        }),
        None => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Client::build_with_tls(info, certificates).map_err(|e| format!("cluster TLS: {e}"))
}

/// One connection for the export and import commands (no threads: they run alone).
fn connect(settings: &ClusterSettings) -> Result<Connection, String> {
    let (shown, timeout) = (settings.shown_url(), settings.timeout);
    let client = client(settings)?;
    let con = (client.get_connection_with_timeout(timeout))
        .map_err(|e| format!("{} at {shown}", describe(&e)))?;
    con.set_read_timeout(Some(timeout * 10))
        .and_then(|()| con.set_write_timeout(Some(timeout * 10)))
        .map_err(|e| describe(&e))?;
    Ok(con)
}

/// The keys matching `pattern`, with `SCAN` (a `KEYS` would stop Redis for every node
/// while it walks the whole keyspace).
fn scan(con: &mut Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(READ_COUNT)
            .query(con)?;
        found.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Every stored session's JSON (`SCAN` for their keys, then `MGET` in pages).
fn stored_sessions(con: &mut Connection, keys: &Keys) -> redis::RedisResult<Vec<String>> {
    let names = scan(con, &format!("{}session:*", keys.prefix))?;
    let mut found = Vec::with_capacity(names.len());
    for page in names.chunks(READ_COUNT) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(page).query(con)?;
        found.extend(values.into_iter().flatten());
    }
    Ok(found)
}

/// Read a world's log and sessions.
pub fn dump(settings: &ClusterSettings) -> Result<Dump, String> {
    let mut con = connect(settings)?;
    let keys = Keys::new(&settings.world);
    let mut dump = Dump::default();
    let mut from = "-".to_string();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.log)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(READ_COUNT)
            .query(&mut con)
            .map_err(|e| describe(&e))?;
        let n = page.ids.len();
        for id in &page.ids {
            dump.entries.push(parse_entry(id)?);
            from = format!("({}", id.id);
        }
        if n < READ_COUNT {
            break;
        }
    }
    dump.sessions = stored_sessions(&mut con, &keys).map_err(|e| describe(&e))?;
    dump.fed = fed::read_state(&mut con, &keys).map_err(|e| describe(&e))?;
    Ok(dump)
}

/// Load records and sessions into a world's Redis (`worldbridge import` with a cluster
/// config). A world whose log is not empty is refused unless `force`, which deletes every
/// key of the world first. Returns how many entries were appended.
pub fn load(
    settings: &ClusterSettings,
    records: Vec<Record>,
    sessions: Vec<(String, String)>,
    mut fed: Vec<FedOp>,
    force: bool,
) -> Result<usize, String> {
    let mut con = connect(settings)?;
    let keys = Keys::new(&settings.world);
    let held: u64 = redis::cmd("XLEN")
        .arg(&keys.log)
        .query(&mut con)
        .map_err(|e| describe(&e))?;
    if held > 0 && !force {
        return Err(format!(
            "the world {:?} in {} already holds {held} log entries; import with --force to \
             replace them (every node of the world should be stopped first)",
            settings.world,
            settings.shown_url()
        ));
    }
    if force {
        let all = scan(&mut con, &format!("{}*", keys.prefix)).map_err(|e| describe(&e))?;
        if !all.is_empty() {
            redis::cmd("DEL")
                .arg(&all)
                .query::<()>(&mut con)
                .map_err(|e| describe(&e))?;
        }
    }
    let script = append_script();
    let mut appended = 0;
    for (i, chunk) in records.chunks(500).enumerate() {
        let call = append_call(
            &script,
            &keys,
            settings,
            format!("import/{i}"),
            chunk.iter(),
            &[],
        );
        let (_, seqs): (String, Vec<u64>) = call.invoke(&mut con).map_err(|e| describe(&e))?;
        appended += seqs.len();
    }
    if !fed.is_empty() {
        // The imported events are federated already: a node taking federation over
        // starts after them.
        let top: u64 = redis::cmd("GET")
            .arg(&keys.seq)
            .query::<Option<u64>>(&mut con)
            .map_err(|e| describe(&e))?
            .unwrap_or(0);
        fed.push(FedOp::new("at", "", top, String::new()));
        let script = fed::import_script();
        for chunk in fed.chunks(500) {
            let mut call = script.prepare_invoke();
            call.key(keys.fed("leader"));
            for op in chunk {
                call.arg(op.op).arg(&op.key).arg(op.num).arg(&op.json);
            }
            call.invoke::<()>(&mut con).map_err(|e| describe(&e))?;
        }
    }
    let ttl_ms = (settings.session_ttl.as_millis() as u64).max(1);
    for (user, json) in sessions {
        redis::cmd("SET")
            .arg(keys.session(&user))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .query::<()>(&mut con)
            .map_err(|e| describe(&e))?;
    }
    Ok(appended)
}
