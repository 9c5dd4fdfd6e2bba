//! The two WebSocket hubs, socket-free: the Matrix gateway (`/ws/matrix`) with its
//! heartbeats and resumable log, and the Workshop state feed with its file watcher and
//! inbox writer. Connections are opaque [`crate::conn::ConnId`] keys here; the doors and
//! the loop carry the frames.

pub mod gateway;
pub mod heartbeat;
pub mod workshop;
