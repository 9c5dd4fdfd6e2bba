//! The agent: a pool of worker threads that turn a user's message plus world context into
//! a reply, behind one of three backends, and the crisis protocol that never depends on it.
//!
//! The event loop builds an [`AgentRequest`], hands it to [`pool::AgentPool::try_submit`]
//! and parks the caller; a worker answers with an [`AgentReply`] on a crossbeam channel and
//! wakes the loop. The loop owns every deadline: a reply that comes after its request timed
//! out is simply dropped there.

pub mod builtin;
pub mod command;
pub mod crisis;
pub mod crisis_eval;
pub mod crisis_model;
pub mod crisis_train;
pub mod openai;
pub mod pool;
pub mod prompt;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who said a line of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One line of a user's conversation with the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// What the agent knows about the world around the user when it answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorldContext {
    /// This world's id (`Config::world`).
    pub world: String,
    /// The agent's own name ("Timmy").
    pub agent_name: String,
    pub room: String,
    pub room_desc: String,
    /// Exit names of the room, e.g. `["north", "The Garden"]`.
    pub exits: Vec<String>,
    /// Display names of the people in the room, the user included.
    pub present: Vec<String>,
    /// The last few room events, oldest first, as short human lines
    /// ("Bob said: hi", "Alice entered").
    pub recent_events: Vec<String>,
    /// What a game link last reported of the agent's character (TES3MP perception).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game: Option<GameView>,
}

/// The agent's character as a game sees it, from the latest perception.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GameView {
    /// The game world's id (`morrowind`).
    pub world: String,
    /// Where the character is (a TES3MP cell such as "Balmora, Temple").
    pub cell: Option<String>,
    /// The whole perception as one line for a prompt.
    pub summary: String,
}

/// One call to the agent.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// Chosen by the loop; comes back in the reply.
    pub job_id: u64,
    pub user_id: String,
    pub username: String,
    /// The user's earlier turns with the agent, oldest first (no system turn).
    pub history: Vec<Turn>,
    pub message: String,
    pub context: WorldContext,
    /// The crisis detector fired on `message`: backends add nothing for it (the loop
    /// prepends the protocol text itself), but prompts tell the model to stay present.
    pub crisis: bool,
    /// How long the worker may take; backends use it for their own I/O timeouts.
    pub timeout: Duration,
    /// A reply to the user, or the crisis classification (`agent.crisis_model_check`).
    pub purpose: Purpose,
    /// Instructions the caller gave (an OpenAI-style `system` message), added to the
    /// system prompt before the crisis protocol; `None` for the bridge's own requests.
    pub system: Option<String>,
    /// The caller takes the answer in parts: a backend that can stream hands each piece
    /// to its sink as it comes ([`Backend::reply`]).
    pub stream: bool,
}

/// What a request asks the model for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The agent's reply to the user.
    #[default]
    Reply,
    /// A yes/no answer: does the message signal a crisis? See [`prompt::CRISIS_CHECK_PROMPT`].
    CrisisCheck,
}

/// Why the agent gave no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered, but with an error (HTTP 500, bad JSON, a dead subprocess).
    Backend(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Timeout => write!(f, "the agent did not answer in time"),
            AgentError::Backend(why) => write!(f, "the agent failed: {why}"),
        }
    }
}

/// A worker's answer to one [`AgentRequest`].
#[derive(Debug, Clone)]
pub struct AgentReply {
    pub job_id: u64,
    pub result: Result<String, AgentError>,
    /// Wall time the backend took.
    pub elapsed: Duration,
    /// A piece of a streamed answer (`result` is `Ok` with the new text); more follows,
    /// and the final reply (with the whole text) ends it.
    pub chunk: bool,
}

/// A backend turns one request into text. Each worker thread owns one instance, so a
/// backend may keep state (a subprocess, an HTTP agent) without locks.
pub trait Backend: Send {
    /// The answer to `req`. With a `sink`, a backend that can stream hands it each piece
    /// as it comes (the returned text is still the whole answer); one that cannot ignores
    /// the sink, and the caller sends the whole answer as one piece.
    fn reply(
        &mut self,
        req: &AgentRequest,
        sink: Option<&mut dyn FnMut(&str)>,
    ) -> Result<String, AgentError>;

    /// The whole answer at once.
    fn answer(&mut self, req: &AgentRequest) -> Result<String, AgentError> {
        self.reply(req, None)
    }
}
