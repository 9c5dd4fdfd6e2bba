//! worldbridge: one process per world that joins an AI agent, game servers and people.
//!
//! Map of the crate:
//! - [`cli`]: the command line: `serve` (the default), `export`, `import`.
//! - [`config`]: every default and limit, loaded from flags, env and a TOML file.
//! - [`event_loop`]: the one mio loop that owns every socket and all live state.
//! - [`conn`]: one state machine per connection (HTTP, line protocol, WebSocket).
//! - [`codec`]: bytes ⇄ messages; "need more bytes" is `Ok(None)`.
//! - [`world`]: the socket-free core: rooms, presence, events, sessions, rate limits,
//!   the gateway hub and heartbeats.
//! - [`api`]: HTTP routes → core calls → responses (and WebSocket upgrades).
//! - [`app`], [`calls`]: the live state of the bridge and the agent calls in flight (one
//!   per user, queues, deadlines).
//! - [`ws_api`]: the WebSocket feeds' side of the app: agent calls, inbox, presence.
//! - [`workshop`]: the Workshop state feed, its file watcher and inbox writer.
//! - [`agent`]: worker pool, backends (builtin, OpenAI-compatible, subprocess), prompt
//!   building and the crisis protocol.
//! - [`line_api`], [`links`], [`protocol`]: the line protocol to game servers: messages →
//!   core calls, the registry of links, hosted rooms and dials, the typed payloads.
//! - [`game`]: the World trait (observe / act / speak), handles through the loop, a mock.
//! - [`store`]: durable state: the SQLite store thread, group commit, export/import.
//! - [`federation`]: the socket-free federation core: event log by (origin, seq), trust,
//!   remote presence, portal rules and exactly-once travel.
//! - [`fed_api`], [`peer_sync`]: federation wired in: local events out, peer documents
//!   in, `/bridge/state`, `/bridge/sync`, `/bridge/trust`, and the peers' sync threads;
//!   [`fed_rooms`]: the rooms that show other worlds' events, and events kept for want
//!   of a room.
//! - [`travel_api`]: travel wired in: `POST /bridge/travel`, the line `travel` request,
//!   each step held until its store batch is durable, recovery at start.
//! - [`room_expiry`]: rooms nobody defines expire once idle; the per-address limit on
//!   creating rooms.
//! - [`metrics`]: counters and histograms, rendered as Prometheus text.
//! - [`time`]: wall-clock milliseconds and RFC 3339 formatting/parsing.

pub mod agent;
pub mod api;
pub mod app;
pub mod calls;
pub mod cli;
pub mod codec;
pub mod config;
pub mod conn;
pub mod event_loop;
pub mod fed_api;
pub mod fed_rooms;
pub mod federation;
pub mod game;
pub mod line_api;
pub mod links;
pub mod metrics;
pub mod peer_sync;
pub mod protocol;
pub mod room_expiry;
pub mod store;
pub mod time;
pub mod travel_api;
pub mod workshop;
pub mod world;
pub mod ws_api;
