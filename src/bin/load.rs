//! `worldbridge-load`: the load generator behind docs/benchmarks.md's figures.
//!
//! It starts the real `worldbridge` binary (next to itself in `target/release`) on a
//! loopback port with a bench config, drives it from one mio thread with keep-alive
//! connections, and reports throughput, latency percentiles and the server's RSS (read
//! from /proc). Run `cargo run --release --bin worldbridge-load -- --help`.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "load/cluster.rs"]
mod cluster;

const USAGE: &str = "worldbridge-load [--scenario health|chat|idle|say|line|fanout|newusers|crowd|cluster|all] [--connections N]
                  [--seconds S] [--idle N] [--interval-ms MS] [--depth N] [--addr ADDR] [--line-addr ADDR]

  health   GET /bridge/health on N keep-alive connections (default 64)
  chat     POST /bridge/chat with the builtin agent, one user per connection (default 50)
  idle     open --idle connections (default 5000), one request each, then measure server RSS per connection
  say      POST /bridge/say on N connections (default 64) to a durable bridge (its own, in a
           temporary data directory): every answer waits for its write to be on disk
  line     line protocol: N connections (default 100) each pipelining --depth (default 8) pings
  fanout   N gateway clients on /ws/matrix (default 5000) and one sender broadcasting one message
           per --interval-ms (default 10): deliveries/s, delivery latency, RSS per client
  newusers health, then POST /bridge/say and POST /bridge/chat with a NEW user_id on every
           request (the per-surface state issue): req/s of each as a share of health's, RSS
  crowd    POST /bridge/chat (new user each time) into an empty room, then into a room where a
           game link reports 10,000 players present
  cluster  cluster mode against the single process, in one run (needs redis-server on PATH):
           a say on node A seen by a WebSocket client on node B (p50/p99), the gateway fan-out
           with N clients (default 2000) split over two nodes, and POST /bridge/say on node A
           with Redis at appendfsync always and everysec (the say -> frame hop is measured with
           both policies: with `always` it includes the disk's fsync), each beside the same
           Redis alone (an XADD until a blocked XREAD has it: the floor under the hop)
  all      all of them but fanout, newusers and crowd (the docs/benchmarks.md figures)
  --interval-ms  pace each connection: send at most one request per MS (default 0: back to back)
  --addr   drive an already running bridge instead of starting one (no RSS figures then)
  --line-addr  its line-protocol listener, for the line scenario";

struct Conn {
    sock: TcpStream,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_pos: usize,
    sent_at: Instant,
    waiting: bool,
    request: Vec<u8>,
    /// Where the request holds `NEW_USER` (8 bytes): replaced by a fresh number each time.
    marker: Option<usize>,
    /// Paced mode: when the next request may go.
    next_at: Instant,
}

struct Report {
    requests: u64,
    elapsed: Duration,
    lat_us: Vec<u64>,
    errors: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One complete response at the front of `buf`: its length and status.
fn response_len(buf: &[u8]) -> Option<(usize, u16)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + 4 + len).then_some((end + 4 + len, status))
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Eight bytes in a request body that [`send`] replaces with a new number each time.
const NEW_USER: &[u8] = b"@NEWUSR@";

/// Numbers for `NEW_USER`, shared by every connection of the run.
static NEXT_USER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Drive `requests` (one per connection, repeated) for `secs` seconds.
fn drive(
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    secs: f64,
    interval: Duration,
    rss: Option<&dyn Fn() -> u64>,
) -> (Report, Vec<u64>) {
    let mut poll = Poll::new().expect("poll");
    let n = requests.len().max(1);
    let mut conns: Vec<Conn> = requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let mut sock = TcpStream::connect(addr).expect("connect");
            sock.set_nodelay(true).ok();
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .expect("register");
            Conn {
                sock,
                rx: Vec::with_capacity(4096),
                tx: if interval.is_zero() {
                    request.clone()
                } else {
                    Vec::new()
                },
                tx_pos: 0,
                sent_at: Instant::now(),
                waiting: interval.is_zero(),
                marker: request.windows(NEW_USER.len()).position(|w| w == NEW_USER),
                request,
                // Spread the connections over one interval so they do not send in lockstep.
                next_at: Instant::now() + interval.mul_f64(i as f64 / n as f64),
            }
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut rep = Report {
        requests: 0,
        elapsed: Duration::ZERO,
        lat_us: Vec::with_capacity(1 << 20),
        errors: 0,
    };
    let mut rss_samples = Vec::new();
    let mut next_sample = start;
    let mut buf = [0u8; 65536];
    let paced = !interval.is_zero();
    while Instant::now() < end {
        if let Some(f) = rss {
            if Instant::now() >= next_sample {
                rss_samples.push(f());
                next_sample += Duration::from_secs(1);
            }
        }
        // Sleep until a socket is ready or, paced, until the next send is due.
        let now = Instant::now();
        let timeout = if paced {
            conns
                .iter()
                .filter(|c| !c.waiting)
                .map(|c| c.next_at.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_millis(50))
        } else {
            Duration::from_millis(50)
        };
        poll.poll(&mut events, Some(timeout)).expect("poll");
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            flush(c);
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => panic!("server closed a keep-alive connection"),
                    Ok(n) => c.rx.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            while let Some((len, status)) = response_len(&c.rx) {
                c.rx.drain(..len);
                rep.requests += 1;
                rep.errors += u64::from(status != 200);
                rep.lat_us.push(c.sent_at.elapsed().as_micros() as u64);
                c.waiting = false;
            }
            if !paced && !c.waiting {
                send(c, interval);
            }
        }
        if paced {
            let now = Instant::now();
            for c in conns.iter_mut().filter(|c| !c.waiting && c.next_at <= now) {
                send(c, interval);
            }
        }
    }
    rep.elapsed = start.elapsed();
    (rep, rss_samples)
}

/// Line protocol: `n` connections, each keeping `depth` pings in flight (a new one for
/// every pong), for `secs` seconds. Latency is per message, send to answer.
fn drive_line(addr: SocketAddr, n: usize, depth: usize, secs: f64) -> Report {
    struct LineConn {
        sock: TcpStream,
        rx: Vec<u8>,
        tx: Vec<u8>,
        tx_pos: usize,
        sent: std::collections::VecDeque<Instant>,
        next_id: u64,
    }
    fn queue_ping(c: &mut LineConn) {
        c.next_id += 1;
        let _ = writeln!(c.tx, "{{\"type\":\"ping\",\"id\":{}}}", c.next_id);
        c.sent.push_back(Instant::now());
    }
    fn flush_line(c: &mut LineConn) {
        while c.tx_pos < c.tx.len() {
            match c.sock.write(&c.tx[c.tx_pos..]) {
                Ok(k) => c.tx_pos += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        if c.tx_pos == c.tx.len() {
            c.tx.clear();
            c.tx_pos = 0;
        }
    }
    let mut poll = Poll::new().expect("poll");
    let mut conns: Vec<LineConn> = (0..n)
        .map(|i| {
            let mut sock = TcpStream::connect(addr).expect("connect");
            sock.set_nodelay(true).ok();
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .expect("register");
            let mut c = LineConn {
                sock,
                rx: Vec::with_capacity(8192),
                tx: Vec::with_capacity(8192),
                tx_pos: 0,
                sent: std::collections::VecDeque::new(),
                next_id: 0,
            };
            for _ in 0..depth {
                queue_ping(&mut c);
            }
            c
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut rep = Report {
        requests: 0,
        elapsed: Duration::ZERO,
        lat_us: Vec::with_capacity(1 << 22),
        errors: 0,
    };
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .expect("poll");
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => panic!("server closed a line connection"),
                    Ok(k) => c.rx.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            let mut used = 0;
            while let Some(nl) = c.rx[used..].iter().position(|b| *b == b'\n') {
                let line = &c.rx[used..used + nl];
                rep.errors += u64::from(!line.starts_with(b"{\"type\":\"pong\""));
                used += nl + 1;
                if let Some(t) = c.sent.pop_front() {
                    rep.lat_us.push(t.elapsed().as_micros() as u64);
                }
                rep.requests += 1;
                queue_ping(c);
            }
            c.rx.drain(..used);
            flush_line(c);
        }
    }
    rep.elapsed = start.elapsed();
    rep
}

/// Health, then say and chat with a new user on every request, on `n` connections each;
/// the share of health's rate each reaches, and the server's RSS over each run.
fn new_users(addr: SocketAddr, n: usize, secs: f64, rss: &dyn Fn() -> u64) {
    let rate = |name: &str, path: &str, body: &str| {
        let reqs = vec![request(if body.is_empty() { "GET" } else { "POST" }, path, body); n];
        let (mut rep, samples) = drive(addr, reqs, secs, Duration::ZERO, Some(rss));
        print(name, n, &mut rep);
        print_rss(&samples);
        rep.requests as f64 / rep.elapsed.as_secs_f64()
    };
    let health = rate("health", "/bridge/health", "");
    let say = rate(
        "say-new",
        "/bridge/say",
        r#"{"user_id":"u@NEWUSR@","username":"U","message":"hello there","room":"The Garden"}"#,
    );
    let chat = rate(
        "chat-new",
        "/bridge/chat",
        r#"{"user_id":"c@NEWUSR@","username":"C","message":"hello, what do you see?","room":"The Forge"}"#,
    );
    println!(
        "         say-new = {:.2} x health, chat-new = {:.2} x health",
        say / health,
        chat / health
    );
    let rooms = http_get(addr, "/bridge/room/The%20Garden/players");
    let present = rooms.matches("\"user_id\"").count();
    println!("         people present in The Garden after the say run: {present}");
}

/// Chat with a new user each time into an empty room, then into a room with 10,000
/// people present (reported by one game link).
fn crowd(addr: SocketAddr, line: SocketAddr, n: usize, secs: f64, rss: &dyn Fn() -> u64) {
    let chat = |room: &str| {
        let body = format!(
            r#"{{"user_id":"k@NEWUSR@","username":"K","message":"hello, who is here?","room":"{room}"}}"#
        );
        let reqs = vec![request("POST", "/bridge/chat", &body); n];
        let (mut rep, samples) = drive(addr, reqs, secs, Duration::ZERO, Some(rss));
        print(&format!("chat into {room}"), n, &mut rep);
        print_rss(&samples);
        rep.requests as f64 / rep.elapsed.as_secs_f64()
    };
    let empty = chat("The Tower");
    // One game link reports 10,000 players in The Bridge, then stays connected.
    let mut game = std::net::TcpStream::connect(line).expect("connect to the line port");
    let mut lines = String::from(
        "{\"type\":\"hello\",\"world\":\"crowd\",\"kind\":\"generic\",\"protocol\":1}\n",
    );
    for i in 0..10_000 {
        lines.push_str(&format!(
            "{{\"type\":\"presence\",\"event\":\"enter\",\"user_id\":\"p{i}\",\"username\":\"P{i}\",\"room\":\"The Bridge\"}}\n"
        ));
    }
    lines.push_str("{\"type\":\"ping\",\"id\":\"done\"}\n");
    game.write_all(lines.as_bytes()).expect("write presences");
    let mut reader = BufReader::new(game.try_clone().expect("clone"));
    let mut line_in = String::new();
    while reader
        .read_line(&mut line_in)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        if line_in.contains("\"done\"") {
            break;
        }
        line_in.clear();
    }
    let present = http_get(addr, "/bridge/room/The%20Bridge/players")
        .matches("\"user_id\"")
        .count();
    println!("         {present} people present in The Bridge");
    let crowded = chat("The Bridge");
    println!(
        "         chat into 10,000 present = {:.2} x chat into an empty room",
        crowded / empty
    );
    drop(game);
}

/// One GET on a fresh connection: the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Write what is queued, as far as the socket takes it.
fn flush(c: &mut Conn) {
    while c.tx_pos < c.tx.len() {
        match c.sock.write(&c.tx[c.tx_pos..]) {
            Ok(n) => c.tx_pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Queue the connection's next request and start writing it.
fn send(c: &mut Conn, interval: Duration) {
    c.tx.clear();
    c.tx.extend_from_slice(&c.request);
    if let Some(at) = c.marker {
        let n = NEXT_USER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let digits = format!("{:08}", n % 100_000_000);
        c.tx[at..at + NEW_USER.len()].copy_from_slice(digits.as_bytes());
    }
    c.tx_pos = 0;
    c.sent_at = Instant::now();
    c.next_at = c.sent_at + interval;
    c.waiting = true;
    flush(c);
}

fn print(name: &str, conns: usize, rep: &mut Report) {
    rep.lat_us.sort_unstable();
    let rps = rep.requests as f64 / rep.elapsed.as_secs_f64();
    println!(
        "{name:<8} conns={conns:<5} requests={:<9} errors={:<4} req/s={:>9.0}  p50={}us p99={}us p99.9={}us max={}us",
        rep.requests,
        rep.errors,
        rps,
        percentile(&rep.lat_us, 0.50),
        percentile(&rep.lat_us, 0.99),
        percentile(&rep.lat_us, 0.999),
        rep.lat_us.last().copied().unwrap_or(0)
    );
}

/// The server's RSS over the run: at the start, after each fifth of it, and the peak.
fn print_rss(samples: &[u64]) {
    if samples.is_empty() {
        return;
    }
    let at = |f: usize| samples[(samples.len() - 1) * f / 5];
    println!(
        "         server RSS KiB at 0%/20%/40%/60%/80%/100% of the run: {} {} {} {} {} {}  (peak {})",
        at(0),
        at(1),
        at(2),
        at(3),
        at(4),
        at(5),
        samples.iter().max().unwrap_or(&0)
    );
}

fn pace(interval: Duration) -> String {
    if interval.is_zero() {
        String::new()
    } else {
        format!(
            " (one request per {} ms per connection)",
            interval.as_millis()
        )
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Start the release binary on free loopback ports with limits fit for a benchmark;
/// returns its HTTP and line-protocol addresses. `data_dir`: durable, in that directory
/// (else `--memory`).
fn spawn_bridge(data_dir: Option<&std::path::Path>) -> (Child, SocketAddr, SocketAddr) {
    spawn_bridge_with(data_dir, "")
}

/// [`spawn_bridge`] with more config: a `[cluster]` table, say.
fn spawn_bridge_with(
    data_dir: Option<&std::path::Path>,
    more: &str,
) -> (Child, SocketAddr, SocketAddr) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let exe = std::env::current_exe().expect("exe");
    let bin = exe.with_file_name("worldbridge");
    let cfg = std::env::temp_dir().join(format!(
        "worldbridge-bench-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(
        &cfg,
        format!("world = \"bench\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nrate_limit_requests = 1000000000\nmax_connections = 19000\n[line]\nlisten = [\"127.0.0.1:0\"]\n[sessions]\nmax = 100\n[rooms]\noccupants_max = 100000\n[gateway]\nmax_messages_per_s = 1000000\n[websocket]\nmax_connections = 19000\n{more}"),
    )
    .expect("bench config");
    let mut cmd = Command::new(&bin);
    cmd.args(["--config", cfg.to_str().unwrap_or_default()]);
    match data_dir {
        Some(d) => cmd.arg("--data-dir").arg(d),
        None => cmd.arg("--memory"),
    };
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build it: cargo build --release)",
                bin.display()
            )
        });
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let (mut http, mut line_addr) = (None, None);
    while http.is_none() || line_addr.is_none() {
        let line = lines.next().expect("bridge exited").expect("read");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let a: SocketAddr = rest
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("addr");
            if rest.contains("line protocol") {
                line_addr = Some(a);
            } else {
                http = Some(a);
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, http.expect("http"), line_addr.expect("line"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut scenario = "all".to_string();
    let (mut conns, mut secs, mut idle, mut addr) = (None, 10.0, 5000usize, None);
    let (mut depth, mut line_addr) = (8usize, None);
    let mut interval = Duration::ZERO;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--scenario" => scenario = val(),
            "--connections" => conns = Some(val().parse::<usize>().expect("number")),
            "--seconds" => secs = val().parse().expect("number"),
            "--idle" => idle = val().parse().expect("number"),
            "--interval-ms" => interval = Duration::from_millis(val().parse().expect("number")),
            "--addr" => addr = Some(val().parse::<SocketAddr>().expect("address")),
            "--line-addr" => line_addr = Some(val().parse::<SocketAddr>().expect("address")),
            "--depth" => depth = val().parse().expect("number"),
            _ => {
                println!("{USAGE}");
                return;
            }
        }
    }
    let (mut child, addr, line_addr) = match addr {
        Some(a) => (None, a, line_addr),
        None => {
            let (c, a, l) = spawn_bridge(None);
            (Some(c), a, Some(l))
        }
    };
    let pid = child.as_ref().map(Child::id);
    let rss = move || pid.map_or(0, rss_kib);
    println!("bridge at {addr}; RSS at start {} KiB", rss());
    let run = |name: &str| scenario == name || scenario == "all";
    if run("health") {
        let n = conns.unwrap_or(64);
        let reqs = vec![request("GET", "/bridge/health", ""); n];
        let (mut rep, samples) = drive(
            addr,
            reqs,
            secs,
            interval,
            pid.map(|_| &rss as &dyn Fn() -> u64),
        );
        print(&format!("health{}", pace(interval)), n, &mut rep);
        print_rss(&samples);
    }
    if run("chat") {
        let n = conns.unwrap_or(50);
        let reqs = (0..n)
            .map(|i| request("POST", "/bridge/chat", &format!(r#"{{"user_id":"bench{i}","username":"Bench {i}","message":"hello, what do you see?","room":"The Threshold"}}"#)))
            .collect();
        let (mut rep, samples) = drive(
            addr,
            reqs,
            secs,
            interval,
            pid.map(|_| &rss as &dyn Fn() -> u64),
        );
        print(&format!("chat{}", pace(interval)), n, &mut rep);
        print_rss(&samples);
    }
    if scenario == "newusers" {
        new_users(addr, conns.unwrap_or(64), secs, &rss);
    }
    if scenario == "crowd" {
        let line = line_addr.expect("crowd needs the bridge's line listener (--line-addr)");
        crowd(addr, line, conns.unwrap_or(50), secs, &rss);
    }
    if scenario == "cluster" {
        if let Some(c) = &mut child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let every = if interval.is_zero() {
            Duration::from_millis(10)
        } else {
            interval
        };
        cluster::bench(conns.unwrap_or(2000), secs, every);
        return;
    }
    if scenario == "fanout" {
        let n = conns.unwrap_or(5000);
        let every = if interval.is_zero() {
            Duration::from_millis(10)
        } else {
            interval
        };
        fanout(addr, n, secs, every, &rss);
    }
    if run("say") {
        let n = conns.unwrap_or(64);
        let dir =
            std::env::temp_dir().join(format!("worldbridge-bench-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // With --addr, drive that bridge (start it with --data-dir to measure durability).
        let (mut durable, at) = match child {
            Some(_) => {
                let (c, a, _) = spawn_bridge(Some(&dir));
                (Some(c), a)
            }
            None => (None, addr),
        };
        let reqs = (0..n)
            .map(|i| request("POST", "/bridge/say", &format!(r#"{{"user_id":"bench{i}","username":"Bench {i}","message":"a durable hello","room":"The Garden"}}"#)))
            .collect();
        let (mut rep, _) = drive(at, reqs, secs, interval, None);
        print(&format!("say durable{}", pace(interval)), n, &mut rep);
        let stats = {
            let mut s = std::net::TcpStream::connect(at).expect("connect");
            s.write_all(&request("GET", "/bridge/stats", ""))
                .expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        if let Some(store) = stats.split("\"store\":").nth(1) {
            println!("         store: {}", store.trim_end_matches(['}', '\n']));
        }
        if let Some(d) = &mut durable {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if run("line") {
        let n = conns.unwrap_or(100);
        let at = line_addr.expect("--line-addr is needed with --addr");
        let before = rss();
        let mut rep = drive_line(at, n, depth, secs);
        print(&format!("line (depth {depth})"), n, &mut rep);
        println!("         server RSS KiB before={before} after={}", rss());
    }
    if run("idle") && pid.is_some() {
        std::thread::sleep(Duration::from_millis(500));
        let before = rss();
        let mut socks = Vec::with_capacity(idle);
        let mut buf = [0u8; 4096];
        for _ in 0..idle {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(&request("GET", "/bridge/health", ""))
                .expect("write");
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
            socks.push(s);
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = rss();
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / idle as f64;
        println!("idle     conns={idle:<5} server RSS before={before} KiB after={after} KiB  => {per:.0} bytes per idle keep-alive connection");
        drop(socks);
    }
    if let Some(c) = &mut child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------------------
// fanout: the gateway's broadcast path
// ---------------------------------------------------------------------------

/// A raw WebSocket client: handshake by hand, frames parsed just enough to count them.
struct WsClient {
    sock: TcpStream,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_pos: usize,
    open: bool,
    registered: bool,
    ticks: u64,
    /// Reads that brought at least one tick (ticks per such read: how many broadcasts
    /// the bridge put into one write).
    tick_reads: u64,
}

/// A masked client frame (RFC 6455 §5.3); a fixed key is fine for a load generator.
fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let key = [0x11u8, 0x22, 0x33, 0x44];
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// One server frame at the front of `buf`: (opcode, payload range, total length).
fn server_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (mut at, len7) = (2usize, (buf[1] & 0x7f) as usize);
    let len = match len7 {
        126 => {
            at = 4;
            u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize
        }
        127 => {
            at = 10;
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n,
    };
    (buf.len() >= at + len).then_some((buf[0] & 0x0f, at..at + len, at + len))
}

fn ws_flush(c: &mut WsClient) {
    while c.tx_pos < c.tx.len() {
        match c.sock.write(&c.tx[c.tx_pos..]) {
            Ok(n) => c.tx_pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("write: {e}"),
        }
    }
    c.tx.clear();
    c.tx_pos = 0;
}

/// Read what is there; count `tick` frames and their latency (the sender's send time
/// travels in the frame as `"t":<µs since start>`); answer pings.
fn ws_read(c: &mut WsClient, buf: &mut [u8], start: Instant, lat_us: &mut Vec<u64>) -> bool {
    loop {
        match c.sock.read(buf) {
            Ok(0) => return false,
            // A short read drained the socket; later data brings a new edge.
            Ok(n) if n < buf.len() => {
                c.rx.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(n) => c.rx.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    if !c.open {
        let Some(end) = c.rx.windows(4).position(|w| w == b"\r\n\r\n") else {
            return true;
        };
        assert!(c.rx.starts_with(b"HTTP/1.1 101"), "handshake refused");
        c.rx.drain(..end + 4);
        c.open = true;
    }
    let mut used = 0;
    let ticks_before = c.ticks;
    while let Some((op, payload, total)) = server_frame(&c.rx[used..]) {
        let p = &c.rx[used + payload.start..used + payload.end];
        match op {
            0x1 => {
                if !c.registered && p.windows(16).any(|w| w == b"agent_registered") {
                    c.registered = true;
                }
                if let Some(at) = p.windows(4).position(|w| w == b"\"t\":") {
                    let digits: String = p[at + 4..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .map(|&b| b as char)
                        .collect();
                    if let Ok(t) = digits.parse::<u64>() {
                        let now = start.elapsed().as_micros() as u64;
                        lat_us.push(now.saturating_sub(t));
                        c.ticks += 1;
                    }
                }
            }
            0x9 => {
                let mut pong = Vec::new();
                client_frame(0xA, p, &mut pong);
                c.tx.extend_from_slice(&pong);
            }
            0x8 => {
                let code = p.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                eprintln!(
                    "a client was closed: {code} {}",
                    String::from_utf8_lossy(p.get(2..).unwrap_or_default())
                );
                return false;
            }
            _ => {}
        }
        used += total;
    }
    c.rx.drain(..used);
    c.tick_reads += u64::from(c.ticks > ticks_before);
    ws_flush(c);
    true
}

fn register(agent: &str, out: &mut Vec<u8>) {
    let reg = format!(r#"{{"type":"agent_register","agentId":"{agent}","role":"watcher"}}"#);
    client_frame(0x1, reg.as_bytes(), out);
}

fn ws_connect(addr: SocketAddr, poll: &Poll, token: usize, agent: &str) -> WsClient {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).ok();
    poll.registry()
        .register(
            &mut sock,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
        .expect("register");
    let mut tx =
        b"GET /ws/matrix HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    if !agent.is_empty() {
        register(agent, &mut tx);
    }
    WsClient {
        sock,
        rx: Vec::new(),
        tx,
        tx_pos: 0,
        open: false,
        registered: false,
        ticks: 0,
        tick_reads: 0,
    }
}

/// The load generator's side of the fan-out: every client on one poll, and the latencies
/// of the ticks read so far.
struct Fleet {
    poll: Poll,
    events: Events,
    buf: Vec<u8>,
    clients: Vec<WsClient>,
    lat_us: Vec<u64>,
    start: Instant,
}

impl Fleet {
    fn new(capacity: usize) -> Fleet {
        Fleet {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(4096),
            buf: vec![0u8; 256 * 1024],
            clients: Vec::with_capacity(capacity),
            lat_us: Vec::new(),
            start: Instant::now(),
        }
    }

    /// Wait up to `wait` for readiness, then write and read every ready client.
    fn pump(&mut self, wait: Duration) {
        self.poll.poll(&mut self.events, Some(wait)).expect("poll");
        for ev in self.events.iter() {
            let c = &mut self.clients[ev.token().0];
            ws_flush(c);
            assert!(
                ws_read(c, &mut self.buf, self.start, &mut self.lat_us),
                "a client was closed"
            );
        }
    }
}

fn fanout(addr: SocketAddr, n: usize, secs: f64, every: Duration, rss: &dyn Fn() -> u64) {
    fanout_over(&[addr], n, secs, every, rss);
}

/// What one fan-out run measured, per node the clients were on.
struct FanoutFigures {
    /// Deliveries per second to the clients of each address.
    per_node: Vec<f64>,
    p50_us: u64,
    p99_us: u64,
    delivered: u64,
    expected: u64,
}

/// The gateway fan-out with the `n` clients spread over `addrs` (round robin) and the
/// sender on the first.
fn fanout_over(
    addrs: &[SocketAddr],
    n: usize,
    secs: f64,
    every: Duration,
    rss: &dyn Fn() -> u64,
) -> FanoutFigures {
    let addr = addrs[0];
    let mut fleet = Fleet::new(n + 1);
    let start = fleet.start;
    let rss_before = rss();
    // Connect in batches while reading: the joined storm (each arrival is told to
    // everyone already there) must be read as it comes, or the early clients would be
    // closed as slow consumers.
    // First every connection upgrades, unregistered: the memory of a WebSocket
    // connection itself.
    for i in 0..n {
        let at = addrs[i % addrs.len()];
        fleet.clients.push(ws_connect(at, &fleet.poll, i, ""));
        ws_flush(fleet.clients.last_mut().unwrap());
        if i % 100 == 99 {
            fleet.pump(Duration::ZERO);
        }
    }
    while fleet.clients.iter().any(|c| !c.open) {
        fleet.pump(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_open = rss();
    println!(
        "fanout   {n} WebSocket connections open: server RSS {rss_before} -> {rss_open} KiB ({:.0} bytes per connection)",
        (rss_open.saturating_sub(rss_before)) as f64 * 1024.0 / n as f64
    );
    // Then they register, in batches of 50, each registered before the next: the load
    // generator is one thread reading for all of them, and every arrival is told to
    // everyone already there (n²/2 agent_joined frames).
    for i in 0..n {
        let c = &mut fleet.clients[i];
        register(&format!("fan{i}"), &mut c.tx);
        ws_flush(c);
        if i % 50 == 49 || i + 1 == n {
            while fleet.clients[..=i]
                .iter()
                .rev()
                .take(50)
                .any(|c| !c.registered)
            {
                fleet.pump(Duration::from_millis(5));
            }
        }
    }
    let sender = n;
    fleet
        .clients
        .push(ws_connect(addr, &fleet.poll, sender, "sender"));
    ws_flush(fleet.clients.last_mut().unwrap());
    while fleet.clients.iter().any(|c| !c.registered) {
        fleet.pump(Duration::from_millis(50));
    }
    // Let the joined storm drain.
    let quiet = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet {
        fleet.pump(Duration::from_millis(50));
    }
    let connected = start.elapsed();
    let rss_after = rss();
    fleet.lat_us.clear();
    println!(
        "fanout   {n} clients registered ({} agent_joined frames) after {:.1} s; server RSS {rss_after} KiB \
         (the high-water mark of the joined storm: queues behind a busy reader)",
        n * (n - 1) / 2,
        connected.as_secs_f64(),
    );
    for c in fleet.clients.iter_mut() {
        c.ticks = 0;
        c.tick_reads = 0;
    }
    let run_start = Instant::now();
    let end = run_start + Duration::from_secs_f64(secs);
    let mut next_send = run_start;
    let mut sent = 0u64;
    while Instant::now() < end {
        // Every tick that is due goes now (a late turn catches up: the offered rate
        // stays exact).
        while Instant::now() >= next_send && next_send < end {
            let t = start.elapsed().as_micros() as u64;
            let msg = format!(r#"{{"type":"tick","n":{sent},"t":{t}}}"#);
            let mut frame = Vec::new();
            client_frame(0x1, msg.as_bytes(), &mut frame);
            let c = &mut fleet.clients[sender];
            c.tx.extend_from_slice(&frame);
            ws_flush(c);
            sent += 1;
            next_send += every;
        }
        let wait = next_send.saturating_duration_since(Instant::now());
        fleet.pump(wait);
    }
    let elapsed = run_start.elapsed().as_secs_f64();
    // Collect what is still in flight.
    let drain = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain {
        fleet.pump(Duration::from_millis(20));
    }
    let delivered: u64 = fleet.clients[..n].iter().map(|c| c.ticks).sum();
    let reads: u64 = fleet.clients[..n].iter().map(|c| c.tick_reads).sum();
    let expected = sent * n as u64;
    fleet.lat_us.sort_unstable();
    println!(
        "fanout   {sent} broadcasts x {n} clients: {delivered}/{expected} delivered, {:.0} deliveries/s; \
         latency p50={}us p95={}us p99={}us max={}us; {:.2} broadcasts per read; server RSS after {} KiB",
        delivered as f64 / elapsed,
        percentile(&fleet.lat_us, 0.50),
        percentile(&fleet.lat_us, 0.95),
        percentile(&fleet.lat_us, 0.99),
        fleet.lat_us.last().copied().unwrap_or(0),
        delivered as f64 / reads.max(1) as f64,
        rss()
    );
    let per_node = (0..addrs.len())
        .map(|k| {
            let mine: u64 = (fleet.clients[..n].iter().enumerate())
                .filter(|(i, _)| i % addrs.len() == k)
                .map(|(_, c)| c.ticks)
                .sum();
            mine as f64 / elapsed
        })
        .collect();
    FanoutFigures {
        per_node,
        p50_us: percentile(&fleet.lat_us, 0.50),
        p99_us: percentile(&fleet.lat_us, 0.99),
        delivered,
        expected,
    }
}
