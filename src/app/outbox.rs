//! The hub's one outbox: everything it has for the world outside, in the order the loop
//! sends it. The hub only ever pushes here; the event loop drains it each iteration and
//! turns each item into bytes on a connection (doors render, `conn` writes).
//!
//! Within the box, each kind keeps its own queue because the loop delivers them in a
//! fixed order that the wire contracts rely on: a streamed reply's `parts` before its
//! final answer, answers before the lines and frames they caused, WebSocket frames in
//! one fan-out pass.

use crate::app::calls::ReplyTo;
use crate::app::outcome::{Refusal, Reply};
use crate::app::stream::Part;
use crate::conn::ConnId;
use crate::feeds::gateway::Frame;

/// Provisional numbers in an answer and the numbers the log gave them (cluster mode).
pub type Renumber = Vec<(u64, u64)>;

/// What the loop does to a WebSocket connection.
#[derive(Debug, Clone, PartialEq)]
pub enum WsOut {
    Send(ConnId, Frame),
    /// To every gateway member but `except` (through the loop's shared log).
    Broadcast(Option<ConnId>, Frame),
    /// The connection joins the gateway's broadcasts.
    Join(ConnId),
    Close(ConnId, u16, String),
    Ping(ConnId),
}

/// What the hub has to send, by kind.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Answers ready for waiting requests (HTTP, line, feed, thread).
    pub answers: Vec<(ReplyTo, Reply)>,
    /// Parts of streamed replies, in order, for where each request waits; the loop sends
    /// them before `answers`, so a reply's parts go out before its final answer.
    pub parts: Vec<(ReplyTo, Part)>,
    /// HTTP answers the door rendered and the loop holds, now durable (`Ok`, with cluster
    /// mode's provisional event numbers and the log's) or failed (the refusal to send
    /// instead).
    pub released: Vec<(ConnId, Result<Renumber, Refusal>)>,
    /// Lines for game-link connections (relayed events, requests to games).
    pub lines: Vec<(ConnId, Vec<u8>)>,
    /// Frames, closes and pings for WebSocket connections.
    pub frames: Vec<WsOut>,
}

impl Outbox {
    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
            && self.parts.is_empty()
            && self.released.is_empty()
            && self.lines.is_empty()
            && self.frames.is_empty()
    }
}
