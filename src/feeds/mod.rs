//! The two WebSocket hubs, socket-free: the Matrix gateway (`/ws/matrix`) with its
//! heartbeats and resumable log, and the Workshop state feed with its file watcher and
//! inbox writer. Connections are opaque [`crate::conn::ConnId`] keys here; the doors and
//! the loop carry the frames.

pub mod gateway;
pub mod heartbeat;
pub mod workshop;

/// A feed's text frame as a JSON object, or the refusal both feeds answer with:
/// `bad_message` (not an object) or `bad_json`.
fn frame_object(
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, (&'static str, String)> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(("bad_message", "a message must be a JSON object".into())),
        Err(e) => Err(("bad_json", format!("the message is not valid JSON: {e}"))),
    }
}
