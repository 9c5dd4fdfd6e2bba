//! Golden transcripts: one session per transport (HTTP, line protocol, WebSocket, travel)
//! driven over real sockets, everything exchanged written down in order as text and
//! compared byte for byte with `fixtures/protocol/golden/<name>.txt`, after masking only
//! what legitimately varies between runs (timestamps, ports, durations, generated keys).
//!
//! They guard refactors of the layer between the transports and the hub: the bytes on
//! every wire must not change.
//!
//! To record (or re-record, after a deliberate wire change) the files:
//!
//! ```text
//! WORLDBRIDGE_BLESS=1 cargo test --test golden
//! ```
//!
//! Without it a difference fails the test, and so does a missing file (never a silent
//! pass). The actual transcript of a failing run is written beside the golden file as
//! `<name>.actual.txt` (ignored by git) for `diff`.
//!
//! Format: each message sent is a block of lines starting `>> `, each one received
//! `<< `; a `\r` is written as the two characters `\r` so the file stays plain text (and
//! git cannot rewrite line ends), other control bytes and invalid UTF-8 as `\xNN`, and
//! every `\n` of the message starts a new prefixed line. WebSocket frames are written as
//! `<< text <payload>` / `<< close <code> <reason>`; pings and pongs (timer-driven) are
//! left out. `## ` lines are notes of what the test did.
//!
//! Order is deterministic: each step is sent alone and its answers read before the next
//! step. Where one step produces frames on several connections, the connections are read
//! in a fixed order (each connection's own order is the server's), which is the canonical
//! order the transcript records.

mod common;
use common::*;
use regex::Regex;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Transcript, masks, comparison
// ---------------------------------------------------------------------------

/// One kind of value that varies between runs: a narrow pattern and its placeholder.
/// `fixed` masks only ever hide values of one width (the bridge's own timestamps, keys),
/// so an HTTP Content-Length stays comparable when only they were masked.
struct Mask {
    re: Regex,
    with: &'static str,
    fixed: bool,
}

fn masks() -> &'static [Mask] {
    static MASKS: OnceLock<Vec<Mask>> = OnceLock::new();
    MASKS.get_or_init(|| {
        [
            // The bridge's RFC 3339 timestamps: always `YYYY-MM-DDTHH:MM:SS.mmmZ`.
            (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", "<ts>", true),
            // Any other RFC 3339 form (a fraction of another length, an offset).
            (
                r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?",
                "<ts>",
                false,
            ),
            // Epoch milliseconds (13 digits, 2001..2286), alone or inside an id.
            (r"\b1\d{12}\b", "<epoch_ms>", true),
            // A world's ed25519 public key (random per in-memory bridge).
            (r"ed25519:[A-Za-z0-9+/]{43}=", "ed25519:<key>", true),
            // Loopback ports (the listeners are on port 0).
            (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", false),
            // Uptime, latency, ages: figures of elapsed time.
            (r#""uptime_s":\d+"#, r#""uptime_s":<s>"#, false),
            (
                r#""(latency_avg_ms|age_ms)":[0-9.eE+-]+"#,
                r#""$1":<ms>"#,
                false,
            ),
            // The seconds left of a rate-limit window.
            (r"(?m)^(Retry-After: )\d+", "${1}<s>", false),
        ]
        .into_iter()
        .map(|(re, with, fixed)| Mask {
            re: Regex::new(re).unwrap(),
            with,
            fixed,
        })
        .collect()
    })
}

/// `text` with every varying value masked; true when a mask of varying width hit.
fn mask_tracking(text: &str) -> (String, bool) {
    let mut s = text.to_string();
    let mut varied = false;
    for m in masks() {
        if m.re.is_match(&s) {
            varied |= !m.fixed;
            s = m.re.replace_all(&s, m.with).into_owned();
        }
    }
    (s, varied)
}

fn mask(text: &str) -> String {
    mask_tracking(text).0
}

/// Bytes as one line-safe text: `\r` spelled out, other control bytes and invalid UTF-8
/// as `\xNN`; `\n` stays (it splits the block into prefixed lines). A run of more than
/// 64 copies of one printable character is written `{c × n}` (a 20,000-byte header stays
/// one short line).
fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        let mut chars = chunk.valid().chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push('\n'),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => {
                    let mut n = 1;
                    while chars.next_if_eq(&c).is_some() {
                        n += 1;
                    }
                    if n > 64 {
                        out.push_str(&format!("{{{c} × {n}}}"));
                    } else {
                        out.extend(std::iter::repeat_n(c, n));
                    }
                }
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

struct Transcript {
    name: &'static str,
    text: String,
}

impl Transcript {
    fn new(name: &'static str) -> Transcript {
        Transcript {
            name,
            text: String::new(),
        }
    }

    fn note(&mut self, what: &str) {
        self.text.push_str(&format!("## {what}\n"));
    }

    fn block(&mut self, mark: &str, text: &str) {
        for line in text.split('\n') {
            self.text.push_str(mark);
            self.text.push(' ');
            self.text.push_str(line);
            self.text.push('\n');
        }
    }

    /// A message that is not HTTP (a line, a frame): masked as a whole.
    fn sent(&mut self, bytes: &[u8]) {
        self.block(">>", &mask(&escape(bytes)));
    }

    fn received(&mut self, bytes: &[u8]) {
        self.block("<<", &mask(&escape(bytes)));
    }

    /// An HTTP message: the body is masked, and the Content-Length only when a mask of
    /// varying width hit the body (the length then varies with the masked figures; the
    /// reader took exactly Content-Length bytes as the body).
    fn http(&mut self, mark: &str, bytes: &[u8]) {
        let (head, body) = match find(bytes, b"\r\n\r\n") {
            Some(i) => (&bytes[..i + 4], &bytes[i + 4..]),
            None => (bytes, &b""[..]),
        };
        let (masked_body, varied) = mask_tracking(&escape(body));
        let mut head_text = mask(&escape(head));
        if varied {
            head_text = content_length_re()
                .replace(&head_text, "${1}<len>")
                .into_owned();
        }
        self.block(mark, &format!("{head_text}{masked_body}"));
    }

    /// Compare with the golden file (or write it under `WORLDBRIDGE_BLESS=1`).
    fn check(self) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/protocol/golden");
        let path = dir.join(format!("{}.txt", self.name));
        let actual_path = dir.join(format!("{}.actual.txt", self.name));
        if std::env::var("WORLDBRIDGE_BLESS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &self.text).unwrap();
            let _ = std::fs::remove_file(&actual_path);
            return;
        }
        let golden = match std::fs::read_to_string(&path) {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(&actual_path, &self.text);
                panic!(
                    "no golden transcript {} ({e}); record it with \
                     WORLDBRIDGE_BLESS=1 cargo test --test golden",
                    path.display(),
                );
            }
        };
        if golden == self.text {
            let _ = std::fs::remove_file(&actual_path);
            return;
        }
        let _ = std::fs::write(&actual_path, &self.text);
        let (g, a): (Vec<&str>, Vec<&str>) =
            (golden.lines().collect(), self.text.lines().collect());
        let at = g
            .iter()
            .zip(a.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(g.len().min(a.len()));
        panic!(
            "transcript {} differs from {} at line {}:\n golden: {:?}\n actual: {:?}\n\
             (whole run in {}; if the change is deliberate, re-record with WORLDBRIDGE_BLESS=1)",
            self.name,
            path.display(),
            at + 1,
            g.get(at),
            a.get(at),
            actual_path.display()
        );
    }
}

impl Drop for Transcript {
    /// A test that fails before [`Transcript::check`] leaves what it had exchanged in
    /// `<name>.actual.txt`, to see where it stopped.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/protocol/golden");
            let _ = std::fs::write(dir.join(format!("{}.actual.txt", self.name)), &self.text);
        }
    }
}

fn content_length_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)(\ncontent-length: )\d+").unwrap())
}

// ---------------------------------------------------------------------------
// HTTP: raw requests, raw responses
// ---------------------------------------------------------------------------

/// One keep-alive HTTP connection whose every byte goes into the transcript.
struct Http {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Http {
            sock,
            buf: Vec::new(),
        }
    }

    /// Send `req` as is, recorded; the answer is read later with [`Http::answer`].
    fn send(&mut self, t: &mut Transcript, req: &[u8]) {
        t.http(">>", req);
        self.sock.write_all(req).expect("write");
    }

    /// Send `req` as is, read one response; both go into `t`.
    fn raw(&mut self, t: &mut Transcript, req: &[u8]) {
        self.send(t, req);
        self.answer(t);
    }

    /// Read one response, recorded.
    fn answer(&mut self, t: &mut Transcript) {
        self.answer_of(t, false);
    }

    /// Read one response (`head_only`: to a HEAD, no body follows its Content-Length).
    fn answer_of(&mut self, t: &mut Transcript, head_only: bool) {
        let raw = self.read_one(head_only);
        assert!(
            raw.starts_with(b"HTTP/1.1 "),
            "not a status line: {:?}",
            String::from_utf8_lossy(&raw)
        );
        t.http("<<", &raw);
    }

    /// One request with a JSON body (or none), its response read; both recorded.
    fn call(&mut self, t: &mut Transcript, method: &str, path: &str, body: Option<&str>) {
        self.raw(t, &request_bytes(method, path, body, &[]));
    }

    /// The raw bytes of one response (head and Content-Length body).
    fn read_one(&mut self, head_only: bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("a Content-Length number"));
                let len = if head_only { 0 } else { len };
                if self.buf.len() >= end + 4 + len {
                    return self.buf.drain(..end + 4 + len).collect();
                }
            }
            assert!(Instant::now() < deadline, "no whole response within 15 s");
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!(
                    "closed before a whole response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Read to EOF (the server closed after its answer); records that it did.
    fn expect_close(&mut self, t: &mut Transcript) {
        let mut b = [0u8; 1024];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => break,
                Ok(n) => panic!("bytes after the last response: {:?}", &b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("the server did not close: {e}"),
            }
        }
        t.note("closed by the server");
    }
}

// ---------------------------------------------------------------------------
// 1. HTTP
// ---------------------------------------------------------------------------

#[test]
fn http_session_transcript() {
    let b = start();
    let mut t = Transcript::new("http");
    let mut c = Http::connect(b.http);
    let alice = |msg: &str| {
        json!({"user_id":"alice_01","username":"Alice","message":msg,"room":"The Threshold"})
            .to_string()
    };

    t.note("health");
    c.call(&mut t, "GET", "/bridge/health", None);
    t.note("chat: a new user, then a second message from the same user");
    c.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&alice("Hello! What do you see?")),
    );
    c.call(&mut t, "POST", "/bridge/chat", Some(&alice("who is here?")));
    t.note("chat: a crisis message");
    c.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&json!({"user_id":"carol_03","username":"Carol","message":"i want to kill myself","room":"The Garden"}).to_string()),
    );
    t.note("generate (Evennia's LLM contrib shape)");
    c.call(
        &mut t,
        "POST",
        "/api/v1/generate",
        Some(&json!({"prompt":"You are roleplaying as Timmy. Hello there","max_new_tokens":250,"temperature":0.7}).to_string()),
    );
    t.note("say, move");
    c.call(
        &mut t,
        "POST",
        "/bridge/say",
        Some(&json!({"user_id":"bob_02","username":"Bob","message":"Anyone else here?","room":"The Threshold"}).to_string()),
    );
    c.call(
        &mut t,
        "POST",
        "/bridge/move",
        Some(&json!({"user_id":"alice_01","room":"The Garden"}).to_string()),
    );
    t.note("room events, players, world, rooms, sessions, stats");
    c.call(&mut t, "GET", "/bridge/room/The%20Threshold/events", None);
    c.call(&mut t, "GET", "/bridge/room/The%20Garden/players", None);
    c.call(&mut t, "GET", "/bridge/world/The%20Garden", None);
    c.call(&mut t, "GET", "/bridge/rooms", None);
    c.call(&mut t, "GET", "/bridge/sessions", None);
    c.call(&mut t, "GET", "/bridge/stats", None);

    t.note("error paths on the same connection");
    c.call(&mut t, "POST", "/bridge/chat", Some("{not json"));
    c.call(&mut t, "POST", "/bridge/chat", Some(r#"{"user_id":"a"}"#));
    c.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(r#"{"user_id":"a","message":5}"#),
    );
    c.call(
        &mut t,
        "POST",
        "/api/v1/generate",
        Some(r#"{"text":"no prompt"}"#),
    );
    c.call(&mut t, "GET", "/bridge/chat", None);
    c.call(&mut t, "DELETE", "/bridge/health", None);
    c.call(&mut t, "GET", "/nope", None);
    c.call(
        &mut t,
        "POST",
        "/bridge/move",
        Some(&json!({"user_id":"alice_01","room":"The Garden"}).to_string()),
    );
    c.call(
        &mut t,
        "POST",
        "/bridge/move",
        Some(&json!({"user_id":"alice_01","room":"Narnia"}).to_string()),
    );
    c.call(&mut t, "GET", "/bridge/room/%FF/events", None);
    c.call(&mut t, "GET", "/bridge/observe/morrowind", None);
    c.call(
        &mut t,
        "POST",
        "/bridge/act",
        Some(
            &json!({"world":"morrowind","action":"teleport","args":{"cell":"Balmora"}}).to_string(),
        ),
    );

    t.note("HEAD, OPTIONS, the gateway's status");
    c.send(&mut t, &request_bytes("HEAD", "/bridge/rooms", None, &[]));
    c.answer_of(&mut t, true);
    c.call(&mut t, "OPTIONS", "/bridge/chat", None);
    c.raw(
        &mut t,
        &request_bytes(
            "OPTIONS",
            "/bridge/chat",
            None,
            &[
                ("Origin", "http://example.test"),
                ("Access-Control-Request-Method", "POST"),
            ],
        ),
    );
    c.call(&mut t, "GET", "/api/gateway/status", None);
    t.note("Connection: close is honoured");
    c.raw(
        &mut t,
        &request_bytes("GET", "/bridge/rooms", None, &[("Connection", "close")]),
    );
    c.expect_close(&mut t);

    t.note("431: a head over the limit");
    let mut fat = Http::connect(b.http);
    fat.raw(
        &mut t,
        format!(
            "GET /bridge/health HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        )
        .as_bytes(),
    );
    fat.expect_close(&mut t);
    t.note("413: a body over http.body_max_bytes, refused from the head");
    let mut big = Http::connect(b.http);
    big.raw(
        &mut t,
        b"POST /bridge/say HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
    );
    big.expect_close(&mut t);
    t.note("411: a chunked body");
    let mut chunked = Http::connect(b.http);
    chunked.raw(
        &mut t,
        b"POST /bridge/say HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    chunked.expect_close(&mut t);
    t.note("400: garbage instead of a request");
    let mut garbage = Http::connect(b.http);
    garbage.raw(
        &mut t,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    );
    garbage.expect_close(&mut t);
    drop(b);

    t.note("429 rate_limited: a bridge allowing 2 requests a minute per user");
    let mut cfg = test_config();
    cfg.http.rate_limit_requests = 2;
    cfg.http.rate_limit_window_s = 60;
    let b = start_with(cfg);
    let mut c = Http::connect(b.http);
    let say = json!({"user_id":"greedy","message":"x","room":"The Tower"}).to_string();
    for _ in 0..3 {
        c.call(&mut t, "POST", "/bridge/say", Some(&say));
    }
    drop(b);

    t.note("429 too_many_waiting: a command agent held at a gate, agent.per_user_queue = 0");
    let gate = scratch_dir("golden-gate");
    let mut cfg = test_config();
    cfg.agent.backend = "command".into();
    cfg.agent.workers = 1;
    cfg.agent.per_user_queue = 0;
    cfg.agent.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while read -r line; do while [ ! -e '{}' ]; do sleep 0.02; done; \
             echo '{{\"text\": \"Sorry, I was thinking.\"}}'; done",
            gate.display()
        ),
    ];
    let b = start_with(cfg);
    let chat = |msg: &str| {
        json!({"user_id":"dave_04","username":"Dave","message":msg,"room":"The Forge"}).to_string()
    };
    let mut first = Http::connect(b.http);
    first.send(
        &mut t,
        &request_bytes("POST", "/bridge/chat", Some(&chat("are you there?")), &[]),
    );
    // Unrecorded: the first chat is with the agent before the second is sent.
    eventually(Duration::from_secs(15), "the first chat in flight", || {
        get(b.http, "/bridge/stats")["agent"]["in_flight"] == 1
    });
    let mut second = Http::connect(b.http);
    second.call(&mut t, "POST", "/bridge/chat", Some(&chat("hello?")));
    std::fs::write(&gate, b"open").unwrap();
    t.note("the gate opens: the first chat's answer");
    first.answer(&mut t);
    let _ = std::fs::remove_file(&gate);
    drop(b);

    t.note("a durable bridge (SQLite store): answers held until the store has flushed");
    let mut cfg = test_config();
    cfg.store.memory = false;
    cfg.store.data_dir = scratch_dir("golden-durable").display().to_string();
    let b = start_with(cfg);
    let mut c = Http::connect(b.http);
    c.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&alice("hello, durable world")),
    );
    c.call(
        &mut t,
        "POST",
        "/bridge/say",
        Some(
            &json!({"user_id":"bob_02","username":"Bob","message":"saved?","room":"The Threshold"})
                .to_string(),
        ),
    );
    c.call(
        &mut t,
        "POST",
        "/bridge/move",
        Some(&json!({"user_id":"alice_01","room":"The Tower"}).to_string()),
    );
    c.call(&mut t, "GET", "/bridge/sessions", None);
    t.check();
}

// ---------------------------------------------------------------------------
// 2. The line protocol
// ---------------------------------------------------------------------------

/// A line-protocol peer whose every line goes into the transcript.
struct Line {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Line {
    fn connect(addr: SocketAddr) -> Line {
        let sock = TcpStream::connect(addr).expect("connect to the line port");
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Line {
            sock,
            buf: Vec::new(),
        }
    }

    /// Send raw bytes (a line or several, with their newlines).
    fn raw(&mut self, t: &mut Transcript, bytes: &[u8]) {
        t.sent(bytes.strip_suffix(b"\n").unwrap_or(bytes));
        self.sock.write_all(bytes).expect("write");
    }

    fn send(&mut self, t: &mut Transcript, v: &Value) {
        self.raw(t, format!("{v}\n").as_bytes());
    }

    /// The next line (without its newline), recorded.
    fn recv(&mut self, t: &mut Transcript) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                t.received(&line[..nl]);
                return serde_json::from_slice(&line[..nl]).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&line))
                });
            }
            assert!(Instant::now() < deadline, "no line within 15 s");
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!("the bridge closed the line connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("line read failed: {e}"),
            }
        }
    }

    /// Lines until one of type `kind` (all recorded); returns it.
    fn recv_type(&mut self, t: &mut Transcript, kind: &str) -> Value {
        loop {
            let v = self.recv(t);
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Send one message and read lines up to the answer of type `kind`.
    fn ask(&mut self, t: &mut Transcript, v: &Value, kind: &str) -> Value {
        self.send(t, v);
        self.recv_type(t, kind)
    }
}

/// A `WorldInterface` call's outcome in the transcript: the typed value as JSON, or the error.
fn outcome<T: serde::Serialize>(r: &Result<T, worldbridge::doors::game::GameError>) -> String {
    match r {
        Ok(v) => format!("Ok {}", serde_json::to_string(v).unwrap()),
        Err(e) => format!("Err {e:?}"),
    }
}

#[test]
fn line_session_transcript() {
    use worldbridge::doors::game::{Target, WorldInterface};
    use worldbridge::world::protocol::GameCommand;
    let mut cfg = line_config();
    cfg.line.request_timeout_s = 1;
    let b = start_with(cfg);
    let mut t = Transcript::new("line");
    let mut g = Line::connect(b.line.expect("a line listener"));

    t.note("hello");
    g.ask(
        &mut t,
        &json!({"type": "hello", "world": "morrowind", "kind": "tes3mp", "protocol": 1}),
        "welcome",
    );
    g.ask(&mut t, &json!({"type": "ping", "id": 1}), "pong");
    t.note("room declarations");
    g.ask(
        &mut t,
        &json!({"type": "room", "id": 2, "name": "Balmora, Temple", "desc": "Incense and stone.",
                "exits": {"out": "Balmora"}, "objects": ["an altar", {"name": "a candle"}]}),
        "ok",
    );
    g.ask(
        &mut t,
        &json!({"type": "room", "id": 3, "name": "Balmora"}),
        "ok",
    );
    t.note("presence, say, a world event");
    g.ask(
        &mut t,
        &json!({"type": "presence", "id": 4, "event": "enter", "user_id": "alice",
                "username": "Alice", "room": "Balmora, Temple"}),
        "ok",
    );
    g.ask(
        &mut t,
        &json!({"type": "say", "id": 5, "user_id": "alice", "username": "Alice",
                "room": "Balmora, Temple", "message": "hello there"}),
        "ok",
    );
    g.send(
        &mut t,
        &json!({"type": "event", "room": "Balmora, Temple", "event": "rain", "message": "It starts to rain."}),
    );
    g.ask(&mut t, &json!({"type": "ping", "id": 6}), "pong");
    t.note("a perception pushed by the game, then chat (the builtin agent's reply)");
    g.send(
        &mut t,
        &json!({"type": "perception", "player": "Timmy", "cell": "Balmora, Temple",
                "position": {"x": 1.0, "y": 2.0, "z": 3.0}, "stats": {"health": {"current": 40, "base": 50}}}),
    );
    g.ask(
        &mut t,
        &json!({"type": "chat", "id": 7, "user_id": "alice", "username": "Alice",
                "room": "Balmora, Temple", "message": "Timmy, where are you?"}),
        "reply",
    );
    g.ask(
        &mut t,
        &json!({"type": "chat", "id": "c8", "user_id": "alice", "message": "I want to end my life"}),
        "reply",
    );

    t.note("observe / act / speak from the bridge (TestBridge::worlds), answered by the game");
    let world = || b.worlds.world("morrowind").for_player("Timmy");
    let mut w = world();
    let asker = std::thread::spawn(move || outcome(&w.observe()));
    let ask = g.recv_type(&mut t, "observe");
    g.send(
        &mut t,
        &json!({"type": "perception", "id": ask["id"], "protocol_version": "1.0",
                "player": "Timmy", "cell": "Balmora, Temple",
                "position": {"x": 4700.5, "y": 3874.7, "z": 14758.9},
                "stats": {"health": {"current": 40, "base": 50}},
                "inventory": [{"ref_id": "gold_001", "count": 12}],
                "nearby": [{"name": "Vivec", "kind": "npc", "distance": 312.5}],
                "game_hour": 13.5}),
    );
    let got = asker.join().unwrap();
    t.note(&format!("observe() -> {got}"));

    let mut w = world();
    let asker = std::thread::spawn(move || {
        let cmd = GameCommand::parse("teleport", &json!({"cell": "Vivec, Arena"})).unwrap();
        outcome(&w.act(&cmd))
    });
    let ask = g.recv_type(&mut t, "act");
    g.send(
        &mut t,
        &json!({"type": "result", "id": ask["id"], "ok": true, "data": {"cell": "Vivec, Arena"}}),
    );
    let got = asker.join().unwrap();
    t.note(&format!("act(teleport) -> {got}"));

    let mut w = world();
    let asker = std::thread::spawn(move || {
        let cmd = GameCommand::parse("remove_item", &json!({"ref_id": "gold_001", "count": 5000}))
            .unwrap();
        outcome(&w.act(&cmd))
    });
    let ask = g.recv_type(&mut t, "act");
    g.send(
        &mut t,
        &json!({"type": "result", "id": ask["id"], "ok": false, "code": "not_enough", "error": "only 12 gold"}),
    );
    let got = asker.join().unwrap();
    t.note(&format!("act(remove_item) refused by the game -> {got}"));

    let mut w = world();
    let asker = std::thread::spawn(move || {
        outcome(&w.speak("I am here.", &Target::Player("Alice".into())))
    });
    g.recv_type(&mut t, "speak");
    let got = asker.join().unwrap();
    t.note(&format!("speak(to Alice) -> {got}"));

    t.note("a game that does not answer: act times out after line.request_timeout_s");
    let mut w = world();
    let asker = std::thread::spawn(move || {
        let cmd = GameCommand::parse("console", &json!({"command": "tgm"})).unwrap();
        outcome(&w.act(&cmd))
    });
    let ask = g.recv_type(&mut t, "act");
    let got = asker.join().unwrap();
    t.note(&format!("act(console) unanswered -> {got}"));
    t.note("the late answer is dropped without a line back");
    g.send(
        &mut t,
        &json!({"type": "result", "id": ask["id"], "ok": true}),
    );
    g.ask(&mut t, &json!({"type": "ping", "id": 9}), "pong");
    let mut nowhere = b.worlds.world("vvardenfell");
    t.note(&format!(
        "observe() of a world with no link -> {}",
        outcome(&nowhere.observe())
    ));

    t.note("HTTP act and observe through the link, the game answering each");
    let mut h = Http::connect(b.http);
    let act = |body: Value| request_bytes("POST", "/bridge/act", Some(&body.to_string()), &[]);
    h.send(
        &mut t,
        &act(json!({"world": "morrowind", "player": "Timmy", "action": "teleport",
                    "args": {"cell": "Balmora, Temple", "pos": {"x": 4700.567, "y": 3874.742, "z": 14758.99}}})),
    );
    let ask = g.recv_type(&mut t, "act");
    g.send(
        &mut t,
        &json!({"type": "result", "id": ask["id"], "ok": true, "data": {"cell": "Balmora, Temple"}}),
    );
    h.answer(&mut t);
    h.send(
        &mut t,
        &act(json!({"world": "morrowind", "action": "remove_item", "args": {"ref_id": "gold_001", "count": 5000}})),
    );
    let ask = g.recv_type(&mut t, "act");
    g.send(
        &mut t,
        &json!({"type": "result", "id": ask["id"], "ok": false, "code": "not_enough", "error": "only 12 gold"}),
    );
    h.answer(&mut t);
    t.note("bad actions never reach the game");
    for body in [
        json!({"world": "morrowind", "action": "fly", "args": {}}),
        json!({"world": "morrowind", "action": "add_item", "args": {"ref_id": "gold_001", "count": "lots"}}),
        json!({"world": "morrowind", "action": "teleport"}),
    ] {
        h.raw(&mut t, &act(body));
    }
    t.note("a game that does not answer: 504 after line.request_timeout_s");
    h.send(
        &mut t,
        &act(json!({"world": "morrowind", "action": "console", "args": {"command": "tgm"}})),
    );
    let late = g.recv_type(&mut t, "act");
    h.answer(&mut t);
    g.send(
        &mut t,
        &json!({"type": "result", "id": late["id"], "ok": true}),
    );
    t.note("observe: the stored perception (with its age), then a fresh one asked of the game");
    h.call(&mut t, "GET", "/bridge/observe/morrowind", None);
    h.send(
        &mut t,
        &request_bytes("GET", "/bridge/observe/morrowind?fresh=1", None, &[]),
    );
    let ask = g.recv_type(&mut t, "observe");
    g.send(
        &mut t,
        &json!({"type": "perception", "id": ask["id"], "protocol_version": "1.0",
                "player": "Timmy", "cell": "Balmora", "game_hour": 14.0}),
    );
    h.answer(&mut t);
    h.call(&mut t, "GET", "/bridge/observe/vvardenfell", None);

    t.note("HTTP into a room this link hosts: say and speak reach the link");
    h.call(
        &mut t,
        "POST",
        "/bridge/say",
        Some(&json!({"user_id":"web1","username":"Webby","room":"Balmora, Temple","message":"hello from the web"}).to_string()),
    );
    g.recv_type(&mut t, "say");
    h.call(
        &mut t,
        "POST",
        "/bridge/speak",
        Some(&json!({"room":"Balmora, Temple","text":"The candle flickers."}).to_string()),
    );
    g.recv_type(&mut t, "speak");
    h.call(
        &mut t,
        "POST",
        "/bridge/speak",
        Some(&json!({"room":"Nowhere Hosted","text":"x"}).to_string()),
    );

    t.note("error lines");
    g.raw(&mut t, b"this is not json\n");
    g.recv_type(&mut t, "error");
    g.raw(&mut t, b"[1,2]\n");
    g.recv_type(&mut t, "error");
    g.ask(&mut t, &json!({"type": "dance", "id": 10}), "error");
    g.ask(&mut t, &json!({"id": 11}), "error");
    g.ask(
        &mut t,
        &json!({"type": "say", "id": 12, "room": "Balmora", "message": "hi"}),
        "error",
    );
    g.ask(
        &mut t,
        &json!({"type": "chat", "user_id": "alice", "message": "no id"}),
        "error",
    );
    g.ask(
        &mut t,
        &json!({"type": "perception", "id": 13, "protocol_version": "2.0", "cell": "X"}),
        "error",
    );
    g.ask(
        &mut t,
        &json!({"type": "travel", "id": 14, "user_id": "alice", "to_world": "nowhere"}),
        "error",
    );
    t.note("presence leave; then nothing is left unread before the last pong");
    g.ask(
        &mut t,
        &json!({"type": "presence", "id": 15, "event": "leave", "user_id": "alice"}),
        "ok",
    );
    g.ask(&mut t, &json!({"type": "ping", "id": 16}), "pong");
    t.check();
}

// ---------------------------------------------------------------------------
// 3. WebSocket: the Matrix gateway and the Workshop feed
// ---------------------------------------------------------------------------

/// A WebSocket client whose handshake bytes and frames go into the transcript, each
/// frame under the connection's name. The handshake is written by hand with a fixed
/// `Sec-WebSocket-Key`, so the `101` answer is the same on every run.
struct Ws {
    who: &'static str,
    ws: tungstenite::WebSocket<TcpStream>,
}

impl Ws {
    fn connect(t: &mut Transcript, who: &'static str, addr: SocketAddr, path: &str) -> Ws {
        t.note(&format!("[{who}] opens {path}"));
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        t.http(">>", req.as_bytes());
        sock.write_all(req.as_bytes()).expect("write");
        // Byte by byte up to the end of the head: the first frame may follow at once and
        // belongs to the WebSocket reader.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut b) {
                Ok(1) => head.push(b[0]),
                Ok(_) => panic!(
                    "closed during the handshake: {:?}",
                    String::from_utf8_lossy(&head)
                ),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("handshake read failed: {e}"),
            }
        }
        t.http("<<", &head);
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let ws = tungstenite::WebSocket::from_raw_socket(
            sock,
            tungstenite::protocol::Role::Client,
            None,
        );
        Ws { who, ws }
    }

    fn send(&mut self, t: &mut Transcript, v: &Value) {
        let text = v.to_string();
        t.sent(format!("[{}] text {text}", self.who).as_bytes());
        self.ws
            .send(tungstenite::Message::text(text))
            .expect("send");
    }

    /// The next text or close frame (pings and pongs are timer-driven: not recorded).
    fn next(&mut self, t: &mut Transcript) -> Value {
        use tungstenite::Message;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                Instant::now() < deadline,
                "[{}] no frame within 15 s",
                self.who
            );
            match self.ws.read().expect("a frame") {
                Message::Text(s) => {
                    t.received(format!("[{}] text {}", self.who, s.as_str()).as_bytes());
                    return serde_json::from_str(s.as_str()).unwrap_or(Value::Null);
                }
                Message::Close(f) => {
                    let (code, why) = f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    t.received(format!("[{}] close {code} {why}", self.who).as_bytes());
                    return json!({"type": "close", "code": code});
                }
                Message::Binary(b) => {
                    t.received(format!("[{}] binary {}", self.who, escape(&b)).as_bytes());
                }
                _ => continue,
            }
        }
    }

    /// Frames up to one of type `kind` (all recorded); returns it.
    fn until(&mut self, t: &mut Transcript, kind: &str) -> Value {
        loop {
            let v = self.next(t);
            if v["type"] == kind {
                return v;
            }
            assert_ne!(
                v["type"], "close",
                "[{}] closed while waiting for {kind}",
                self.who
            );
        }
    }
}

#[test]
fn websocket_session_transcript() {
    let dir = scratch_dir("golden-ws");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("workshop-state.yaml");
    std::fs::write(&state, "mood: calm\ntower:\n  floors: 3\n").unwrap();
    let mut cfg = test_config();
    cfg.http.rate_limit_requests = 100_000;
    cfg.gateway.max_messages_per_s = 100_000;
    cfg.workshop.state_file = state.display().to_string();
    cfg.workshop.inbox_dir = dir.join("inbox").display().to_string();
    cfg.workshop.poll_s = 1;
    cfg.gateway.history_max = 5;
    let b = start_with(cfg);
    // The watcher reads the state file on its own thread: wait (unrecorded) until a
    // feed connection gets it, so the recorded connection's first frame is the same on
    // every run.
    eventually(
        Duration::from_secs(15),
        "the workshop state is loaded",
        || {
            let (mut ws, _) =
                tungstenite::connect(format!("ws://{}/ws/workshop", b.http)).expect("ws connect");
            matches!(ws.read(), Ok(tungstenite::Message::Text(s)) if s.as_str().contains("calm"))
        },
    );
    let mut t = Transcript::new("ws");

    t.note("the gateway: register, join, a spoofed `from`, refused frames");
    let mut alice = Ws::connect(&mut t, "alice", b.http, "/ws/matrix");
    alice.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "alice", "role": "agent"}),
    );
    alice.until(&mut t, "agent_registered");
    let mut bob = Ws::connect(&mut t, "bob", b.http, "/ws/matrix");
    bob.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "bob", "role": "client"}),
    );
    bob.until(&mut t, "agent_registered");
    alice.until(&mut t, "agent_joined");
    alice.send(
        &mut t,
        &json!({"type": "bark", "from": "timmy", "text": "hello"}),
    );
    bob.until(&mut t, "bark");
    for msg in [
        json!({"type": "agent_left", "agentId": "bob", "role": "client"}),
        json!({"type": "resync_required", "since": 0}),
        json!({"type": "bark", "agentId": "timmy", "text": "I am Timmy"}),
    ] {
        alice.send(&mut t, &msg);
        alice.until(&mut t, "error");
    }
    let mut eve = Ws::connect(&mut t, "eve", b.http, "/ws/matrix");
    eve.send(
        &mut t,
        &json!({"type": "bark", "text": "before registering"}),
    );
    eve.until(&mut t, "error");
    for id in ["TIMMY", "Alice"] {
        eve.send(
            &mut t,
            &json!({"type": "agent_register", "agentId": id, "role": "agent"}),
        );
        eve.until(&mut t, "error");
    }

    t.note("a chat for the bridge's agent: timmy's bark to everyone");
    bob.send(
        &mut t,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "Hello Timmy", "room": "The Tower"}),
    );
    bob.until(&mut t, "bark");
    alice.until(&mut t, "bark");

    t.note("a world event from HTTP reaches the gateway");
    let mut h = Http::connect(b.http);
    h.call(
        &mut t,
        "POST",
        "/bridge/say",
        Some(&json!({"user_id": "u1", "username": "Una", "room": "The Garden", "message": "hello garden"}).to_string()),
    );
    alice.until(&mut t, "say");
    bob.until(&mut t, "say");

    t.note("the Workshop feed: state on connect, a visitor, the bark that answers");
    let mut visitor = Ws::connect(&mut t, "visitor", b.http, "/");
    visitor.until(&mut t, "state");
    visitor.send(&mut t, &json!({"type": "enter", "visitor": "Alexander"}));
    visitor.send(
        &mut t,
        &json!({"type": "message", "text": "How's the Tower coming?", "visitor": "Alexander"}),
    );
    visitor.until(&mut t, "bark");
    t.note("the gateway hears the visitor enter the Workshop and Timmy's bark there");
    alice.until(&mut t, "bark");
    visitor.send(&mut t, &json!({"type": "dance"}));
    visitor.until(&mut t, "error");
    visitor.send(&mut t, &json!({"type": "message", "visitor": "Alexander"}));
    visitor.until(&mut t, "error");
    visitor.send(&mut t, &json!({"type": "leave", "visitor": "Alexander"}));
    alice.until(&mut t, "presence");

    t.note("directed messages: each connection has read everything before them");
    bob.send(
        &mut t,
        &json!({"type": "agent_message", "target_id": "alice", "text": "still you?"}),
    );
    alice.until(&mut t, "agent_message");
    alice.send(
        &mut t,
        &json!({"type": "agent_message", "target_id": "bob", "text": "yes"}),
    );
    let bob_seen = bob.until(&mut t, "agent_message")["gateway_seq"].clone();

    t.note("bob leaves");
    bob.ws.close(None).expect("close");
    bob.next(&mut t);
    alice.until(&mut t, "agent_left");

    t.note("bob resumes with ?since= the last gateway_seq he saw: the frames he missed");
    alice.send(&mut t, &json!({"type": "m", "n": 1}));
    alice.send(&mut t, &json!({"type": "m", "n": 2}));
    alice.send(&mut t, &json!({"type": "x", "target_id": "nobody"}));
    alice.until(&mut t, "error");
    let path = format!("/ws/matrix?since={bob_seen}");
    let mut back = Ws::connect(&mut t, "bob", b.http, &path);
    back.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "bob", "role": "client"}),
    );
    back.until(&mut t, "agent_registered");
    back.until(&mut t, "m");
    back.until(&mut t, "m");
    alice.until(&mut t, "agent_joined");
    t.note("too far back for gateway.history_max = 5: resync_required");
    let mut late = Ws::connect(&mut t, "late", b.http, "/ws/matrix?since=1");
    late.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "late", "role": "client"}),
    );
    late.until(&mut t, "resync_required");
    t.note("a since that is not a number: refused before the upgrade");
    let mut bad = Http::connect(b.http);
    bad.raw(
        &mut t,
        format!(
            "GET /ws/matrix?since=abc HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            b.http
        )
        .as_bytes(),
    );
    t.check();
}

// ---------------------------------------------------------------------------
// 4. Travel between two federated bridges
// ---------------------------------------------------------------------------

/// The players of `room` in the bridge at `addr` (unrecorded: a wait condition).
fn in_room(addr: SocketAddr, room: &str, user: &str) -> bool {
    get(
        addr,
        &format!("/bridge/room/{}/players", room.replace(' ', "%20")),
    )["players"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["user_id"] == user))
}

/// The health's entry for peer `world` (unrecorded: a wait condition).
fn peer_health(addr: SocketAddr, world: &str) -> Value {
    get(addr, "/bridge/health")["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["world"] == world).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn travel_session_transcript() {
    const WAIT: Duration = Duration::from_secs(20);
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = start_with(fed_config(
        "a",
        pa,
        &scratch_dir("golden-travel-a"),
        vec![
            fed_peer("b", pb, "ab-secret"),
            fed_peer("c", pc, "ac-secret"),
        ],
    ));
    let b = start_with(fed_config(
        "b",
        pb,
        &scratch_dir("golden-travel-b"),
        vec![fed_peer("a", pa, "ab-secret")],
    ));
    // Unrecorded: a sees b online and has failed to reach c (which never runs), so
    // every answer below is decided by state, not by timing.
    eventually(WAIT, "a sees b online and c failing", || {
        peer_health(a.http, "b")["state"] == "online"
            && peer_health(a.http, "c")["last_error"].is_string()
    });
    eventually(WAIT, "b sees a online", || {
        peer_health(b.http, "a")["state"] == "online"
    });
    let mut t = Transcript::new("travel");
    let mut ha = Http::connect(a.http);
    let mut hb = Http::connect(b.http);

    t.note("timmy chats in a's portal room, then travels to b over HTTP");
    ha.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&json!({"user_id": "timmy", "username": "Timmy", "room": "The Bridge", "message": "hello"}).to_string()),
    );
    ha.call(
        &mut t,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": "timmy", "to_world": "b"}).to_string()),
    );
    eventually(WAIT, "timmy arrives in b", || {
        in_room(b.http, "The Bridge", "timmy")
    });
    t.note("timmy arrived in b (waited for, unrecorded); his session came with him");
    hb.call(&mut t, "GET", "/bridge/room/The%20Bridge/players", None);
    t.note("travelling again from a: he is not there any more");
    ha.call(
        &mut t,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": "timmy", "to_world": "b"}).to_string()),
    );
    t.note("to c, which is offline: refused, the character stays");
    ha.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&json!({"user_id": "tommy", "username": "Tommy", "room": "The Bridge", "message": "hi"}).to_string()),
    );
    ha.call(
        &mut t,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": "tommy", "to_world": "c"}).to_string()),
    );
    ha.call(
        &mut t,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": "tommy", "to_world": "narnia"}).to_string()),
    );
    ha.call(
        &mut t,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": "tommy"}).to_string()),
    );

    t.note("back from b to a through a game's travel exit (the line protocol)");
    let mut g = Line::connect(b.line.expect("b's line listener"));
    g.ask(
        &mut t,
        &json!({"type": "travel", "user_id": "timmy", "to_world": "a"}),
        "error",
    );
    g.ask(
        &mut t,
        &json!({"type": "travel", "id": 7, "user_id": "timmy", "to_world": "a"}),
        "ok",
    );
    eventually(WAIT, "timmy is back in a", || {
        in_room(a.http, "The Bridge", "timmy")
    });
    t.note("timmy is back in a (waited for, unrecorded)");
    ha.call(&mut t, "GET", "/bridge/room/The%20Bridge/players", None);
    t.note("a line travel to the offline world is refused on the line");
    let mut ga = Line::connect(a.line.expect("a's line listener"));
    ga.ask(
        &mut t,
        &json!({"type": "travel", "id": 8, "user_id": "tommy", "to_world": "c"}),
        "error",
    );
    ga.ask(
        &mut t,
        &json!({"type": "travel", "id": 9, "user_id": "nobody", "to_world": "b"}),
        "error",
    );
    t.check();
}

// ---------------------------------------------------------------------------
// 5. Agent outcomes: a reply, a model error and a timeout, on every door
// ---------------------------------------------------------------------------

#[test]
fn agent_outcomes_transcript() {
    let mut cfg = line_config();
    cfg.http.rate_limit_requests = 100_000;
    cfg.gateway.max_messages_per_s = 100_000;
    cfg.agent.backend = "command".into();
    cfg.agent.workers = 1;
    cfg.agent.timeout_s = 1;
    // A scripted model: XFAILX in the request → an error answer; XSLOWX → no answer (the
    // child is replaced by a sleep, killed at the timeout); anything else → a fixed text.
    // Each case comes from its own user, so no history carries a marker into another.
    cfg.agent.command = vec![
        "sh".into(),
        "-c".into(),
        r#"while read -r line; do case "$line" in
             *XFAILX*) echo '{"error": "model overloaded"}';;
             *XSLOWX*) exec sleep 30;;
             *) echo '{"text": "Hello from the command agent."}';;
           esac; done"#
            .into(),
    ];
    let dir = scratch_dir("golden-agent");
    std::fs::create_dir_all(&dir).unwrap();
    cfg.workshop.state_file = dir.join("missing-state.yaml").display().to_string();
    cfg.workshop.inbox_dir = dir.join("inbox").display().to_string();
    let b = start_with(cfg);
    let mut t = Transcript::new("agent");
    let mut h = Http::connect(b.http);
    let chat = |user: &str, msg: &str| {
        json!({"user_id": user, "username": user, "message": msg, "room": "The Forge"}).to_string()
    };

    t.note("HTTP: chat and generate, each answered, failed by the model, timed out");
    h.call(&mut t, "POST", "/bridge/chat", Some(&chat("ann", "hello")));
    h.call(&mut t, "POST", "/bridge/chat", Some(&chat("ben", "XFAILX")));
    h.call(&mut t, "POST", "/bridge/chat", Some(&chat("cat", "XSLOWX")));
    h.call(
        &mut t,
        "POST",
        "/bridge/chat",
        Some(&chat("dan", "i want to kill myself")),
    );
    for prompt in ["Hello there", "XFAILX", "XSLOWX"] {
        h.call(
            &mut t,
            "POST",
            "/api/v1/generate",
            Some(&json!({"prompt": prompt, "max_new_tokens": 50}).to_string()),
        );
    }

    t.note("the line protocol: chat replies and their failures");
    let mut g = Line::connect(b.line.expect("a line listener"));
    g.ask(
        &mut t,
        &json!({"type": "hello", "world": "mud", "kind": "evennia", "protocol": 1}),
        "welcome",
    );
    g.ask(
        &mut t,
        &json!({"type": "chat", "id": 1, "user_id": "eve", "message": "hello", "room": "The Forge"}),
        "reply",
    );
    g.send(
        &mut t,
        &json!({"type": "chat", "id": 2, "user_id": "fay", "message": "XFAILX", "room": "The Forge"}),
    );
    g.recv(&mut t);
    g.send(
        &mut t,
        &json!({"type": "chat", "id": 3, "user_id": "gus", "message": "XSLOWX", "room": "The Forge"}),
    );
    g.recv(&mut t);
    g.ask(&mut t, &json!({"type": "ping", "id": 4}), "pong");

    t.note("the gateway: a chat for timmy, answered and failed");
    let mut m = Ws::connect(&mut t, "matrix", b.http, "/ws/matrix");
    m.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "hal", "role": "client"}),
    );
    m.until(&mut t, "agent_registered");
    m.send(
        &mut t,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "hello", "room": "The Tower"}),
    );
    m.until(&mut t, "bark");
    let calls = agent_calls(b.http);
    m.send(
        &mut t,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "XFAILX", "room": "The Tower"}),
    );
    eventually(
        Duration::from_secs(15),
        "the failed call is counted",
        || agent_calls(b.http) > calls,
    );
    t.note("the failure was handled (unrecorded wait on /bridge/stats); a join is the next frame");
    let mut other = Ws::connect(&mut t, "other", b.http, "/ws/matrix");
    other.send(
        &mut t,
        &json!({"type": "agent_register", "agentId": "ian", "role": "client"}),
    );
    other.until(&mut t, "agent_registered");
    m.next(&mut t);

    t.note("the Workshop feed: a visitor's message, answered and failed");
    let mut w = Ws::connect(&mut t, "visitor", b.http, "/ws/workshop");
    w.until(&mut t, "state");
    w.send(
        &mut t,
        &json!({"type": "message", "text": "hello", "visitor": "Ivy"}),
    );
    w.until(&mut t, "bark");
    let calls = agent_calls(b.http);
    w.send(
        &mut t,
        &json!({"type": "message", "text": "XFAILX", "visitor": "Jo"}),
    );
    eventually(
        Duration::from_secs(15),
        "the failed call is counted",
        || agent_calls(b.http) > calls,
    );
    t.note(
        "the failure was handled (unrecorded wait on /bridge/stats); frames up to a ping's pong",
    );
    w.send(&mut t, &json!({"type": "ping"}));
    w.next(&mut t);
    t.check();
}

/// Agent calls so far, whatever their outcome (unrecorded: a wait condition).
fn agent_calls(addr: SocketAddr) -> u64 {
    get(addr, "/bridge/stats")["agent"]["calls"]
        .as_object()
        .map_or(0, |c| c.values().filter_map(Value::as_u64).sum())
}
