//! WebSocket clients for tests: real tungstenite clients over sockets, reading with
//! deadlines.

use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

pub fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tungstenite::connect(format!("ws://{addr}{path}")).expect("ws connect");
    assert_eq!(resp.status(), 101);
    set_timeout(&ws, Duration::from_secs(10));
    ws
}

pub fn set_timeout(ws: &Ws, t: Duration) {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(t)).unwrap();
    }
}

pub fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// The next JSON text frame (pings are answered by tungstenite as we read), within 10 s.
pub fn next(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no text frame within 10 s");
        match ws.read().expect("a frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// The next JSON text frame within `t`, or `None` when none came.
pub fn try_next(ws: &mut Ws, t: Duration) -> Option<Value> {
    let deadline = Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        set_timeout(ws, left);
        let got = ws.read();
        set_timeout(ws, Duration::from_secs(10));
        match got {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("JSON")),
            Ok(Message::Close(f)) => panic!("closed: {f:?}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// Frames until one of `kind` arrives; returns it.
pub fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next(ws);
        if v["type"] == kind {
            return v;
        }
    }
}

/// Nothing but pings arrives within `t`.
pub fn silent_for(ws: &mut Ws, t: Duration) {
    if let Some(v) = try_next(ws, t) {
        panic!("expected nothing, got {v}");
    }
}

/// Read until the server closes; the close frame's code and reason.
pub fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Connect to the gateway and register; returns the client and its `agent_registered`.
pub fn agent(addr: SocketAddr, id: &str, role: &str) -> (Ws, Value) {
    agent_at(addr, "/ws/matrix", id, role)
}

pub fn agent_at(addr: SocketAddr, path: &str, id: &str, role: &str) -> (Ws, Value) {
    let mut ws = connect(addr, path);
    send(
        &mut ws,
        &json!({"type": "agent_register", "agentId": id, "role": role}),
    );
    let ack = next(&mut ws);
    assert_eq!(ack["type"], "agent_registered", "{ack}");
    (ws, ack)
}
