//! End-to-end tests of `lua/timmy_bridge.lua`: the real script runs under `luajit` inside the
//! tes3mp stub (`lua/run_stub.lua`, driven over stdin, printing every tes3mp call as a JSON
//! line) and talks the line protocol with a real bridge running in a thread. Both roles are
//! covered: `connect` (the default: the script dials the bridge's line listener) and `listen`
//! (the bridge dials the script); and `worldEvent`, called by another server script, crossing
//! to a federated world.
//!
//! Every test is ignored by default (`#[ignore = "needs …"]`): it needs `luajit` and `lua-socket`
//! (`apt-get install -y luajit lua-socket`); run them with
//! `cargo test --test lua -- --include-ignored`. Without luajit they fail with that message.
#![allow(dead_code)]

mod common;

use common::{call, eventually, get, post, start_with, TestBridge};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use worldbridge::config::{Config, DialConfig};

const LIMIT: Duration = Duration::from_secs(10);
const NEEDS: &str = "needs luajit and lua-socket";

fn lua_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lua")
}

/// Fail loudly (never skip) when the Lua runtime is missing.
fn require_luajit() {
    let out = Command::new("luajit")
        .args(["-e", "print(require('socket')._VERSION)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "luajit runs but cannot load luasocket ({}); install it: apt-get install -y lua-socket",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "luajit is not installed ({e}); these tests need it: apt-get install -y luajit lua-socket"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// The game: lua/run_stub.lua as a child process
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Output {
    lines: Vec<Value>,
    eof: bool,
}

/// One stub server running the real script.
struct Game {
    child: Child,
    stdin: ChildStdin,
    out: Arc<(Mutex<Output>, Condvar)>,
    stderr: Arc<Mutex<String>>,
}

impl Game {
    /// Start the harness with `key=value` config overrides and wait for `ready`.
    fn start(args: &[&str]) -> Game {
        require_luajit();
        let mut child = Command::new("luajit")
            .arg(lua_dir().join("run_stub.lua"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start luajit lua/run_stub.lua");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("harness printed a non-JSON line ({e}): {line}")
                    });
                    let (m, cv) = &*out;
                    m.lock().unwrap().lines.push(v);
                    cv.notify_all();
                }
                let (m, cv) = &*out;
                m.lock().unwrap().eof = true;
                cv.notify_all();
            });
        }
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stderr_pipe.read_to_string(&mut s);
                stderr.lock().unwrap().push_str(&s);
            });
        }
        let game = Game {
            child,
            stdin,
            out,
            stderr,
        };
        game.wait_from(0, "the harness to be ready", |v| v["event"] == "ready");
        game
    }

    /// Send one control command line.
    fn cmd(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the harness");
        self.stdin.flush().expect("flush");
    }

    /// How many lines the harness has printed so far (a cursor for `wait_from`).
    fn mark(&self) -> usize {
        self.out.0.lock().unwrap().lines.len()
    }

    /// The first line at or after `from` that satisfies `pred`, waiting up to `LIMIT`.
    fn wait_from(&self, from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> (usize, Value) {
        let deadline = Instant::now() + LIMIT;
        let (m, cv) = &*self.out;
        let mut out = m.lock().unwrap();
        let mut seen = from;
        loop {
            while seen < out.lines.len() {
                if let Some(fatal) = out.lines[seen].get("fatal") {
                    panic!("the stub server aborted while waiting for {what}: {fatal}");
                }
                if pred(&out.lines[seen]) {
                    return (seen, out.lines[seen].clone());
                }
                seen += 1;
            }
            let now = Instant::now();
            if out.eof || now >= deadline {
                let tail: Vec<String> = out.lines[from..]
                    .iter()
                    .filter(|v| v["call"] != "RestartTimer")
                    .map(|v| v.to_string())
                    .collect();
                panic!(
                    "timed out waiting for {what} (harness {}); lines since the mark:\n{}\nstderr:\n{}",
                    if out.eof { "exited" } else { "running" },
                    tail.join("\n"),
                    self.stderr.lock().unwrap()
                );
            }
            out = cv.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Wait for a recorded tes3mp call named `name` whose args satisfy `pred`.
    fn wait_call(
        &self,
        from: usize,
        name: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> (usize, Value) {
        self.wait_from(from, &format!("a {name} call"), |v| {
            v["call"] == name && v["args"].as_array().is_some_and(|a| pred(a))
        })
    }

    /// Wait for a log line containing `text`.
    fn wait_log(&self, from: usize, text: &str) -> (usize, String) {
        let (i, v) = self.wait_from(from, &format!("a log line with {text:?}"), |v| {
            v["call"] == "LogMessage" && v["args"][1].as_str().is_some_and(|s| s.contains(text))
        });
        (i, v["args"][1].as_str().unwrap_or_default().to_string())
    }

    /// A round trip through the harness: every earlier command has been handled.
    fn sync(&mut self, tag: &str) -> usize {
        let from = self.mark();
        self.cmd(&format!("sync {tag}"));
        self.wait_from(from, "sync", |v| v["event"] == "sync" && v["tag"] == tag)
            .0
    }

    /// A player logs in; returns the pid.
    fn join(&mut self, name: &str, cell: &str) -> u64 {
        let from = self.mark();
        self.cmd(&format!("join {name} {cell}"));
        let (_, v) = self.wait_from(from, "joined", |v| {
            v["event"] == "joined" && v["name"] == name
        });
        v["pid"].as_u64().expect("pid")
    }

    /// The port the script listens on (it logs it; config listenPort=0 picks a free one).
    fn listen_port(&self) -> u16 {
        let (_, line) = self.wait_log(0, "listening on 127.0.0.1:");
        let rest = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .unwrap_or_default();
        rest.split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"))
    }

    /// Lines printed since `from` (calls and events).
    fn since(&self, from: usize) -> Vec<Value> {
        self.out.0.lock().unwrap().lines[from..].to_vec()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Game {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The bridge: in-process (tests/common), seen through its HTTP API
// ---------------------------------------------------------------------------------------

/// The `links` entry of `world` in /bridge/health, if any.
fn link(bridge: &TestBridge, world: &str) -> Option<Value> {
    let health = get(bridge.http, "/bridge/health");
    health["links"]
        .as_array()?
        .iter()
        .find(|l| l["world"] == world)
        .cloned()
}

/// Wait until the link of `world` is (or is not) up; the panic shows its last state.
fn wait_link(bridge: &TestBridge, world: &str, up: bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let l = link(bridge, world);
        if l.as_ref().is_some_and(|l| l["state"] == "up") == up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for link {world} to be {}; /bridge/health has {l:?}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_link_up(bridge: &TestBridge, world: &str) {
    wait_link(bridge, world, true);
}

fn wait_link_down(bridge: &TestBridge, world: &str) {
    wait_link(bridge, world, false);
}

fn act(bridge: &TestBridge, body: Value) -> common::Resp {
    post(bridge.http, "/bridge/act", &body)
}

/// Who /bridge/room/<room>/players lists (nobody for a room the bridge does not know).
fn players(bridge: &TestBridge, room: &str) -> Vec<String> {
    let path = format!("/bridge/room/{}/players", room.replace(' ', "%20"));
    let r = call(bridge.http, "GET", &path, None);
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()["players"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["username"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn in_room(bridge: &TestBridge, room: &str, who: &str) -> bool {
    players(bridge, room).iter().any(|p| p == who)
}

fn base_config() -> Config {
    let mut cfg = common::test_config();
    cfg.line.listen = vec![];
    cfg
}

/// A bridge that dials the script listening on `port`.
fn dialing_config(port: u16) -> Config {
    let mut cfg = base_config();
    cfg.line.dial = vec![DialConfig {
        world: "morrowind".into(),
        kind: "tes3mp".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        token: String::new(),
    }];
    cfg
}

/// A bridge whose line listener is `addr` (port 0 for any).
fn listening_config(addr: &str) -> Config {
    let mut cfg = base_config();
    cfg.line.listen = vec![addr.parse().unwrap()];
    cfg
}

/// A listen-role game with Alice in "Balmora, Temple" and a bridge that dials it.
fn listen_pair() -> (Game, TestBridge) {
    let mut game = Game::start(&["role=listen", "listenPort=0"]);
    game.join("Alice", "Seyda Neen, Census and Excise Office");
    let bridge = start_with(dialing_config(game.listen_port()));
    wait_link_up(&bridge, "morrowind");
    (game, bridge)
}

/// A connect-role game dialing a bridge's line listener.
fn connect_pair() -> (Game, TestBridge) {
    connect_pair_with(&[])
}

/// The same, with more script config (`key=value`).
fn connect_pair_with(extra: &[&str]) -> (Game, TestBridge) {
    let bridge = start_with(listening_config("127.0.0.1:0"));
    let port = bridge.line.expect("line listener").port();
    let port_arg = format!("bridgePort={port}");
    let mut args = vec![port_arg.as_str()];
    args.extend_from_slice(extra);
    let game = Game::start(&args);
    wait_link_up(&bridge, "morrowind");
    // The bridge counts the link up on our hello; the script, on the bridge's welcome.
    game.wait_log(0, "is up (we dialed)");
    (game, bridge)
}

fn names(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|v| v["call"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A raw line-protocol peer, for what the bridge would never send
// ---------------------------------------------------------------------------------------

struct RawPeer {
    sock: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawPeer {
    fn connect(port: u16) -> RawPeer {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to the script");
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let reader = BufReader::new(sock.try_clone().unwrap());
        RawPeer { sock, reader }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to the script");
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("a line from the script");
        assert!(n > 0, "the script closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("script sent bad JSON ({e}): {line}"))
    }

    /// The next message that is not unsolicited presence/perception.
    fn answer(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v["type"] != "presence" && !(v["type"] == "perception" && v.get("id").is_none()) {
                return v;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "needs luajit and lua-socket"]
fn lua_unit_tests_pass() {
    require_luajit();
    let out = Command::new("luajit")
        .arg(lua_dir().join("test_units.lua"))
        .current_dir(lua_dir())
        .output()
        .expect("run luajit lua/test_units.lua");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lua/test_units.lua failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn teleport_through_the_bridge_moves_the_player() {
    let (game, bridge) = listen_pair();
    let from = game.mark();
    let r = act(
        &bridge,
        json!({"world": "morrowind", "action": "teleport",
        "args": {"cell": "Balmora, Temple"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["result"]["cell"], "Balmora, Temple", "{body}");

    let (at, set_cell) = game.wait_call(from, "SetCell", |a| a[1] == "Balmora, Temple");
    assert_eq!(set_cell["args"], json!([0, "Balmora, Temple"]));
    let (last, _) = game.wait_call(at, "SendPos", |a| a == [json!(0)]);
    let order: Vec<String> = names(&game.since(at)[..=last - at])
        .into_iter()
        .filter(|n| ["SetCell", "SetPos", "SetRot", "SendCell", "SendPos"].contains(&n.as_str()))
        .take(5)
        .collect();
    assert_eq!(
        order,
        ["SetCell", "SetPos", "SetRot", "SendCell", "SendPos"]
    );
    let (_, pos) = game.wait_call(at, "SetPos", |_| true);
    assert_eq!(
        pos["args"],
        json!([0, 4700.567, 3874.742, 14758.99]),
        "the known spot in the temple"
    );

    // The client follows the packet: the bridge sees Alice enter the temple.
    eventually(LIMIT, "Alice in Balmora, Temple", || {
        in_room(&bridge, "Balmora, Temple", "Alice")
    });
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn observe_returns_a_structured_perception() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    game.cmd("pos 0 4700 3870 14758");
    game.cmd("actor temple_priest 4720 3900 14758 40 Balmora, Temple");
    game.cmd("actor distant_guard 90000 3900 14758 40 Balmora, Temple");
    game.sync("actors");
    let r = call(
        bridge.http,
        "GET",
        "/bridge/observe/morrowind?fresh=1",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["world"], "morrowind", "{body}");
    let p = &body["perception"];
    assert_eq!(p["player"], "Alice", "{body}");
    assert_eq!(p["cell"], "Balmora, Temple", "{body}");
    // The bridge re-serialises numbers as floats: compare values, not JSON number kinds.
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let pos = &p["position"];
    assert_eq!(
        [num(&pos["x"]), num(&pos["y"]), num(&pos["z"])],
        [4700.0, 3870.0, 14758.0],
        "{body}"
    );
    let health = &p["stats"]["health"];
    assert_eq!(
        [num(&health["current"]), num(&health["base"])],
        [50.0, 50.0],
        "{body}"
    );
    assert_eq!(num(&p["stats"]["fatigue"]["base"]), 120.0, "{body}");
    assert_eq!(p["level"], 1, "{body}");
    assert_eq!(
        p["inventory"],
        json!([{"ref_id": "gold_001", "count": 120}]),
        "{body}"
    );
    assert_eq!(p["players"], json!(["Alice"]), "{body}");
    assert_eq!(p["game_hour"], 13.5, "{body}");
    let nearby = p["nearby"].as_array().expect("nearby actors");
    assert_eq!(nearby.len(), 1, "only actors within the radius: {body}");
    assert_eq!(nearby[0]["ref_id"], "temple_priest");
    let d = nearby[0]["distance"].as_f64().unwrap();
    assert!((d - 36.1).abs() < 0.2, "distance {d}");
    // The script sends no name (the server has no ESM data); the bridge shows it empty.
    assert_eq!(
        nearby[0]["name"].as_str().unwrap_or_default(),
        "",
        "no invented display name: {body}"
    );
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn a_streamed_timmy_reply_shows_one_chat_line_per_part_and_no_repeat() {
    let mut cfg = listening_config("127.0.0.1:0");
    cfg.agent.stream_min_chars = 1;
    let bridge = start_with(cfg);
    let port = format!("bridgePort={}", bridge.line.expect("line listener").port());
    let mut game = Game::start(&[port.as_str()]);
    wait_link_up(&bridge, "morrowind");
    game.wait_log(0, "is up (we dialed)");
    game.join("Alice", "Balmora, Temple");
    let from = game.mark();
    game.cmd("chat 0 /timmy hello");
    // The builtin's reply, sentence by sentence: the last part ends it.
    game.wait_call(from, "SendMessage", |a| {
        a[0] == 0
            && a[1]
                .as_str()
                .is_some_and(|s| s.starts_with("[Timmy] ") && s.contains("Balmora, Temple"))
    });
    // Let a (wrong) repeat of the whole reply arrive if it would.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines: Vec<String> = (game.since(from).iter())
        .filter(|v| v["call"] == "SendMessage" && v["args"][0] == json!(0))
        .filter_map(|v| v["args"][1].as_str().map(str::to_string))
        .filter(|s| s.starts_with("[Timmy] "))
        .collect();
    assert!(lines.len() >= 3, "one line per part: {lines:?}");
    assert!(lines[0].contains("The green LED pulses."), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("Hello, Alice")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("pulses.") && l.contains("Temple")),
        "the whole reply is not repeated: {lines:?}"
    );
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn a_players_chat_gets_the_agents_reply_on_their_screen() {
    let (mut game, _bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let bob = game.join("Bob", "Balmora, Temple");
    let from = game.mark();
    game.cmd("chat 0 /timmy hello");
    let (_, ev) = game.wait_from(from, "chat handled", |v| v["event"] == "chat");
    assert_eq!(ev["swallowed"], true, "the /timmy line is not broadcast");
    let (_, reply) = game.wait_call(from, "SendMessage", |a| {
        a[0] == 0 && a[1].as_str().is_some_and(|s| s.starts_with("[Timmy] "))
    });
    let text = reply["args"][1].as_str().unwrap();
    assert!(
        text.contains("Hello, Alice"),
        "the builtin greets by name: {text:?}"
    );
    assert!(text.ends_with('\n'), "{text:?}");
    assert_eq!(reply["args"][2], false, "shown to Alice only");
    for v in game.since(from) {
        if v["call"] == "SendMessage" {
            assert_ne!(v["args"][0], json!(bob), "Bob sees nothing: {v}");
            assert_ne!(v["args"][2], true, "nothing broadcast: {v}");
        }
    }
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn join_leave_and_cell_change_show_in_room_players() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let bob = game.join("Bob", "Balmora, Temple");
    eventually(LIMIT, "Alice and Bob in the temple", || {
        in_room(&bridge, "Balmora, Temple", "Alice") && in_room(&bridge, "Balmora, Temple", "Bob")
    });
    game.cmd("leave 0");
    eventually(LIMIT, "Alice gone", || {
        !in_room(&bridge, "Balmora, Temple", "Alice")
    });
    assert!(in_room(&bridge, "Balmora, Temple", "Bob"));
    game.cmd(&format!("cell {bob} -3, -2"));
    eventually(LIMIT, "Bob outside", || in_room(&bridge, "-3, -2", "Bob"));
    eventually(LIMIT, "Bob no longer in the temple", || {
        !in_room(&bridge, "Balmora, Temple", "Bob")
    });
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn a_say_in_a_cell_reaches_the_players_there() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let bob = game.join("Bob", "Caldera");
    eventually(LIMIT, "Alice in the temple", || {
        in_room(&bridge, "Balmora, Temple", "Alice")
    });
    let from = game.mark();
    let r = post(
        bridge.http,
        "/bridge/say",
        &json!({"user_id": "web-carol", "username": "Carol",
        "room": "Balmora, Temple", "message": "hello"}),
    );
    assert!(r.status < 300, "{} {}", r.status, r.text());
    game.wait_call(from, "SendMessage", |a| {
        a[0] == 0 && a[1] == "[Bridge] Carol: hello\n"
    });
    game.sync("after-say");
    for v in game.since(from) {
        if v["call"] == "SendMessage" {
            assert_ne!(v["args"][0], json!(bob), "Bob is in another cell: {v}");
        }
    }
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn garbage_and_wrong_types_on_the_socket_leave_the_server_alive() {
    // allowConsole: the console action's argument checks are among the cases.
    let mut game = Game::start(&["role=listen", "listenPort=0", "allowConsole=true"]);
    game.join("Alice", "Seyda Neen, Census and Excise Office");
    let mut peer = RawPeer::connect(game.listen_port());
    let from = game.mark();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"garbage\n".to_vec(), "error", "bad_json"),
        (b"\xff\xfe\x00{\"type\n".to_vec(), "error", "bad_json"),
        (b"[1,2,3]\n".to_vec(), "error", "bad_json"),
        (b"{\"type\":42}\n".to_vec(), "error", "bad_field"),
        (b"{\"type\":\"act\",\"id\":[1],\"action\":\"teleport\"}\n".to_vec(), "error", "bad_field"),
        (br#"{"type":"act","id":1,"action":"teleport","args":{"cell":5}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":2,"action":"teleport","args":{"cell":"Balmora, Temple","pos":{"x":"a","y":1,"z":2}}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":3,"action":"add_item","args":{"ref_id":"gold_001","count":"lots"}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":4,"action":"add_item","args":{"ref_id":"gold_001","count":1.5}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":5,"action":"add_item","args":{"ref_id":{"a":1}}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":6,"action":"journal","args":{"quest":"q","index":-3}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":7,"action":"set_stat","args":{"name":"health","value":"full"}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":8,"action":"set_stat","args":{"name":["Strength"],"value":5}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":9,"action":"console","args":{"command":null}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":10,"action":"message","args":{"text":7}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":11,"player":0,"action":"teleport","args":{"cell":"x"}}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"act","id":12,"player":"Nobody","action":"teleport","args":{"cell":"x"}}"#.to_vec(), "result", "no_player"),
        (br#"{"type":"act","id":13,"action":"fly","args":{}}"#.to_vec(), "result", "unknown_action"),
        (br#"{"type":"act","id":14,"action":"teleport","args":"Balmora"}"#.to_vec(), "result", "bad_args"),
        (br#"{"type":"observe","id":15,"player":15}"#.to_vec(), "error", "bad_field"),
        (br#"{"type":"speak","text":{"t":1}}"#.to_vec(), "error", "bad_field"),
    ];
    for (bytes, kind, code) in &cases {
        let mut line = bytes.clone();
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        peer.send(&line);
        let a = peer.answer();
        assert_eq!(
            a["type"],
            *kind,
            "answer to {}: {a}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(
            a["code"],
            *code,
            "answer to {}: {a}",
            String::from_utf8_lossy(bytes)
        );
        if kind == &"result" {
            assert_eq!(a["ok"], false, "{a}");
        }
    }
    // A line over the cap, sent in pieces, is refused and the connection lives on.
    let big = vec![b'x'; 70_000];
    for chunk in big.chunks(7000) {
        peer.send(chunk);
    }
    peer.send(b"\n");
    assert_eq!(peer.answer()["code"], "line_too_long");

    assert!(game.alive(), "the stub server survived");
    // Still answering, and still working.
    peer.send(b"{\"type\":\"ping\",\"id\":\"still-there\"}\n");
    assert_eq!(peer.answer(), json!({"type": "pong", "id": "still-there"}));
    peer.send(
        br#"{"type":"act","id":"ok-1","action":"teleport","args":{"cell":"Balmora, Temple"}}"#,
    );
    peer.send(b"\n");
    let a = peer.answer();
    assert_eq!(a["ok"], true, "{a}");
    let (at, _) = game.wait_call(from, "SetCell", |a| a[1] == "Balmora, Temple");
    // Everything before that good teleport: no bad value reached a command.
    for v in &game.since(from)[..at - from] {
        assert!(
            ![
                "SetCell",
                "SetPos",
                "AddItemChange",
                "AddJournalEntry",
                "AddJournalEntryWithTimestamp",
                "SetHealthCurrent",
                "SetAttributeBase",
                "SendConsoleCommand",
                "SendMessage"
            ]
            .contains(&v["call"].as_str().unwrap_or_default()),
            "no command went through: {v}"
        );
    }
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn the_bridge_refuses_wrong_act_args_before_the_game_sees_them() {
    let (mut game, bridge) = listen_pair();
    let from = game.mark();
    for args in [
        json!({"cell": 5}),
        json!({"cell": "Balmora, Temple", "pos": {"x": "a", "y": 1, "z": 2}}),
    ] {
        let r = act(
            &bridge,
            json!({"world": "morrowind", "action": "teleport", "args": args}),
        );
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = act(
        &bridge,
        json!({"world": "morrowind", "action": "add_item",
        "args": {"ref_id": "gold_001", "count": "lots"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A well-formed act for a player who is not there: the game says no, the bridge says 422.
    let r = act(
        &bridge,
        json!({"world": "morrowind", "player": "Nobody", "action": "teleport",
        "args": {"cell": "Balmora, Temple"}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("no_player"), "{}", r.text());
    game.sync("after-acts");
    assert!(game.alive());
    assert!(
        !names(&game.since(from)).contains(&"SetCell".to_string()),
        "nothing moved"
    );
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn listen_role_reconnects_after_the_bridge_restarts() {
    let (game, bridge) = listen_pair();
    let port = game.listen_port();
    let from = game.mark();
    bridge.stop().expect("the bridge stops cleanly");
    game.wait_log(from, "closed");
    let bridge = start_with(dialing_config(port));
    wait_link_up(&bridge, "morrowind");
    eventually(LIMIT, "Alice announced again", || {
        in_room(&bridge, "Seyda Neen, Census and Excise Office", "Alice")
    });
    let r = act(
        &bridge,
        json!({"world": "morrowind", "action": "message", "args": {"text": "back"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    game.wait_call(from, "SendMessage", |a| a[1] == "back\n");
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn listen_role_reconnects_after_the_game_restarts() {
    let (game, bridge) = listen_pair();
    let port = game.listen_port();
    game.kill();
    wait_link_down(&bridge, "morrowind");
    let mut game = Game::start(&["role=listen", &format!("listenPort={port}")]);
    game.join("Bob", "Balmora, Temple");
    wait_link_up(&bridge, "morrowind");
    eventually(LIMIT, "Bob in the temple", || {
        in_room(&bridge, "Balmora, Temple", "Bob")
    });
    let from = game.mark();
    let r = act(
        &bridge,
        json!({"world": "morrowind", "action": "teleport", "args": {"cell": "Balmora, Temple"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    game.wait_call(from, "SetCell", |a| {
        a == [json!(0), json!("Balmora, Temple")]
    });
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn connect_role_reconnects_after_the_bridge_restarts() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let line = bridge.line.expect("line listener");
    let from = game.mark();
    bridge.stop().expect("the bridge stops cleanly");
    game.wait_log(from, "reconnecting to");
    let bridge = start_with(listening_config(&line.to_string()));
    wait_link_up(&bridge, "morrowind");
    eventually(LIMIT, "Alice announced again", || {
        in_room(&bridge, "Balmora, Temple", "Alice")
    });
    let r = call(
        bridge.http,
        "GET",
        "/bridge/observe/morrowind?fresh=1",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["perception"]["player"], "Alice");
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn connect_role_reconnects_after_the_link_is_cut() {
    // A plain TCP listener stands in for the bridge so the test can cut the socket itself.
    let srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = srv.local_addr().unwrap().port();
    let mut game = Game::start(&[
        "role=connect",
        &format!("bridgePort={port}"),
        "token=sekrit",
    ]);
    game.join("Alice", "Balmora, Temple");
    for round in 0..2 {
        let (sock, _) = srv.accept().expect("the script dials in");
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            hello,
            json!({"type": "hello", "world": "morrowind", "kind": "tes3mp", "protocol": 1, "token": "sekrit"}),
            "round {round}"
        );
        (&sock)
            .write_all(
                b"{\"type\":\"welcome\",\"world\":\"bridge\",\"kind\":\"bridge\",\"protocol\":1}\n",
            )
            .unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        let presence: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(presence["type"], "presence", "round {round}: {presence}");
        assert_eq!(presence["user_id"], "Alice");
        assert_eq!(presence["room"], "Balmora, Temple");
        sock.shutdown(Shutdown::Both).unwrap();
    }
    assert!(game.alive());
}

/// POST /bridge/act with `args`; the 200 body's `result`.
fn act_ok(bridge: &TestBridge, action: &str, args: Value) -> Value {
    let r = act(
        bridge,
        json!({"world": "morrowind", "action": action, "args": args}),
    );
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    let body = r.json();
    assert_eq!(body["ok"], true, "{action}: {body}");
    assert_eq!(body["action"], action, "{body}");
    body["result"].clone()
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn every_action_reaches_the_game_as_corescripts_calls() {
    // The console action is off unless the server owner turns it on.
    let (mut game, bridge) = connect_pair_with(&["allowConsole=true"]);
    game.join("Alice", "Balmora, Temple");
    let bob = game.join("Bob", "Balmora, Temple");

    let from = game.mark();
    let r = act_ok(
        &bridge,
        "add_item",
        json!({"ref_id": "Gold_001", "count": 5}),
    );
    assert_eq!(r, json!({"ref_id": "gold_001", "count": 5, "total": 125}));
    let (at, _) = game.wait_call(from, "SetInventoryChangesAction", |a| {
        a == [json!(0), json!(1)]
    });
    game.wait_call(at, "AddItemChange", |a| {
        a == [
            json!(0),
            json!("gold_001"),
            json!(5),
            json!(-1),
            json!(-1),
            json!(""),
        ]
    });
    let (at, _) = game.wait_call(at, "SendInventoryChanges", |a| a[0] == 0);
    game.wait_call(at, "Player:QuicksaveToDrive", |a| a == [json!(0)]);

    let from = game.mark();
    let r = act_ok(
        &bridge,
        "remove_item",
        json!({"ref_id": "gold_001", "count": 20}),
    );
    assert_eq!(
        r,
        json!({"ref_id": "gold_001", "removed": 20, "remaining": 105})
    );
    let (at, _) = game.wait_call(from, "SetInventoryChangesAction", |a| {
        a == [json!(0), json!(2)]
    });
    game.wait_call(at, "AddItemChange", |a| a[1] == "gold_001" && a[2] == 20);
    let r = act(
        &bridge,
        json!({"world": "morrowind", "action": "remove_item", "args": {"ref_id": "ebony_sword"}}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["game_code"], "not_found", "{}", r.text());

    let from = game.mark();
    let r = act_ok(
        &bridge,
        "journal",
        json!({"quest": "a1_1_findspymaster", "index": 10}),
    );
    assert_eq!(r["shared"], true, "CoreScripts' default shareJournal: {r}");
    let (at, _) = game.wait_call(from, "WorldInstance:QuicksaveToDrive", |_| true);
    let (at, _) = game.wait_call(at, "AddJournalEntryWithTimestamp", |a| {
        a == [
            json!(0),
            json!("a1_1_findspymaster"),
            json!(10),
            json!("player"),
            json!(1),
            json!(7),
            json!(16),
        ]
    });
    game.wait_call(at, "SendJournalChanges", |a| {
        a == [json!(0), json!(true), json!(false)]
    });

    let from = game.mark();
    for (name, value) in [
        ("Long Blade", 55),
        ("Strength", 60),
        ("health", 20),
        ("level", 3),
    ] {
        act_ok(&bridge, "set_stat", json!({"name": name, "value": value}));
    }
    let (at, _) = game.wait_call(from, "SetSkillBase", |a| {
        a == [json!(0), json!(5), json!(55)]
    });
    let (at, _) = game.wait_call(at, "SendSkills", |a| a == [json!(0)]);
    let (at, _) = game.wait_call(at, "SetAttributeBase", |a| {
        a == [json!(0), json!(0), json!(60)]
    });
    let (at, _) = game.wait_call(at, "SendAttributes", |a| a == [json!(0)]);
    let (at, _) = game.wait_call(at, "SetHealthCurrent", |a| a == [json!(0), json!(20)]);
    let (at, _) = game.wait_call(at, "SendStatsDynamic", |a| a == [json!(0)]);
    let (at, _) = game.wait_call(at, "SetLevel", |a| a == [json!(0), json!(3)]);
    game.wait_call(at, "SendLevel", |a| a == [json!(0)]);

    let from = game.mark();
    act_ok(&bridge, "console", json!({"command": "tgm"}));
    let (at, _) = game.wait_call(from, "SetObjectListCell", |a| {
        a == [json!("Balmora, Temple")]
    });
    let (at, _) = game.wait_call(at, "SetObjectListConsoleCommand", |a| a == [json!("tgm")]);
    game.wait_call(at, "SendConsoleCommand", |a| a == [json!(false)]);

    let from = game.mark();
    let r = act_ok(
        &bridge,
        "message",
        json!({"text": "The ash storm is coming."}),
    );
    assert_eq!(r["delivered"], 2, "{r}");
    for pid in [0, bob] {
        game.wait_call(from, "SendMessage", |a| {
            a == [
                json!(pid),
                json!("The ash storm is coming.\n"),
                json!(false),
            ]
        });
    }

    // The state the commands left behind, as the agent sees it.
    let r = call(
        bridge.http,
        "GET",
        "/bridge/observe/morrowind?fresh=1",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let p = &r.json()["perception"];
    assert_eq!(
        p["inventory"],
        json!([{"ref_id": "gold_001", "count": 105}]),
        "{p}"
    );
    assert_eq!(
        p["journal"],
        json!([{"quest": "a1_1_findspymaster", "index": 10}]),
        "{p}"
    );
    assert_eq!(p["level"], 3, "{p}");
    assert_eq!(p["stats"]["health"]["current"].as_f64(), Some(20.0), "{p}");
    assert_eq!(p["players"], json!(["Alice", "Bob"]), "{p}");
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn speak_reaches_one_player_or_everyone_in_the_cell() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let bob = game.join("Bob", "Balmora, Temple");
    let carol = game.join("Carol", "Caldera");
    wait_link_up(&bridge, "morrowind");

    let from = game.mark();
    let r = post(
        bridge.http,
        "/bridge/speak",
        &json!({"world": "morrowind", "user_id": "Alice", "text": "Only for you."}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    game.wait_call(from, "SendMessage", |a| {
        a == [json!(0), json!("[Timmy] Only for you.\n"), json!(false)]
    });
    let end = game.sync("after-one");
    for v in &game.since(from)[..end - from] {
        if v["call"] == "SendMessage" {
            assert_eq!(v["args"][0], 0, "only Alice: {v}");
        }
    }

    let from = game.mark();
    let r = post(
        bridge.http,
        "/bridge/speak",
        &json!({"world": "morrowind", "room": "Balmora, Temple", "text": "Welcome, pilgrims."}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for pid in [0, bob] {
        game.wait_call(from, "SendMessage", |a| {
            a[0] == pid && a[1] == "[Timmy] Welcome, pilgrims.\n"
        });
    }
    let end = game.sync("after-room");
    for v in &game.since(from)[..end - from] {
        if v["call"] == "SendMessage" {
            assert_ne!(v["args"][0], json!(carol), "Carol is in Caldera: {v}");
        }
    }
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn cell_changes_and_journal_updates_reach_the_bridge() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    game.cmd("cell 0 -3, -2");
    // A cell change sends a fresh perception without being asked.
    eventually(LIMIT, "the latest perception in -3, -2", || {
        let r = call(bridge.http, "GET", "/bridge/observe/morrowind", None);
        r.status == 200 && r.json()["perception"]["cell"] == "-3, -2"
    });
    game.cmd("journal 0 20 a1_1_findspymaster");
    eventually(LIMIT, "a journal event in -3, -2", || {
        let events = get(bridge.http, "/bridge/room/-3,%20-2/events");
        events["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| {
                e["type"] == "event"
                    && e["event"] == "journal"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("Alice") && m.contains("a1_1_findspymaster"))
            })
        })
    });
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn listen_role_checks_the_dial_token() {
    let game = Game::start(&["role=listen", "listenPort=0", "token=sekrit"]);
    let port = game.listen_port();
    let mut cfg = dialing_config(port);
    cfg.line.dial[0].token = "wrong".into();
    let bridge = start_with(cfg);
    let (at, _) = game.wait_log(0, "closed: refused");
    assert!(
        link(&bridge, "morrowind").is_some_and(|l| l["state"] != "up"),
        "a wrong token never brings the link up"
    );
    bridge.stop().expect("the bridge stops cleanly");

    let mut cfg = dialing_config(port);
    cfg.line.dial[0].token = "sekrit".into();
    let bridge = start_with(cfg);
    wait_link_up(&bridge, "morrowind");
    game.wait_log(at, "is up (accepted)");
}

/// `GET /bridge/room/<room>/events` of `bridge`: the events that came from world `origin`.
fn events_from(bridge: &TestBridge, room: &str, origin: &str) -> Vec<Value> {
    let path = format!(
        "/bridge/room/{}/events",
        room.replace(' ', "%20").replace(',', "%2C")
    );
    let r = call(bridge.http, "GET", &path, None);
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["origin"] == origin)
        .collect()
}

/// Run Lua in the stub server as another script would; what it returned, as strings.
fn run_lua(game: &mut Game, code: &str) -> Value {
    let from = game.mark();
    game.cmd(&format!("lua {code}"));
    let (_, v) = game.wait_from(from, "the lua command's results", |v| {
        v["event"] == "lua" || v["event"] == "error"
    });
    assert_eq!(v["event"], "lua", "{v}");
    v["results"].clone()
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn with_no_config_the_script_dials_the_bridges_default_line_listener() {
    // The bridge's default line listener, when this machine has it free; else a free port
    // handed to the script the way a user would (bridgePort in its config), nothing else.
    let default = Config::default().line.listen[0];
    let (addr, args) = match TcpListener::bind(default) {
        Ok(probe) => {
            drop(probe);
            (default, Vec::new())
        }
        Err(_) => {
            let port = common::free_port();
            eprintln!("127.0.0.1:4005 is taken here; the script is given bridgePort={port}");
            (
                SocketAddr::from(([127, 0, 0, 1], port)),
                vec![format!("bridgePort={port}")],
            )
        }
    };
    // The game starts first, as it usually does: the bridge is not up yet.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut game = Game::start(&args);
    game.wait_log(0, &format!("started: role connect to {addr}"));
    game.wait_log(0, "cannot reach the bridge");
    game.join("Alice", "Balmora, Temple");
    let bridge = start_with(listening_config(&addr.to_string()));
    wait_link_up(&bridge, "morrowind");
    eventually(LIMIT, "Alice announced on the new link", || {
        in_room(&bridge, "Balmora, Temple", "Alice")
    });
    game.wait_log(0, "is up (we dialed)");
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn a_world_event_raised_by_another_script_reaches_the_federated_world() {
    use common::{fed_config, fed_peer, free_port, scratch_dir};
    let (pa, pb) = (free_port(), free_port());
    let a = start_with(fed_config(
        "a",
        pa,
        &scratch_dir("lua-fed-a"),
        vec![fed_peer("b", pb, "ab")],
    ));
    let b = start_with(fed_config(
        "b",
        pb,
        &scratch_dir("lua-fed-b"),
        vec![fed_peer("a", pa, "ab")],
    ));
    // World B's game (a line link) has a player in the temple: B has that room.
    let mut b_game = common::LineClient::connect(b.line.expect("line listener"));
    b_game.hello("vvardenfell", "generic");
    b_game.send(
        &json!({"type": "presence", "id": 1, "event": "enter", "user_id": "bob",
                        "username": "Bob", "room": "Balmora, Temple"}),
    );
    b_game.recv_type("ok");

    let port = a.line.expect("line listener").port();
    let mut game = Game::start(&[&format!("bridgePort={port}")]);
    wait_link_up(&a, "morrowind");
    game.wait_log(0, "is up (we dialed)");

    let raise = r#"return require("custom/timmy_bridge").worldEvent"#;
    let kept = run_lua(
        &mut game,
        &format!(r#"{raise}("Balmora, Temple", "fire", "A hearth fire, for here only.", false)"#),
    );
    assert_eq!(kept, json!(["1"]), "sent on the one link");
    let sent = run_lua(
        &mut game,
        &format!(r#"{raise}("Balmora, Temple", "rain", "Rain drums on the dome.")"#),
    );
    assert_eq!(sent, json!(["1"]));
    let bad = run_lua(&mut game, &format!(r#"{raise}("Balmora, Temple", 5)"#));
    assert_eq!(bad, json!(["nil", "kind must be a string, not number"]));

    // World A shows both; world B the rain only, from origin a, in the room of that name.
    eventually(LIMIT, "both events in world A", || {
        events_from(&a, "Balmora, Temple", "a").len() == 2
    });
    eventually(LIMIT, "the rain in world B", || {
        !events_from(&b, "Balmora, Temple", "a").is_empty()
    });
    let shown = events_from(&b, "Balmora, Temple", "a");
    assert_eq!(shown.len(), 1, "only the rain crosses: {shown:?}");
    assert_eq!(shown[0]["type"], "event");
    assert_eq!(shown[0]["event"], "rain");
    assert_eq!(shown[0]["message"], "Rain drums on the dome.");
    // B's game is shown the rain (the local fire never reached B).
    let (line, _) = b_game.recv_type("event");
    assert_eq!(
        (&line["event"], &line["origin"], &line["room"]),
        (&json!("rain"), &json!("a"), &json!("Balmora, Temple")),
        "{line}"
    );
}

#[test]
#[ignore = "needs luajit and lua-socket"]
fn console_is_off_by_default_and_set_stat_keeps_to_corescripts_caps() {
    let (mut game, bridge) = connect_pair();
    game.join("Alice", "Balmora, Temple");
    let from = game.mark();
    let refused = |body: Value| {
        let r = act(&bridge, body);
        assert_eq!(r.status, 422, "{}", r.text());
        r.json()
    };
    let r = refused(json!({"world": "morrowind", "action": "console", "args": {"command": "tgm"}}));
    assert_eq!(r["game_code"], "forbidden", "{r}");
    assert!(r["error"].as_str().unwrap().contains("allowConsole"), "{r}");
    // CoreScripts' defaults when its config says nothing: 200, Speed 365, Acrobatics 1200.
    for (name, value, most) in [
        ("Strength", 201, "200"),
        ("Speed", 366, "365"),
        ("Long Blade", 201, "200"),
        ("Acrobatics", 1201, "1200"),
        ("Luck", 65535, "200"),
    ] {
        let r = refused(
            json!({"world": "morrowind", "action": "set_stat", "args": {"name": name, "value": value}}),
        );
        assert_eq!(r["game_code"], "bad_args", "{name}: {r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains(&format!("at most {most}")),
            "{name}: {r}"
        );
    }
    for (name, value) in [("Speed", 365), ("Acrobatics", 1200), ("Strength", 200)] {
        act_ok(&bridge, "set_stat", json!({"name": name, "value": value}));
    }
    // The server's own config wins when it sets the caps.
    game.cmd("lua config.maxSkillValue = 100");
    game.sync("after-config");
    let r = refused(
        json!({"world": "morrowind", "action": "set_stat", "args": {"name": "Long Blade", "value": 101}}),
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("at most 100 (CoreScripts' config.maxSkillValue)"),
        "{r}"
    );
    act_ok(
        &bridge,
        "set_stat",
        json!({"name": "Long Blade", "value": 100}),
    );
    // Nothing refused reached the tes3mp API.
    let calls = names(&game.since(from));
    assert!(
        !calls.contains(&"SendConsoleCommand".to_string()),
        "{calls:?}"
    );
    assert!(game.alive());
}
