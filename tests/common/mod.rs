//! Shared test helpers: a bridge on 127.0.0.1:0 running in a thread, and a tiny HTTP/1.1
//! client over a raw socket that shows exactly what a real client would see.
#![allow(dead_code)]

pub mod ws;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worldbridge::config::{Config, PeerConfig};
use worldbridge::doors::game::Worlds;
use worldbridge::event_loop::{Bridge, ListenerKind, StopHandle};

pub struct TestBridge {
    pub http: SocketAddr,
    /// The first line-protocol listener, when the config has one.
    pub line: Option<SocketAddr>,
    /// Handles to the games the bridge links (observe / act / speak).
    pub worlds: Worlds,
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl TestBridge {
    pub fn stop(mut self) -> Result<(), std::io::Error> {
        self.stop.stop();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("bridge thread panicked")
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.stop();
            let _ = t.join();
        }
    }
}

/// A config for tests: loopback port 0, no line listener, in memory.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.line.listen = vec![];
    cfg.store.memory = true;
    // Never the real ~/.timmy: a fresh directory per bridge, created only if written.
    let dir = scratch_dir("workshop");
    cfg.workshop.state_file = dir.join("workshop-state.yaml").display().to_string();
    cfg.workshop.inbox_dir = dir.join("inbox").display().to_string();
    cfg
}

/// A path under the temp dir unique to this test process and call (not created).
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "worldbridge-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

pub fn start_with(cfg: Config) -> TestBridge {
    let bridge = Bridge::new(cfg).expect("bridge starts");
    let http = bridge.addrs(ListenerKind::Http)[0];
    let line = bridge.addrs(ListenerKind::Line).first().copied();
    let worlds = bridge.worlds();
    let stop = bridge.stop_handle();
    let thread = std::thread::spawn(move || bridge.run());
    TestBridge {
        http,
        line,
        worlds,
        stop,
        thread: Some(thread),
    }
}

pub fn start() -> TestBridge {
    start_with(test_config())
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The status and the JSON error body's `code`, to compare in one assertion.
    pub fn refusal(&self) -> (u16, Value) {
        (self.status, self.json()["code"].clone())
    }
}

/// One keep-alive connection.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Client {
            sock,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, method: &str, path: &str, body: Option<&str>) {
        let req = request_bytes(method, path, body, &[]);
        self.send_raw(&req);
    }

    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.send(method, path, body);
        self.read_response(method == "HEAD").expect("a response")
    }

    /// Read one response; `None` if the server closed first.
    pub fn read_response(&mut self, head_only: bool) -> Option<Resp> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status_line = lines.next()?;
                let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let len = if head_only { 0 } else { len };
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Some(Resp {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A signal (a child process of the test exiting) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// True when the server has closed the connection (EOF) within the timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn request_bytes(
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        s.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    s.push_str("\r\n");
    if let Some(b) = body {
        s.push_str(b);
    }
    s.into_bytes()
}

/// One request on a fresh connection.
pub fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    Client::connect(addr).call(method, path, body)
}

pub fn get(addr: SocketAddr, path: &str) -> Value {
    let r = call(addr, "GET", path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    call(addr, "POST", path, Some(&body.to_string()))
}

/// A config for line-protocol tests: like [`test_config`] plus a line listener on port 0.
pub fn line_config() -> Config {
    let mut cfg = test_config();
    cfg.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg
}

/// A line-protocol peer over a real socket: what a game server (or the Lua script)
/// sees of the bridge.
pub struct LineClient {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        LineClient::from_stream(TcpStream::connect(addr).expect("connect to the line port"))
    }

    pub fn from_stream(sock: TcpStream) -> LineClient {
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        LineClient {
            sock,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, v: &Value) {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// The next line as JSON; `None` when the bridge closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let v = serde_json::from_slice(&line[..nl]).unwrap_or_else(|e| {
                    panic!(
                        "bridge sent a line that is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&line)
                    )
                });
                return Some(v);
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("line read failed: {e}"),
            }
        }
    }

    /// Lines until one of type `kind` (the others are returned too, in order).
    pub fn recv_type(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let v = self
                .recv()
                .unwrap_or_else(|| panic!("closed while waiting for {kind}; got {skipped:?}"));
            if v["type"] == kind {
                return (v, skipped);
            }
            skipped.push(v);
        }
    }

    /// Send `hello` and expect `welcome`.
    pub fn hello(&mut self, world: &str, kind: &str) -> Value {
        self.send(
            &serde_json::json!({"type": "hello", "world": world, "kind": kind, "protocol": 1}),
        );
        let w = self.recv().expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        w
    }
}

// ---- the `worldbridge` binary, as a user runs it ----

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worldbridge"));
    c.env_remove("WORLDBRIDGE_CONFIG")
        .env_remove("TIMMY_BRIDGE_HOST")
        .env_remove("TIMMY_BRIDGE_PORT")
        .env("RUST_LOG", "info");
    c
}

pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("wb-test-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// Start the binary; its log (stderr) comes line by line on the channel.
pub fn spawn_logged(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Start the binary and wait for its "listening on" log line; returns the HTTP address.
pub fn spawn(cmd: &mut Command) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let (child, rx) = spawn_logged(cmd);
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a log line");
        if line.contains("listening on") && line.contains("http") {
            let a = line
                .split("listening on ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            break a.parse().unwrap();
        }
    };
    (child, addr, rx)
}

/// A loopback port free now, for a bridge that must be configured with its port before
/// it starts (a peer's URL). Taken below Linux's ephemeral range (32768–60999), where the
/// outgoing connections of every test (a federation sync, a client) take theirs: a port
/// from `bind(0)` could be taken by one of those before the bridge binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = (seed ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let port = 20_000 + (x >> 33) % 12_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in 20000..32000")
}

/// Wait until `f` holds, or fail after `limit`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

/// A federation peer on a loopback port.
pub fn fed_peer(world: &str, port: u16, token: &str) -> PeerConfig {
    PeerConfig {
        world: world.into(),
        url: format!("http://127.0.0.1:{port}"),
        token: token.into(),
        public_key: String::new(),
    }
}

/// A durable bridge of `world` on a fixed port, syncing every second, "The Bridge" its
/// portal.
pub fn fed_config(world: &str, port: u16, dir: &std::path::Path, peers: Vec<PeerConfig>) -> Config {
    let mut cfg = test_config();
    cfg.world = world.into();
    cfg.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    cfg.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.store.memory = false;
    cfg.store.data_dir = dir.display().to_string();
    cfg.federation.sync_interval_s = 1;
    cfg.federation.timeout_ms = 1000;
    cfg.federation.portal_rooms = vec!["The Bridge".into()];
    cfg.federation.peers = peers;
    cfg
}

/// The value of the `/metrics` line that starts with `line_start` (a name with its
/// labels), if there is one.
pub fn metric(addr: SocketAddr, line_start: &str) -> Option<u64> {
    let r = call(addr, "GET", "/metrics", None);
    r.text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}
