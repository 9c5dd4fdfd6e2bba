//! Configuration: every limit and default of worldbridge in one place.
//!
//! Precedence: command-line flags > environment > config file (TOML) > defaults.
//! The key names and defaults are the contract of DESIGN.md "Config file";
//! docs/operations.md documents each one with its default (tests/docs.rs derives the keys
//! from these types through serde and checks it). Unknown keys and bad values are
//! rejected at start with the key's name.

use crate::world::lookalike;
use crate::world::protocol::GAME_KINDS;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The whole configuration of one bridge process.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This world's id: the origin of its events in federation.
    pub world: String,
    /// Bind non-loopback addresses even where a surface has no token, and reach a
    /// cluster's Redis on another machine without a password or client certificate, or
    /// with `#insecure` TLS (off: refuse to start).
    pub allow_public_without_token: bool,
    pub http: HttpConfig,
    pub line: LineConfig,
    pub sessions: SessionsConfig,
    pub rooms: RoomsConfig,
    pub agent: AgentConfig,
    pub gateway: GatewayConfig,
    pub workshop: WorkshopConfig,
    pub store: StoreConfig,
    pub federation: FederationConfig,
    pub websocket: WebsocketConfig,
    /// `[cluster]`: several processes serve this world over Redis. Absent (the default):
    /// one process, SQLite, no Redis.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this process is one node of a world served by several, over one Redis.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis server every node of this world uses (`redis://host:port[/db]`, with
    /// `user:password@` or `:password@` before the host when Redis asks for one). Shown
    /// anywhere only through [`redis_url_shown`], which hides the password.
    pub redis_url: String,
    /// This node's name in presence entries, metrics and logs; empty: host name + pid.
    pub node_id: String,
    /// A node that has not refreshed its liveness key for this long is dead.
    pub node_ttl_s: u64,
    /// A dead node's presence is gone within this long of its death (it is found after
    /// `node_ttl_s`; the rest bounds a clean-up that itself fails over to another node).
    pub presence_ttl_s: u64,
    /// Most entries the world's Redis stream keeps (older ones are trimmed; a gateway
    /// client that resumes from before them is told `resync_required`).
    pub log_max: usize,
    /// Longest one Redis command may take before the node counts Redis as down, in ms.
    pub timeout_ms: u64,
    /// With `rediss://`: the PEM file of the CA certificate(s) Redis's certificate must
    /// chain to; empty: the system's trusted roots.
    pub tls_ca_file: String,
    /// With `rediss://`: this node's client certificate (PEM), which a Redis with
    /// `tls-auth-clients` (its default) asks for; with `tls_key_file`, or neither.
    pub tls_cert_file: String,
    /// The key of `tls_cert_file` (PEM).
    pub tls_key_file: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            node_id: String::new(),
            node_ttl_s: 10,
            presence_ttl_s: 60,
            log_max: 100_000,
            timeout_ms: 1000,
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

impl ClusterConfig {
    /// `node_id`, or the host name and pid when it is empty.
    pub fn node_name(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        let host: String = (host.chars())
            .map(
                |c| match c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    true => c,
                    false => '-',
                },
            )
            .collect();
        format!("{host}-{}", std::process::id())
    }
}

/// `[websocket]`: rules for WebSocket upgrades on every HTTP listener (both feeds).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketConfig {
    /// Browser origins whose pages may open a WebSocket here (an upgrade that carries an
    /// `Origin` header not listed gets 403 before the upgrade; one without `Origin`, a
    /// non-browser client, is not affected). An entry is an origin (`https://a.example`),
    /// `scheme://host:*` for any port (or none), `null` for `file://` pages, or `*`.
    /// `http.cors_origins` entries are allowed too, and so is a page the bridge served
    /// itself from an IP address or `localhost` (its `Origin` is the request's `Host`).
    pub allowed_origins: Vec<String>,
    /// Most upgraded WebSocket connections at once (both feeds); an upgrade past it gets
    /// `503` `too_many_connections` before the handshake.
    pub max_connections: usize,
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            allowed_origins: [
                "null",
                "http://localhost:*",
                "https://localhost:*",
                "http://127.0.0.1:*",
                "https://127.0.0.1:*",
                "http://[::1]:*",
                "https://[::1]:*",
            ]
            .map(String::from)
            .to_vec(),
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Addresses or `host:port` names (a name binds every address it resolves to).
    #[serde(deserialize_with = "listen_entries")]
    pub listen: Vec<SocketAddr>,
    pub token: String,
    pub max_connections: usize,
    pub header_max_bytes: usize,
    pub body_max_bytes: usize,
    pub header_timeout_s: u64,
    pub keepalive_idle_s: u64,
    pub cors_origins: Vec<String>,
    pub rate_limit_requests: u32,
    pub rate_limit_window_s: u64,
    /// A `: ping` comment goes down an open event stream after this many quiet seconds.
    pub sse_ping_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LineConfig {
    /// Addresses or `host:port` names, as `http.listen`.
    #[serde(deserialize_with = "listen_entries")]
    pub listen: Vec<SocketAddr>,
    pub token: String,
    /// Most line connections at once, accepted and dialed; one accepted past it gets an
    /// `error` line `too_many_connections` and is closed.
    pub max_connections: usize,
    pub max_line_bytes: usize,
    /// Bytes that may wait for one link to read them; past it the link is dropped.
    pub max_queued_bytes: usize,
    pub heartbeat_s: u64,
    /// How long a game has to answer the bridge's `act` and `observe` (504 past it).
    pub request_timeout_s: u64,
    pub dial: Vec<DialConfig>,
    /// `[[line.links]]`: worlds bound to their own tokens.
    pub links: Vec<LineLinkConfig>,
}

/// An outbound line-protocol link (the bridge dials a game that listens).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DialConfig {
    pub world: String,
    #[serde(default = "default_dial_kind")]
    pub kind: String,
    pub addr: SocketAddr,
    #[serde(default)]
    pub token: String,
}

fn default_dial_kind() -> String {
    "generic".into()
}

/// Flags of `worldbridge [serve]`; `None`/empty means "not given on the command line".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServeArgs {
    /// `--config FILE`: the TOML config file (else `WORLDBRIDGE_CONFIG`, else none).
    pub config: Option<PathBuf>,
    /// `--http ADDR` (repeatable): replaces the HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// `--line ADDR` (repeatable): replaces the line-protocol listeners.
    pub line: Vec<SocketAddr>,
    /// `--world ID`.
    pub world: Option<String>,
    /// `--data-dir DIR`.
    pub data_dir: Option<String>,
    /// `--memory`: keep everything in memory.
    pub memory: bool,
    /// `--agent builtin|openai|command`.
    pub agent: Option<String>,
}

/// `[[line.links]]`: a game world bound to a token of its own. A `hello` for that world
/// must carry the token, and only such a link is that world.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LineLinkConfig {
    pub world: String,
    pub token: String,
    /// The world's kind; a link's own `kind` is not believed for a bound world.
    #[serde(default = "default_dial_kind")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    pub max: usize,
    pub idle_timeout_s: u64,
    pub history_max: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    pub events_max: usize,
    /// Most rooms a world may hold; rooms that games or users mention past it are refused.
    pub max: usize,
    /// Most people present at once; past it the least recently active one leaves.
    pub occupants_max: usize,
    /// Longest `message` of a say or chat, in bytes (413 past it).
    pub message_max_bytes: usize,
    /// A world file (JSON, the shape of `fixtures/world.json`); empty: the built-in world.
    pub world_file: String,
    /// A room no world file, game link or portal list defines is removed (with its
    /// events) once it has been empty this long, in seconds.
    pub idle_expire_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `builtin`, `openai` or `command`.
    pub backend: String,
    pub name: String,
    pub workers: usize,
    pub queue: usize,
    pub timeout_s: u64,
    pub base_url: String,
    pub model: String,
    pub api_key_env: String,
    pub temperature: f64,
    pub max_tokens: u32,
    pub command: Vec<String>,
    pub persona_file: String,
    /// The persona's mood when the Workshop state file gives none (barks carry it).
    pub mood: String,
    /// How many recent room events go into the prompt's world context.
    pub context_events: usize,
    /// How many chats one user may have waiting behind the one in flight.
    pub per_user_queue: usize,
    /// An extra crisis rule file (the format of `fixtures/crisis/lexicon.txt`) that extends
    /// the built-in rules; "" = none. Read at start; a bad line stops the start.
    pub crisis_file: String,
    /// With a model backend (openai, command), also ask the model whether each message
    /// signals a crisis, in parallel with the reply. It can only add a detection.
    pub crisis_model_check: bool,
    /// How long the crisis classification may take, in milliseconds.
    pub crisis_model_check_ms: u64,
    /// A streamed reply's parts are at least this many characters (unless it ends).
    pub stream_min_chars: usize,
    /// A streamed reply with no part yet after this many milliseconds gets one `thinking`.
    pub thinking_after_ms: u64,
    /// Longest gap between two chunks of a streamed model answer (`agent_timeout` past it).
    pub chunk_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub token: String,
    pub agent_id: String,
    pub heartbeat_s: u64,
    pub history_max: usize,
    pub history_max_age_s: u64,
    pub max_message_bytes: usize,
    /// Bytes that may wait for one WebSocket client to read them (both feeds); past it
    /// the client is closed with 1008 "slow consumer".
    pub max_queued_bytes: usize,
    /// Messages that may wait for one WebSocket client; past it, the same.
    pub max_queued_messages: usize,
    /// Messages one WebSocket client may send per second (both feeds); past it they are
    /// refused with an `error` `rate_limited` (one per second) and not routed.
    pub max_messages_per_s: u32,
    /// `[[gateway.agents]]`: agent ids bound to their own tokens.
    pub agents: Vec<GatewayAgent>,
}

/// `[[gateway.agents]]`: an agent id bound to a token. A connection that presents the
/// token (`/ws/matrix?token=`) can only register as this id (with this role, when one is
/// set); nobody else can register the id or a look-alike of it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayAgent {
    pub id: String,
    pub token: String,
    #[serde(default)]
    pub role: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkshopConfig {
    pub state_file: String,
    pub inbox_dir: String,
    pub poll_s: u64,
    pub heartbeat_s: u64,
    pub diff: bool,
    /// Most visitors one browser connection may have present (`enter`) at once.
    pub visitors_per_connection: usize,
    /// Visitor messages waiting for the inbox writer; past it a visitor is told
    /// `inbox_unavailable` ("not keeping up").
    pub inbox_queue: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: String,
    /// Keep everything in memory (`--memory`): nothing is written to disk.
    pub memory: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    pub sync_interval_s: u64,
    /// Longest one request to a peer may take (connect, send, answer), in ms: a peer that
    /// accepts and never answers costs its own sync this much, and nobody else anything.
    pub timeout_ms: u64,
    /// Most `/bridge/state` pages one pull follows (`more: true`) before the next interval.
    pub pages_max: usize,
    /// Federated events kept per origin world; older ones are pruned (a peer that lacks
    /// them is told so and counts them as seen), so memory and the data file stay bounded.
    pub events_keep: usize,
    /// Most bytes of events in one state document (a pull answer or a push): under
    /// the peers' `http.body_max_bytes`, or their bridges refuse our pushes with 413.
    pub page_max_bytes: usize,
    pub portal_rooms: Vec<String>,
    /// This world's Ed25519 key file; empty: `world.key` in the data directory (with
    /// `--memory`, a new key each run). Created (mode 0600) when missing.
    pub key_file: String,
    /// World event kinds (a line `event`'s `event`) that reach every world of the
    /// federation unless sent with `scope: "local"`; `scope: "federation"` sends any kind.
    pub event_kinds: Vec<String>,
    /// How far ahead of this bridge's clock a peer's `timestamp` or `updated_at` may lie
    /// (seconds); further: the event is refused (`clock_skew`). Old is always fine.
    pub max_clock_skew_s: u64,
    /// Most travels one peer may have waiting here (offers not yet committed or
    /// aborted, and aborted ones remembered against late copies); more offers are
    /// refused `too_many_travels`. Bounds what a hostile peer can make this world hold.
    pub travels_pending_max: usize,
    pub peers: Vec<PeerConfig>,
    /// Worlds that are not direct peers but whose signed events peers may relay here.
    pub worlds: Vec<WorldConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub world: String,
    pub url: String,
    #[serde(default)]
    pub token: String,
    /// The peer's world key, `ed25519:<base64>` (`worldbridge key` on the peer prints
    /// it). Empty: its events are taken only with origin = that peer, and not relayed.
    #[serde(default)]
    pub public_key: String,
}

/// A world this bridge does not sync with, whose events a peer may relay
/// (`[[federation.worlds]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorldConfig {
    pub world: String,
    pub public_key: String,
}

/// A listener address as people write it: `127.0.0.1:4004`, `[::1]:4004`, or a host
/// name and port (`localhost:4004`), which stands for every address the name resolves
/// to (`localhost`: 127.0.0.1 and ::1 where both resolve), without duplicates. The
/// non-loopback rule applies to each resolved address like to a written one.
pub fn resolve_listen(value: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let bad = || format!("'{value}' is not an address like 127.0.0.1:4004 or localhost:4004");
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(':') {
        return Err(bad());
    }
    let found = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("'{value}': the host name {host} does not resolve ({e})"))?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    // IPv4 first: where IPv6 is missing, the address that works is the first bound.
    out.sort_by_key(|a| a.is_ipv6());
    if out.is_empty() {
        return Err(format!(
            "'{value}': the host name {host} resolves to no address"
        ));
    }
    Ok(out)
}

/// `listen = [...]` in the config file: each entry through [`resolve_listen`].
fn listen_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Entry(Vec<SocketAddr>);
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Entry;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("socket address")
        }
        // Refused inside the visitor, so the error points at the entry, not the array.
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Entry, E> {
            resolve_listen(s)
                .map(Entry)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(s), &self))
        }
    }
    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entry, D::Error> {
            d.deserialize_str(Visitor)
        }
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in Vec::<Entry>::deserialize(d)?.into_iter().flat_map(|e| e.0) {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn addr(s: &str) -> SocketAddr {
    // Only called on literal addresses (the defaults below, the env fallback).
    s.parse()
        .unwrap_or_else(|_| unreachable!("bad default address {s}"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            world: "local".into(),
            allow_public_without_token: false,
            websocket: WebsocketConfig::default(),
            cluster: None,
            http: HttpConfig::default(),
            line: LineConfig::default(),
            sessions: SessionsConfig::default(),
            rooms: RoomsConfig::default(),
            agent: AgentConfig::default(),
            gateway: GatewayConfig::default(),
            workshop: WorkshopConfig::default(),
            store: StoreConfig::default(),
            federation: FederationConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec![addr("127.0.0.1:4004"), addr("127.0.0.1:8765")],
            token: String::new(),
            max_connections: 10_000,
            header_max_bytes: 16 * 1024,
            body_max_bytes: 1024 * 1024,
            header_timeout_s: 10,
            keepalive_idle_s: 60,
            cors_origins: Vec::new(),
            rate_limit_requests: 60,
            rate_limit_window_s: 60,
            sse_ping_s: 15,
        }
    }
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            listen: vec![addr("127.0.0.1:4005")],
            token: String::new(),
            max_connections: 1000,
            max_line_bytes: 64 * 1024,
            max_queued_bytes: 1024 * 1024,
            heartbeat_s: 30,
            request_timeout_s: 10,
            dial: Vec::new(),
            links: Vec::new(),
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max: 20,
            idle_timeout_s: 3600,
            history_max: 50,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            events_max: 50,
            max: 10_000,
            occupants_max: 10_000,
            message_max_bytes: 16 * 1024,
            world_file: String::new(),
            idle_expire_s: 3600,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            backend: "builtin".into(),
            name: "Timmy".into(),
            workers: 4,
            queue: 256,
            timeout_s: 30,
            base_url: "http://127.0.0.1:11434/v1".into(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            temperature: 0.7,
            max_tokens: 512,
            command: Vec::new(),
            persona_file: String::new(),
            mood: "calm".into(),
            context_events: 10,
            per_user_queue: 8,
            crisis_file: String::new(),
            crisis_model_check: false,
            crisis_model_check_ms: 1500,
            stream_min_chars: 60,
            thinking_after_ms: 2000,
            chunk_timeout_s: 15,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            token: String::new(),
            agent_id: "timmy".into(),
            heartbeat_s: 30,
            history_max: 1000,
            history_max_age_s: 120,
            max_message_bytes: 1024 * 1024,
            max_queued_bytes: 1024 * 1024,
            max_queued_messages: 1024,
            max_messages_per_s: 200,
            agents: Vec::new(),
        }
    }
}

impl Default for WorkshopConfig {
    fn default() -> Self {
        WorkshopConfig {
            state_file: "~/.timmy/workshop-state.yaml".into(),
            inbox_dir: "~/.timmy/inbox".into(),
            poll_s: 2,
            heartbeat_s: 15,
            diff: true,
            visitors_per_connection: 8,
            inbox_queue: 1024,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: "./worldbridge-data".into(),
            memory: false,
        }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            sync_interval_s: 5,
            timeout_ms: 2000,
            pages_max: 20,
            events_keep: 10_000,
            page_max_bytes: 512 * 1024,
            portal_rooms: Vec::new(),
            key_file: String::new(),
            event_kinds: ["fire", "rain", "growth", "storm", "quake"]
                .map(String::from)
                .to_vec(),
            max_clock_skew_s: 300,
            travels_pending_max: 64,
            peers: Vec::new(),
            worlds: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

/// The values `agent.backend` (and `--agent`, `WORLDBRIDGE_AGENT`) accept.
pub const AGENT_BACKENDS: [&str; 3] = ["builtin", "openai", "command"];

/// Smallest `http.header_max_bytes` that still fits an ordinary browser request head.
const MIN_HEADER_MAX_BYTES: usize = 1024;

impl Config {
    /// Parse TOML text. Unknown keys and wrongly typed values are rejected with an error
    /// that names the key path and its line, e.g. "config: unknown key `http.listne`
    /// (line 3) ..." or "config: `sessions.max` must be a non-negative integer, not '20' (line 5)".
    /// Does not run [`Config::validate`].
    pub fn from_toml(text: &str) -> Result<Config, String> {
        parse_toml(text, None)
    }

    /// The whole precedence: defaults < config file (`args.config`, else env
    /// `WORLDBRIDGE_CONFIG`, else none) < environment < flags; then [`Config::validate`].
    /// `env` is injected so tests don't touch the process environment; an empty
    /// variable counts as unset.
    pub fn load(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let env = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let path = args
            .config
            .clone()
            .or_else(|| env("WORLDBRIDGE_CONFIG").map(PathBuf::from));
        let mut cfg = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!("config: cannot read config file {}: {e}", path.display())
                })?;
                parse_toml(&text, Some(&path))?
            }
            None => Config::default(),
        };
        cfg.apply_env(&env)?;
        cfg.apply_flags(args)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Overrides from the environment (`env` already maps empty values to `None`).
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(world) = env("WORLDBRIDGE_WORLD") {
            check_world_id(&world).map_err(|why| format!("WORLDBRIDGE_WORLD: {why}"))?;
            self.world = world;
        }
        if let Some(dir) = env("WORLDBRIDGE_DATA_DIR") {
            self.store.data_dir = dir;
        }
        if let Some(backend) = env("WORLDBRIDGE_AGENT") {
            check_backend(&backend).map_err(|why| format!("WORLDBRIDGE_AGENT: {why}"))?;
            self.agent.backend = backend;
        }
        // Seed 001's variables move the first HTTP listener only; the others stay.
        let host = match env("TIMMY_BRIDGE_HOST") {
            Some(h) if h == "localhost" => Some(IpAddr::from([127, 0, 0, 1])),
            Some(h) => Some(h.parse::<IpAddr>().map_err(|_| {
                format!("TIMMY_BRIDGE_HOST: '{h}' is not an IP address like 127.0.0.1")
            })?),
            None => None,
        };
        let port =
            match env("TIMMY_BRIDGE_PORT") {
                Some(p) => Some(p.parse::<u16>().map_err(|_| {
                    format!("TIMMY_BRIDGE_PORT: '{p}' is not a port number (0-65535)")
                })?),
                None => None,
            };
        if host.is_some() || port.is_some() {
            if self.http.listen.is_empty() {
                self.http.listen.push(addr("127.0.0.1:4004"));
            }
            let first = &mut self.http.listen[0];
            if let Some(host) = host {
                first.set_ip(host);
            }
            if let Some(port) = port {
                first.set_port(port);
            }
        }
        Ok(())
    }

    /// Overrides from the command line: the last word.
    fn apply_flags(&mut self, args: &ServeArgs) -> Result<(), String> {
        if !args.http.is_empty() {
            self.http.listen = args.http.clone();
        }
        if !args.line.is_empty() {
            self.line.listen = args.line.clone();
        }
        if let Some(world) = &args.world {
            check_world_id(world).map_err(|why| format!("--world: {why}"))?;
            self.world = world.clone();
        }
        if let Some(dir) = &args.data_dir {
            // `--data-dir` and `--memory` are alternatives: naming a directory means "use it".
            self.store.data_dir = dir.clone();
            self.store.memory = false;
        }
        if args.memory {
            self.store.memory = true;
        }
        if let Some(backend) = &args.agent {
            check_backend(backend).map_err(|why| format!("--agent: {why}"))?;
            self.agent.backend = backend.clone();
        }
        Ok(())
    }

    /// Value checks, each error naming the key: ids, backends, lower bounds of limits,
    /// and the public-bind rule (a non-loopback listener needs its surface's token unless
    /// `allow_public_without_token = true`).
    pub fn validate(&self) -> Result<(), String> {
        check_world_id(&self.world).map_err(|why| format!("config: `world`: {why}"))?;
        check_backend(&self.agent.backend)
            .map_err(|why| format!("config: `agent.backend`: {why}"))?;

        let at_least: [(&str, u64, u64); 37] = [
            (
                "federation.sync_interval_s",
                self.federation.sync_interval_s,
                1,
            ),
            ("federation.timeout_ms", self.federation.timeout_ms, 1),
            ("federation.pages_max", self.federation.pages_max as u64, 1),
            (
                "federation.events_keep",
                self.federation.events_keep as u64,
                1,
            ),
            (
                "federation.page_max_bytes",
                self.federation.page_max_bytes as u64,
                4096,
            ),
            ("rooms.events_max", self.rooms.events_max as u64, 1),
            ("rooms.max", self.rooms.max as u64, 1),
            ("rooms.occupants_max", self.rooms.occupants_max as u64, 1),
            ("rooms.idle_expire_s", self.rooms.idle_expire_s, 1),
            (
                "rooms.message_max_bytes",
                self.rooms.message_max_bytes as u64,
                1,
            ),
            ("agent.workers", self.agent.workers as u64, 1),
            ("agent.queue", self.agent.queue as u64, 1),
            ("agent.timeout_s", self.agent.timeout_s, 1),
            ("agent.chunk_timeout_s", self.agent.chunk_timeout_s, 1),
            (
                "agent.stream_min_chars",
                self.agent.stream_min_chars as u64,
                1,
            ),
            ("http.sse_ping_s", self.http.sse_ping_s, 1),
            (
                "agent.crisis_model_check_ms",
                self.agent.crisis_model_check_ms,
                1,
            ),
            ("sessions.max", self.sessions.max as u64, 1),
            ("http.max_connections", self.http.max_connections as u64, 1),
            ("line.max_connections", self.line.max_connections as u64, 1),
            (
                "websocket.max_connections",
                self.websocket.max_connections as u64,
                1,
            ),
            (
                "http.header_max_bytes",
                self.http.header_max_bytes as u64,
                MIN_HEADER_MAX_BYTES as u64,
            ),
            (
                "http.rate_limit_requests",
                u64::from(self.http.rate_limit_requests),
                1,
            ),
            ("http.rate_limit_window_s", self.http.rate_limit_window_s, 1),
            ("line.max_line_bytes", self.line.max_line_bytes as u64, 1),
            (
                "line.max_queued_bytes",
                self.line.max_queued_bytes as u64,
                self.line.max_line_bytes as u64 + 2,
            ),
            ("line.heartbeat_s", self.line.heartbeat_s, 1),
            ("line.request_timeout_s", self.line.request_timeout_s, 1),
            ("gateway.heartbeat_s", self.gateway.heartbeat_s, 1),
            (
                "gateway.max_message_bytes",
                self.gateway.max_message_bytes as u64,
                1,
            ),
            (
                "gateway.max_queued_bytes",
                self.gateway.max_queued_bytes as u64,
                self.gateway.max_message_bytes as u64,
            ),
            (
                "gateway.max_queued_messages",
                self.gateway.max_queued_messages as u64,
                1,
            ),
            (
                "gateway.max_messages_per_s",
                u64::from(self.gateway.max_messages_per_s),
                1,
            ),
            ("workshop.poll_s", self.workshop.poll_s, 1),
            ("workshop.heartbeat_s", self.workshop.heartbeat_s, 1),
            (
                "workshop.visitors_per_connection",
                self.workshop.visitors_per_connection as u64,
                1,
            ),
            ("workshop.inbox_queue", self.workshop.inbox_queue as u64, 1),
        ];
        for (key, value, min) in at_least {
            if value < min {
                return Err(format!(
                    "config: `{key}` must be at least {min}, not {value}"
                ));
            }
        }

        self.check_gateway_agents()?;
        self.check_line_links()?;
        if self.federation.page_max_bytes > self.http.body_max_bytes {
            return Err(format!(
                "config: `federation.page_max_bytes` ({}) must be at most `http.body_max_bytes` \
                 ({}): a peer with the same limits would refuse our pushes",
                self.federation.page_max_bytes, self.http.body_max_bytes
            ));
        }
        for kind in &self.federation.event_kinds {
            crate::world::check_name("event", kind).map_err(|why| {
                format!("config: `federation.event_kinds`: {kind:?} is not an event name: {why}")
            })?;
        }
        if self.http.listen.is_empty() {
            return Err(
                "config: `http.listen` must list at least one address (the HTTP API is always served)"
                    .into(),
            );
        }
        if self.agent.backend == "command"
            && self
                .agent
                .command
                .first()
                .is_none_or(|p| p.trim().is_empty())
        {
            return Err(
                "config: `agent.backend = \"command\"` needs `agent.command`, the argv of \
                 the subprocess, e.g. [\"./my-agent\"]"
                    .into(),
            );
        }

        if !self.allow_public_without_token {
            let surfaces = [
                (
                    "http.listen",
                    "http.token",
                    &self.http.listen,
                    &self.http.token,
                ),
                (
                    "line.listen",
                    "line.token",
                    &self.line.listen,
                    &self.line.token,
                ),
            ];
            for (listen_key, token_key, listen, token) in surfaces {
                if token.is_empty() {
                    if let Some(public) = listen.iter().find(|a| !a.ip().is_loopback()) {
                        return Err(format!(
                            "config: refusing to bind {public} (`{listen_key}`) without a token: \
                             it is not a loopback address and `{token_key}` is empty; set \
                             `{token_key}`, bind a loopback address like 127.0.0.1, or set \
                             `allow_public_without_token = true` to opt out"
                        ));
                    }
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.validate(self)?;
        }
        Ok(())
    }
}

/// Whether the URL's host is this machine (`localhost`, `127.x.y.z`, `[::1]`).
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A Redis URL as logs and errors may show it: the password of `user:password@`, and a
/// unix socket URL's `pass=` parameter, become `***`.
pub fn redis_url_shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // `redis://secret@host` is read as a user name: shown as if a password.
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = (query.split('&'))
                .map(|kv| match kv.split_once('=') {
                    Some((key @ ("pass" | "password"), _)) => format!("{key}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl ClusterConfig {
    /// Every node trusts what the world's Redis holds (its events, sessions, leases): one
    /// on another machine must know who the node is (a password, or a client certificate
    /// over TLS), and over TLS the node must know who Redis is (no `#insecure`).
    fn check_remote_redis(&self, info: &redis::ConnectionInfo) -> Result<(), String> {
        let (host, port, insecure) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host, port, false),
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => (host, port, *insecure),
            _ => return Ok(()),
        };
        if is_loopback(&self.redis_url) {
            return Ok(());
        }
        if insecure {
            return Err(format!(
                "config: `cluster.redis_url` reaches Redis at {host}:{port} with #insecure: \
                 its certificate would not be checked, so anyone on the way could stand in \
                 for it. Drop #insecure and give `cluster.tls_ca_file` (the CA that signed \
                 Redis's certificate), or set `allow_public_without_token = true` to opt out"
            ));
        }
        let password = info
            .redis_settings()
            .password()
            .is_some_and(|p| !p.is_empty());
        let certificate = !self.tls_cert_file.trim().is_empty();
        if !password && !certificate {
            return Err(format!(
                "config: `cluster.redis_url` reaches Redis at {host}:{port} without a \
                 password: every node trusts what that Redis holds, so whoever can reach \
                 it could write this world's events. Give Redis a password (`requirepass`, \
                 or an ACL user) and put it in the URL (redis://:PASSWORD@{host}:{port} or \
                 redis://USER:PASSWORD@{host}:{port}), or over TLS a client certificate \
                 (`cluster.tls_cert_file`), use a Redis on this machine, or set \
                 `allow_public_without_token = true` to opt out"
            ));
        }
        Ok(())
    }

    fn validate(&self, cfg: &Config) -> Result<(), String> {
        let tls = self.redis_url.starts_with("rediss://");
        let scheme_ok = tls
            || self.redis_url.starts_with("redis://")
            || self.redis_url.starts_with("unix://")
            || self.redis_url.starts_with("redis+unix://");
        let parsed = match scheme_ok {
            true => redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str()).ok(),
            false => None,
        };
        let Some(info) = parsed else {
            return Err(format!(
                "config: `cluster.redis_url` {:?} is not a Redis URL; write \
                 redis://host:port (e.g. redis://127.0.0.1:6379), or rediss://host:port for TLS",
                redis_url_shown(&self.redis_url)
            ));
        };
        let files = [
            ("cluster.tls_ca_file", &self.tls_ca_file),
            ("cluster.tls_cert_file", &self.tls_cert_file),
            ("cluster.tls_key_file", &self.tls_key_file),
        ];
        if let Some((key, _)) = files.iter().find(|(_, f)| !f.trim().is_empty() && !tls) {
            return Err(format!(
                "config: `{key}` is set but `cluster.redis_url` is not rediss://: the TLS files \
                 are for a Redis reached over TLS"
            ));
        }
        if self.tls_cert_file.trim().is_empty() != self.tls_key_file.trim().is_empty() {
            return Err(
                "config: `cluster.tls_cert_file` and `cluster.tls_key_file` go together: the \
                 node's client certificate and its key"
                    .into(),
            );
        }
        if !cfg.allow_public_without_token {
            self.check_remote_redis(&info)?;
        }
        for (key, value, min) in [
            ("cluster.node_ttl_s", self.node_ttl_s, 1),
            ("cluster.presence_ttl_s", self.presence_ttl_s, 1),
            ("cluster.log_max", self.log_max as u64, 100),
            ("cluster.timeout_ms", self.timeout_ms, 10),
        ] {
            if value < min {
                return Err(format!(
                    "config: `{key}` must be at least {min} (it is {value})"
                ));
            }
        }
        if self.presence_ttl_s <= self.node_ttl_s {
            return Err(format!(
                "config: `cluster.presence_ttl_s` ({}) must be more than `cluster.node_ttl_s` \
                 ({}): a dead node is only found after node_ttl_s",
                self.presence_ttl_s, self.node_ttl_s
            ));
        }
        if !self.node_id.is_empty() {
            check_world_id(&self.node_id)
                .map_err(|why| format!("config: `cluster.node_id`: {why}"))?;
        }
        // Federation runs on one elected node at a time, signing as the world: every
        // node must hold the same world key.
        if !cfg.federation.peers.is_empty() && cfg.federation.key_file.trim().is_empty() {
            return Err(
                "config: `[cluster]` with `[[federation.peers]]` needs `federation.key_file`: \
                 whichever node runs federation signs as the world, so every node must read \
                 the same key file (create it once with `worldbridge key --config FILE`)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// `[[line.links]]`: each a valid world id with a token, listed once, not also dialed.
    fn check_line_links(&self) -> Result<(), String> {
        for (i, l) in self.line.links.iter().enumerate() {
            let what = format!("config: `[[line.links]]` world {:?}", l.world);
            check_world_id(&l.world).map_err(|why| format!("{what}: {why}"))?;
            if l.token.is_empty() {
                return Err(format!(
                    "{what}: `token` must be set (that is what binds the world)"
                ));
            }
            if self.line.links[..i].iter().any(|o| o.world == l.world) {
                return Err(format!("{what}: listed twice"));
            }
            if self.line.dial.iter().any(|d| d.world == l.world) {
                return Err(format!(
                    "{what}: is also a `[[line.dial]]` world; a dialed world is the bridge's own link already"
                ));
            }
            if !GAME_KINDS.contains(&l.kind.as_str()) {
                return Err(format!(
                    "{what}: `kind` must be one of {}, not {:?}",
                    GAME_KINDS.join(", "),
                    l.kind
                ));
            }
        }
        Ok(())
    }

    /// `[[gateway.agents]]`: each a valid id with a token of its own, no two ids alike
    /// and none like the bridge's own `gateway.agent_id`.
    fn check_gateway_agents(&self) -> Result<(), String> {
        let bridge = lookalike::key(&self.gateway.agent_id);
        let mut seen: Vec<(String, &GatewayAgent)> = Vec::new();
        for a in &self.gateway.agents {
            let what = format!("config: `[[gateway.agents]]` id {:?}", a.id);
            if a.id.trim().is_empty() || a.id.chars().any(char::is_control) {
                return Err(format!(
                    "{what}: an id must be non-empty text without control characters"
                ));
            }
            if a.token.is_empty() {
                return Err(format!(
                    "{what}: `token` must be set (that is what binds the id)"
                ));
            }
            if a.token == self.gateway_token() {
                return Err(format!(
                    "{what}: its token must differ from the gateway's shared token"
                ));
            }
            let key = lookalike::key(&a.id);
            if key == bridge {
                return Err(format!(
                    "{what}: looks like the bridge's own `gateway.agent_id` {:?}",
                    self.gateway.agent_id
                ));
            }
            if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
                return Err(format!(
                    "{what}: looks like {:?}, listed before it",
                    other.id
                ));
            }
            if let Some((_, other)) = seen.iter().find(|(_, o)| o.token == a.token) {
                return Err(format!("{what}: has the same token as {:?}", other.id));
            }
            seen.push((key, a));
        }
        Ok(())
    }

    /// Where this world's key file is: `federation.key_file`, else `world.key` in the
    /// data directory; `None` with `--memory` and no key file (a key per run).
    pub fn key_path(&self) -> Option<PathBuf> {
        if !self.federation.key_file.is_empty() {
            return Some(PathBuf::from(expand_home(&self.federation.key_file)));
        }
        (!self.store.memory)
            .then(|| Path::new(&expand_home(&self.store.data_dir)).join("world.key"))
    }

    /// The token `/ws/matrix?token=` must carry: `gateway.token`, else `http.token` (the
    /// gateway is served on the HTTP listeners, so the HTTP surface's public-bind rule
    /// covers it); empty = no token needed.
    pub fn gateway_token(&self) -> &str {
        if self.gateway.token.is_empty() {
            &self.http.token
        } else {
            &self.gateway.token
        }
    }
}

/// Expand a leading `~/` (or a lone `~`) with `$HOME`; other paths come back unchanged,
/// as does everything when `HOME` is unset.
pub fn expand_home(path: &str) -> String {
    expand_home_with(path, std::env::var("HOME").ok().as_deref())
}

fn expand_home_with(path: &str, home: Option<&str>) -> String {
    let Some(home) = home.filter(|h| !h.is_empty()) else {
        return path.to_string();
    };
    let home = home.trim_end_matches('/');
    if path == "~" {
        home.to_string()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        path.to_string()
    }
}

/// A world id: non-empty, `[A-Za-z0-9_.-]+` (it travels in URLs and event origins).
fn check_world_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a world id (one or more letters, digits, '_', '.' or '-')"
        ))
    }
}

fn check_backend(backend: &str) -> Result<(), String> {
    if AGENT_BACKENDS.contains(&backend) {
        Ok(())
    } else {
        Err(format!(
            "'{backend}' is not an agent backend (one of {})",
            AGENT_BACKENDS.join(", ")
        ))
    }
}

/// Deserialize, turning toml's error into one sentence with the key path and the line
/// (`file` names the config file in the location when there is one).
fn parse_toml(text: &str, file: Option<&Path>) -> Result<Config, String> {
    toml::from_str(text).map_err(|e| describe_toml_error(text, &e, file))
}

fn describe_toml_error(text: &str, err: &toml::de::Error, file: Option<&Path>) -> String {
    let msg = err.message().trim();
    let Some(span) = err.span() else {
        return format!("config: {msg}{}", location(text, None, file));
    };
    let here = location(text, Some(span.start), file);
    let found = text.get(span.clone()).unwrap_or("").trim();
    // The parser's errors (bad syntax, duplicate keys) have no key path to find.
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        if msg == "duplicate key" {
            return format!("config: duplicate key `{found}`{here}");
        }
        return format!("config: invalid TOML: {msg}{here}");
    };
    let path = key_path_at(doc.get_ref(), &span).unwrap_or_else(|| found.to_string());

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| format!("; expected {e}"))
            .unwrap_or_default();
        return format!("config: unknown key `{path}`{here}{expected}");
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return format!("config: `{path}` is missing the required key `{field}`{here}");
    }
    let expected = msg
        .rsplit_once(", expected ")
        .map(|(_, e)| e)
        .or_else(|| msg.contains("socket address").then_some("socket address"));
    match expected {
        Some(expected) => {
            let found = shorten(found);
            format!(
                "config: `{path}` must be {}, not {found}{here}",
                describe_expected(expected)
            )
        }
        None => format!("config: `{path}`: {msg}{here}"),
    }
}

/// " (line N)" or " (FILE:N)".
fn location(text: &str, offset: Option<usize>, file: Option<&Path>) -> String {
    let line = offset.map(|o| text[..o.min(text.len())].matches('\n').count() + 1);
    match (file, line) {
        (Some(f), Some(n)) => format!(" ({}:{n})", f.display()),
        (Some(f), None) => format!(" (in {})", f.display()),
        (None, Some(n)) => format!(" (line {n})"),
        (None, None) => String::new(),
    }
}

/// serde's name for a type → what a user writes in TOML.
fn describe_expected(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u16" | "u8" => "a non-negative integer".into(),
        "u32" => "a non-negative integer up to 4294967295".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "a string (in quotes)".into(),
        "a sequence" => "an array like [ ... ]".into(),
        "socket address" => "an address like \"127.0.0.1:4004\" or \"localhost:4004\"".into(),
        s if s.starts_with("struct ") => "a table".into(),
        other => other.into(),
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

/// The dotted path (`line.dial[1].addr`) of the key or value at exactly `span`; the
/// deepest match wins, because a table and its first entry can share a span.
fn key_path_at(doc: &toml::de::DeTable<'_>, span: &Range<usize>) -> Option<String> {
    fn walk_value(
        value: &Spanned<toml::de::DeValue<'_>>,
        path: &str,
        span: &Range<usize>,
        best: &mut Option<(usize, String)>,
        depth: usize,
    ) {
        if value.span() == *span && best.as_ref().is_none_or(|(d, _)| depth > *d) {
            *best = Some((depth, path.to_string()));
        }
        match value.get_ref() {
            toml::de::DeValue::Table(table) => walk_table(table, path, span, best, depth + 1),
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk_value(item, &format!("{path}[{i}]"), span, best, depth + 1);
                }
            }
            _ => {}
        }
    }
    fn walk_table(
        table: &toml::de::DeTable<'_>,
        prefix: &str,
        span: &Range<usize>,
        best: &mut Option<(usize, String)>,
        depth: usize,
    ) {
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            if key.span() == *span && best.as_ref().is_none_or(|(d, _)| depth > *d) {
                *best = Some((depth, path.clone()));
            }
            walk_value(value, &path, span, best, depth);
        }
    }
    let mut best = None;
    walk_table(doc, "", span, &mut best, 0);
    best.map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// DESIGN.md's config block, verbatim.
    const DESIGN_BLOCK: &str = r#"
world = "local"                          # this world's id (federation, events' origin)
[http]
listen = ["127.0.0.1:4004", "127.0.0.1:8765"]
token = ""                               # API token; required to bind a non-loopback address
max_connections = 10000
header_max_bytes = 16384
body_max_bytes = 1048576
header_timeout_s = 10
keepalive_idle_s = 60
cors_origins = []
rate_limit_requests = 60                 # per user_id
rate_limit_window_s = 60
[line]
listen = ["127.0.0.1:4005"]
token = ""
max_line_bytes = 65536
heartbeat_s = 30
[[line.dial]]                            # outbound links, e.g. to a TES3MP script that listens
world = "morrowind"
kind = "tes3mp"
addr = "127.0.0.1:7777"
token = ""
[sessions]
max = 20
idle_timeout_s = 3600
history_max = 50
[rooms]
events_max = 50
world_file = ""                          # default: the built-in world from fixtures/
[agent]
backend = "builtin"                      # builtin | openai | command
workers = 4
queue = 256
timeout_s = 30
base_url = "http://127.0.0.1:11434/v1"   # openai: any OpenAI-compatible server
model = ""
api_key_env = "OPENAI_API_KEY"           # the key is read from this variable, never the file
command = []                             # command: argv of the subprocess
persona_file = ""
mood = "calm"                            # a Workshop bark's mood when the state file has none
crisis_file = ""                         # extra crisis rules, format of fixtures/crisis/lexicon.txt
crisis_model_check = false               # openai/command: the model may add a crisis detection
crisis_model_check_ms = 1500
[gateway]
token = ""
agent_id = "timmy"
heartbeat_s = 30
history_max = 1000
history_max_age_s = 120
max_message_bytes = 1048576
max_queued_bytes = 1048576
[workshop]
state_file = "~/.timmy/workshop-state.yaml"
inbox_dir = "~/.timmy/inbox"
poll_s = 2
heartbeat_s = 15
diff = true
[store]
data_dir = "./worldbridge-data"          # --memory keeps everything in memory
[federation]
sync_interval_s = 5
timeout_ms = 2000
pages_max = 20
events_keep = 10000
page_max_bytes = 524288
portal_rooms = []
event_kinds = ["fire", "rain", "growth", "storm", "quake"]
[[federation.peers]]
world = "vps"
url = "http://127.0.0.1:4004"
token = ""                               # the pair's shared secret, used both ways
"#;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A config file under the temp dir with a name no other test (or process) uses;
    /// removed on drop.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(text: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "worldbridge-config-test-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            TempConfig(path)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn err_of(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    fn assert_contains(haystack: &str, needle: &str) {
        assert!(
            haystack.contains(needle),
            "expected {needle:?} in {haystack:?}"
        );
    }

    #[test]
    fn defaults_are_the_ones_design_md_lists() {
        let c = Config::default();
        assert_eq!(c.world, "local");
        assert!(!c.allow_public_without_token);

        assert_eq!(
            c.http.listen,
            vec![a("127.0.0.1:4004"), a("127.0.0.1:8765")]
        );
        assert_eq!(c.http.token, "");
        assert_eq!(c.http.max_connections, 10000);
        assert_eq!(c.http.header_max_bytes, 16384);
        assert_eq!(c.http.body_max_bytes, 1048576);
        assert_eq!(c.http.header_timeout_s, 10);
        assert_eq!(c.http.keepalive_idle_s, 60);
        assert!(c.http.cors_origins.is_empty());
        assert_eq!(c.http.rate_limit_requests, 60);
        assert_eq!(c.http.rate_limit_window_s, 60);

        assert_eq!(c.line.listen, vec![a("127.0.0.1:4005")]);
        assert_eq!(c.line.token, "");
        assert_eq!(c.line.max_line_bytes, 65536);
        assert_eq!(c.line.heartbeat_s, 30);
        assert!(c.line.dial.is_empty());

        assert_eq!(c.sessions.max, 20);
        assert_eq!(c.sessions.idle_timeout_s, 3600);
        assert_eq!(c.sessions.history_max, 50);

        assert_eq!(c.rooms.events_max, 50);
        assert_eq!(c.rooms.world_file, "");

        assert_eq!(c.agent.backend, "builtin");
        assert_eq!(c.agent.workers, 4);
        assert_eq!(c.agent.queue, 256);
        assert_eq!(c.agent.timeout_s, 30);
        assert_eq!(c.agent.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(c.agent.model, "");
        assert_eq!(c.agent.api_key_env, "OPENAI_API_KEY");
        assert!(c.agent.command.is_empty());
        assert_eq!(c.agent.persona_file, "");
        assert_eq!(c.agent.mood, "calm");
        assert_eq!(c.agent.crisis_file, "");
        assert!(!c.agent.crisis_model_check);
        assert_eq!(c.agent.crisis_model_check_ms, 1500);

        assert_eq!(c.gateway.token, "");
        assert_eq!(c.gateway.agent_id, "timmy");
        assert_eq!(c.gateway.heartbeat_s, 30);
        assert_eq!(c.gateway.history_max, 1000);
        assert_eq!(c.gateway.history_max_age_s, 120);
        assert_eq!(c.gateway.max_message_bytes, 1048576);
        assert_eq!(c.gateway.max_queued_bytes, 1048576);

        assert_eq!(c.workshop.state_file, "~/.timmy/workshop-state.yaml");
        assert_eq!(c.workshop.inbox_dir, "~/.timmy/inbox");
        assert_eq!(c.workshop.poll_s, 2);
        assert_eq!(c.workshop.heartbeat_s, 15);
        assert!(c.workshop.diff);

        assert_eq!(c.store.data_dir, "./worldbridge-data");
        assert!(!c.store.memory);

        assert_eq!(c.federation.sync_interval_s, 5);
        assert!(c.federation.portal_rooms.is_empty());
        assert_eq!(
            c.federation.event_kinds,
            ["fire", "rain", "growth", "storm", "quake"]
        );
        assert!(c.federation.peers.is_empty());

        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml(""), Ok(Config::default()));
        assert_eq!(Config::from_toml("# nothing\n"), Ok(Config::default()));
    }

    #[test]
    fn design_md_block_parses_to_the_defaults_plus_its_dial_and_peer() {
        let mut c = Config::from_toml(DESIGN_BLOCK).unwrap();
        assert_eq!(
            c.line.dial,
            vec![DialConfig {
                world: "morrowind".into(),
                kind: "tes3mp".into(),
                addr: a("127.0.0.1:7777"),
                token: String::new(),
            }]
        );
        assert_eq!(
            c.federation.peers,
            vec![PeerConfig {
                world: "vps".into(),
                url: "http://127.0.0.1:4004".into(),
                token: String::new(),
                public_key: String::new(),
            }]
        );
        assert_eq!(c.validate(), Ok(()));
        // Every other value in the block is the documented default.
        c.line.dial.clear();
        c.federation.peers.clear();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn file_values_replace_defaults() {
        let c = Config::from_toml(
            "world = \"vps\"\nallow_public_without_token = true\n\
             [http]\nlisten = [\"[::1]:9000\"]\ncors_origins = [\"https://a.example\"]\n\
             [agent]\nbackend = \"command\"\ncommand = [\"hermes\", \"--jsonl\"]\ntemperature = 1\n\
             [workshop]\ndiff = false\n\
             [[line.dial]]\nworld = \"mw\"\naddr = \"127.0.0.1:7777\"\n",
        )
        .unwrap();
        assert_eq!(c.world, "vps");
        assert!(c.allow_public_without_token);
        assert_eq!(c.http.listen, vec![a("[::1]:9000")]);
        assert_eq!(c.http.cors_origins, vec!["https://a.example".to_string()]);
        assert_eq!(c.agent.command, vec!["hermes", "--jsonl"]);
        assert_eq!(c.agent.temperature, 1.0);
        assert!(!c.workshop.diff);
        assert_eq!(c.line.dial[0].kind, "generic", "kind defaults to generic");
        assert_eq!(
            c.sessions,
            SessionsConfig::default(),
            "untouched tables keep defaults"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path_and_line() {
        let e = err_of("world = \"x\"\n[http]\nlistne = [\"127.0.0.1:1\"]\n");
        assert_contains(&e, "config: unknown key `http.listne` (line 3)");
        assert_contains(&e, "`listen`");

        assert_contains(&err_of("wrld = \"x\"\n"), "unknown key `wrld` (line 1)");
        assert_contains(
            &err_of("http.listne = []\n"),
            "unknown key `http.listne` (line 1)",
        );
        assert_contains(&err_of("[nope]\n"), "unknown key `nope` (line 1)");
        assert_contains(
            &err_of(
                "[[line.dial]]\nworld = \"a\"\naddr = \"127.0.0.1:1\"\n\
                 [[line.dial]]\nworld = \"b\"\naddr = \"127.0.0.1:2\"\nport = 3\n",
            ),
            "unknown key `line.dial[1].port` (line 7)",
        );
        assert_contains(
            &err_of("[[federation.peers]]\nworld = \"a\"\nurl = \"http://x\"\nsecret = \"s\"\n"),
            "unknown key `federation.peers[0].secret` (line 4)",
        );
    }

    #[test]
    fn listen_entries_may_be_host_names_resolving_to_each_address() {
        let c = Config::from_toml(
            "[http]\nlisten = [\"localhost:9000\", \"127.0.0.1:9000\"]\n[line]\nlisten = [\"localhost:9001\"]\n",
        )
        .expect("localhost is an address people write");
        assert_eq!(c.http.listen[0], a("127.0.0.1:9000"), "IPv4 first");
        assert!(c
            .http
            .listen
            .iter()
            .all(|x| x.ip().is_loopback() && x.port() == 9000));
        assert!(
            c.http.listen.len() <= 2,
            "each address once: {:?}",
            c.http.listen
        );
        assert!(c
            .line
            .listen
            .iter()
            .all(|x| x.ip().is_loopback() && x.port() == 9001));
        assert!(c.validate().is_ok(), "loopback names need no token");
        assert_eq!(resolve_listen("[::1]:80").unwrap(), vec![a("[::1]:80")]);
        for bad in ["localhost", "localhost:x", ":80", "127.0.0.1:99999"] {
            assert!(resolve_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let e = err_of("[sessions]\nmax = \"20\"\n");
        assert_eq!(
            e,
            "config: `sessions.max` must be a non-negative integer, not \"20\" (line 2)"
        );
        assert_contains(
            &err_of("[sessions]\nmax = -1\n"),
            "`sessions.max` must be a non-negative integer, not -1",
        );
        assert_contains(
            &err_of("[workshop]\ndiff = 1\n"),
            "`workshop.diff` must be true or false",
        );
        assert_contains(&err_of("world = 5\n"), "`world` must be a string");
        assert_contains(
            &err_of("[http]\nlisten = \"127.0.0.1:1\"\n"),
            "`http.listen` must be an array",
        );
        assert_contains(
            &err_of("[http]\nlisten = [\"127.0.0.1:1\", \"localhost\"]\n"),
            "`http.listen[1]` must be an address like \"127.0.0.1:4004\" or \"localhost:4004\", not \"localhost\" (line 2)",
        );
        assert_contains(&err_of("http = 3\n"), "`http` must be a table");
        assert_contains(
            &err_of("[agent]\ntemperature = \"hot\"\n"),
            "`agent.temperature` must be a number",
        );
        assert_contains(
            &err_of("[[line.dial]]\nworld = \"a\"\naddr = \"nowhere\"\n"),
            "`line.dial[0].addr` must be an address",
        );
    }

    #[test]
    fn missing_required_keys_and_bad_syntax_point_at_the_line() {
        assert_contains(
            &err_of("[[line.dial]]\nworld = \"a\"\naddr = \"127.0.0.1:1\"\n\n[[line.dial]]\nworld = \"b\"\n"),
            "`line.dial[1]` is missing the required key `addr` (line 5)",
        );
        assert_contains(&err_of("world = \"x\"\n[http\n"), "invalid TOML");
        assert_contains(&err_of("world = \"x\"\n[http\n"), "(line 2)");
        assert_contains(
            &err_of("[http]\ntoken = \"a\"\ntoken = \"b\"\n"),
            "duplicate key `token` (line 3)",
        );
    }

    #[test]
    fn precedence_is_defaults_then_file_then_env_then_flags() {
        let file = TempConfig::new(
            "world = \"fromfile\"\n[agent]\nbackend = \"openai\"\n\
             [store]\ndata_dir = \"/file/dir\"\n[sessions]\nmax = 7\n",
        );
        let with_file = ServeArgs {
            config: Some(file.0.clone()),
            ..ServeArgs::default()
        };

        let c = Config::load(&with_file, &no_env).unwrap();
        assert_eq!(c.world, "fromfile");
        assert_eq!(c.agent.backend, "openai");
        assert_eq!(c.store.data_dir, "/file/dir");
        assert_eq!(c.sessions.max, 7);
        assert_eq!(
            c.http.listen,
            HttpConfig::default().listen,
            "default where the file is silent"
        );

        let env = env_of(&[
            ("WORLDBRIDGE_WORLD", "fromenv"),
            ("WORLDBRIDGE_AGENT", "command"),
            ("WORLDBRIDGE_DATA_DIR", "/env/dir"),
        ]);
        // The command backend needs a command; the env must win over the file for that
        // to be the complaint.
        let e = Config::load(&with_file, &env).unwrap_err();
        assert_contains(&e, "agent.command");
        let env = env_of(&[
            ("WORLDBRIDGE_WORLD", "fromenv"),
            ("WORLDBRIDGE_AGENT", "builtin"),
            ("WORLDBRIDGE_DATA_DIR", "/env/dir"),
        ]);
        let c = Config::load(&with_file, &env).unwrap();
        assert_eq!(c.world, "fromenv");
        assert_eq!(c.agent.backend, "builtin");
        assert_eq!(c.store.data_dir, "/env/dir");
        assert_eq!(
            c.sessions.max, 7,
            "the file still counts where env is silent"
        );

        let flags = ServeArgs {
            config: Some(file.0.clone()),
            http: vec![a("127.0.0.1:9001"), a("127.0.0.1:9002")],
            line: vec![a("127.0.0.1:9003")],
            world: Some("fromflag".into()),
            data_dir: Some("/flag/dir".into()),
            memory: false,
            agent: Some("openai".into()),
        };
        let c = Config::load(&flags, &env).unwrap();
        assert_eq!(c.world, "fromflag");
        assert_eq!(c.agent.backend, "openai");
        assert_eq!(c.store.data_dir, "/flag/dir");
        assert_eq!(
            c.http.listen,
            vec![a("127.0.0.1:9001"), a("127.0.0.1:9002")]
        );
        assert_eq!(c.line.listen, vec![a("127.0.0.1:9003")]);

        let memory = ServeArgs {
            memory: true,
            ..ServeArgs::default()
        };
        assert!(Config::load(&memory, &no_env).unwrap().store.memory);
        assert!(
            !Config::load(&ServeArgs::default(), &no_env)
                .unwrap()
                .store
                .memory
        );
    }

    #[test]
    fn config_file_comes_from_the_flag_else_worldbridge_config() {
        let from_env = TempConfig::new("world = \"envfile\"\n");
        let from_flag = TempConfig::new("world = \"flagfile\"\n");
        let env_path = from_env.0.to_str().unwrap().to_string();
        let env = env_of(&[("WORLDBRIDGE_CONFIG", env_path.as_str())]);

        let c = Config::load(&ServeArgs::default(), &env).unwrap();
        assert_eq!(c.world, "envfile");

        let args = ServeArgs {
            config: Some(from_flag.0.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(Config::load(&args, &env).unwrap().world, "flagfile");

        // An empty variable is unset: defaults, no attempt to read "".
        let empty = env_of(&[("WORLDBRIDGE_CONFIG", "")]);
        assert_eq!(
            Config::load(&ServeArgs::default(), &empty),
            Ok(Config::default())
        );
    }

    #[test]
    fn missing_or_broken_config_file_is_an_error_naming_the_path() {
        let missing = std::env::temp_dir().join(format!(
            "worldbridge-config-test-{}-does-not-exist.toml",
            std::process::id()
        ));
        let args = ServeArgs {
            config: Some(missing.clone()),
            ..ServeArgs::default()
        };
        let e = Config::load(&args, &no_env).unwrap_err();
        assert_contains(&e, &missing.display().to_string());
        assert_contains(&e, "cannot read");

        let broken = TempConfig::new("[http]\n\nlistne = []\n");
        let args = ServeArgs {
            config: Some(broken.0.clone()),
            ..ServeArgs::default()
        };
        let e = Config::load(&args, &no_env).unwrap_err();
        assert_contains(&e, "unknown key `http.listne`");
        assert_contains(&e, &format!("({}:3)", broken.0.display()));
    }

    #[test]
    fn timmy_bridge_variables_move_only_the_first_http_listener() {
        let c = Config::load(
            &ServeArgs::default(),
            &env_of(&[("TIMMY_BRIDGE_PORT", "5000")]),
        )
        .unwrap();
        assert_eq!(
            c.http.listen,
            vec![a("127.0.0.1:5000"), a("127.0.0.1:8765")]
        );

        let env = env_of(&[("TIMMY_BRIDGE_HOST", "::1"), ("TIMMY_BRIDGE_PORT", "5001")]);
        let c = Config::load(&ServeArgs::default(), &env).unwrap();
        assert_eq!(c.http.listen, vec![a("[::1]:5001"), a("127.0.0.1:8765")]);
        assert_eq!(
            c.line.listen,
            LineConfig::default().listen,
            "line listeners untouched"
        );

        // Flags beat env: --http replaces them all.
        let args = ServeArgs {
            http: vec![a("127.0.0.1:6000")],
            ..ServeArgs::default()
        };
        assert_eq!(
            Config::load(&args, &env).unwrap().http.listen,
            vec![a("127.0.0.1:6000")]
        );

        // Seed 001 users who set 0.0.0.0 get the public-bind rule, not a silent open port.
        let e = Config::load(
            &ServeArgs::default(),
            &env_of(&[("TIMMY_BRIDGE_HOST", "0.0.0.0")]),
        )
        .unwrap_err();
        assert_contains(&e, "0.0.0.0:4004");
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let cases = [
            ("TIMMY_BRIDGE_PORT", "http"),
            ("TIMMY_BRIDGE_PORT", "70000"),
            ("TIMMY_BRIDGE_HOST", "my host"),
            ("WORLDBRIDGE_AGENT", "gpt"),
            ("WORLDBRIDGE_WORLD", "two words"),
        ];
        for (var, value) in cases {
            let e = Config::load(&ServeArgs::default(), &env_of(&[(var, value)])).unwrap_err();
            assert!(e.starts_with(var), "{var}={value}: {e}");
            assert_contains(&e, value);
        }
        let missing = env_of(&[("WORLDBRIDGE_CONFIG", "/nonexistent/worldbridge.toml")]);
        assert_contains(
            &Config::load(&ServeArgs::default(), &missing).unwrap_err(),
            "/nonexistent/worldbridge.toml",
        );
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let args = ServeArgs {
            world: Some("a/b".into()),
            ..ServeArgs::default()
        };
        assert_contains(&Config::load(&args, &no_env).unwrap_err(), "--world: 'a/b'");
        let args = ServeArgs {
            agent: Some("gpt".into()),
            ..ServeArgs::default()
        };
        assert_contains(&Config::load(&args, &no_env).unwrap_err(), "--agent: 'gpt'");
    }

    #[test]
    fn public_bind_needs_the_matching_token_or_the_opt_out() {
        let mut c = Config::default();
        c.http.listen = vec![a("127.0.0.1:4004"), a("0.0.0.0:8765")];
        let e = c.validate().unwrap_err();
        assert_contains(&e, "0.0.0.0:8765");
        assert_contains(&e, "`http.listen`");
        assert_contains(&e, "`http.token` is empty");
        assert_contains(&e, "allow_public_without_token = true");

        c.http.token = "s3cret".into();
        assert_eq!(c.validate(), Ok(()));

        c.line.listen = vec![a("[::]:4005")];
        let e = c.validate().unwrap_err();
        assert_contains(&e, "[::]:4005");
        assert_contains(&e, "`line.token` is empty");
        c.line.token = "other".into();
        assert_eq!(c.validate(), Ok(()));

        let mut c = Config::default();
        c.http.listen = vec![a("192.168.1.5:4004")];
        c.line.listen = vec![a("0.0.0.0:4005")];
        c.allow_public_without_token = true;
        assert_eq!(c.validate(), Ok(()));

        // The http token does not cover the line surface.
        let mut c = Config::default();
        c.http.token = "s3cret".into();
        c.line.listen = vec![a("0.0.0.0:4005")];
        assert_contains(&c.validate().unwrap_err(), "`line.token`");

        // Loopback is fine without any token, v4 and v6.
        let mut c = Config::default();
        c.http.listen = vec![a("127.0.0.2:4004"), a("[::1]:4004")];
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn public_bind_opt_out_works_from_a_file() {
        let file = TempConfig::new("allow_public_without_token = true\n");
        let args = ServeArgs {
            config: Some(file.0.clone()),
            http: vec![a("0.0.0.0:4004")],
            ..ServeArgs::default()
        };
        assert_eq!(
            Config::load(&args, &no_env).unwrap().http.listen,
            vec![a("0.0.0.0:4004")]
        );
        let args = ServeArgs {
            config: None,
            ..args
        };
        assert_contains(&Config::load(&args, &no_env).unwrap_err(), "0.0.0.0:4004");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("http://127.0.0.1:11434/v1"));
        assert!(is_loopback("http://localhost/v1"));
        assert!(is_loopback("http://[::1]:8080"));
        assert!(is_loopback("http://user:pw@127.0.0.2:1/x"));
        assert!(!is_loopback("https://api.openai.com/v1"));
        assert!(!is_loopback("http://10.0.0.1:11434/v1"));
    }

    #[test]
    fn a_redis_on_another_machine_needs_a_password() {
        let with = |url: &str, opt_out: bool| {
            let c = Config {
                allow_public_without_token: opt_out,
                cluster: Some(ClusterConfig {
                    redis_url: url.into(),
                    ..ClusterConfig::default()
                }),
                ..Config::default()
            };
            c.validate()
        };
        for local in [
            "redis://127.0.0.1:6379",
            "redis://localhost:6379/2",
            "redis://[::1]:6379",
            "unix:///run/redis/redis.sock",
        ] {
            with(local, false).unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        for open in [
            "redis://10.0.0.5:6379",
            "redis://redis.example:6379",
            "redis://user@10.0.0.5",
        ] {
            let err = with(open, false).unwrap_err();
            assert_contains(&err, "without a password");
            assert_contains(&err, "allow_public_without_token");
            with(open, true).unwrap();
        }
        with("redis://:s3cret@10.0.0.5:6379", false).unwrap();
        with("redis://worldbridge:s3cret@redis.example:6379/1", false).unwrap();
        // Over TLS a client certificate tells Redis who the node is, as a password does;
        // and the node must check Redis's certificate.
        let over_tls = |url: &str, change: fn(&mut ClusterConfig)| {
            let mut cluster = ClusterConfig {
                redis_url: url.into(),
                ..ClusterConfig::default()
            };
            change(&mut cluster);
            Config {
                cluster: Some(cluster),
                ..Config::default()
            }
            .validate()
        };
        let certificate = |c: &mut ClusterConfig| {
            (c.tls_cert_file, c.tls_key_file) = ("node.crt".into(), "node.key".into());
        };
        assert_contains(
            &over_tls("rediss://10.0.0.5:6380", |_| {}).unwrap_err(),
            "without a password",
        );
        over_tls("rediss://10.0.0.5:6380", certificate).unwrap();
        over_tls("rediss://:s3cret@10.0.0.5:6380", |_| {}).unwrap();
        over_tls("rediss://127.0.0.1:6380/#insecure", |_| {}).unwrap();
        assert_contains(
            &over_tls("rediss://:s3cret@10.0.0.5:6380/#insecure", |_| {}).unwrap_err(),
            "#insecure",
        );
        assert_contains(
            &over_tls("redis://127.0.0.1:6379", |c| {
                c.tls_ca_file = "ca.crt".into()
            })
            .unwrap_err(),
            "`cluster.tls_ca_file` is set but `cluster.redis_url` is not rediss://",
        );
        assert_contains(
            &over_tls("rediss://127.0.0.1:6380", |c| {
                c.tls_cert_file = "node.crt".into()
            })
            .unwrap_err(),
            "go together",
        );
        // A URL the client cannot read is refused, and the error does not show its password.
        let err = with("redis://:s3cret@10.0.0.5:notaport", false).unwrap_err();
        assert_contains(&err, "is not a Redis URL");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_redis_urls_password_is_never_shown() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@10.0.0.5:6379/1",
                "redis://:***@10.0.0.5:6379/1",
            ),
            ("redis://wb:s3:cr@et@h:6379", "redis://wb:***@h:6379"),
            ("redis://s3cret@h", "redis://***@h"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redis_url_shown(url), shown);
        }
    }

    #[test]
    fn cluster_is_off_by_default_and_its_keys_are_checked() {
        assert_eq!(Config::default().cluster, None);
        let c = Config::from_toml("[cluster]\nnode_id = \"a\"\n").unwrap();
        let cluster = c.cluster.clone().unwrap();
        assert_eq!(cluster.redis_url, "redis://127.0.0.1:6379");
        assert_eq!((cluster.node_ttl_s, cluster.presence_ttl_s), (10, 60));
        assert_eq!(cluster.node_name(), "a");
        c.validate().unwrap();
        let unnamed = ClusterConfig::default().node_name();
        assert!(
            unnamed.ends_with(&format!("-{}", std::process::id())),
            "{unnamed}"
        );
        check_world_id(&unnamed).unwrap();
        type Breaker = fn(&mut ClusterConfig);
        let cases: [(Breaker, &str); 6] = [
            (|c| c.redis_url = "http://x".into(), "`cluster.redis_url`"),
            (
                |c| c.node_ttl_s = 0,
                "`cluster.node_ttl_s` must be at least 1",
            ),
            (
                |c| c.presence_ttl_s = 0,
                "`cluster.presence_ttl_s` must be at least 1",
            ),
            (|c| c.log_max = 10, "`cluster.log_max` must be at least 100"),
            (|c| c.node_id = "a b".into(), "`cluster.node_id`"),
            (
                |c| c.presence_ttl_s = 10,
                "must be more than `cluster.node_ttl_s`",
            ),
        ];
        for (breaker, said) in cases {
            let mut c = Config::default();
            let mut cluster = ClusterConfig::default();
            breaker(&mut cluster);
            c.cluster = Some(cluster);
            let err = c.validate().unwrap_err();
            assert!(err.contains(said), "{err} should name {said}");
        }
        let mut c = Config::from_toml(
            "[cluster]\n[[federation.peers]]\nworld = \"p\"\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("federation.key_file"), "{err}");
        c.federation.key_file = "/etc/worldbridge/world.key".into();
        c.validate().unwrap();
        c.cluster = None;
        c.federation.key_file.clear();
        c.validate().unwrap();
    }

    #[test]
    fn validate_names_each_bad_value() {
        type Breaker = fn(&mut Config);
        let cases: [(Breaker, &str); 19] = [
            (|c| c.world = String::new(), "`world`"),
            (
                |c| c.federation.event_kinds = vec![" ".into()],
                "`federation.event_kinds`",
            ),
            (|c| c.world = "a b".into(), "`world`"),
            (|c| c.world = "é".into(), "`world`"),
            (|c| c.agent.backend = "gpt".into(), "`agent.backend`"),
            (
                |c| c.agent.workers = 0,
                "`agent.workers` must be at least 1",
            ),
            (|c| c.agent.queue = 0, "`agent.queue` must be at least 1"),
            (
                |c| c.agent.crisis_model_check_ms = 0,
                "`agent.crisis_model_check_ms` must be at least 1",
            ),
            (
                |c| c.agent.timeout_s = 0,
                "`agent.timeout_s` must be at least 1",
            ),
            (|c| c.sessions.max = 0, "`sessions.max` must be at least 1"),
            (
                |c| c.http.max_connections = 0,
                "`http.max_connections` must be at least 1",
            ),
            (
                |c| c.http.header_max_bytes = 1023,
                "`http.header_max_bytes` must be at least 1024, not 1023",
            ),
            (
                |c| c.http.rate_limit_requests = 0,
                "`http.rate_limit_requests` must be at least 1",
            ),
            (
                |c| c.http.rate_limit_window_s = 0,
                "`http.rate_limit_window_s` must be at least 1",
            ),
            (
                |c| c.line.max_line_bytes = 0,
                "`line.max_line_bytes` must be at least 1",
            ),
            (
                |c| c.http.listen.clear(),
                "`http.listen` must list at least one address",
            ),
            (
                |c| c.agent.backend = "command".into(),
                "needs `agent.command`",
            ),
            (
                |c| {
                    c.agent.backend = "command".into();
                    c.agent.command = vec![String::new()];
                },
                "needs `agent.command`",
            ),
            (
                |c| c.http.listen = vec![a("10.0.0.1:4004")],
                "`http.token` is empty",
            ),
        ];
        for (breaker, expected) in cases {
            let mut c = Config::default();
            breaker(&mut c);
            match c.validate() {
                Ok(()) => panic!("validate accepted a config that should fail with {expected:?}"),
                Err(e) => assert_contains(&e, expected),
            }
        }

        // The edges that are allowed.
        let mut c = Config {
            world: "Morrowind_2.0-test".into(),
            ..Config::default()
        };
        c.http.header_max_bytes = 1024;
        c.line.listen.clear();
        c.agent.backend = "command".into();
        c.agent.command = vec!["hermes".into()];
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn expand_home_replaces_only_a_leading_tilde() {
        let home = Some("/home/timmy");
        assert_eq!(
            expand_home_with("~/.timmy/inbox", home),
            "/home/timmy/.timmy/inbox"
        );
        assert_eq!(expand_home_with("~", home), "/home/timmy");
        assert_eq!(expand_home_with("~/x", Some("/root/")), "/root/x");
        assert_eq!(expand_home_with("/abs/~/x", home), "/abs/~/x");
        assert_eq!(expand_home_with("./rel", home), "./rel");
        assert_eq!(expand_home_with("~other/x", home), "~other/x");
        assert_eq!(expand_home_with("~/x", None), "~/x");
        assert_eq!(expand_home_with("~/x", Some("")), "~/x");
        // The public wrapper reads $HOME.
        if let Ok(home) = std::env::var("HOME") {
            if !home.is_empty() {
                assert_eq!(
                    expand_home("~/a"),
                    format!("{}/a", home.trim_end_matches('/'))
                );
            }
        }
    }

    #[test]
    fn line_links_bind_worlds_to_tokens_and_bad_entries_are_named() {
        let c = Config::from_toml(
            "[[line.links]]\nworld = \"morrowind\"\ntoken = \"m\"\nkind = \"tes3mp\"\n[[line.links]]\nworld = \"mud\"\ntoken = \"u\"",
        )
        .unwrap();
        assert_eq!(c.line.links[1].kind, "generic");
        assert_eq!(c.validate(), Ok(()));
        for (toml, says) in [
            ("[[line.links]]\nworld = \"m\"\ntoken = \"\"", "`token` must be set"),
            ("[[line.links]]\nworld = \"a b\"\ntoken = \"t\"", "world \"a b\""),
            ("[[line.links]]\nworld = \"m\"\ntoken = \"t\"\nkind = \"doom\"", "`kind` must be"),
            ("[[line.links]]\nworld = \"m\"\ntoken = \"t\"\n[[line.links]]\nworld = \"m\"\ntoken = \"u\"", "listed twice"),
            (
                "[[line.links]]\nworld = \"m\"\ntoken = \"t\"\n[[line.dial]]\nworld = \"m\"\naddr = \"127.0.0.1:7777\"",
                "also a `[[line.dial]]` world",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.contains(says) && err.contains("[[line.links]]"), "{toml}: {err}");
        }
    }

    #[test]
    fn gateway_agents_bind_ids_to_tokens_and_bad_entries_are_named() {
        let c = Config::from_toml(
            r#"
[gateway]
token = "shared"
[[gateway.agents]]
id = "perplexity"
token = "p-secret"
role = "interviewer"
[[gateway.agents]]
id = "hermes"
token = "h-secret"
"#,
        )
        .unwrap();
        assert_eq!(c.gateway.agents.len(), 2);
        assert_eq!(c.gateway.agents[1].role, "");
        assert_eq!(c.validate(), Ok(()));

        for (toml, says) in [
            ("[[gateway.agents]]\nid = \"a\"\ntoken = \"\"", "`token` must be set"),
            ("[[gateway.agents]]\nid = \" \"\ntoken = \"t\"", "non-empty"),
            ("[[gateway.agents]]\nid = \"Tımmy\"\ntoken = \"t\"", "looks like the bridge's own"),
            (
                "[[gateway.agents]]\nid = \"ann\"\ntoken = \"t\"\n[[gateway.agents]]\nid = \"Ann\"\ntoken = \"u\"",
                "looks like \"ann\"",
            ),
            (
                "[[gateway.agents]]\nid = \"ann\"\ntoken = \"t\"\n[[gateway.agents]]\nid = \"bob\"\ntoken = \"t\"",
                "same token as \"ann\"",
            ),
            (
                "[gateway]\ntoken = \"t\"\n[[gateway.agents]]\nid = \"ann\"\ntoken = \"t\"",
                "differ from the gateway's shared token",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.contains(says), "{toml}: {err}");
            assert!(err.contains("[[gateway.agents]]"), "{err}");
        }
    }

    #[test]
    fn websocket_keys_have_defaults_bounds_and_the_gateway_token_falls_back() {
        let c = Config::default();
        assert_eq!(c.gateway.max_queued_messages, 1024);
        assert_eq!(c.gateway.max_messages_per_s, 200);
        assert_eq!(c.workshop.visitors_per_connection, 8);
        assert_eq!(c.gateway_token(), "");
        let mut c = Config::default();
        c.http.token = "api".into();
        assert_eq!(c.gateway_token(), "api");
        c.gateway.token = "gw".into();
        assert_eq!(c.gateway_token(), "gw");

        type Breaker = fn(&mut Config);
        let cases: [(Breaker, &str); 4] = [
            (
                |c| c.gateway.heartbeat_s = 0,
                "`gateway.heartbeat_s` must be at least 1",
            ),
            (
                |c| c.gateway.max_queued_bytes = c.gateway.max_message_bytes - 1,
                "`gateway.max_queued_bytes` must be at least 1048576",
            ),
            (
                |c| c.workshop.poll_s = 0,
                "`workshop.poll_s` must be at least 1",
            ),
            (
                |c| c.workshop.visitors_per_connection = 0,
                "`workshop.visitors_per_connection` must be at least 1",
            ),
        ];
        for (breaker, expected) in cases {
            let mut c = Config::default();
            breaker(&mut c);
            assert_contains(&c.validate().unwrap_err(), expected);
        }
        let c = Config::from_toml(
            "[gateway]\nmax_queued_messages = 5\n[workshop]\nvisitors_per_connection = 2\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.gateway.max_queued_messages,
                c.workshop.visitors_per_connection
            ),
            (5, 2)
        );
    }
}
