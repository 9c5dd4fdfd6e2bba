//! Streamed replies over real sockets: `POST /bridge/chat` as server-sent events (parts,
//! thinking, pings, done or error), the crisis protocol first, and refusals before the first
//! byte that keep their status.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One server-sent event as a client sees it: `event` is `comment` for `: …` lines.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    event: String,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// An HTTP/1.1 client reading a chunked event stream as it arrives.
struct SseClient {
    sock: TcpStream,
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    /// The body was plain (`Content-Length`), not a stream.
    plain: Option<Vec<u8>>,
    ended: bool,
}

impl SseClient {
    fn open(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> SseClient {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let mut c = SseClient {
            sock,
            raw: Vec::new(),
            body: Vec::new(),
            status: 0,
            headers: Vec::new(),
            plain: None,
            ended: false,
        };
        c.request(path, body, extra);
        c
    }

    /// Send a request on this connection and read the head of its answer.
    fn request(&mut self, path: &str, body: &Value, extra: &[(&str, &str)]) {
        let req = request_bytes("POST", path, Some(&body.to_string()), extra);
        self.sock.write_all(&req).expect("write");
        self.ended = false;
        self.plain = None;
        let end = loop {
            if let Some(end) = find(&self.raw, b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill(), "closed before the head");
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let mut lines = head.split("\r\n");
        self.status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap()
            .parse()
            .unwrap();
        self.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        if let Some(len) = self.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.raw.len() < len {
                assert!(self.fill(), "closed inside the body");
            }
            self.plain = Some(self.raw.drain(..len).collect());
            self.ended = true;
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn plain_json(&self) -> Value {
        serde_json::from_slice(self.plain.as_ref().expect("a plain answer")).unwrap()
    }

    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Decode every complete chunk in `raw`.
    fn decode_chunks(&mut self) {
        while !self.ended {
            let Some(eol) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap(), 16)
                .expect("a chunk size");
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            assert_eq!(&self.raw[eol + 2 + size..eol + 4 + size], b"\r\n");
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 4 + size);
            if size == 0 {
                self.ended = true;
            }
        }
    }

    /// The next event, or `None` when the body ended.
    fn next(&mut self) -> Option<Event> {
        loop {
            self.decode_chunks();
            if let Some(end) = find(&self.body, b"\n\n") {
                let block = String::from_utf8(self.body.drain(..end + 2).collect()).unwrap();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        (event, data) = ("comment".into(), c.trim().into());
                    } else if let Some(e) = line.strip_prefix("event: ") {
                        event = e.into();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.into();
                    }
                }
                return Some(Event {
                    at: Instant::now(),
                    event,
                    data,
                });
            }
            if self.ended {
                return None;
            }
            assert!(self.fill(), "closed inside the stream");
        }
    }

    /// Every event up to the end of the body.
    fn all(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn texts(events: &[Event]) -> String {
    (events.iter())
        .filter(|e| e.event == "part")
        .map(|e| e.json()["text"].as_str().unwrap().to_string())
        .collect()
}

/// A command agent that never answers (it reads its request and sleeps).
fn hanging_agent(cfg: &mut worldbridge::config::Config) {
    cfg.agent.backend = "command".into();
    cfg.agent.command = vec!["sh".into(), "-c".into(), "read line; exec sleep 60".into()];
    cfg.agent.workers = 1;
}

#[test]
fn a_streamed_chat_is_parts_then_done_and_the_connection_stays_usable() {
    let mut cfg = test_config();
    cfg.agent.stream_min_chars = 1;
    let b = start_with(cfg);
    let body = json!({"user_id": "ann", "message": "hello there", "stream": true});
    let started = Instant::now();
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("transfer-encoding"), Some("chunked"));
    assert_eq!(c.header("cache-control"), Some("no-cache"));
    assert_eq!(c.header("connection"), Some("keep-alive"));
    assert_eq!(c.header("content-length"), None);
    let events = c.all();
    let first = events.first().expect("events");
    eprintln!(
        "time to first part (builtin agent, debug build): {:?}",
        first.at.duration_since(started)
    );
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.len() >= 3, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"));
    assert!(
        kinds[..kinds.len() - 1].iter().all(|k| *k == "part"),
        "{kinds:?}"
    );
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let p = e.json();
        assert_eq!(p["index"], json!(i));
        assert_eq!(p["crisis"], json!(false));
    }
    let done = events.last().unwrap().json();
    assert_eq!(done["response"].as_str(), Some(texts(&events).as_str()));
    assert_eq!(
        (
            done["user"].clone(),
            done["room"].clone(),
            done["crisis"].clone()
        ),
        (json!("ann"), json!("The Threshold"), json!(false))
    );
    assert_eq!(done["session_messages"], json!(2));

    // The same connection takes the next request (the chunked body ended cleanly), and
    // the session remembered the streamed exchange.
    c.request(
        "/bridge/chat",
        &json!({"user_id": "ann", "message": "and again"}),
        &[],
    );
    assert_eq!(c.status, 200);
    assert_eq!(c.plain_json()["session_messages"], json!(4));
}

#[test]
fn accept_event_stream_streams_and_an_explicit_stream_false_wins() {
    let b = start();
    let sse = [("Accept", "text/event-stream")];
    let mut c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "bo", "message": "hi"}),
        &sse,
    );
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    let events = c.all();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));

    let c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "bo", "message": "hi", "stream": false}),
        &sse,
    );
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.plain_json()["user"], json!("bo"));

    // Without either, the answer is the plain JSON of today.
    let r = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "bo", "message": "hi"}),
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
}

#[test]
fn refusals_before_the_first_byte_keep_their_status_and_json() {
    let mut cfg = test_config();
    cfg.http.token = "sekrit".into();
    let b = start_with(cfg);
    let auth = [("Authorization", "Bearer sekrit")];
    let c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "x", "message": "hi", "stream": true}),
        &[],
    );
    assert_eq!(c.status, 401);
    assert_eq!(c.plain_json()["code"], json!("unauthorized"));
    let c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"message": "hi", "stream": true}),
        &auth,
    );
    assert_eq!(c.status, 400);
    assert_eq!(c.plain_json()["code"], json!("missing_field"));
    let c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "x", "message": "hi", "stream": "yes"}),
        &auth,
    );
    assert_eq!(c.status, 400);
    assert_eq!(c.plain_json()["code"], json!("bad_field"));
    let long = "a".repeat(20_000);
    let c = SseClient::open(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "x", "message": long, "stream": true}),
        &auth,
    );
    assert_eq!(c.status, 413);
    assert_eq!(c.plain_json()["code"], json!("message_too_long"));
}

#[test]
fn a_model_error_before_the_first_part_keeps_its_status_and_json() {
    let mut cfg = test_config();
    cfg.agent.backend = "command".into();
    cfg.agent.command = vec![
        "sh".into(),
        "-c".into(),
        r#"while read line; do echo '{"error":"no model today"}'; done"#.into(),
    ];
    cfg.agent.workers = 1;
    let b = start_with(cfg);
    let body = json!({"user_id": "er", "message": "hello", "stream": true});
    let c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    assert_eq!(c.status, 502);
    assert_eq!(c.header("content-type"), Some("application/json"));
    assert_eq!(c.plain_json()["code"], json!("agent_error"));
    let mut body = json!({"user": "er", "stream": true,
                          "messages": [{"role": "user", "content": "hello"}]});
    let c = v1(&b, &body, &[]);
    assert_eq!(c.status, 502);
    assert_eq!(c.plain_json()["error"]["type"], json!("server_error"));
    // The crisis protocol still leads, and then the stream ends with `done`.
    body["messages"][0]["content"] = json!("i want to kill myself");
    let mut c = v1(&b, &body, &[]);
    assert_eq!(c.status, 200);
    let events = c.all();
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{events:?}"
    );
}

#[test]
fn a_crisis_streams_the_protocol_first_even_when_the_model_hangs_and_ends_with_done() {
    let mut cfg = test_config();
    hanging_agent(&mut cfg);
    cfg.agent.timeout_s = 1;
    let b = start_with(cfg);
    let body = json!({"user_id": "cy", "message": "i want to kill myself", "stream": true});
    let sent = Instant::now();
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    assert_eq!(c.status, 200);
    let first = c.next().expect("part 0");
    let took = first.at.duration_since(sent);
    eprintln!("crisis part 0 after {took:?} (the model hangs)");
    assert!(took < Duration::from_millis(100), "part 0 took {took:?}");
    assert_eq!(first.event, "part");
    let p = first.json();
    assert_eq!(
        (p["index"].clone(), p["crisis"].clone()),
        (json!(0), json!(true))
    );
    let protocol = p["text"].as_str().unwrap().to_string();
    assert!(protocol.starts_with("Are you safe right now?") && protocol.contains("988"));
    // The model never answers: past agent.timeout_s the stream ends with `done`, the
    // response being what was sent (never `error` once the protocol went out).
    let rest = c.all();
    let done = rest.last().expect("done");
    assert_eq!(done.event, "done", "{rest:?}");
    assert!(
        rest.iter().all(|e| e.event != "thinking"),
        "a part went first"
    );
    let done = done.json();
    assert_eq!(done["response"].as_str(), Some(protocol.as_str()));
    assert_eq!(done["crisis"], json!(true));
}

#[test]
fn a_slow_model_gets_thinking_once_pings_and_an_error_event_on_timeout() {
    let mut cfg = test_config();
    hanging_agent(&mut cfg);
    cfg.agent.timeout_s = 3;
    cfg.agent.thinking_after_ms = 200;
    cfg.http.sse_ping_s = 1;
    let b = start_with(cfg);
    let body = json!({"user_id": "di", "message": "hello", "stream": true});
    let sent = Instant::now();
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    assert_eq!(c.status, 200, "the stream begins with `thinking`");
    let events = c.all();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"thinking"), "{kinds:?}");
    let thinking = events[0].at.duration_since(sent);
    assert!(
        thinking >= Duration::from_millis(150) && thinking < Duration::from_millis(1500),
        "thinking after {thinking:?}"
    );
    assert_eq!(events[0].data, "{}");
    assert_eq!(kinds.iter().filter(|k| **k == "thinking").count(), 1);
    assert!(
        kinds.iter().filter(|k| **k == "comment").count() >= 2,
        "{kinds:?}"
    );
    assert!(events
        .iter()
        .any(|e| e.event == "comment" && e.data == "ping"));
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], json!("agent_timeout"));
    assert!(last.json()["error"].as_str().is_some());
}

// The OpenAI-compatible door, with a plain Rust client (the `openai` package's own test
// is below, ignored without python3 and PyPI).

fn v1(b: &TestBridge, body: &Value, extra: &[(&str, &str)]) -> SseClient {
    SseClient::open(b.http, "/v1/chat/completions", body, extra)
}

#[test]
fn v1_models_and_errors_in_the_openai_shape_with_the_bridge_statuses() {
    let mut cfg = test_config();
    cfg.http.token = "sekrit".into();
    let b = start_with(cfg);
    let r = call(b.http, "GET", "/v1/models", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let e = &r.json()["error"];
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("authentication_error"), json!("unauthorized"))
    );
    assert!(e["message"].as_str().is_some());

    let auth = ("Authorization", "Bearer sekrit");
    let mut c = Client::connect(b.http);
    c.send_raw(&request_bytes("GET", "/v1/models", None, &[auth]));
    let r = c.read_response(false).expect("answer");
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["object"], json!("list"));
    assert_eq!(m["data"][0]["id"], json!("timmy"));
    assert_eq!(m["data"][0]["object"], json!("model"));
    assert_eq!(m["data"][0]["owned_by"], json!("worldbridge"));

    let hello = json!([{"role": "user", "content": "hello"}]);
    for (body, status, code) in [
        (
            json!({"model": "x", "messages": hello}),
            400,
            "missing_field",
        ),
        (json!({"model": "x", "user": "ann"}), 400, "missing_field"),
        (
            json!({"user": "ann", "messages": [{"role": "system", "content": "be brief"}]}),
            400,
            "missing_field",
        ),
        (
            json!({"user": "ann", "messages": "hello"}),
            400,
            "bad_field",
        ),
        (
            json!({"user": "ann", "messages": hello, "stream": true, "metadata": 3}),
            400,
            "bad_field",
        ),
        (
            json!({"user": "ann", "messages": [{"role": "user", "content": "a".repeat(20_000)}], "stream": true}),
            413,
            "message_too_long",
        ),
    ] {
        let c = v1(&b, &body, &[auth]);
        assert_eq!(c.status, status, "{body}");
        let e = c.plain_json();
        assert_eq!(e["error"]["code"], json!(code), "{e}");
        assert_eq!(e["error"]["type"], json!("invalid_request_error"));
    }
    let c = v1(
        &b,
        &json!({"user": "ann", "messages": hello}),
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(c.status, 403);
    assert_eq!(
        c.plain_json()["error"]["type"],
        json!("authentication_error")
    );
}

#[test]
fn v1_chat_completions_keep_users_apart_and_stream_chunks_ending_done() {
    let mut cfg = test_config();
    cfg.agent.stream_min_chars = 1;
    let b = start_with(cfg);
    let ask = |user: &str, text: &str| {
        json!({"model": "anything", "user": user,
               "messages": [{"role": "system", "content": "Be kind."},
                            {"role": "assistant", "content": "ignored: the session's own history counts"},
                            {"role": "user", "content": text}]})
    };
    let c = v1(&b, &ask("ann", "hello there"), &[]);
    assert_eq!(c.status, 200);
    let r = c.plain_json();
    assert_eq!(r["object"], json!("chat.completion"));
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["model"], json!("anything"));
    assert!(r["created"].as_u64().unwrap() > 1_600_000_000);
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["role"], json!("assistant"));
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
    assert_eq!(choice["finish_reason"], json!("stop"));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(r["usage"][k].is_u64(), "{k}");
    }
    assert_eq!(r["worldbridge"]["session_messages"], json!(2));
    assert_eq!(r["worldbridge"]["room"], json!("The Threshold"));

    // A second user with the header and a room of their own is a session of their own.
    let mut body = ask("ignored", "hello there");
    body.as_object_mut().unwrap().remove("user");
    let c = v1(
        &b,
        &body,
        &[
            ("X-Worldbridge-User", "bob"),
            ("X-Worldbridge-Room", "The Garden"),
        ],
    );
    let r = c.plain_json();
    assert_eq!(r["worldbridge"]["user"], json!("bob"));
    assert_eq!(
        r["worldbridge"]["session_messages"],
        json!(2),
        "bob's own session"
    );
    assert_eq!(r["worldbridge"]["room"], json!("The Garden"));

    // Streamed: chunks with delta.content, the first naming the role, then stop and [DONE].
    let mut body = ask("ann", "tell me about this place");
    body["stream"] = json!(true);
    let mut c = v1(&b, &body, &[]);
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    let events = c.all();
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(done.data, "[DONE]");
    let chunks: Vec<Value> = chunks.iter().map(Event::json).collect();
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == json!("chat.completion.chunk")));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], json!("assistant"));
    let (last, parts) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], json!("stop"));
    assert!(parts
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let text: String = parts
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert!(!text.is_empty());
    // The session remembered it: ann's next exchange is her third.
    let r = v1(&b, &ask("ann", "thanks"), &[]).plain_json();
    assert_eq!(r["worldbridge"]["session_messages"], json!(6));
}

#[test]
fn v1_crisis_text_is_the_first_content_streamed_or_not() {
    let b = start();
    let body =
        json!({"user": "cy", "messages": [{"role": "user", "content": "i want to kill myself"}]});
    let r = v1(&b, &body, &[]).plain_json();
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("Are you safe right now?"), "{content}");
    assert_eq!(r["worldbridge"]["crisis"], json!(true));
    let mut body = body;
    body["stream"] = json!(true);
    body["user"] = json!("cy2");
    let mut c = v1(&b, &body, &[]);
    let first = c.next().expect("a chunk").json();
    let delta = &first["choices"][0]["delta"];
    assert!(delta["content"]
        .as_str()
        .unwrap()
        .starts_with("Are you safe right now?"));
    assert!(delta["content"].as_str().unwrap().contains("988"));
    assert_eq!(c.all().last().map(|e| e.data.as_str()), Some("[DONE]"));
}

// The line protocol: `chat` with `"stream": true`.

#[test]
fn a_streamed_line_chat_sends_reply_parts_then_exactly_one_reply() {
    let mut cfg = line_config();
    cfg.agent.stream_min_chars = 1;
    let b = start_with(cfg);
    let mut g = LineClient::connect(b.line.expect("a line listener"));
    g.hello("morrowind", "tes3mp");
    g.send(&json!({"type": "chat", "id": 7, "user_id": "Alice", "message": "hello there", "stream": true}));
    let (reply, before) = g.recv_type("reply");
    let parts: Vec<&Value> = before
        .iter()
        .filter(|v| v["type"] == "reply_part")
        .collect();
    assert!(parts.len() >= 2, "{before:?}");
    assert_eq!(
        parts.len(),
        before.len(),
        "only parts before the reply: {before:?}"
    );
    for (i, p) in parts.iter().enumerate() {
        assert_eq!((p["id"].clone(), p["index"].clone()), (json!(7), json!(i)));
        assert_eq!(p["crisis"], json!(false));
    }
    let joined: String = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(reply["id"], json!(7));
    assert_eq!(reply["text"].as_str(), Some(joined.as_str()));
    assert_eq!(reply["user_id"], json!("Alice"));

    // Without `stream`: the reply alone, as before.
    g.send(&json!({"type": "chat", "id": 8, "user_id": "Alice", "message": "hello again"}));
    let (reply, before) = g.recv_type("reply");
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(reply["id"], json!(8));

    // A crisis: the protocol is part 0, flagged.
    g.send(&json!({"type": "chat", "id": "c", "user_id": "Bo", "message": "i want to kill myself", "stream": true}));
    let (reply, before) = g.recv_type("reply");
    assert_eq!(before[0]["type"], json!("reply_part"));
    assert_eq!(
        (before[0]["index"].clone(), before[0]["crisis"].clone()),
        (json!(0), json!(true))
    );
    assert!(before[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Are you safe right now?"));
    let joined: String = before.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(reply["text"].as_str(), Some(joined.as_str()));
    assert_eq!(reply["crisis"], json!(true));
}

#[test]
fn a_slow_model_sends_reply_thinking_on_the_line_and_then_one_error() {
    let mut cfg = line_config();
    hanging_agent(&mut cfg);
    cfg.agent.timeout_s = 1;
    cfg.agent.thinking_after_ms = 100;
    let b = start_with(cfg);
    let mut g = LineClient::connect(b.line.expect("a line listener"));
    g.hello("morrowind", "tes3mp");
    g.send(&json!({"type": "chat", "id": 9, "user_id": "Cid", "message": "hello", "stream": true}));
    let (err, before) = g.recv_type("error");
    let kinds: Vec<&Value> = before.iter().map(|v| &v["type"]).collect();
    assert_eq!(kinds, vec![&json!("reply_thinking")], "{before:?}");
    assert_eq!(before[0]["id"], json!(9));
    assert_eq!(
        (err["id"].clone(), err["code"].clone()),
        (json!(9), json!("agent_timeout"))
    );
}

// WebSocket feeds: a message with `"stream": true` gets `bark_part` frames, then the bark.

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).expect("ws connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

fn ws_send(ws: &mut Ws, v: &Value) {
    ws.send(tungstenite::Message::text(v.to_string()))
        .expect("send");
}

fn ws_next(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a frame") {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// Frames up to the first of `kind` (returned last).
fn ws_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = ws_next(ws);
        let done = v["type"] == kind;
        out.push(v);
        if done {
            return out;
        }
    }
}

/// The `bark_part` frames of `frames`, checked (one reply_id, indices in order), and
/// their concatenated text.
fn bark_parts(frames: &[Value]) -> (Vec<Value>, String, Value) {
    let parts: Vec<Value> = frames
        .iter()
        .filter(|f| f["type"] == "bark_part")
        .cloned()
        .collect();
    assert!(parts.len() >= 2, "{frames:?}");
    let id = parts[0]["reply_id"].clone();
    assert!(id.is_u64(), "{id}");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(
            (p["reply_id"].clone(), p["index"].clone()),
            (id.clone(), json!(i))
        );
    }
    let text = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    (parts, text, id)
}

#[test]
fn gateway_and_workshop_barks_stream_as_bark_parts_with_one_reply_id() {
    let mut cfg = test_config();
    cfg.agent.stream_min_chars = 1;
    let b = start_with(cfg);
    let mut alice = ws_connect(b.http, "/ws/matrix");
    ws_send(
        &mut alice,
        &json!({"type": "agent_register", "agentId": "alice", "role": "agent"}),
    );
    let ack = ws_until(&mut alice, "agent_registered");
    let before = ack.last().unwrap()["gateway_seq"].as_u64().unwrap_or(0);
    ws_send(
        &mut alice,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "hello there",
                "room": "The Tower", "stream": true}),
    );
    let frames = ws_until(&mut alice, "bark");
    let (parts, text, id) = bark_parts(&frames);
    let bark = frames.last().unwrap();
    assert_eq!(bark["reply_id"], id, "the bark carries its parts' reply_id");
    assert_eq!(bark["text"].as_str(), Some(text.as_str()));
    assert_eq!(bark["room"], json!("The Tower"));
    for p in &parts {
        assert_eq!(
            (p["agentId"].clone(), p["room"].clone()),
            (json!("timmy"), json!("The Tower"))
        );
        assert!(p["gateway_seq"].as_u64().unwrap() > before);
    }

    // The parts are in the resumable log: a client coming back from before replays them.
    let mut back = ws_connect(b.http, &format!("/ws/matrix?since={before}"));
    ws_send(
        &mut back,
        &json!({"type": "agent_register", "agentId": "bob", "role": "agent"}),
    );
    let replay = ws_until(&mut back, "bark");
    let (_, again, again_id) = bark_parts(&replay);
    assert_eq!((again, again_id), (text, id));

    // With `"stream": false`, the bark alone.
    ws_send(
        &mut alice,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "hi", "room": "The Tower", "stream": false}),
    );
    let frames = ws_until(&mut alice, "bark");
    assert!(
        frames.iter().all(|f| f["type"] != "bark_part"),
        "{frames:?}"
    );
    assert!(frames.last().unwrap().get("reply_id").is_none());

    // A Workshop visitor's streamed message: parts, then the bark, to the browser.
    let mut w = ws_connect(b.http, "/ws/workshop");
    ws_send(
        &mut w,
        &json!({"type": "message", "text": "How's the Tower coming?",
                            "visitor": "Zed", "stream": true}),
    );
    let frames = ws_until(&mut w, "bark");
    let (_, text, id) = bark_parts(&frames);
    let bark = frames.last().unwrap();
    assert_eq!(
        (bark["text"].as_str(), bark["reply_id"].clone()),
        (Some(text.as_str()), id.clone())
    );
    // The gateway hears the same streamed bark in the Workshop room.
    let frames = ws_until(&mut alice, "bark");
    let (_, gw_text, gw_id) = bark_parts(&frames);
    assert_eq!((gw_text, gw_id), (text, id));
    assert_eq!(frames.last().unwrap()["room"], json!("Workshop"));
}

// Upstream streaming: a real TCP mock model server (OpenAI-compatible) that streams a long
// answer one token every 50 ms, or stalls mid-stream.

/// Tokens of a long answer: several sentences, the whole taking `n × 50 ms` to stream.
fn slow_tokens() -> Vec<String> {
    let text = "The tower is quiet tonight. Its lamps burn low and the stones remember \
                the rain. I am listening, and I am here. Tell me what you see from \
                where you stand, and we will look at it together.";
    text.split_inclusive(' ').map(str::to_string).collect()
}

/// An OpenAI-compatible model server on 127.0.0.1: each connection gets `tokens` as
/// `chat.completion.chunk` events, one every `every`, then `[DONE]` — or, with `stall`,
/// nothing more after them (the connection held open). A request without `stream` gets
/// the whole text as one completion (a server that ignores nothing).
fn mock_model(tokens: Vec<String>, every: Duration, stall: bool) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(sock) = conn else { return };
            let tokens = tokens.clone();
            std::thread::spawn(move || serve_model(sock, &tokens, every, stall));
        }
    });
    addr
}

fn serve_model(mut sock: TcpStream, tokens: &[String], every: Duration, stall: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (end, len) = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = (head.lines())
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, len);
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < end + len {
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value = serde_json::from_slice(&buf[end..end + len]).unwrap_or(Value::Null);
    if body["stream"] != json!(true) {
        let doc =
            json!({"choices": [{"message": {"role": "assistant", "content": tokens.concat()}}]});
        let text = doc.to_string();
        let _ = write!(
            sock,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        return;
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).is_err() {
        return;
    }
    for t in tokens {
        let ev = json!({"object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": t}}]});
        if write!(sock, "data: {ev}\n\n").is_err() {
            return;
        }
        std::thread::sleep(every);
    }
    if stall {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let _ = sock.write_all(b"data: [DONE]\n\n");
}

fn model_config(addr: SocketAddr) -> worldbridge::config::Config {
    let mut cfg = line_config();
    cfg.agent.backend = "openai".into();
    cfg.agent.base_url = format!("http://{addr}/v1");
    cfg.agent.model = "mock".into();
    cfg.agent.workers = 2;
    cfg.agent.stream_min_chars = 20;
    cfg
}

#[test]
fn a_slow_model_streams_to_sse_line_and_websocket_clients_long_before_it_finishes() {
    let tokens = slow_tokens();
    let whole: String = tokens.concat();
    let model = mock_model(tokens.clone(), Duration::from_millis(50), false);
    let b = start_with(model_config(model));
    let streaming_takes = Duration::from_millis(50 * tokens.len() as u64);
    let early = streaming_takes / 3;

    // SSE.
    let sent = Instant::now();
    let body = json!({"user_id": "sse", "message": "hello", "stream": true});
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    let events = c.all();
    let first = events.iter().find(|e| e.event == "part").expect("a part");
    let done = events.last().expect("done");
    assert_eq!(done.event, "done", "{events:?}");
    let first_at = first.at.duration_since(sent);
    eprintln!(
        "SSE: first part after {first_at:?}, done after {:?} (the model streams for {streaming_takes:?})",
        done.at.duration_since(sent)
    );
    assert!(first_at < early, "first part after {first_at:?}");
    assert!(done.at.duration_since(sent) >= streaming_takes - Duration::from_millis(100));
    assert!(events.iter().filter(|e| e.event == "part").count() >= 3);
    assert_eq!(texts(&events), whole.trim());
    assert_eq!(done.json()["response"].as_str(), Some(whole.trim()));

    // Line.
    let mut g = LineClient::connect(b.line.expect("a line listener"));
    g.hello("morrowind", "tes3mp");
    let sent = Instant::now();
    g.send(
        &json!({"type": "chat", "id": 1, "user_id": "line", "message": "hello", "stream": true}),
    );
    let part = g.recv().expect("a line");
    let first_at = sent.elapsed();
    assert_eq!(part["type"], json!("reply_part"), "{part}");
    assert!(first_at < early, "first line part after {first_at:?}");
    let (reply, rest) = g.recv_type("reply");
    assert!(sent.elapsed() >= streaming_takes - Duration::from_millis(100));
    let joined: String = std::iter::once(&part)
        .chain(rest.iter())
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert_eq!(reply["text"].as_str(), Some(joined.as_str()));
    assert_eq!(joined, whole.trim());

    // WebSocket (the gateway).
    let mut ws = ws_connect(b.http, "/ws/matrix");
    ws_send(
        &mut ws,
        &json!({"type": "agent_register", "agentId": "wsc", "role": "agent"}),
    );
    ws_until(&mut ws, "agent_registered");
    let sent = Instant::now();
    ws_send(
        &mut ws,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "hello",
                             "room": "The Tower", "stream": true}),
    );
    ws_until(&mut ws, "bark_part");
    let first_at = sent.elapsed();
    assert!(first_at < early, "first bark_part after {first_at:?}");
    let frames = ws_until(&mut ws, "bark");
    assert_eq!(frames.last().unwrap()["text"].as_str(), Some(whole.trim()));

    // The metrics: three streamed replies, each first part within a second, none whole.
    let m = call(b.http, "GET", "/metrics", None).text();
    for line in [
        "worldbridge_agent_first_part_seconds_count{backend=\"openai\"} 3",
        "worldbridge_agent_first_part_seconds_bucket{backend=\"openai\",le=\"1\"} 3",
        "worldbridge_agent_reply_seconds_count{backend=\"openai\"} 3",
        "worldbridge_agent_reply_seconds_bucket{backend=\"openai\",le=\"1\"} 0",
    ] {
        assert!(m.contains(line), "no {line:?} in\n{m}");
    }
}

#[test]
fn a_model_that_stalls_mid_stream_ends_with_agent_timeout_after_the_parts_sent() {
    let tokens: Vec<String> = [
        "The first sentence ",
        "arrives in time.",
        " Then the ",
        "model",
    ]
    .map(String::from)
    .to_vec();
    let model = mock_model(tokens, Duration::from_millis(20), true);
    let mut cfg = model_config(model);
    cfg.agent.chunk_timeout_s = 1;
    cfg.agent.timeout_s = 20;
    let b = start_with(cfg);
    let sent = Instant::now();
    let body = json!({"user_id": "st", "message": "hello", "stream": true});
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    let events = c.all();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, vec!["part", "error"], "{events:?}");
    assert_eq!(
        events[0].json()["text"],
        json!("The first sentence arrives in time.")
    );
    let err = events[1].json();
    assert_eq!(err["code"], json!("agent_timeout"));
    let took = events[1].at.duration_since(sent);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "agent.chunk_timeout_s, not agent.timeout_s, ended it: {took:?}"
    );
}

#[test]
fn a_crisis_reaches_the_client_within_10_ms_while_the_model_server_hangs() {
    let model = mock_model(Vec::new(), Duration::ZERO, true);
    let mut cfg = model_config(model);
    cfg.agent.timeout_s = 1;
    let b = start_with(cfg);
    let body = json!({"user_id": "cz", "message": "i want to kill myself", "stream": true});
    let sent = Instant::now();
    let mut c = SseClient::open(b.http, "/bridge/chat", &body, &[]);
    let first = c.next().expect("part 0");
    let took = first.at.duration_since(sent);
    eprintln!("crisis part 0 after {took:?} (the model server hangs)");
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert_eq!(first.json()["crisis"], json!(true));
    let rest = c.all();
    assert_eq!(
        rest.last().map(|e| e.event.as_str()),
        Some("done"),
        "{rest:?}"
    );
}

/// The bridge's own cost per part: the chunker cutting a token stream, the part rendered
/// as an SSE event and framed as a chunk (sockets aside). Prints the figure (the issue
/// asks < 100 µs; a debug build measured 35 µs); the assertion leaves room for a loaded
/// machine.
#[test]
fn bridge_overhead_per_part_is_measured() {
    use worldbridge::app::stream::Stream;
    use worldbridge::doors::http::{render_part, Shape};
    let sentence = "The lamps burn low and the stones remember the rain tonight. ";
    let tokens: Vec<&str> = sentence.split_inclusive(' ').collect();
    let rounds = 2000;
    let started = Instant::now();
    let now = Instant::now();
    let mut s = Stream::new(60, now + Duration::from_secs(60));
    let (mut parts, mut bytes) = (0usize, 0usize);
    for _ in 0..rounds {
        for t in &tokens {
            for p in s.model(t, now) {
                let mut out = Vec::new();
                let event = render_part(&Shape::Events, &p);
                worldbridge::codec::http::push_chunk(&event, &mut out);
                bytes += out.len();
                parts += 1;
            }
        }
    }
    let per_part = started.elapsed() / parts as u32;
    eprintln!("{parts} parts ({bytes} bytes on the wire): {per_part:?} per part");
    assert!(parts >= rounds - 1);
    assert!(per_part < Duration::from_millis(1), "{per_part:?}");
}
