//! Bytes ⇄ messages. "Need more bytes" is `Ok(None)`, never an error.

pub mod http;
pub mod json_text;
pub mod ndjson;
pub mod ws_handshake;
