//! Configuration: every limit and default of worldbridge in one place.
//!
//! Precedence: command-line flags > environment > config file (TOML) > defaults.
//! The key names and defaults are the contract of DESIGN.md "Config file"; README.md
//! documents each one. Unknown keys and bad values are rejected at start with the key's name.

use serde::Deserialize;
use std::net::SocketAddr;

/// The whole configuration of one bridge process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This world's id: the origin of its events in federation.
    pub world: String,
    /// Bind non-loopback addresses even where a surface has no token (off: refuse to start).
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
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
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
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LineConfig {
    pub listen: Vec<SocketAddr>,
    pub token: String,
    pub max_line_bytes: usize,
    pub heartbeat_s: u64,
    pub dial: Vec<DialConfig>,
}

/// An outbound line-protocol link (the bridge dials a game that listens).
#[derive(Debug, Clone, Deserialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    pub max: usize,
    pub idle_timeout_s: u64,
    pub history_max: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    pub events_max: usize,
    /// A world file (JSON, the shape of `fixtures/world.json`); empty: the built-in world.
    pub world_file: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// How many recent room events go into the prompt's world context.
    pub context_events: usize,
    /// How many chats one user may have waiting behind the one in flight.
    pub per_user_queue: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub token: String,
    pub agent_id: String,
    pub heartbeat_s: u64,
    pub history_max: usize,
    pub history_max_age_s: u64,
    pub max_message_bytes: usize,
    pub max_queued_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkshopConfig {
    pub state_file: String,
    pub inbox_dir: String,
    pub poll_s: u64,
    pub heartbeat_s: u64,
    pub diff: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub data_dir: String,
    /// Keep everything in memory (`--memory`): nothing is written to disk.
    pub memory: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    pub sync_interval_s: u64,
    pub portal_rooms: Vec<String>,
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub world: String,
    pub url: String,
    #[serde(default)]
    pub token: String,
}

fn addr(s: &str) -> SocketAddr {
    // Only called on the literal defaults below.
    s.parse().unwrap_or_else(|_| unreachable!("bad default address {s}"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            world: "local".into(),
            allow_public_without_token: false,
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
        }
    }
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig {
            listen: vec![addr("127.0.0.1:4005")],
            token: String::new(),
            max_line_bytes: 64 * 1024,
            heartbeat_s: 30,
            dial: Vec::new(),
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
            world_file: String::new(),
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
            context_events: 10,
            per_user_queue: 8,
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
            portal_rooms: Vec::new(),
            peers: Vec::new(),
        }
    }
}
