//! The federation benchmark (issue 6): two release bridges on loopback, both holding
//! 100,000 stored federated events of world `a`; world `b` reaches `a` through a
//! byte-counting TCP proxy. Measured: the bytes on the wire of one sync round (pull and
//! push) with nothing new and with 10 new events, and how long an event raised in `a`
//! takes to be visible in `b` (sync interval 1 s).
//!
//! ```text
//! cargo build --release
//! ./target/release/worldbridge-fedbench [--events 100000] [--new 10] [--samples 10]
//! ```

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn bridge_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name("worldbridge")
}

/// A data directory holding `n` federated events of world `a`, for world `world`.
fn seed(dir: &Path, world: &str, n: u64) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    let events: Vec<Value> = (1..=n)
        .map(|seq| {
            json!({"origin": "a", "seq": seq, "kind": "say", "room": "The Bridge",
                   "user_id": "alice", "username": "Alice",
                   "message": format!("stored event {seq}"),
                   "timestamp": "2026-12-01T18:00:00.000Z"})
        })
        .collect();
    let doc = json!({"format": "worldbridge-export", "version": 1, "bridge_version": "0.1.0",
                     "world": world, "seq": 0, "rooms": [], "presence": [], "events": [],
                     "sessions": [], "fed_events": events, "fed_trust": []});
    let file = dir.with_extension("json");
    std::fs::write(&file, doc.to_string()).map_err(|e| e.to_string())?;
    let st = Command::new(bridge_bin())
        .arg("import")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    st.success()
        .then_some(())
        .ok_or_else(|| "import failed".to_string())
}

fn serve(world: &str, port: u16, dir: &Path, peer: &str, peer_port: u16) -> Result<Child, String> {
    let toml = format!(
        "world = \"{world}\"\n[http]\nlisten = [\"127.0.0.1:{port}\"]\nrate_limit_requests = 1000000\n[line]\nlisten = []\n[federation]\nsync_interval_s = 1\nportal_rooms = [\"The Bridge\"]\n[[federation.peers]]\nworld = \"{peer}\"\nurl = \"http://127.0.0.1:{peer_port}\"\ntoken = \"bench\"\n"
    );
    let cfg = dir.with_extension("toml");
    std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
    let mut child = Command::new(bridge_bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let err = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(err).lines();
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// A proxy from `listen` to `to`, adding up the bytes each way.
fn proxy(listen: u16, to: u16, up: Arc<AtomicU64>, down: Arc<AtomicU64>) -> Result<(), String> {
    let l = TcpListener::bind(("127.0.0.1", listen)).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            for (mut from, mut into, count) in [
                (client.try_clone(), server.try_clone(), up.clone()),
                (server.try_clone(), client.try_clone(), down.clone()),
            ]
            .into_iter()
            .filter_map(|(a, b, c)| Some((a.ok()?, b.ok()?, c)))
            {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    Ok(())
}

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn main() -> Result<(), String> {
    let n = arg("--events", 100_000);
    let new = arg("--new", 10);
    let samples = arg("--samples", 10);
    let base = std::env::temp_dir().join(format!("wb-fedbench-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let (da, db) = (base.join("a"), base.join("b"));
    let t = Instant::now();
    seed(&da, "a", n)?;
    seed(&db, "b", n)?;
    println!(
        "seeded both worlds with {n} events of a in {:?}",
        t.elapsed()
    );
    let (pa, pb, px) = (free_port(), free_port(), free_port());
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    proxy(px, pa, up.clone(), down.clone())?;
    let mut a = serve("a", pa, &da, "b", pb)?;
    let mut b = serve("b", pb, &db, "a", px)?;
    let a_addr: SocketAddr = ([127, 0, 0, 1], pa).into();
    let b_addr: SocketAddr = ([127, 0, 0, 1], pb).into();
    // Let the first rounds (snapshots) pass, then measure idle rounds.
    std::thread::sleep(Duration::from_secs(4));
    let round = |up: &AtomicU64, down: &AtomicU64| {
        let (u0, d0) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_secs(3));
        let (u1, d1) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        ((u1 - u0) / 3, (d1 - d0) / 3)
    };
    let (iu, id) = round(&up, &down);
    println!("idle round, b <-> a: {iu} bytes b->a (pull request + push), {id} bytes a->b (pull answer + push answer)");
    let (u0, d0) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    for i in 0..new {
        let body = json!({"user_id": "alice", "username": "Alice", "room": "The Bridge",
                          "message": format!("new event {i}")})
        .to_string();
        http(a_addr, "POST", "/bridge/say", Some(&body));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = http(b_addr, "GET", "/bridge/room/The%20Bridge/events", None);
        if got.contains(&format!("new event {}", new - 1)) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (u1, d1) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    println!(
        "the round(s) that moved {new} new events: {} bytes b->a, {} bytes a->b (idle rounds included: ~{} s)",
        u1 - u0,
        d1 - d0,
        2
    );
    let mut delays = Vec::new();
    for i in 0..samples {
        let msg = format!("latency probe {i}");
        let body = json!({"user_id": "alice", "username": "Alice", "room": "The Bridge",
                          "message": msg})
        .to_string();
        let t0 = Instant::now();
        http(a_addr, "POST", "/bridge/say", Some(&body));
        loop {
            let got = http(b_addr, "GET", "/bridge/room/The%20Bridge/events", None);
            if got.contains(&msg) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        delays.push(t0.elapsed().as_millis() as u64);
        std::thread::sleep(Duration::from_millis(137 * (i % 7 + 1)));
    }
    delays.sort_unstable();
    println!(
        "a -> b visibility, sync interval 1 s, {samples} samples: min {} ms, median {} ms, max {} ms",
        delays.first().copied().unwrap_or(0),
        delays.get(delays.len() / 2).copied().unwrap_or(0),
        delays.last().copied().unwrap_or(0)
    );
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
