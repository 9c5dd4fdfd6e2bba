//! The doors: one file per transport. Each parses its messages into calls on the hub
//! ([`crate::app::App`]) and renders what the hub answers back into its own bytes.
//!
//! - [`http`]: the HTTP routes (`/bridge/*`, `/api/v1/generate`, the status page) and
//!   WebSocket upgrades; [`http::openai`]: the OpenAI-compatible
//!   `/v1/chat/completions` and `/v1/models` on the same listener.
//! - [`line`]: the line protocol's messages from game links, and the lines sent back.
//! - [`fields`]: the one set of JSON field checks (with their refusal codes) and the
//!   constant-time token compare.
//! - [`game`]: the seed's `WorldInterface` (observe / act / speak) for Rust callers,
//!   through the loop.

pub mod fields;
pub mod game;
pub mod http;
pub mod line;
