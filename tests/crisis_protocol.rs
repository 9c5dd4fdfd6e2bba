//! Every crisis line of the eval corpus (`fixtures/crisis/eval/*.tsv`) that the detector
//! catches gets a first reply carrying the whole protocol ("Are you safe right now?", 988,
//! text HOME to 741741, the 5-4-3-2-1 grounding) through `POST /bridge/chat`, a line-protocol
//! `chat` and a Workshop visitor message, with the builtin agent and with a model backend
//! that is down: a closed port, a server that accepts and never answers, and one that
//! answers HTTP 500. Hotline questions get the numbers without the safety question.
//!
//! That is every crisis line of the training split `train.tsv` (not `train2.tsv`,
//! `train3.tsv` or `train4.tsv`, the classifier's extra training lines) and of the held-out
//! split `test.tsv` (not `test2.tsv` or `test3.tsv`) that the detector catches; of the
//! held-out splits, the lines the detector misses are measured (and listed) by
//! `tests/crisis_eval.rs` and `worldbridge crisis-eval`, not here: this test is about the
//! transports and the model being down, so it takes the lines whose detection is known to
//! work.
//!
//! One bridge per backend condition; every message comes from a new user, so every reply
//! is a first reply.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use worldbridge::agent::crisis_eval::{self, Label};
use worldbridge::config::Config;

/// Parallel HTTP clients.
const CLIENTS: usize = 6;

/// The messages of every eval file with this label.
fn lines(label: Label) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/crisis/eval");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        // train2.tsv, train3.tsv, train4.tsv and train7.tsv (the classifier's extra training lines),
        // test2.tsv to test5.tsv (the later held-out splits) would only multiply
        // the transport work here; their figures are tests/crisis_eval.rs's job.
        .filter(|p| {
            ![
                "train2.tsv",
                "train3.tsv",
                "train4.tsv",
                "train7.tsv",
                "test2.tsv",
                "test3.tsv",
                "test4.tsv",
                "test5.tsv",
            ]
            .iter()
            .any(|name| p.ends_with(name))
        })
        .collect();
    files.sort();
    let cases = crisis_eval::load(&files).unwrap_or_else(|e| panic!("{e}"));
    let detector = worldbridge::agent::crisis::CrisisDetector::builtin();
    let out: Vec<String> = cases
        .into_iter()
        .filter(|c| c.label == label)
        .filter(|c| match label {
            Label::Crisis => detector.detect(&c.message).is_some(),
            _ => true,
        })
        .map(|c| c.message)
        .collect();
    assert!(!out.is_empty(), "no {label:?} lines in {}", dir.display());
    out
}

/// What is missing from a reply that must carry the whole protocol ("" = nothing).
fn protocol_missing(text: &str) -> String {
    let mut missing = Vec::new();
    for needle in [
        "Are you safe right now?",
        "call or text 988",
        "text HOME to 741741",
        "5 things you can see",
        "4 things you can touch",
        "3 things you can hear",
        "2 things you can smell",
        "1 thing you can taste",
    ] {
        if !text.contains(needle) {
            missing.push(needle);
        }
    }
    missing.join(", ")
}

/// What is wrong with the answer to a hotline question ("" = nothing).
fn resources_wrong(text: &str) -> String {
    let mut wrong = Vec::new();
    if !text.contains("call or text 988") {
        wrong.push("no 988");
    }
    if !text.contains("text HOME to 741741") {
        wrong.push("no 741741");
    }
    if text.contains("Are you safe right now?") {
        wrong.push("asks whether they are safe");
    }
    if text.contains("5 things you can see") {
        wrong.push("has the grounding exercise");
    }
    wrong.join(", ")
}

/// How the model backend behaves.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Builtin,
    /// Nothing listens: connection refused.
    Refused,
    /// Accepts and never answers.
    Hangs,
    /// Answers every request with HTTP 500.
    Fails,
}

/// A model server for `backend` (none for the builtin agent or a closed port).
fn model_server(backend: Backend) -> Option<SocketAddr> {
    match backend {
        Backend::Builtin => None,
        Backend::Refused => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            drop(l);
            Some(addr)
        }
        Backend::Hangs | Backend::Fails => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for s in l.incoming().flatten() {
                    if matches!(backend, Backend::Fails) {
                        std::thread::spawn(move || answer_500(s));
                    } else {
                        held.push(s);
                    }
                }
            });
            Some(addr)
        }
    }
}

/// Reads one request (headers and body) at a time and answers 500, until the peer closes.
fn answer_500(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(head_end) = common::find(&buf, b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < head_end + 4 + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        }
        buf.drain(..head_end + 4 + len);
        let body = r#"{"error":{"message":"model down"}}"#;
        let resp = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(backend: Backend) -> Config {
    let mut cfg = line_config();
    cfg.sessions.max = 100_000;
    cfg.rooms.occupants_max = 100_000;
    cfg.http.rate_limit_requests = 1_000_000;
    cfg.gateway.max_messages_per_s = 100_000;
    // The Workshop client sends every message before it reads: its streamed barks
    // (`bark_part` frames, then the `bark`) wait in its queue meanwhile.
    cfg.gateway.max_queued_messages = 1_000_000;
    cfg.gateway.max_queued_bytes = 1 << 30;
    // Every visitor message is also an inbox file; a busy disk must not turn the
    // protocol's answers into `inbox_unavailable` (tested on its own in tests/ws.rs).
    cfg.workshop.inbox_queue = 100_000;
    cfg.agent.timeout_s = 1;
    if let Some(addr) = model_server(backend) {
        cfg.agent.backend = "openai".into();
        cfg.agent.base_url = format!("http://{addr}/v1");
        cfg.agent.model = "test-model".into();
        // One call answered (or timing out) at a time and one waiting: the rest are refused
        // at once by a full queue, which must also answer with the protocol. This keeps the
        // run short while every failure path (refused, timed out, 500, queue full) is hit.
        cfg.agent.workers = 1;
        cfg.agent.queue = 1;
    }
    cfg
}

/// `POST /bridge/chat` for each message from a new user, `CLIENTS` at a time (each takes
/// the next message when it is done, so a client stuck on a slow call holds up no one);
/// returns the failures as `message: what went wrong`.
fn over_http(
    addr: SocketAddr,
    tag: &str,
    messages: &[String],
    check: fn(&str) -> String,
) -> Vec<String> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let next = &next;
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(m) = messages.get(i) else { break };
                        let user = format!("{tag}-http-{i}");
                        let r = post(
                            addr,
                            "/bridge/chat",
                            &json!({"user_id": user, "username": user, "message": m, "room": "The Tower"}),
                        );
                        let text = (r.status == 200)
                            .then(|| r.json()["response"].as_str().map(str::to_string))
                            .flatten();
                        match text {
                            Some(text) => {
                                let wrong = check(&text);
                                if !wrong.is_empty() {
                                    failed.push(format!("{m:?}: {wrong}"));
                                }
                            }
                            None => failed.push(format!("{m:?}: HTTP {} {}", r.status, r.text())),
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

/// A line-protocol `chat` for each message from a new user, all pipelined on one link.
fn over_line(
    addr: SocketAddr,
    tag: &str,
    messages: &[String],
    check: fn(&str) -> String,
) -> Vec<String> {
    let mut g = LineClient::connect(addr);
    g.hello("morrowind", "tes3mp");
    for (i, m) in messages.iter().enumerate() {
        let user = format!("{tag}-line-{i}");
        g.send(&json!({"type": "chat", "id": i, "user_id": user, "username": user, "room": "The Tower", "message": m}));
    }
    let mut answered = vec![false; messages.len()];
    let mut failed = Vec::new();
    while answered.iter().any(|a| !a) {
        let v = g.recv().expect("the link stays open");
        if v["type"] != "reply" && v["type"] != "error" {
            continue;
        }
        let Some(i) = v["id"]
            .as_u64()
            .map(|i| i as usize)
            .filter(|i| *i < messages.len())
        else {
            panic!("an answer without a known id: {v}");
        };
        answered[i] = true;
        let m = &messages[i];
        match v["text"].as_str() {
            Some(text) if v["type"] == "reply" => {
                let wrong = check(text);
                if !wrong.is_empty() {
                    failed.push(format!("{m:?}: {wrong}"));
                }
            }
            _ => failed.push(format!("{m:?}: {v}")),
        }
    }
    failed
}

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A Workshop visitor message for each message, each from a new visitor, on one feed
/// connection; the barks come back in any order, so every bark is checked and counted.
fn over_workshop(
    addr: SocketAddr,
    tag: &str,
    messages: &[String],
    check: fn(&str) -> String,
) -> Vec<String> {
    let (mut ws, _): (Ws, _) = tungstenite::connect(format!("ws://{addr}/")).expect("ws connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    for (i, m) in messages.iter().enumerate() {
        let visitor = format!("{tag}{i}");
        ws.send(Message::text(
            json!({"type": "message", "text": m, "visitor": visitor}).to_string(),
        ))
        .expect("send");
    }
    let mut failed = Vec::new();
    let mut barks = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while barks < messages.len() {
        assert!(
            Instant::now() < deadline,
            "{barks} barks of {} within 60 s",
            messages.len()
        );
        let frame = match ws.read().expect("a frame") {
            Message::Text(t) => t,
            _ => continue,
        };
        let v: Value = serde_json::from_str(frame.as_str()).unwrap();
        match v["type"].as_str() {
            Some("bark") => {
                barks += 1;
                let text = v["text"].as_str().unwrap_or_default();
                let wrong = check(text);
                if !wrong.is_empty() {
                    failed.push(format!("a bark: {wrong}: {text:?}"));
                }
            }
            Some("error") => failed.push(format!("an error frame: {v}")),
            _ => {}
        }
    }
    failed
}

fn every_surface_answers_with_the_protocol(backend: Backend) {
    let b = start_with(config(backend));
    let line = b.line.expect("a line listener");
    let crisis = lines(Label::Crisis);
    let resources = lines(Label::Resources);
    let tag = format!("{backend:?}").to_lowercase();
    let mut failed = Vec::new();
    for (surface, f) in [
        (
            "http",
            over_http as fn(SocketAddr, &str, &[String], fn(&str) -> String) -> Vec<String>,
        ),
        ("line", over_line),
        ("workshop", over_workshop),
    ] {
        let addr = if surface == "line" { line } else { b.http };
        for e in f(addr, &format!("{tag}c"), &crisis, protocol_missing) {
            failed.push(format!("{surface} crisis {e}"));
        }
        for e in f(addr, &format!("{tag}r"), &resources, resources_wrong) {
            failed.push(format!("{surface} resources {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{backend:?}: {} of {} answers were wrong:\n{}",
        failed.len(),
        3 * (crisis.len() + resources.len()),
        failed.join("\n")
    );
    // Resources questions do not flag a session; crisis lines do.
    let sessions = get(b.http, "/bridge/sessions");
    let flagged = |prefix: &str| {
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["user_id"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(prefix)
            })
            .filter(|s| s["crisis"] == true)
            .count()
    };
    assert_eq!(flagged(&format!("{tag}r-http")), 0);
    assert_eq!(flagged(&format!("{tag}c-http")), crisis.len());
}

#[test]
fn builtin_agent() {
    every_surface_answers_with_the_protocol(Backend::Builtin);
}

#[test]
fn model_port_closed() {
    every_surface_answers_with_the_protocol(Backend::Refused);
}

#[test]
fn model_hangs() {
    every_surface_answers_with_the_protocol(Backend::Hangs);
}

#[test]
fn model_answers_500() {
    every_surface_answers_with_the_protocol(Backend::Fails);
}
