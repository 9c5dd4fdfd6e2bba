//! What the hub answers a request with: a typed [`Outcome`], or a [`Refusal`] with a
//! stable code. Each door renders them its own way: the HTTP door maps a refusal's code
//! to a status in one table (`doors::http::status_of`), the line door writes `reply`,
//! `ok` or `error` lines, the WebSocket door speaks a chat's text as a bark, and the
//! `WorldInterface` handles turn them back into Rust values. Nothing here is HTTP.

use crate::world::protocol::{ActionResult, Perception};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The hub's answer to one request.
pub type Reply = Result<Outcome, Refusal>;

/// A request the hub carried out. It is serialisable so a cluster node can hand it to the
/// node a request came from (`app::forward`); no door renders it from this form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Outcome {
    /// The agent answered a user (`POST /bridge/chat`, a line `chat`, a feed message).
    Chat(ChatReply),
    /// The agent answered a stateless prompt (`POST /api/v1/generate`).
    Generate { text: String },
    /// A game answered an `act`: `result.ok` false is the game's own refusal, which is
    /// still an answer (the HTTP door shows it as 422 `action_failed`).
    Acted {
        world: String,
        action: String,
        result: ActionResult,
    },
    /// A game's perception: `fresh` when the game was asked just now.
    Observed {
        world: String,
        age_ms: u64,
        fresh: bool,
        perception: Box<Perception>,
    },
    /// A character went to another world and arrived in `room` there.
    Travelled {
        user_id: String,
        world: String,
        room: Option<String>,
        message: String,
    },
    /// Any other success, as the JSON document it answers with.
    Ok(Value),
}

/// A chat's reply and the session it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub text: String,
    pub user: String,
    pub room: String,
    pub session_messages: u64,
    /// The session is flagged by the crisis protocol.
    pub crisis: bool,
}

/// A request the hub refused (or could not carry out), with a stable snake_case `code`
/// (the doors' table turns it into an HTTP status) and a sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    /// After how many seconds trying again may work (`Retry-After` over HTTP).
    pub retry_after: Option<u64>,
    /// Fields the answer carries besides `error` and `code`, in order.
    pub extra: Vec<(&'static str, Value)>,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
            extra: Vec::new(),
        }
    }

    /// Trying again after `secs` may work.
    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }

    /// One more field for the answer.
    pub fn with(mut self, name: &'static str, value: Value) -> Refusal {
        self.extra.push((name, value));
        self
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
