//! Bytes ⇄ messages. "Need more bytes" is `Ok(None)`, never an error.

pub mod http;
pub mod ndjson;
