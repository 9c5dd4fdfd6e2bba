//! worldbridge: one process per world that joins an AI agent, game servers and people.
//!
//! The crate has three floors. Doors parse bytes into calls on the hub and render what it
//! answers; the hub holds the live state and drives the core; the core knows nothing of
//! sockets. An import points down the list, never up (`scripts/import-graph` checks it).
//!
//! - [`event_loop`]: the one mio loop that owns every socket and all live state, and its
//!   start-up wiring.
//! - [`conn`]: one state machine per connection (HTTP, line protocol, WebSocket) and the
//!   WebSocket write scheduler.
//! - [`codec`]: bytes ⇄ messages; "need more bytes" is `Ok(None)`.
//! - [`doors`]: one file per transport: HTTP routes, line messages, WebSocket frames,
//!   and the seed's `WorldInterface` for Rust callers.
//! - [`app`]: the hub: the live state of the bridge, agent calls in flight, game links,
//!   federation and travel wired in, room expiry, metrics.
//! - [`feeds`]: the two WebSocket hubs, socket-free: the Matrix gateway and the Workshop.
//! - [`world`]: the socket-free core: rooms, presence, events, sessions, rate limits, the
//!   line protocol's typed payloads, time.
//! - [`federation`]: the socket-free federation core: event log by (origin, seq), trust,
//!   remote presence, portal rules, exactly-once travel, world keys.
//! - [`agent`]: worker pool, backends (builtin, OpenAI-compatible, subprocess), prompt
//!   building and the crisis protocol.
//! - [`store`]: durable state: the SQLite store thread, group commit, export/import.
//! - [`config`]: every default and limit, loaded from flags, env and a TOML file.
//! - [`cli`]: the command line: `serve` (the default), `export`, `import`, `key`,
//!   `crisis-eval`.

pub mod agent;
pub mod app;
pub mod cli;
pub mod codec;
pub mod config;
pub mod conn;
pub mod doors;
pub mod event_loop;
pub mod federation;
pub mod feeds;
pub mod store;
pub mod world;
