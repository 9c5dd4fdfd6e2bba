//! A real Evennia 5 game with the `worldbridge_evennia` package (evennia/) against an
//! in-process bridge: the game is started with `evennia start`, players log in over
//! raw-socket telnet, and the test checks what they see and what the bridge's HTTP API
//! reports.
//!
//! Every test here is `#[ignore = "needs python3 and evennia"]`. The first run creates a
//! venv with Evennia and the package (PyPI) and a template database (migrated, initial
//! setup done), both cached under `target/tmp/` and reused while valid; later runs only
//! init, start and stop a throw-away game. `WORLDBRIDGE_PYTHON` picks the interpreter
//! (default `python3`), `WORLDBRIDGE_EVENNIA_VENV` the venv directory.

mod common;

use common::{request_bytes, start_with, test_config, Client, Resp};
use serde_json::{json, Value};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const EVENNIA: &str = "evennia==5.0.1";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "Adminpass123";
const PASSWORD: &str = "Testpass123";
const WORLD: &str = "evennia-test";
const TOKEN: &str = "evennia-test-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn stamp(t0: Instant, what: &str) {
    eprintln!("[evennia test +{:5.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Run a command to completion; its combined output, or a panic that shows it.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn imports_work(venv: &Path) -> bool {
    Command::new(venv.join("bin/python"))
        .args(["-c", "import evennia, twisted, worldbridge_evennia"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The venv with Evennia and the package (installed editable, so edits need no
/// reinstall), built once and reused while its marker matches.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = std::env::var_os("WORLDBRIDGE_EVENNIA_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("evennia-venv"));
        let marker = dir.join("worldbridge-ready");
        let want = format!("{EVENNIA}\npackage={}\n", repo().join("evennia").display());
        if fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) && imports_work(&dir)
        {
            return dir;
        }
        let t0 = Instant::now();
        let _ = fs::remove_dir_all(&dir);
        let python = std::env::var("WORLDBRIDGE_PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            Command::new(&python).args(["-m", "venv"]).arg(&dir),
            "python3 -m venv",
        );
        let pip = dir.join("bin/pip");
        let quiet = ["install", "-q", "--disable-pip-version-check"];
        run(
            Command::new(&pip).args(quiet).arg(EVENNIA),
            "pip install evennia",
        );
        run(
            Command::new(&pip)
                .args(quiet)
                .args(["--no-deps", "-e"])
                .arg(repo().join("evennia")),
            "pip install -e evennia/",
        );
        assert!(imports_work(&dir), "the new venv cannot import evennia");
        fs::write(&marker, want).expect("write the venv marker");
        stamp(t0, "venv built");
        dir
    })
}

/// A migrated database whose first start (initial setup, then Evennia's one restart) is
/// behind it, with the superuser `admin`; copied into every game.
fn template_db() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = cache_dir().join("evennia-template");
        let db = dir.join("evennia.db3");
        let marker = dir.join("ready");
        if fs::read_to_string(&marker).ok().as_deref() == Some(EVENNIA) && db.exists() {
            return db;
        }
        let t0 = Instant::now();
        let _ = fs::remove_dir_all(&dir);
        let mut game = Game::init("template", "");
        game.evennia(&["migrate"], &[]);
        game.start(&[
            ("EVENNIA_SUPERUSER_USERNAME", ADMIN),
            ("EVENNIA_SUPERUSER_PASSWORD", ADMIN_PASSWORD),
        ]);
        game.wait_log("Initial setup complete", Duration::from_secs(90));
        game.wait_log("successfully restarted", Duration::from_secs(90));
        game.stop();
        fs::create_dir_all(&dir).expect("template dir");
        fs::copy(game.db(), &db).expect("copy the template database");
        fs::write(&marker, EVENNIA).expect("template marker");
        stamp(t0, "template database built");
        db
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A throw-away game directory, stopped (and its processes gone) when dropped.
struct Game {
    root: PathBuf,
    dir: PathBuf,
    telnet: u16,
    running: bool,
    runs: usize,
}

impl Game {
    /// `evennia --init` a game with loopback-only ports, no web server, raised
    /// throttles, and `extra` appended to its settings.
    fn init(name: &str, extra: &str) -> Game {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = cache_dir().join(format!("evennia-{name}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&root).expect("game root");
        let mut game = Game {
            dir: root.join("game"),
            root,
            telnet: free_port(),
            running: false,
            runs: 0,
        };
        let out = game.launcher(&["--init", "game"], &[], &game.root.clone());
        assert!(
            game.dir.join("server/conf/settings.py").exists(),
            "evennia --init:\n{out}"
        );
        let settings = format!(
            "\n# --- worldbridge test settings\n\
             TELNET_PORTS = [{telnet}]\n\
             TELNET_INTERFACES = [\"127.0.0.1\"]\n\
             AMP_HOST = \"127.0.0.1\"\n\
             AMP_PORT = {amp}\n\
             WEBSERVER_ENABLED = False\n\
             WEBCLIENT_ENABLED = False\n\
             WEBSOCKET_CLIENT_ENABLED = False\n\
             CREATION_THROTTLE_LIMIT = 1000\n\
             LOGIN_THROTTLE_LIMIT = 1000\n\
             IDLE_TIMEOUT = -1\n\
             {extra}\n",
            telnet = game.telnet,
            amp = free_port(),
        );
        append(&game.dir.join("server/conf/settings.py"), &settings);
        game
    }

    fn db(&self) -> PathBuf {
        self.dir.join("server/evennia.db3")
    }

    fn server_log(&self) -> String {
        fs::read_to_string(self.dir.join("server/logs/server.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.server_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Run the launcher with output to a file: `evennia start` leaves daemons behind
    /// that would hold a pipe open.
    fn launcher(&mut self, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> String {
        self.runs += 1;
        let log = self.root.join(format!("launcher-{}.log", self.runs));
        let file = fs::File::create(&log).expect("launcher log");
        let path = format!(
            "{}:{}",
            venv().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let status = Command::new(venv().join("bin/evennia"))
            .args(args)
            .current_dir(cwd)
            .env("PATH", path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("DJANGO_SETTINGS_MODULE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .status()
            .unwrap_or_else(|e| panic!("cannot run evennia {args:?}: {e}"));
        let out = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success(),
            "evennia {args:?} failed ({status}):\n{out}"
        );
        out
    }

    fn evennia(&mut self, args: &[&str], env: &[(&str, &str)]) -> String {
        let dir = self.dir.clone();
        self.launcher(args, env, &dir)
    }

    fn start(&mut self, env: &[(&str, &str)]) {
        self.running = true;
        let out = self.evennia(&["start"], env);
        // The launcher exits 0 even when twistd could not start; the log tells. A busy
        // 2-core machine took 25 s just to load the Portal once, so the bound is generous
        // (a deadline, not a timing: a healthy start takes a few seconds).
        self.wait_log(
            "Evennia Server successfully started",
            Duration::from_secs(180),
        );
        assert!(!out.contains("No such file"), "evennia start:\n{out}");
    }

    fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.server_log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in server.log after {limit:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if self.running {
            self.running = false;
            self.evennia(&["stop"], &[]);
        }
        self.kill_leftovers();
    }

    /// Kill this game's twistd processes that `evennia stop` left behind, by the ids in
    /// its pid files, after checking each is still one of ours.
    fn kill_leftovers(&self) {
        for name in ["server.pid", "portal.pid"] {
            let Ok(text) = fs::read_to_string(self.dir.join("server").join(name)) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*self.dir.to_string_lossy()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }

    /// What docs/evennia.md tells a game owner to do in `typeclasses/characters.py` and
    /// `commands/default_cmdsets.py`.
    fn install_package(&self) {
        edit(
            &self.dir.join("typeclasses/characters.py"),
            &[
                (
                    "from .objects import ObjectParent\n",
                    "from .objects import ObjectParent\n\
                     from worldbridge_evennia.typeclasses import WorldbridgeCharacterMixin\n",
                ),
                (
                    "class Character(ObjectParent, DefaultCharacter):",
                    "class Character(WorldbridgeCharacterMixin, ObjectParent, DefaultCharacter):",
                ),
            ],
        );
        edit(
            &self.dir.join("commands/default_cmdsets.py"),
            &[
                (
                    "from evennia import default_cmds\n",
                    "from evennia import default_cmds\n\
                     from worldbridge_evennia.commands import WorldbridgeCmdSet\n",
                ),
                (
                    "    key = \"DefaultCharacter\"\n\n    def at_cmdset_creation(self):\n        \"\"\"\n        Populates the cmdset\n        \"\"\"\n        super().at_cmdset_creation()\n",
                    "    key = \"DefaultCharacter\"\n\n    def at_cmdset_creation(self):\n        \"\"\"\n        Populates the cmdset\n        \"\"\"\n        super().at_cmdset_creation()\n        self.add(WorldbridgeCmdSet)\n",
                ),
            ],
        );
    }
}

impl Drop for Game {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let path = format!(
                "{}:{}",
                venv().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let _ = Command::new(venv().join("bin/evennia"))
                .arg("stop")
                .current_dir(&self.dir)
                .env("PATH", path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.kill_leftovers();
        if std::thread::panicking() {
            eprintln!("kept the game for inspection: {}", self.dir.display());
            eprintln!("server.log (tail):\n{}", self.log_tail());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append");
}

fn edit(path: &Path, replacements: &[(&str, &str)]) {
    let mut text = fs::read_to_string(path).expect("read a game file");
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{} has no {from:?}: the game template changed",
            path.display()
        );
        text = text.replacen(from, to, 1);
    }
    fs::write(path, text).expect("write a game file");
}

// -- a telnet player --------------------------------------------------------------------

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;

#[derive(Clone, Copy)]
enum Telnet {
    Data,
    Iac,
    Option(u8),
    Sub,
    SubIac,
}

/// A player on a raw socket that refuses every telnet option, so Evennia stops
/// negotiating at once, and keeps everything it was sent as plain text.
struct Player {
    name: String,
    sock: TcpStream,
    state: Telnet,
    data: Vec<u8>,
}

impl Player {
    fn connect(port: u16, name: &str) -> Player {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("telnet connect");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        sock.set_nodelay(true).expect("nodelay");
        Player {
            name: name.to_string(),
            sock,
            state: Telnet::Data,
            data: Vec::new(),
        }
    }

    /// Log in a new account (Evennia makes and puppets a character of the same name).
    fn create(port: u16, name: &str, password: &str) -> Player {
        let mut p = Player::connect(port, name);
        p.expect(0, "create <username> <password>", Duration::from_secs(20));
        let m = p.mark();
        p.send(&format!("create {name} {password}"));
        p.expect(m, "Is this what you intended", Duration::from_secs(10));
        let m = p.mark();
        p.send("y");
        p.expect(m, "was created", Duration::from_secs(10));
        p.login(name, password);
        p
    }

    fn login(&mut self, name: &str, password: &str) {
        let m = self.mark();
        self.send(&format!("connect {name} {password}"));
        self.expect(m, &format!("You become {name}."), Duration::from_secs(15));
    }

    fn send(&mut self, line: &str) {
        self.sock
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("telnet write");
    }

    fn reply(&mut self, verb: u8, opt: u8) {
        let _ = self.sock.write_all(&[IAC, verb, opt]);
    }

    /// Read what is there (waiting at most one read timeout).
    fn pump(&mut self) {
        let mut buf = [0u8; 8192];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => panic!("{}: telnet read failed: {e}", self.name),
        };
        for &b in &buf[..n] {
            self.state = match (self.state, b) {
                (Telnet::Data, IAC) => Telnet::Iac,
                (Telnet::Data, b) => {
                    self.data.push(b);
                    Telnet::Data
                }
                (Telnet::Iac, IAC) => {
                    self.data.push(IAC);
                    Telnet::Data
                }
                (Telnet::Iac, SB) => Telnet::Sub,
                (Telnet::Iac, c @ (DO | DONT | WILL | WONT)) => Telnet::Option(c),
                (Telnet::Iac, _) => Telnet::Data,
                (Telnet::Option(c), opt) => {
                    match c {
                        DO => self.reply(WONT, opt),
                        WILL => self.reply(DONT, opt),
                        _ => {}
                    }
                    Telnet::Data
                }
                (Telnet::Sub, IAC) => Telnet::SubIac,
                (Telnet::Sub, _) => Telnet::Sub,
                (Telnet::SubIac, SE) => Telnet::Data,
                (Telnet::SubIac, _) => Telnet::Sub,
            };
        }
    }

    fn mark(&self) -> usize {
        self.data.len()
    }

    /// The text received since `mark`, without ANSI colour codes or `\r`.
    fn since(&self, mark: usize) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.data[mark..]))
    }

    /// Wait until the text since `mark` contains `needle`; its text up to there.
    fn expect(&mut self, mark: usize, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.since(mark);
            if let Some(at) = text.find(needle) {
                return text[..at + needle.len()].to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not see {needle:?} within {limit:?}; the screen since then:\n{text}",
                self.name
            );
            self.pump();
        }
    }

    /// The rest of the line that follows `prefix` (once that line is complete).
    fn line_after(&mut self, mark: usize, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.since(mark);
            if let Some(at) = text.find(prefix) {
                if let Some((line, _)) = text[at + prefix.len()..].split_once('\n') {
                    return line.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not see a line after {prefix:?} within {limit:?}:\n{text}",
                self.name
            );
            self.pump();
        }
    }

    /// A round trip through the game: once its answer is here, everything the game sent
    /// this player before it is here too (one TCP stream, in order).
    fn sync(&mut self) {
        let m = self.mark();
        self.send("time");
        self.expect(m, "Total time passed", Duration::from_secs(10));
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

// -- the bridge's HTTP API, with its token ----------------------------------------------

fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let body = body.map(Value::to_string);
    let auth = format!("Bearer {TOKEN}");
    let req = request_bytes(method, path, body.as_deref(), &[("Authorization", &auth)]);
    let mut c = Client::connect(addr);
    c.send_raw(&req);
    c.read_response(false).expect("a response from the bridge")
}

fn api_get(addr: SocketAddr, path: &str) -> Value {
    let r = api(addr, "GET", path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

fn room_path(room: &str) -> String {
    room.replace(' ', "%20")
}

/// (user_id, username) of the people the bridge has in `room`; empty for a room it does
/// not know.
fn players(addr: SocketAddr, room: &str) -> Vec<(String, String)> {
    let r = api(
        addr,
        "GET",
        &format!("/bridge/room/{}/players", room_path(room)),
        None,
    );
    if r.status == 404 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "players of {room}: {}", r.text());
    r.json()["players"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["user_id"].as_str().unwrap_or_default().to_string(),
                p["username"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn names(players: &[(String, String)]) -> Vec<String> {
    let mut n: Vec<String> = players.iter().map(|(_, name)| name.clone()).collect();
    n.sort();
    n
}

/// Wait until the bridge has exactly `want` (sorted names) in `room`.
fn wait_players(addr: SocketAddr, room: &str, want: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = names(&players(addr, room));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge has {got:?} in {room}, not {want:?}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(addr: SocketAddr, room: &str) -> Vec<Value> {
    api_get(addr, &format!("/bridge/room/{}/events", room_path(room)))["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn bridge_config(http: &str, line: &str) -> worldbridge::config::Config {
    let mut cfg = test_config();
    cfg.http.listen = vec![http.parse().expect("http addr")];
    cfg.line.listen = vec![line.parse().expect("line addr")];
    cfg.http.token = TOKEN.into();
    cfg.line.token = TOKEN.into();
    // A peer "vps", down until the travel checks start it (on `vps_port()`).
    cfg.federation.sync_interval_s = 1;
    cfg.federation.timeout_ms = 1000;
    cfg.federation.peers = vec![worldbridge::config::PeerConfig {
        world: "vps".into(),
        url: format!("http://127.0.0.1:{}", vps_port()),
        token: VPS_TOKEN.into(),
        public_key: String::new(),
    }];
    cfg
}

const VPS_TOKEN: &str = "evennia-vps-token";

/// The port of the second bridge, world "vps", the same for every config of the first.
fn vps_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(free_port)
}

/// The bridge of world "vps": "The Bridge" its portal (and so its gateway), `peer` (the
/// first bridge) its one peer.
fn vps_bridge(peer: SocketAddr) -> common::TestBridge {
    let mut cfg = test_config();
    cfg.world = "vps".into();
    cfg.http.listen = vec![format!("127.0.0.1:{}", vps_port())
        .parse()
        .expect("vps addr")];
    cfg.line.listen = vec!["127.0.0.1:0".parse().expect("line addr")];
    cfg.http.token = TOKEN.into();
    cfg.federation.sync_interval_s = 1;
    cfg.federation.timeout_ms = 1000;
    cfg.federation.portal_rooms = vec!["The Bridge".into()];
    cfg.federation.peers = vec![worldbridge::config::PeerConfig {
        world: "bridge-test".into(),
        url: format!("http://{peer}"),
        token: VPS_TOKEN.into(),
        public_key: String::new(),
    }];
    start_with(cfg)
}

/// An agent for the bridge's `command` backend that takes 3 s (longer than the
/// package's 2 s "thinking" delay) and fails on request.
const SLOW_AGENT: &str = r#"
import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    if "fail" in req.get("message", ""):
        print(json.dumps({"error": "the test agent was told to fail"}), flush=True)
        continue
    time.sleep(3)
    print(json.dumps({"text": "Hello, %s, at last." % req.get("username")}), flush=True)
"#;

// -- the tests --------------------------------------------------------------------------

#[test]
#[ignore = "needs python3 and evennia"]
fn package_unit_tests_pass() {
    let out = run(
        Command::new(venv().join("bin/python"))
            .args(["-m", "unittest", "discover", "-s", "tests", "-v"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(repo().join("evennia")),
        "python -m unittest (evennia/tests)",
    );
    let ran = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        ran >= 30,
        "expected the package's 30+ unit tests to run:\n{out}"
    );
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

#[test]
#[ignore = "needs python3 and evennia"]
fn evennia_players_talk_to_the_agent_and_share_rooms_through_the_bridge() {
    let t0 = Instant::now();
    venv();
    let template = template_db();
    stamp(t0, "venv and template ready");

    let mut cfg = bridge_config("127.0.0.1:0", "127.0.0.1:0");
    cfg.world = "bridge-test".into();
    let bridge = start_with(cfg);
    let http = bridge.http;
    let line = bridge
        .line
        .expect("the bridge listens for the line protocol");

    let mut game = Game::init(
        "run",
        &format!(
            "WORLDBRIDGE_URL = \"http://{http}\"\n\
             WORLDBRIDGE_LINE = \"{line}\"\n\
             WORLDBRIDGE_WORLD = \"{WORLD}\"\n\
             WORLDBRIDGE_TOKEN = \"{TOKEN}\"\n\
             SERVER_SERVICES_PLUGIN_MODULES = SERVER_SERVICES_PLUGIN_MODULES + \
             [\"worldbridge_evennia.services\"]\n"
        ),
    );
    game.install_package();
    fs::copy(template, game.db()).expect("copy the template database");
    game.start(&[]);
    game.wait_log(
        "[worldbridge] welcomed by the bridge",
        Duration::from_secs(20),
    );
    stamp(t0, "evennia started and linked");

    let port = game.telnet;
    let mut admin = Player::connect(port, ADMIN);
    admin.expect(0, "create <username> <password>", Duration::from_secs(20));
    admin.login(ADMIN, ADMIN_PASSWORD);
    let m = admin.mark();
    admin.send("dig The Garden = garden;g,back;b");
    admin.expect(
        m,
        "Created Exit back from The Garden to Limbo",
        Duration::from_secs(10),
    );
    let mut alice = Player::create(port, "Alice", PASSWORD);
    let mut bob = Player::create(port, "Bob", PASSWORD);
    stamp(t0, "three players logged in");

    // Logins and the room reach the bridge over the line link.
    wait_players(
        http,
        "Limbo",
        &["Alice", "Bob", ADMIN],
        Duration::from_secs(10),
    );
    let limbo = players(http, "Limbo");
    for (uid, name) in &limbo {
        assert!(
            uid.starts_with(&format!("{WORLD}#")),
            "{name}'s user id {uid} is not {WORLD}#<dbid>"
        );
    }
    let alice_id = limbo
        .iter()
        .find(|(_, n)| n == "Alice")
        .map(|(u, _)| u.clone())
        .expect("Alice");
    let world = api_get(http, "/bridge/world/Limbo");
    assert!(
        world["data"]["desc_base"]
            .as_str()
            .unwrap_or_default()
            .contains("Welcome to your new Evennia-based game"),
        "Limbo's description from the room snapshot: {world}"
    );
    assert_eq!(
        world["data"]["exits"],
        json!({"garden": "The Garden"}),
        "{world}"
    );

    // `talk Hello`: the agent's answer, to Alice only.
    let bob_mark = bob.mark();
    let admin_mark = admin.mark();
    let talk_mark = alice.mark();
    alice.send("talk Hello");
    alice.expect(
        talk_mark,
        "You say to Timmy, \"Hello\"",
        Duration::from_secs(5),
    );
    let reply = alice.line_after(talk_mark, "Timmy: ", Duration::from_secs(10));
    assert!(
        reply.contains("Hello, Alice"),
        "the agent's reply: {reply:?}"
    );
    bob.sync();
    admin.sync();
    for (p, m) in [(&bob, bob_mark), (&admin, admin_mark)] {
        let screen = p.since(m);
        assert!(
            !screen.contains("Timmy") && !screen.contains("Hello, Alice"),
            "{} saw Alice's private answer:\n{screen}",
            p.name
        );
    }
    let sessions = api_get(http, "/bridge/sessions");
    let session = sessions["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["user_id"] == json!(alice_id)))
        .unwrap_or_else(|| panic!("no session for {alice_id}: {sessions}"));
    assert_eq!(session["user"], "Alice", "{session}");
    assert_eq!(session["room"], "Limbo", "{session}");
    stamp(t0, "talk answered privately");

    // A `say` in Evennia becomes a room event on the bridge.
    let m = alice.mark();
    bob.send("say Anyone here?");
    alice.expect(m, "Bob says, \"Anyone here?\"", Duration::from_secs(5));
    common::eventually(Duration::from_secs(5), "Bob's say on the bridge", || {
        events(http, "Limbo")
            .iter()
            .any(|e| e["type"] == "say" && e["username"] == "Bob" && e["message"] == "Anyone here?")
    });

    // A `say` posted to the bridge shows on the telnet screens in that room.
    let (am, bm) = (alice.mark(), bob.mark());
    let r = api(
        http,
        "POST",
        "/bridge/say",
        Some(
            &json!({"user_id": "carol_http", "username": "Carol", "room": "Limbo",
                     "message": "hello from the bridge | {ok}"}),
        ),
    );
    assert_eq!(r.status, 200, "POST /bridge/say: {}", r.text());
    let want = "Carol (via bridge) says, \"hello from the bridge | {ok}\"";
    let seen = alice.expect(am, want, Duration::from_secs(5));
    bob.expect(bm, want, Duration::from_secs(5));
    // Saying something over HTTP put Carol in the room first: a relayed presence.
    assert!(
        seen.contains("Carol (via bridge) arrives."),
        "no arrival before the say:\n{seen}"
    );
    stamp(t0, "says relayed both ways");

    // Moving reports leave and enter, and the new room's snapshot.
    let m = bob.mark();
    bob.send("garden");
    bob.expect(m, "The Garden", Duration::from_secs(5));
    wait_players(http, "The Garden", &["Bob"], Duration::from_secs(5));
    // (Carol is in Limbo too: a say over HTTP places its speaker in the room.)
    wait_players(
        http,
        "Limbo",
        &["Alice", "Carol", ADMIN],
        Duration::from_secs(5),
    );
    let garden = api_get(http, "/bridge/world/The%20Garden");
    assert_eq!(
        garden["data"]["exits"],
        json!({"back": "Limbo"}),
        "{garden}"
    );

    // A bridge say reaches only the room it names.
    let (am, bm) = (alice.mark(), bob.mark());
    let r = api(
        http,
        "POST",
        "/bridge/say",
        Some(
            &json!({"user_id": "carol_http", "username": "Carol", "room": "Limbo",
                     "message": "only in Limbo"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    alice.expect(am, "only in Limbo", Duration::from_secs(5));
    bob.sync();
    assert!(
        !bob.since(bm).contains("only in Limbo"),
        "{}",
        bob.since(bm)
    );

    // The agent speaks into a room, or to one player; `act` and `observe` are answered.
    let (am, bm, dm) = (alice.mark(), bob.mark(), admin.mark());
    let r = api(
        http,
        "POST",
        "/bridge/speak",
        Some(&json!({"room": "Limbo", "text": "Welcome, travellers."})),
    );
    assert_eq!(r.status, 200, "POST /bridge/speak: {}", r.text());
    let r = api(
        http,
        "POST",
        "/bridge/speak",
        Some(&json!({"world": WORLD, "user_id": alice_id, "text": "Just for you, Alice."})),
    );
    assert_eq!(r.status, 200, "POST /bridge/speak: {}", r.text());
    alice.expect(
        am,
        "Timmy says, \"Welcome, travellers.\"",
        Duration::from_secs(5),
    );
    alice.expect(
        am,
        "Timmy says, \"Just for you, Alice.\"",
        Duration::from_secs(5),
    );
    admin.expect(
        dm,
        "Timmy says, \"Welcome, travellers.\"",
        Duration::from_secs(5),
    );
    let r = api(
        http,
        "POST",
        "/bridge/act",
        Some(&json!({"world": WORLD, "action": "message",
                     "args": {"text": "The tower bell rings.", "to": "Bob"}})),
    );
    assert_eq!(r.status, 200, "POST /bridge/act: {}", r.text());
    assert_eq!(r.json()["result"], json!({"to": ["Bob"]}), "{}", r.text());
    bob.expect(bm, "Timmy: The tower bell rings.", Duration::from_secs(5));
    bob.sync();
    admin.sync();
    let bob_screen = bob.since(bm);
    assert!(
        !bob_screen.contains("travellers") && !bob_screen.contains("Just for you"),
        "{bob_screen}"
    );
    assert!(
        !admin.since(dm).contains("Just for you"),
        "{}",
        admin.since(dm)
    );
    let seen = api_get(
        http,
        &format!("/bridge/observe/{WORLD}?fresh=1&player=Alice"),
    );
    let p = &seen["perception"];
    assert_eq!(p["player"], "Alice", "{seen}");
    assert_eq!(p["cell"], "Limbo", "{seen}");
    let mut online: Vec<&str> = p["players"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    online.sort();
    assert_eq!(online, ["Alice", "Bob", ADMIN], "{seen}");
    assert!(
        p["nearby"].as_array().is_some_and(|n| n
            .iter()
            .any(|o| o["name"] == ADMIN && o["kind"] == "player")),
        "{seen}"
    );

    // `page` still works although `tell` now means talk.
    let bm = bob.mark();
    alice.send("page Bob = psst, over here");
    bob.expect(bm, "psst, over here", Duration::from_secs(5));

    // A fast answer never showed "thinking".
    assert!(
        !alice.since(talk_mark).contains("is thinking"),
        "{}",
        alice.since(talk_mark)
    );

    // Logging out is a leave.
    bob.send("quit");
    wait_players(http, "The Garden", &[], Duration::from_secs(5));
    stamp(t0, "moves, page and logout checked");

    // The bridge sees one healthy Evennia link that never sent it a bad line.
    let health = api_get(http, "/bridge/health");
    let evennia_links: Vec<&Value> = health["links"]
        .as_array()
        .map(|l| l.iter().filter(|l| l["world"] == WORLD).collect())
        .unwrap_or_default();
    assert_eq!(evennia_links.len(), 1, "{health}");
    assert_eq!(evennia_links[0]["kind"], "evennia", "{health}");
    assert_eq!(evennia_links[0]["state"], "up", "{health}");
    let metrics = api(http, "GET", "/metrics", None).text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "worldbridge_line_errors_total 0"),
        "the bridge answered the game's lines with errors:\n{metrics}"
    );

    // The bridge goes away: `tell` says so, in one line.
    bridge.stop().expect("the bridge stops cleanly");
    let m = alice.mark();
    alice.send("tell Hello again");
    let err = alice.expect(m, "not reachable", Duration::from_secs(10));
    assert!(err.contains("Timmy could not answer:"), "{err}");

    // It comes back (same ports, a slow agent): the link reconnects and re-reports who is
    // where; a slow answer shows "thinking" first.
    let mut cfg = bridge_config(&http.to_string(), &line.to_string());
    cfg.world = "bridge-test".into();
    let script = game.root.join("slow_agent.py");
    fs::write(&script, SLOW_AGENT).expect("agent script");
    cfg.agent.backend = "command".into();
    cfg.agent.command = vec![
        venv().join("bin/python").display().to_string(),
        script.display().to_string(),
    ];
    let bridge = start_with(cfg);
    wait_players(http, "Limbo", &["Alice", ADMIN], Duration::from_secs(40));
    stamp(t0, "link back after the bridge restarted");

    let m = alice.mark();
    alice.send("ask Are you there?");
    let thinking = alice.expect(m, "Timmy is thinking…", Duration::from_secs(5));
    let answered = alice.expect(m, "Timmy: Hello, Alice, at last.", Duration::from_secs(15));
    assert!(
        thinking.len() < answered.len(),
        "thinking came after the answer"
    );

    let m = alice.mark();
    alice.send("talk please fail");
    let err = alice.expect(m, "(HTTP 502)", Duration::from_secs(10));
    assert!(err.contains("Timmy could not answer:"), "{err}");
    stamp(t0, "errors and thinking shown");

    // `reload` restarts the Server process and with it the link; players stay logged in.
    let welcomes = |g: &Game| g.server_log().matches("welcomed by the bridge").count();
    let before = welcomes(&game);
    let m = admin.mark();
    admin.send("reload");
    admin.expect(m, "Server restarted", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while welcomes(&game) <= before {
        assert!(
            Instant::now() < deadline,
            "no new welcome after reload:\n{}",
            game.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_players(http, "Limbo", &["Alice", ADMIN], Duration::from_secs(10));
    alice.send("say still here");
    common::eventually(Duration::from_secs(5), "a say after reload", || {
        events(http, "Limbo")
            .iter()
            .any(|e| e["type"] == "say" && e["message"] == "still here")
    });
    stamp(t0, "reload relinked");

    // A gateway room with a travel exit to vps, built as docs/evennia.md says. vps never
    // answers: the bridge refuses, Alice is told why and stays.
    let m = admin.mark();
    admin.send("dig The Gate:worldbridge_evennia.typeclasses.GatewayRoom = gate, out");
    admin.expect(
        m,
        "Created Exit back from The Gate to Limbo",
        Duration::from_secs(10),
    );
    let m = admin.mark();
    admin.send("dig Beyond the Gateway");
    admin.expect(
        m,
        "Created room Beyond the Gateway",
        Duration::from_secs(10),
    );
    let m = admin.mark();
    admin.send("gate");
    admin.expect(m, "The Gate", Duration::from_secs(5));
    let m = admin.mark();
    admin.send("open vps:worldbridge_evennia.typeclasses.TravelExit = Beyond the Gateway");
    admin.expect(m, "Created new Exit 'vps'", Duration::from_secs(10));
    let m = admin.mark();
    admin.send("set vps/destination_world = vps");
    admin.expect(m, "destination_world", Duration::from_secs(10));
    let m = alice.mark();
    alice.send("gate");
    alice.expect(m, "The Gate", Duration::from_secs(5));
    wait_players(http, "The Gate", &["Alice", ADMIN], Duration::from_secs(5));
    let gate = api_get(http, "/bridge/world/The%20Gate");
    assert_eq!(gate["data"]["portal"], json!(true), "{gate}");
    let m = alice.mark();
    alice.send("vps");
    alice.expect(
        m,
        "You step through the gateway toward vps…",
        Duration::from_secs(5),
    );
    alice.expect(
        m,
        "The gateway stays closed: world vps is offline.",
        // vps is not running: the bridge's last sync with it was refused, so the travel
        // is refused at once (a peer not tried yet would be waited for, 10 s at least).
        Duration::from_secs(25),
    );
    let m = alice.mark();
    alice.send("look");
    let seen = alice.expect(m, "Exits:", Duration::from_secs(5));
    assert!(seen.contains("The Gate"), "Alice moved: {seen}");
    wait_players(http, "The Gate", &["Alice", ADMIN], Duration::from_secs(5));
    stamp(t0, "travel exit refused, Alice stayed");

    // vps comes up: the same exit takes Alice there, out of this game.
    let vps = vps_bridge(http);
    common::eventually(Duration::from_secs(20), "vps online on the bridge", || {
        api_get(http, "/bridge/health")["peers"][0]["state"] == "online"
    });
    let m = alice.mark();
    alice.send("vps");
    alice.expect(
        m,
        "You arrive in The Bridge, in vps.",
        Duration::from_secs(20),
    );
    wait_players(vps.http, "The Bridge", &["Alice"], Duration::from_secs(10));
    wait_players(http, "The Gate", &[ADMIN], Duration::from_secs(5));
    let m = alice.mark();
    alice.send("look");
    let seen = alice.expect(m, "Beyond the Gateway", Duration::from_secs(5));
    assert!(
        !seen.contains("The Gate\n"),
        "Alice is still at the gate: {seen}"
    );
    alice.send("say anyone?");
    alice.sync();
    // The game reports nothing about an away character: no holding room, no say.
    let r = api(http, "GET", "/bridge/world/Beyond%20the%20Gateway", None);
    assert_eq!(
        r.status,
        404,
        "the holding room reached the bridge: {}",
        r.text()
    );
    assert!(
        !events(http, "The Gate")
            .iter()
            .any(|e| e["message"] == "anyone?"),
        "an away character's say reached the bridge"
    );
    // A say in vps's portal reaches this game's gateway room, by its remote name.
    let m = admin.mark();
    let r = api(
        vps.http,
        "POST",
        "/bridge/say",
        Some(
            &json!({"user_id": "bob", "username": "Bob", "room": "The Bridge", "message": "hello, gate"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    admin.expect(m, "Bob@vps says, \"hello, gate\"", Duration::from_secs(15));
    stamp(t0, "travel exit took Alice to vps");

    // vps sends Alice home: the game brings her character into the gateway room and
    // reports her again.
    let (alice_uid, _) = players(vps.http, "The Bridge")
        .into_iter()
        .find(|(_, name)| name == "Alice")
        .expect("Alice in vps");
    let m = alice.mark();
    let r = api(
        vps.http,
        "POST",
        "/bridge/travel",
        Some(&json!({"user_id": alice_uid, "to_world": "bridge-test"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    alice.expect(
        m,
        "You step back through the gateway from vps into The Gate.",
        Duration::from_secs(15),
    );
    wait_players(http, "The Gate", &["Alice", ADMIN], Duration::from_secs(10));
    assert!(
        !names(&players(vps.http, "The Bridge")).contains(&"Alice".to_string()),
        "Alice is still in vps"
    );
    let m = alice.mark();
    alice.send("look");
    let seen = alice.expect(m, "Exits:", Duration::from_secs(5));
    assert!(
        seen.contains("The Gate"),
        "Alice is not at the gate: {seen}"
    );
    alice.send("say home again");
    common::eventually(Duration::from_secs(5), "her say reported again", || {
        events(http, "The Gate")
            .iter()
            .any(|e| e["type"] == "say" && e["message"] == "home again")
    });
    stamp(t0, "vps sent Alice home");

    // A world event raised in this game reaches vps: `@worldevent fire …` in The Gate shows
    // here at once, in vps's room of the same name (vps's game has a player there) and on
    // vps's game link. Only builders may raise one.
    let mut vps_game = common::LineClient::connect(vps.line.expect("vps line listener"));
    vps_game.hello("vps-game", "generic");
    vps_game.send(
        &json!({"type": "presence", "id": 1, "event": "enter", "user_id": "vera",
                          "username": "Vera", "room": "The Gate"}),
    );
    vps_game.recv_type("ok");
    let m = alice.mark();
    alice.send("@worldevent fire not for players");
    alice.expect(m, "not available", Duration::from_secs(5));
    let m = admin.mark();
    admin.send("@worldevent fire");
    admin.expect(
        m,
        "Usage: @worldevent <kind> <message>",
        Duration::from_secs(5),
    );
    let (am, m) = (alice.mark(), admin.mark());
    admin.send("@worldevent fire The forge flares");
    admin.expect(
        m,
        "The fire in The Gate is sent to the bridge.",
        Duration::from_secs(5),
    );
    alice.expect(am, "[fire] The forge flares", Duration::from_secs(5));
    let fire = |e: &Value| {
        e["type"] == "event"
            && e["event"] == "fire"
            && e["message"] == "The forge flares"
            && e["origin"] == "bridge-test"
    };
    common::eventually(Duration::from_secs(5), "the fire on this bridge", || {
        events(http, "The Gate").iter().any(fire)
    });
    common::eventually(
        Duration::from_secs(15),
        "the fire in vps's The Gate",
        || events(vps.http, "The Gate").iter().any(fire),
    );
    let (line, _) = vps_game.recv_type("event");
    assert!(fire(&line), "vps's game link was shown {line}");
    assert_eq!(line["room"], "The Gate", "{line}");
    stamp(t0, "@worldevent reached vps");
    vps.stop().expect("vps stops cleanly");

    let log = game.server_log();
    assert!(
        !log.contains("Traceback") && !log.contains("handling a"),
        "errors in server.log:\n{}",
        game.log_tail()
    );
    drop(alice);
    drop(admin);
    game.stop();
    bridge.stop().expect("the bridge stops cleanly");
    stamp(t0, "done");
}
