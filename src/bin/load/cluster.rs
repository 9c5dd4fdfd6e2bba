//! `--scenario cluster`: cluster mode against the single process, in one run.
//!
//! It starts a `redis-server` of its own (on a free loopback port, data in a temporary
//! directory), a single-process bridge and two cluster nodes of one world, then measures:
//! how long a say posted on one bridge takes to reach a WebSocket client (single: the same
//! bridge; cluster: node A's say at node B's client), the gateway fan-out with the clients
//! on one bridge against the same clients split over two nodes, and `POST /bridge/say`
//! throughput on node A with Redis fsyncing every write against once a second. Beside the
//! hop it measures the same Redis without a bridge (an `XADD` until a blocked `XREAD` has
//! it), the part of the hop no bridge can take out.

use super::{drive, fanout_over, percentile, print, request, rss_kib, spawn_bridge_with};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` for the run, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(fsync: &str) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("worldbridge-bench-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.display().to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", fsync])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port, dir }
    }

    fn node(&self, name: &str) -> (Child, SocketAddr) {
        let more = format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{}\"\nnode_id = \"{name}\"\n",
            self.port
        );
        let (child, http, _) = spawn_bridge_with(None, &more);
        wait_up(http);
        (child, http)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Until the node says Redis answers.
fn wait_up(http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(http, "/bridge/health").contains("\"redis\":\"up\"") {
        assert!(Instant::now() < deadline, "the node did not reach Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `count` says posted on `http`, one per `every`, each timed until a gateway client on
/// `ws_at` reads its frame; the latencies in µs.
fn say_visibility(http: SocketAddr, ws_at: SocketAddr, count: usize, every: Duration) -> Vec<u64> {
    let (mut ws, _) = tungstenite::connect(format!("ws://{ws_at}/ws/matrix")).expect("ws");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    }
    let reg = r#"{"type":"agent_register","agentId":"watcher","role":"watcher"}"#;
    ws.send(tungstenite::Message::text(reg)).expect("register");
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut seen: Vec<Option<Duration>> = vec![None; count];
        let mut got = 0;
        while got < count {
            let Ok(msg) = ws.read() else { break };
            let tungstenite::Message::Text(t) = msg else {
                continue;
            };
            let t = t.as_str();
            // `"message":"lat <n>"`: the say's number.
            let Some(n) = t
                .split("\"message\":\"lat ")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            if n < count && seen[n].is_none() {
                seen[n] = Some(start.elapsed());
                got += 1;
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut c = TcpStream::connect(http).expect("connect");
    c.set_nodelay(true).ok();
    let mut sent = Vec::with_capacity(count);
    let mut buf = [0u8; 8192];
    let mut next = Instant::now();
    for n in 0..count {
        let body = format!(
            r#"{{"user_id":"lat","username":"Lat","room":"The Garden","message":"lat {n}"}}"#
        );
        sent.push(start.elapsed());
        c.write_all(&request("POST", "/bridge/say", &body))
            .expect("write");
        let mut head = Vec::new();
        // The answer (keep-alive): read until its body is in.
        loop {
            let k = c.read(&mut buf).expect("read");
            assert!(k > 0, "the bridge closed the connection");
            head.extend_from_slice(&buf[..k]);
            if super::response_len(&head).is_some_and(|(len, _)| head.len() >= len) {
                break;
            }
        }
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let seen = reader.join().expect("reader");
    let mut lat: Vec<u64> = (sent.iter().zip(seen))
        .filter_map(|(s, r)| r.map(|r| r.saturating_sub(*s).as_micros() as u64))
        .collect();
    lat.sort_unstable();
    lat
}

/// The same Redis without a bridge: `count` entries added to a stream of their own, one per
/// `every`, each timed from the `XADD` until a second connection blocked in `XREAD` has it
/// (two plain threads, the redis crate as the nodes use it); the latencies in µs. This is
/// the floor under the hop: Redis, its file and the machine's wake-ups, nothing of ours.
fn redis_alone(port: u16, count: usize, every: Duration) -> Vec<u64> {
    let url = format!("redis://127.0.0.1:{port}/");
    let open = || {
        let con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection to the bench redis-server");
        con.set_read_timeout(Some(Duration::from_secs(5))).ok();
        con
    };
    let (mut reader, mut writer) = (open(), open());
    let key = "bench:alone";
    let start = Instant::now();
    let follow = std::thread::spawn(move || {
        let mut seen = Vec::with_capacity(count);
        let mut last = "0-0".to_string();
        while seen.len() < count {
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(5000)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(&last)
                    .query(&mut reader);
            let Ok(Some(reply)) = reply else { break };
            let at = start.elapsed();
            for id in reply.keys.into_iter().flat_map(|k| k.ids) {
                seen.push(at);
                last = id.id;
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    // A body of a say's size.
    let body = "x".repeat(200);
    let mut sent = Vec::with_capacity(count);
    let mut next = Instant::now();
    for n in 1..=count {
        sent.push(start.elapsed());
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg(format!("{n}-0"))
            .arg("e")
            .arg(&body)
            .query(&mut writer)
            .expect("XADD");
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let seen = follow.join().expect("the XREAD thread");
    let mut lat: Vec<u64> = (sent.iter().zip(seen))
        .map(|(s, r)| r.saturating_sub(*s).as_micros() as u64)
        .collect();
    lat.sort_unstable();
    lat
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// A `redis-server` with the given fsync policy, a single-process bridge and two cluster
/// nodes of one world on it (each a process and its HTTP address), killed when dropped.
struct Trio {
    single: (Child, SocketAddr),
    a: (Child, SocketAddr),
    b: (Child, SocketAddr),
    // Last: dropped after the bridges that use it.
    redis: Redis,
}

impl Trio {
    fn start(fsync: &str) -> Trio {
        let redis = Redis::start(fsync);
        let (single, s_http, _) = spawn_bridge_with(None, "");
        Trio {
            single: (single, s_http),
            a: redis.node("a"),
            b: redis.node("b"),
            redis,
        }
    }
}

impl Drop for Trio {
    fn drop(&mut self) {
        for c in [&mut self.single.0, &mut self.a.0, &mut self.b.0] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn bench(n: usize, secs: f64, every: Duration) {
    let count = ((secs * 1000.0) / every.as_millis().max(1) as f64) as usize;
    let show = |lat: &[u64]| {
        format!(
            "p50={}us p99={}us max={}us ({} of {count} seen)",
            percentile(lat, 0.50),
            percentile(lat, 0.99),
            lat.last().copied().unwrap_or(0),
            lat.len()
        )
    };
    // The hop, once with Redis fsyncing every append before it answers (and so before a
    // blocked reader is woken) and once with the fsync a second later: the difference is
    // the disk's, not the hop's.
    for fsync in ["always", "everysec"] {
        let t = Trio::start(fsync);
        let (s_http, a_http, b_http) = (t.single.1, t.a.1, t.b.1);
        println!("cluster  redis-server on port {} (appendonly, fsync {fsync}); single process at {s_http}; nodes a={a_http} b={b_http}", t.redis.port);
        let one = say_visibility(s_http, s_http, count, every);
        let two = say_visibility(a_http, b_http, count, every);
        println!("cluster  say -> WebSocket, single process: {}", show(&one));
        println!(
            "cluster  say on A -> WebSocket on B, fsync {fsync}: {}",
            show(&two)
        );
        println!(
            "cluster  the Redis hop (fsync {fsync}) adds p50 {}us, p99 {}us",
            percentile(&two, 0.50) as i64 - percentile(&one, 0.50) as i64,
            percentile(&two, 0.99) as i64 - percentile(&one, 0.99) as i64
        );
        let alone = redis_alone(t.redis.port, count, every);
        println!(
            "cluster  the same Redis alone (fsync {fsync}), XADD -> a blocked XREAD on another connection: {}",
            show(&alone)
        );
    }

    let t = Trio::start("always");
    let (s_http, a_http, b_http) = (t.single.1, t.a.1, t.b.1);
    let half = n / 2;
    let s_pid = t.single.0.id();
    let solo = fanout_over(&[s_http], half, secs, every, &|| rss_kib(s_pid));
    let (a_pid, b_pid) = (t.a.0.id(), t.b.0.id());
    let both = fanout_over(&[a_http, b_http], half * 2, secs, every, &|| {
        rss_kib(a_pid) + rss_kib(b_pid)
    });
    let base = solo.per_node[0];
    for (name, rate) in ["a", "b"].iter().zip(&both.per_node) {
        println!(
            "cluster  fan-out node {name}: {rate:.0} deliveries/s to its {half} clients = {:.2} x the single process's {base:.0}/s to {half} clients",
            rate / base.max(1.0)
        );
    }
    println!(
        "cluster  fan-out latency: single p50={}us p99={}us ({}/{} delivered); cluster p50={}us p99={}us ({}/{} delivered)",
        solo.p50_us, solo.p99_us, solo.delivered, solo.expected,
        both.p50_us, both.p99_us, both.delivered, both.expected
    );
    drop(t);

    // Acknowledged means durable in Redis: say throughput by Redis's fsync policy.
    for fsync in ["always", "everysec"] {
        let redis = Redis::start(fsync);
        let (a, a_http) = redis.node("a");
        let reqs = (0..64)
            .map(|i| request("POST", "/bridge/say", &format!(r#"{{"user_id":"bench{i}","username":"Bench {i}","message":"a durable hello","room":"The Garden"}}"#)))
            .collect();
        let (mut rep, _) = drive(a_http, reqs, secs, Duration::ZERO, None);
        print(&format!("say fsync {fsync}"), 64, &mut rep);
        kill(a);
    }
}
