//! Cluster mode against a real `redis-server` (Debian's package; `.ci/run` installs it):
//! two bridges with the same `world` and `redis_url` serve one world. Each test starts its
//! own Redis on a free loopback port with its data in a temp directory.

mod common;

use common::ws::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use worldbridge::config::{ClusterConfig, Config};

/// A `redis-server` of this test: killed when dropped.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// More of `redis-server`'s options, at every start.
    more: Vec<String>,
}

impl Redis {
    /// A new server with an empty data directory (AOF on, fsync at every write).
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with more options (`--requirepass`, say).
    fn start_with(more: &[&str]) -> Redis {
        let dir = scratch_dir("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            more: more.iter().map(|s| s.to_string()).collect(),
        };
        r.restart();
        r
    }

    /// Start the server again on the same port and data directory.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.display().to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(&self.more)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        eventually(Duration::from_secs(10), "redis-server answers PING", || {
            self.ping()
        });
    }

    /// Kill the server (its data stays in the directory).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the server and throw its data away: the next start is an empty Redis.
    fn wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        // A server with a password answers before AUTH too: that it needs one.
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node of world `w` on this Redis.
fn node_config(redis: &Redis, node: &str) -> Config {
    let mut cfg = test_config();
    cfg.world = "w".into();
    cfg.rooms.events_max = 1000;
    cfg.cluster = Some(ClusterConfig {
        redis_url: redis.url(),
        node_id: node.into(),
        node_ttl_s: 2,
        presence_ttl_s: 4,
        ..ClusterConfig::default()
    });
    cfg
}

fn node(redis: &Redis, name: &str) -> TestBridge {
    start_node(node_config(redis, name))
}

/// Start a node with this config, once it reaches Redis.
fn start_node(cfg: Config) -> TestBridge {
    let b = start_with(cfg);
    reaches_redis(b.http);
    b
}

/// Wait until the node at `http` says Redis answers.
fn reaches_redis(http: SocketAddr) {
    eventually(Duration::from_secs(10), "the node reaches Redis", || {
        get(http, "/bridge/health")["cluster"]["redis"] == "up"
    });
}

fn say(addr: SocketAddr, user: &str, room: &str, message: &str) -> common::Resp {
    post(
        addr,
        "/bridge/say",
        &json!({"user_id": user, "username": user, "room": room, "message": message}),
    )
}

fn events(addr: SocketAddr, room: &str) -> Vec<Value> {
    let path = format!("/bridge/room/{}/events", room.replace(' ', "%20"));
    let v = get(addr, &path);
    v["events"].as_array().cloned().unwrap_or_default()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["seq"].as_u64()).collect()
}

#[test]
#[ignore = "needs redis-server"]
fn a_say_on_one_node_is_seen_on_the_other_with_the_same_seq() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let r = say(a.http, "una", "The Threshold", "hello from a");
    assert_eq!(r.status, 200, "{}", r.text());
    let said = r.json();
    let seq = said["event"]["seq"].as_u64().unwrap();
    assert!(
        seq < 1 << 52,
        "the answer shows the log's number, not a provisional one"
    );
    // Read your own write: on A at once.
    let on_a = events(a.http, "The Threshold");
    assert_eq!(on_a.last().unwrap()["seq"], seq);
    assert_eq!(on_a.last().unwrap()["message"], "hello from a");
    // B has it too, with the same number, and Una is present there.
    eventually(Duration::from_secs(5), "B shows the say", || {
        events(b.http, "The Threshold")
            .iter()
            .any(|e| e["seq"] == seq && e["message"] == "hello from a")
    });
    let players = get(b.http, "/bridge/room/The%20Threshold/players");
    assert!(players.to_string().contains("una"), "{players}");
    // `?after=` gives the same answer on both nodes.
    let path = format!("/bridge/room/The%20Threshold/events?after={}", seq - 1);
    assert_eq!(get(a.http, &path), get(b.http, &path));
    let health = get(b.http, "/bridge/health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["cluster"]["node_id"], "b");
    assert_eq!(health["cluster"]["seq"], seq);
    eventually(Duration::from_secs(3), "health lists both nodes", || {
        get(b.http, "/bridge/health")["cluster"]["nodes"] == json!(["a", "b"])
    });
    let metrics = call(b.http, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("worldbridge_cluster_log_seq{node=\"b\"}"),
        "{metrics}"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn says_on_both_nodes_at_once_get_one_order_everywhere() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let (ha, hb) = (a.http, b.http);
    let speak = |addr: SocketAddr, who: &'static str| {
        std::thread::spawn(move || {
            for i in 0..40 {
                let r = say(addr, who, "The Garden", &format!("{who} {i}"));
                assert_eq!(r.status, 200, "{}", r.text());
            }
        })
    };
    let (ta, tb) = (speak(ha, "ann"), speak(hb, "bob"));
    ta.join().unwrap();
    tb.join().unwrap();
    let count = |addr| {
        events(addr, "The Garden")
            .iter()
            .filter(|e| e["type"] == "say")
            .count()
    };
    eventually(
        Duration::from_secs(5),
        "both nodes have all 80 says",
        || count(ha) == 80 && count(hb) == 80,
    );
    let (ea, eb) = (events(ha, "The Garden"), events(hb, "The Garden"));
    assert_eq!(ea, eb, "the same events, the same numbers, the same order");
    let s = seqs(&ea);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    // Each speaker's says keep their own order.
    for who in ["ann", "bob"] {
        let mine: Vec<String> = (ea.iter())
            .filter(|e| e["type"] == "say" && e["user_id"] == who)
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..40).map(|i| format!("{who} {i}")).collect();
        assert_eq!(mine, want);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn with_redis_down_changes_get_503_reads_work_and_nothing_is_lost_after() {
    let mut redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    assert_eq!(say(a.http, "una", "The Tower", "before").status, 200);
    redis.kill();
    let down_at = Instant::now();
    // Within about a second every change is refused with 503, and health says why.
    eventually(Duration::from_secs(3), "a say is refused", || {
        let r = say(a.http, "una", "The Tower", "during");
        if r.status == 200 {
            panic!("a change was acknowledged with Redis down: {}", r.text());
        }
        r.status == 503 && r.json()["code"] == "store_unavailable"
    });
    assert!(down_at.elapsed() < Duration::from_secs(3));
    let health = get(a.http, "/bridge/health");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["cluster"]["redis"], "down");
    assert!(
        health["reason"].as_str().unwrap().contains("Redis"),
        "{health}"
    );
    assert!(health["cluster"]["since"].is_string());
    // Reads still serve what the node has.
    assert_eq!(events(b.http, "The Tower").len(), 2, "enter and the say");
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let back = Instant::now();
    eventually(Duration::from_secs(3), "health is ok again", || {
        get(a.http, "/bridge/health")["status"] == "ok"
            && get(b.http, "/bridge/health")["status"] == "ok"
    });
    assert!(back.elapsed() < Duration::from_secs(3));
    let r = say(b.http, "vic", "The Tower", "after");
    assert_eq!(r.status, 200, "{}", r.text());
    for addr in [a.http, b.http] {
        eventually(
            Duration::from_secs(5),
            "both nodes have the new say",
            || {
                events(addr, "The Tower")
                    .iter()
                    .any(|e| e["message"] == "after")
            },
        );
        let evs = events(addr, "The Tower");
        let said: Vec<&str> = (evs.iter()).filter_map(|e| e["message"].as_str()).collect();
        assert_eq!(said, ["before", "after"], "nothing refused was written");
        let s = seqs(&evs);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "no number twice: {s:?}");
    }
}

#[test]
#[ignore = "needs redis-server"]
fn redis_restarted_empty_starts_a_new_epoch() {
    let mut redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    assert_eq!(say(a.http, "una", "The Threshold", "old").status, 200);
    eventually(Duration::from_secs(5), "B has the old say", || {
        events(b.http, "The Threshold").len() == 2
    });
    let old_epoch = get(b.http, "/bridge/health")["cluster"]["epoch"].clone();
    assert!(old_epoch.is_string(), "{old_epoch}");
    redis.wipe();
    redis.restart();
    // The nodes see the log is gone and forget its events.
    eventually(Duration::from_secs(5), "B forgets the lost log", || {
        events(b.http, "The Threshold").is_empty()
    });
    eventually(Duration::from_secs(5), "A can write again", || {
        say(a.http, "una", "The Threshold", "new").status == 200
    });
    eventually(Duration::from_secs(5), "B has the new say", || {
        events(b.http, "The Threshold")
            .iter()
            .any(|e| e["message"] == "new")
    });
    let evs = events(b.http, "The Threshold");
    assert_eq!(seqs(&evs)[0], 1, "numbers start again: {evs:?}");
    let epoch = get(b.http, "/bridge/health")["cluster"]["epoch"].clone();
    assert!(
        epoch.is_string() && epoch != old_epoch,
        "{old_epoch} → {epoch}"
    );
    assert_eq!(events(a.http, "The Threshold"), evs);
}

#[test]
fn a_node_that_cannot_reach_redis_refuses_changes_and_says_why() {
    // Nothing listens on this port: no Redis needed for this one.
    let mut cfg = test_config();
    cfg.cluster = Some(ClusterConfig {
        redis_url: format!("redis://127.0.0.1:{}", free_port()),
        node_id: "lonely".into(),
        ..ClusterConfig::default()
    });
    let b = start_with(cfg);
    eventually(Duration::from_secs(5), "health says degraded", || {
        get(b.http, "/bridge/health")["status"] == "degraded"
    });
    let health = get(b.http, "/bridge/health");
    assert_eq!(health["cluster"]["redis"], "down", "{health}");
    assert!(
        health["reason"].as_str().unwrap().contains("unreachable"),
        "{health}"
    );
    let r = say(b.http, "una", "The Threshold", "hello");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Reads work.
    assert_eq!(call(b.http, "GET", "/bridge/rooms", None).status, 200);
}

// ---- who may use the world's Redis ----

/// Stop a node process and return its log, which must not hold `secret`.
fn logged_without(
    mut node: Child,
    log: &std::sync::mpsc::Receiver<String>,
    secret: &str,
) -> Vec<String> {
    node.kill().unwrap();
    node.wait().unwrap();
    let logged: Vec<String> = log.try_iter().collect();
    assert!(logged.iter().all(|l| !l.contains(secret)), "{logged:#?}");
    logged
}

#[test]
#[ignore = "needs redis-server"]
fn a_redis_with_a_password_serves_only_nodes_that_give_it_and_no_log_shows_it() {
    let redis = Redis::start_with(&["--requirepass", "s3cret-pw"]);
    let at = |user_info: &str| format!("redis://{user_info}127.0.0.1:{}", redis.port);
    // Each node as a process of its own, with its log.
    let run = |name: &str, url: String| {
        let config = format!(
            "world = \"w\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n[line]\nlisten = []\n\
             [cluster]\nredis_url = \"{url}\"\nnode_id = \"{name}\"\nnode_ttl_s = 2\n\
             presence_ttl_s = 4\n"
        );
        let path = temp_file(&format!("auth-{name}-{}.toml", redis.port), &config);
        spawn(bin().arg("--config").arg(&path).arg("--memory"))
    };
    let garden = |http| get(http, "/bridge/room/The%20Garden/events").to_string();
    let (a, a_http, a_log) = run("a", at(":s3cret-pw@"));
    reaches_redis(a_http);
    assert_eq!(say(a_http, "una", "The Garden", "with it").status, 200);
    for (name, user_info, why) in [
        ("b", "", "asks for a password"),
        ("c", ":guessed-pw@", "refused this node's password"),
    ] {
        let (n, http, log) = run(name, at(user_info));
        eventually(Duration::from_secs(5), "health says degraded", || {
            get(http, "/bridge/health")["status"] == "degraded"
        });
        let health = get(http, "/bridge/health");
        assert_eq!(health["cluster"]["redis"], "down", "{health}");
        assert!(health["reason"].as_str().unwrap().contains(why), "{health}");
        let r = say(http, "vic", "The Garden", "without it");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["code"], "store_unavailable");
        // Nothing of it reached the world, and node a still serves.
        assert!(!garden(a_http).contains("without it"));
        let nodes = get(a_http, "/bridge/health")["cluster"]["nodes"].clone();
        assert_eq!(nodes, json!(["a"]), "{name} never joined");
        logged_without(n, &log, "guessed-pw");
    }
    assert!(garden(a_http).contains("with it"));
    let logged = logged_without(a, &a_log, "s3cret-pw");
    assert!(
        logged.iter().any(|l| l.contains(":***@127.0.0.1")),
        "the log names the Redis it uses: {logged:#?}"
    );
}

#[test]
#[ignore = "needs redis-server"]
fn an_acl_user_of_one_world_serves_it_and_is_refused_another() {
    // The user docs/cluster.md suggests: this world's keys, the commands a node uses.
    let user = "wb-w on >node-pw ~wb:{w}:* resetchannels -@all +@read +@write +@stream \
                +@scripting +@connection +ping +time -@dangerous";
    // (redis-server takes an option's words as separate arguments.)
    let mut options = vec!["--user", "default", "off", "--user"];
    options.extend(user.split_whitespace());
    let redis = Redis::start_with(&options);
    let with_user = |world: &str, name: &str| {
        let mut cfg = node_config(&redis, name);
        cfg.world = world.into();
        if let Some(c) = &mut cfg.cluster {
            c.redis_url = format!("redis://wb-w:node-pw@127.0.0.1:{}", redis.port);
        }
        start_with(cfg)
    };
    let a = with_user("w", "a");
    reaches_redis(a.http);
    assert_eq!(say(a.http, "una", "The Garden", "hello").status, 200);
    // A chat takes the user's session lease and stores the session: all under the ACL.
    assert_eq!(chat(a.http, "vic", "hello").json()["session_messages"], 2);
    assert_eq!(chat(a.http, "vic", "again").json()["session_messages"], 4);
    let other = with_user("v", "x");
    eventually(Duration::from_secs(5), "health says degraded", || {
        get(other.http, "/bridge/health")["status"] == "degraded"
    });
    let health = get(other.http, "/bridge/health");
    assert!(
        health["reason"].as_str().unwrap().contains("ACL"),
        "{health}"
    );
    assert_eq!(
        say(other.http, "una", "The Garden", "elsewhere").status,
        503
    );
    assert_eq!(get(a.http, "/bridge/health")["status"], "ok");
}

/// A CA, a certificate of Redis's for 127.0.0.1 and a node's client certificate, made
/// with the `openssl` command in `dir` (`ca.crt`, `redis.crt`/`.key`, `node.crt`/`.key`).
fn certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&ca);
    for (name, ext) in [
        (
            "redis",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("node", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={name}");
        let mut req = vec!["req", "-subj", &subject];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &extfile,
            "-out",
            &crt,
        ]);
    }
}

#[test]
#[ignore = "needs redis-server"]
fn over_tls_the_node_checks_redis_and_redis_checks_the_node() {
    let dir = scratch_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let file = |name: &str| dir.join(name).display().to_string();
    let tls_port = free_port();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("redis.crt"),
        "--tls-key-file",
        &file("redis.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
    ]);
    let over_tls = |name: &str, ca: bool, certificate: bool| {
        let mut cfg = node_config(&redis, name);
        if let Some(c) = &mut cfg.cluster {
            c.redis_url = format!("rediss://127.0.0.1:{tls_port}");
            if ca {
                c.tls_ca_file = file("ca.crt");
            }
            if certificate {
                (c.tls_cert_file, c.tls_key_file) = (file("node.crt"), file("node.key"));
            }
        }
        start_with(cfg)
    };
    let a = over_tls("a", true, true);
    reaches_redis(a.http);
    assert_eq!(say(a.http, "una", "The Garden", "over tls").status, 200);
    // A node on the plain port of the same Redis serves the same world.
    let plain = node(&redis, "p");
    eventually(Duration::from_secs(5), "the plain node has the say", || {
        get(plain.http, "/bridge/room/The%20Garden/events")
            .to_string()
            .contains("over tls")
    });
    // Without the CA the node does not trust Redis's certificate; without its own
    // certificate Redis does not let the node in. Neither writes anything.
    for (name, ca, certificate, why) in [
        ("b", false, true, "does not trust Redis's TLS certificate"),
        ("c", true, false, "asks for a client certificate"),
    ] {
        let n = over_tls(name, ca, certificate);
        eventually(Duration::from_secs(5), "health says degraded", || {
            get(n.http, "/bridge/health")["status"] == "degraded"
        });
        let health = get(n.http, "/bridge/health");
        assert_eq!(health["cluster"]["redis"], "down", "{health}");
        let r = say(n.http, "vic", "The Garden", &format!("from {name}"));
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(health["reason"].as_str().unwrap().contains(why), "{health}");
    }
    let events = get(a.http, "/bridge/room/The%20Garden/events").to_string();
    assert!(
        !events.contains("from b") && !events.contains("from c"),
        "{events}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the Matrix gateway across nodes ----

fn gateway_node(redis: &Redis, name: &str) -> TestBridge {
    let mut cfg = node_config(redis, name);
    cfg.gateway.max_messages_per_s = 100_000;
    cfg.http.rate_limit_requests = 100_000;
    start_node(cfg)
}

/// Every text frame that arrives within `t`.
fn frames_for(ws: &mut Ws, t: Duration) -> Vec<Value> {
    let deadline = Instant::now() + t;
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match try_next(ws, left) {
            Some(v) => got.push(v),
            None => break,
        }
    }
    got
}

/// Frames until one of `kind` from `from` arrives.
fn next_from(ws: &mut Ws, kind: &str, from: &str) -> Value {
    loop {
        let v = next(ws);
        if v["type"] == kind && v["from"] == from {
            return v;
        }
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_gateway_broadcast_on_one_node_reaches_every_client_once() {
    let redis = Redis::start();
    let a = gateway_node(&redis, "a");
    let b = gateway_node(&redis, "b");
    let (mut alice, _) = agent(a.http, "alice", "agent");
    let (mut bob, _) = agent(b.http, "bob", "agent");
    let joined = next_of(&mut alice, "agent_joined");
    assert_eq!(joined["agentId"], "bob", "A hears of B's agent: {joined}");
    eventually(Duration::from_secs(5), "B knows alice", || {
        get(b.http, "/api/gateway/status")["count"] == 2
    });
    let (mut carol, ack) = agent(b.http, "carol", "client");
    let listed: Vec<&str> = (ack["agents"].as_array().unwrap().iter())
        .filter_map(|a| a["agentId"].as_str())
        .collect();
    assert!(listed.contains(&"alice"), "agents of every node: {ack}");
    send(&mut bob, &json!({"type": "chat", "text": "hello all"}));
    let at_alice = next_from(&mut alice, "chat", "bob");
    let at_carol = next_from(&mut carol, "chat", "bob");
    assert_eq!(at_alice["text"], "hello all");
    assert_eq!(at_alice, at_carol, "the same frame on both nodes");
    assert!(at_alice["gateway_seq"].as_u64().is_some());
    assert!(at_alice["epoch"].is_string(), "{at_alice}");
    // Once: nothing more of it on either node, and not back to bob.
    send(&mut bob, &json!({"type": "chat", "text": "second"}));
    assert_eq!(next_from(&mut alice, "chat", "bob")["text"], "second");
    assert_eq!(next_from(&mut carol, "chat", "bob")["text"], "second");
    let echoed = frames_for(&mut bob, Duration::from_millis(300));
    assert!(!echoed.iter().any(|v| v["type"] == "chat"), "{echoed:?}");
    // Directed: to an agent on the other node, and only to it.
    send(
        &mut alice,
        &json!({"type": "dm", "target_id": "carol", "text": "psst"}),
    );
    let dm = next_of(&mut carol, "dm");
    assert_eq!(
        (dm["from"].as_str(), dm["text"].as_str()),
        (Some("alice"), Some("psst"))
    );
    let elsewhere = frames_for(&mut bob, Duration::from_millis(300));
    assert!(
        !elsewhere.iter().any(|v| v["type"] == "dm"),
        "{elsewhere:?}"
    );
    send(&mut alice, &json!({"type": "dm", "target_id": "nobody"}));
    assert_eq!(next_of(&mut alice, "error")["code"], "unknown_target");
    // Every node lists every agent, with its node.
    for addr in [a.http, b.http] {
        let status = get(addr, "/api/gateway/status");
        let nodes: Vec<(String, String)> = (status["agents"].as_array().unwrap().iter())
            .map(|a| {
                let s = |k: &str| a[k].as_str().unwrap_or("").to_string();
                (s("agentId"), s("node"))
            })
            .collect();
        let want = [("alice", "a"), ("bob", "b"), ("carol", "b")]
            .map(|(x, y)| (x.to_string(), y.to_string()));
        assert_eq!(nodes, want, "{status}");
    }
}

#[test]
#[ignore = "needs redis-server"]
fn an_agent_id_taken_on_another_node_replaces_the_old_connection() {
    let redis = Redis::start();
    let a = gateway_node(&redis, "a");
    let b = gateway_node(&redis, "b");
    let (mut old, _) = agent(a.http, "bob", "agent");
    let (mut watcher, _) = agent(a.http, "watcher", "watcher");
    eventually(Duration::from_secs(5), "B knows bob is on A", || {
        get(b.http, "/api/gateway/status")["count"] == 2
    });
    let (_new, ack) = agent(b.http, "bob", "agent");
    let bobs = (ack["agents"].as_array().unwrap().iter())
        .filter(|a| a["agentId"] == "bob")
        .count();
    assert_eq!(bobs, 1, "listed once, here: {ack}");
    let (code, reason) = close_of(&mut old);
    assert_eq!(code, 1000);
    assert!(
        reason.contains("replaced") && reason.contains("bob"),
        "{reason}"
    );
    eventually(Duration::from_secs(5), "A lists bob on node b", || {
        let status = get(a.http, "/api/gateway/status");
        (status["agents"].as_array().unwrap().iter())
            .any(|x| x["agentId"] == "bob" && x["node"] == "b")
    });
    // The watcher hears bob join twice (on A, then on B) and never leave.
    let heard = frames_for(&mut watcher, Duration::from_millis(500));
    let bob: Vec<&str> = (heard.iter())
        .filter(|v| v["agentId"] == "bob")
        .filter_map(|v| v["type"].as_str())
        .collect();
    assert!(!bob.contains(&"agent_left"), "{heard:?}");
    assert!(bob.contains(&"agent_joined"), "{heard:?}");
}

#[test]
#[ignore = "needs redis-server"]
fn a_gateway_client_resumes_on_the_other_node_and_misses_nothing() {
    let redis = Redis::start();
    let a = gateway_node(&redis, "a");
    let b = gateway_node(&redis, "b");
    let (mut alice, _) = agent(a.http, "alice", "agent");
    let (mut bob, _) = agent(b.http, "bob", "agent");
    send(&mut bob, &json!({"type": "chat", "text": "one"}));
    let seen = next_from(&mut alice, "chat", "bob");
    let (since, epoch) = (seen["gateway_seq"].as_u64().unwrap(), seen["epoch"].clone());
    drop(alice);
    // While alice is away: a broadcast, a say on A, another broadcast.
    let (mut obs, _) = agent(a.http, "obs", "watcher");
    send(&mut bob, &json!({"type": "chat", "text": "two"}));
    assert_eq!(next_from(&mut obs, "chat", "bob")["text"], "two");
    assert_eq!(
        say(a.http, "una", "The Threshold", "while away").status,
        200
    );
    send(&mut bob, &json!({"type": "chat", "text": "three"}));
    eventually(Duration::from_secs(5), "A has everything", || {
        get(a.http, "/api/gateway/status")["gateway_seq"]
            == get(b.http, "/api/gateway/status")["gateway_seq"]
            && get(a.http, "/bridge/health")["cluster"]["seq"].as_u64() > Some(since + 3)
    });
    let path = format!("/ws/matrix?since={since}&epoch={}", epoch.as_str().unwrap());
    let (mut back, _) = agent_at(b.http, &path, "alice", "agent");
    let mut missed = Vec::new();
    while missed.len() < 3 {
        let v = next(&mut back);
        if v["type"] == "chat" || v["type"] == "say" {
            missed.push(v);
        }
    }
    let texts: Vec<&str> = (missed.iter())
        .map(|v| v["text"].as_str().or(v["message"].as_str()).unwrap())
        .collect();
    assert_eq!(texts, ["two", "while away", "three"]);
    let seqs: Vec<u64> = missed
        .iter()
        .map(|v| v["gateway_seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > since,
        "{seqs:?}"
    );
    // The same resume point from another epoch is refused.
    let (mut stale, _) = agent_at(
        b.http,
        &format!("/ws/matrix?since={since}&epoch=1"),
        "old",
        "agent",
    );
    let r = next_of(&mut stale, "resync_required");
    assert!(r["error"].as_str().unwrap().contains("epoch"), "{r}");
}

// ---- a node that dies ----

/// A node as its own process (so it can be killed with -9); its HTTP address.
fn node_process(redis: &Redis, name: &str) -> (std::process::Child, SocketAddr) {
    node_process_with(redis, name, "")
}

/// [`node_process`] with more config (TOML tables after the node's own).
fn node_process_with(redis: &Redis, name: &str, more: &str) -> (std::process::Child, SocketAddr) {
    let config = format!(
        "world = \"w\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nrate_limit_requests = 100000\n\
         [line]\nlisten = []\n[gateway]\nmax_messages_per_s = 100000\n\
         [cluster]\nredis_url = \"{}\"\nnode_id = \"{name}\"\nnode_ttl_s = 2\npresence_ttl_s = 4\n{more}",
        redis.url()
    );
    let path = temp_file(&format!("node-{name}-{}.toml", redis.port), &config);
    let (child, addr, _log) = spawn(bin().arg("--config").arg(&path).arg("--memory"));
    reaches_redis(addr);
    (child, addr)
}

#[test]
#[ignore = "needs redis-server"]
fn a_killed_nodes_users_and_agents_leave_and_its_client_resumes_elsewhere() {
    let redis = Redis::start();
    let a = gateway_node(&redis, "a");
    let (mut b, b_http) = node_process(&redis, "b");
    let (mut watcher, _) = agent(a.http, "watcher", "watcher");
    let (mut bob, _) = agent(b_http, "bob", "agent");
    assert_eq!(say(b_http, "vic", "The Garden", "hi from b").status, 200);
    let players = |addr| get(addr, "/bridge/room/The%20Garden/players").to_string();
    eventually(Duration::from_secs(5), "A sees B's user and agent", || {
        players(a.http).contains("vic") && get(a.http, "/api/gateway/status")["count"] == 2
    });
    send(&mut watcher, &json!({"type": "chat", "text": "before"}));
    let seen = next_from(&mut bob, "chat", "watcher");
    let (since, epoch) = (seen["gateway_seq"].as_u64().unwrap(), seen["epoch"].clone());
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    send(
        &mut watcher,
        &json!({"type": "chat", "text": "while b is down"}),
    );
    // node_ttl_s = 2: the dead node is found and cleaned up after within about that.
    let left = next_of(&mut watcher, "agent_left");
    assert_eq!(
        (left["agentId"].as_str(), left["node"].as_str()),
        (Some("bob"), Some("b"))
    );
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_millis(3500),
        "found after {detected:?}"
    );
    eventually(Duration::from_secs(2), "vic has left The Garden", || {
        !players(a.http).contains("vic")
    });
    let status = get(a.http, "/api/gateway/status");
    assert_eq!(status["count"], 1, "{status}");
    assert_eq!(
        get(a.http, "/bridge/health")["cluster"]["nodes"],
        json!(["a"])
    );
    // bob's client resumes on A and misses nothing.
    drop(bob);
    let path = format!("/ws/matrix?since={since}&epoch={}", epoch.as_str().unwrap());
    let (mut back, _) = agent_at(a.http, &path, "bob", "agent");
    let missed = next_from(&mut back, "chat", "watcher");
    assert_eq!(missed["text"], "while b is down");
    assert!(missed["gateway_seq"].as_u64().unwrap() > since);
}

// ---- conversations with the agent across nodes ----

/// An agent that takes `secs` to answer each message.
const SLOW_AGENT: &str = "while read line; do sleep 1; echo '{\"text\":\"A slow reply.\"}'; done";

fn slow_agent(cfg: &mut Config) {
    cfg.agent.backend = "command".into();
    cfg.agent.command = vec!["sh".into(), "-c".into(), SLOW_AGENT.into()];
    cfg.agent.timeout_s = 2;
}

fn chat(addr: SocketAddr, user: &str, message: &str) -> common::Resp {
    post(
        addr,
        "/bridge/chat",
        &json!({"user_id": user, "username": user, "room": "The Threshold", "message": message}),
    )
}

#[test]
#[ignore = "needs redis-server"]
fn a_conversation_goes_on_from_node_to_node() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let first = chat(a.http, "una", "hello");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["session_messages"], 2);
    let second = chat(b.http, "una", "again");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.json()["session_messages"],
        4,
        "B goes on with A's history"
    );
    let third = chat(a.http, "una", "and back");
    assert_eq!(third.json()["session_messages"], 6);
    // A crisis on B keeps the 988 line in A's next reply.
    let crisis = chat(b.http, "una", "i want to kill myself");
    assert_eq!(crisis.json()["crisis"], true, "{}", crisis.text());
    let after = chat(a.http, "una", "ok");
    assert_eq!(
        after.json()["crisis"],
        true,
        "the flag travels with the session"
    );
    assert!(after.json()["response"].as_str().unwrap().contains("988"));
    // Every node lists every node's sessions, as Redis holds them.
    let vic = chat(b.http, "vic", "good morning");
    assert_eq!(
        (vic.status, vic.json()["crisis"].clone()),
        (200, json!(false)),
        "{}",
        vic.text()
    );
    for node in [a.http, b.http] {
        let list = get(node, "/bridge/sessions");
        let users: Vec<(&str, u64, bool)> = (list["sessions"].as_array().unwrap().iter())
            .map(|s| {
                let user = s["user_id"].as_str().unwrap();
                (user, s["messages"].as_u64().unwrap(), s["crisis"] == true)
            })
            .collect();
        assert_eq!(users, [("vic", 2, false), ("una", 10, true)], "{list}");
    }
}

/// A slow agent whose replies name the node it runs on.
fn slow_agent_of(cfg: &mut Config, node: &str) {
    slow_agent(cfg);
    let script = SLOW_AGENT.replace("A slow reply.", &format!("A slow reply from {node}."));
    cfg.agent.command = vec!["sh".into(), "-c".into(), script];
}

#[test]
#[ignore = "needs redis-server"]
fn one_call_at_a_time_per_user_across_nodes() {
    let redis = Redis::start();
    let mut ca = node_config(&redis, "a");
    slow_agent_of(&mut ca, "a");
    let mut cb = node_config(&redis, "b");
    slow_agent_of(&mut cb, "b");
    let (a, b) = (start_node(ca), start_node(cb));
    let started = Instant::now();
    let on_a = {
        let addr = a.http;
        std::thread::spawn(move || (chat(addr, "una", "one"), started.elapsed()))
    };
    std::thread::sleep(Duration::from_millis(200));
    let on_b = chat(b.http, "una", "two");
    let b_took = started.elapsed();
    let (on_a, a_took) = on_a.join().unwrap();
    assert_eq!(
        (on_a.status, on_b.status),
        (200, 200),
        "{} {}",
        on_a.text(),
        on_b.text()
    );
    // B waited for A's call (one second each) and went on with its history.
    assert!(
        b_took >= a_took + Duration::from_millis(800),
        "A {a_took:?}, B {b_took:?}"
    );
    assert_eq!(on_a.json()["session_messages"], 2);
    assert_eq!(on_b.json()["session_messages"], 4);
    // B's chat went to A, which owned the session, and came back through B.
    assert!(
        on_b.json()["response"]
            .as_str()
            .unwrap()
            .contains("from a."),
        "{}",
        on_b.text()
    );
    assert_eq!(
        metric(
            b.http,
            "worldbridge_cluster_chats_forwarded_total{node=\"b\"}"
        ),
        Some(1)
    );
    assert_eq!(
        metric(a.http, "worldbridge_cluster_chats_served_total{node=\"a\"}"),
        Some(1)
    );
}

/// A streamed chat over raw HTTP: the SSE events (name, data) as they come, each with
/// when it came, until `done` or `error`.
fn sse_chat(addr: SocketAddr, user: &str, message: &str) -> Vec<(String, Value, Duration)> {
    let body = json!({"user_id": user, "username": user, "room": "The Threshold",
                      "message": message, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "POST /bridge/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (mut seen, mut events, mut buf) = (String::new(), Vec::new(), [0u8; 4096]);
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return events;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = seen.find("\n\n") {
            let block: String = seen.drain(..end + 2).collect();
            let name = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data) {
                let v = serde_json::from_str(data).unwrap_or(Value::Null);
                events.push((name.to_string(), v, started.elapsed()));
                if name == "done" || name == "error" {
                    return events;
                }
            }
        }
    }
}

#[test]
#[ignore = "needs redis-server"]
fn a_chat_on_another_node_goes_to_the_owner_and_the_protocol_does_not_wait_for_it() {
    let redis = Redis::start();
    let mut ca = node_config(&redis, "a");
    slow_agent_of(&mut ca, "a");
    let mut cb = node_config(&redis, "b");
    slow_agent_of(&mut cb, "b");
    let (a, b) = (start_node(ca), start_node(cb));
    // A talks to the agent for una (one second): A owns her session meanwhile.
    let on_a = {
        let addr = a.http;
        std::thread::spawn(move || chat(addr, "una", "one"))
    };
    std::thread::sleep(Duration::from_millis(200));
    // A crisis streamed on B: the protocol text is B's to send at once; the rest is
    // A's reply, after A's call in flight, through B.
    let events = sse_chat(b.http, "una", "i want to kill myself");
    let on_a = on_a.join().unwrap();
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let (first, _, first_at) = &events[0];
    assert_eq!(first, "part", "{events:?}");
    assert_eq!(events[0].1["crisis"], true, "{events:?}");
    assert!(
        *first_at < Duration::from_millis(500),
        "part 0 after {first_at:?}"
    );
    let (last, done, done_at) = events.last().unwrap();
    eprintln!("streamed on b, owner a: part 0 after {first_at:?}, done after {done_at:?}");
    assert_eq!(last, "done", "{events:?}");
    assert!(
        *done_at >= Duration::from_millis(1500),
        "done after {done_at:?}"
    );
    let parts: Vec<&Value> = (events.iter())
        .filter(|(n, _, _)| n == "part")
        .map(|(_, v, _)| v)
        .collect();
    let indexes: Vec<u64> = parts.iter().map(|p| p["index"].as_u64().unwrap()).collect();
    assert_eq!(
        indexes,
        (0..parts.len() as u64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert_eq!(
        parts.iter().filter(|p| p["crisis"] == true).count(),
        1,
        "the protocol text once: {events:?}"
    );
    let whole: String = parts.iter().map(|p| p["text"].as_str().unwrap()).collect();
    let response = done["response"].as_str().unwrap();
    assert_eq!(whole, response, "the parts make the reply");
    assert!(
        response.contains("988") && response.contains("from a."),
        "{response}"
    );
    assert_eq!(
        (done["session_messages"].as_u64(), done["crisis"].as_bool()),
        (Some(4), Some(true))
    );
    // The session A stored holds both exchanges and the flag; B's next chat (A idle now)
    // runs on B with that history.
    let next = chat(b.http, "una", "still here");
    assert_eq!(next.status, 200, "{}", next.text());
    let next = next.json();
    assert_eq!(
        (next["session_messages"].as_u64(), next["crisis"].as_bool()),
        (Some(6), Some(true))
    );
    assert!(
        next["response"].as_str().unwrap().contains("from b."),
        "{next}"
    );
}

/// Node b as a process (to be killed), node a in this one, both with slow agents (a's
/// replies name it); una's first exchange done on b.
fn una_on_process_b_then_node_a(redis: &Redis) -> (Child, SocketAddr, TestBridge) {
    let slow = format!(
        "[agent]\nbackend = \"command\"\ncommand = [\"sh\", \"-c\", {:?}]\ntimeout_s = 2\n",
        SLOW_AGENT
    );
    let (b, b_http) = node_process_with(redis, "b", &slow);
    let mut ca = node_config(redis, "a");
    slow_agent_of(&mut ca, "a");
    let a = start_node(ca);
    let first = chat(b_http, "una", "hello");
    assert_eq!(first.json()["session_messages"], 2, "{}", first.text());
    (b, b_http, a)
}

#[test]
#[ignore = "needs redis-server"]
fn the_owner_killed_mid_call_the_next_chat_elsewhere_goes_on_with_the_history() {
    let redis = Redis::start();
    let (mut b, b_http, a) = una_on_process_b_then_node_a(&redis);
    // A second call on B is under way (B holds the lease) when B dies.
    let lost = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| chat(b_http, "una", "never answered"));
    });
    std::thread::sleep(Duration::from_millis(300));
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    // A waits for B's lease to run out (agent.timeout_s + 1 s), then answers with the
    // history B stored: never refused because of the hand-over.
    let next = chat(a.http, "una", "are you there?");
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.json()["session_messages"], 4, "{}", next.text());
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );
    let _ = lost.join();
}

#[test]
#[ignore = "needs redis-server"]
fn a_chat_forwarded_to_an_owner_that_dies_is_answered_here_with_the_history() {
    let redis = Redis::start();
    let (mut b, b_http, a) = una_on_process_b_then_node_a(&redis);
    // B is talking to the agent for una (it owns her session) ...
    let lost = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| chat(b_http, "una", "never answered"));
    });
    std::thread::sleep(Duration::from_millis(200));
    // ... when her chat on A arrives: it goes to B, which dies before answering it.
    let on_a = {
        let addr = a.http;
        std::thread::spawn(move || (chat(addr, "una", "are you there?"), Instant::now()))
    };
    eventually(Duration::from_secs(2), "A forwards the chat to B", || {
        metric(
            a.http,
            "worldbridge_cluster_chats_forwarded_total{node=\"a\"}",
        ) == Some(1)
    });
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    // A sees B gone (`node_ttl_s`), waits for B's lease to run out, and answers itself
    // with the history B stored: never refused because of the hand-over.
    let (next, answered) = on_a.join().unwrap();
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.json()["session_messages"], 4, "{}", next.text());
    assert!(
        next.json()["response"]
            .as_str()
            .unwrap()
            .contains("from a."),
        "{}",
        next.text()
    );
    let took = answered.duration_since(killed);
    assert!(took < Duration::from_secs(6), "{took:?}");
    let _ = lost.join();
}

// ---- an append whose answer never comes ----

/// What the proxy does to the next append it sees (a script call naming the node's
/// last-append mark).
#[derive(Clone, Copy, PartialEq)]
enum Trick {
    /// Pass everything.
    None,
    /// Pass the append to Redis, then cut the connection before its answer.
    DropAnswer,
    /// Cut the connection without passing the append on.
    DropRequest,
}

/// A TCP proxy in front of Redis that misbehaves on purpose, once per arming.
struct FlakyProxy {
    port: u16,
    trick: std::sync::Arc<std::sync::Mutex<Trick>>,
}

impl FlakyProxy {
    fn start(redis: &Redis) -> FlakyProxy {
        use std::net::{Shutdown, TcpListener};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let trick = Arc::new(Mutex::new(Trick::None));
        let (t, upstream) = (trick.clone(), redis.port);
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                let t = t.clone();
                // Set once this connection is to lose what Redis answers from now on.
                let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let muted = mute.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let append = chunk.windows(7).any(|w| w == b":last:a");
                        let trick = std::mem::replace(&mut *t.lock().unwrap(), Trick::None);
                        match (append, trick) {
                            (true, Trick::DropAnswer) => {
                                mute.store(true, std::sync::atomic::Ordering::SeqCst);
                                let _ = s_out.write_all(chunk);
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            (true, Trick::DropRequest) => {}
                            (_, other) => {
                                *t.lock().unwrap() = other;
                                if s_out.write_all(chunk).is_err() {
                                    break;
                                }
                                continue;
                            }
                        }
                        let _ = c_in.shutdown(Shutdown::Both);
                        let _ = s_out.shutdown(Shutdown::Both);
                        break;
                    }
                });
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s_in.read(&mut buf) {
                        let lose = muted.load(std::sync::atomic::Ordering::SeqCst);
                        if n == 0 || lose || c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        FlakyProxy { port, trick }
    }

    fn arm(&self, trick: Trick) {
        *self.trick.lock().unwrap() = trick;
    }
}

#[test]
#[ignore = "needs redis-server"]
fn an_append_whose_answer_is_lost_is_answered_by_what_redis_holds() {
    let redis = Redis::start();
    let proxy = FlakyProxy::start(&redis);
    let mut ca = node_config(&redis, "a");
    if let Some(c) = &mut ca.cluster {
        c.redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    }
    let a = start_node(ca);
    let b = node(&redis, "b");
    let said = |addr, text: &str| -> usize {
        (events(addr, "The Tower").iter())
            .filter(|e| e["message"] == text)
            .count()
    };
    // A first say loads the append script (EVALSHA needs no retry after it).
    assert_eq!(say(a.http, "una", "The Tower", "first").status, 200);
    // Redis appended it, the answer was lost: the say is acknowledged, once.
    proxy.arm(Trick::DropAnswer);
    let r = say(a.http, "una", "The Tower", "written");
    assert_eq!(
        r.status,
        200,
        "it is in the log, so it is acknowledged: {}",
        r.text()
    );
    eventually(Duration::from_secs(5), "B has it", || {
        said(b.http, "written") == 1
    });
    assert_eq!(said(a.http, "written"), 1);
    // The append never reached Redis: refused, and never shown anywhere.
    eventually(Duration::from_secs(5), "A is up again", || {
        get(a.http, "/bridge/health")["status"] == "ok"
    });
    proxy.arm(Trick::DropRequest);
    let r = say(a.http, "una", "The Tower", "lost");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "store_unavailable");
    eventually(Duration::from_secs(5), "A is up again", || {
        get(a.http, "/bridge/health")["status"] == "ok"
    });
    assert_eq!(say(a.http, "una", "The Tower", "after").status, 200);
    eventually(Duration::from_secs(5), "B has the next say", || {
        said(b.http, "after") == 1
    });
    assert_eq!((said(a.http, "lost"), said(b.http, "lost")), (0, 0));
}

#[test]
fn a_nodes_data_directory_is_its_own() {
    // No Redis needed: the lock is taken before Redis is reached.
    let dir = scratch_dir("cluster-lock");
    let config = |name: &str| {
        let mut cfg = test_config();
        cfg.store.memory = false;
        cfg.store.data_dir = dir.display().to_string();
        cfg.cluster = Some(ClusterConfig {
            redis_url: format!("redis://127.0.0.1:{}", free_port()),
            node_id: name.into(),
            ..ClusterConfig::default()
        });
        cfg
    };
    let first = worldbridge::event_loop::Bridge::new(config("a")).expect("the first node starts");
    let second = worldbridge::event_loop::Bridge::new(config("b"));
    let err = second
        .err()
        .expect("a second node on the same directory is refused")
        .to_string();
    assert!(err.contains("already using the data directory"), "{err}");
    drop(first);
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.iter().any(|f| f.starts_with("world.db")),
        "no SQLite in cluster mode: {files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs redis-server"]
fn a_game_linked_to_one_node_is_acted_on_observed_and_spoken_to_from_another() {
    let redis = Redis::start();
    let mut ca = node_config(&redis, "a");
    ca.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    ca.line.request_timeout_s = 1;
    let a = start_node(ca);
    let b = node(&redis, "b");
    // Before any link: B has no world called mud.
    let r = call(b.http, "GET", "/bridge/observe/mud", None);
    assert_eq!(r.refusal(), (503, json!("link_down")));
    let mut g = LineClient::connect(a.line.unwrap());
    g.hello("mud", "generic");
    // B learns from the log that A holds mud's link: its observe goes to A, which has
    // no perception yet.
    eventually(Duration::from_secs(5), "B routes mud to A", || {
        call(b.http, "GET", "/bridge/observe/mud", None).json()["code"] == "no_perception"
    });
    // An act on B reaches the game on A, and the game's result answers it on B.
    let asker = std::thread::spawn({
        let addr = b.http;
        move || {
            post(
                addr,
                "/bridge/act",
                &json!({"world": "mud", "player": "una", "action": "message",
                        "args": {"text": "hi from b"}}),
            )
        }
    });
    let (act, _) = g.recv_type("act");
    assert_eq!(
        (act["action"].clone(), act["player"].clone()),
        (json!("message"), json!("una"))
    );
    assert_eq!(act["args"]["text"], "hi from b");
    g.send(&json!({"type": "result", "id": act["id"], "ok": true, "data": {"shown": 1}}));
    let r = asker.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ok": true, "world": "mud", "action": "message", "result": {"shown": 1}})
    );
    // A fresh observe on B: the game's perception, through A.
    let asker = std::thread::spawn({
        let addr = b.http;
        move || call(addr, "GET", "/bridge/observe/mud?fresh=1", None)
    });
    let (ask, _) = g.recv_type("observe");
    g.send(
        &json!({"type": "perception", "id": ask["id"], "protocol_version": "1.0",
                   "player": "una", "cell": "Limbo", "game_hour": 13.5}),
    );
    let r = asker.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["world"].clone(), r.json()["fresh"].clone()),
        (json!("mud"), json!(true))
    );
    assert_eq!(r.json()["perception"]["cell"], "Limbo", "{}", r.text());
    // And the cached one, from A's copy.
    let r = call(b.http, "GET", "/bridge/observe/mud", None);
    assert_eq!(
        (r.status, r.json()["perception"]["cell"].clone()),
        (200, json!("Limbo"))
    );
    // Speak on B: the game on A hears it.
    let body = json!({"world": "mud", "user_id": "una", "text": "hello from b"});
    let spoken = spoken_in_mud(b.http, &body, &mut g);
    assert_eq!(
        (spoken["text"].clone(), spoken["user_id"].clone()),
        (json!("hello from b"), json!("una"))
    );
    // A game that never answers: A's own deadline answers B (504).
    let r = post(
        b.http,
        "/bridge/act",
        &json!({"world": "mud", "action": "message", "args": {"text": "anyone?"}}),
    );
    assert_eq!(r.refusal(), (504, json!("game_timeout")), "{}", r.text());
    // The link goes: B hears it from the log and refuses at once.
    drop(g);
    eventually(Duration::from_secs(5), "B hears mud's link is gone", || {
        let r = call(b.http, "GET", "/bridge/observe/mud?fresh=1", None);
        r.status == 503 && r.json()["code"] == "link_down"
    });
    drop(a);
}

/// `POST /bridge/speak` with `body` at `http` is answered 200 for world `mud`, and the
/// game link `g` hears the `speak` (returned).
fn spoken_in_mud(http: SocketAddr, body: &Value, g: &mut LineClient) -> Value {
    let r = post(http, "/bridge/speak", body);
    assert_eq!(
        (r.status, r.json()["world"].clone()),
        (200, json!("mud")),
        "{}",
        r.text()
    );
    g.recv_type("speak").0
}

#[test]
#[ignore = "needs redis-server"]
fn a_room_a_game_describes_on_one_node_is_described_on_every_node() {
    let redis = Redis::start();
    let mut ca = node_config(&redis, "a");
    ca.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let a = start_node(ca);
    let b = node(&redis, "b");
    let mut g = LineClient::connect(a.line.unwrap());
    g.hello("mud", "generic");
    g.send(
        &json!({"type": "room", "id": 1, "name": "Limbo", "desc": "A grey void.",
                   "exits": {"north": "Hall"}}),
    );
    let (ok, _) = g.recv_type("ok");
    assert_eq!(ok["room"], "Limbo");
    // Answered once in the log: B describes it the same way.
    eventually(Duration::from_secs(5), "B describes Limbo", || {
        call(b.http, "GET", "/bridge/world/Limbo", None).status == 200
    });
    let (on_a, on_b) = (
        get(a.http, "/bridge/world/Limbo"),
        get(b.http, "/bridge/world/Limbo"),
    );
    assert_eq!(on_b["data"]["desc_base"], "A grey void.");
    assert_eq!(on_b["data"]["exits"], json!({"north": "Hall"}));
    assert_eq!(on_a["data"], on_b["data"]);
    // A speak on B naming only the room reaches the game on A that hosts it.
    let body = json!({"room": "Limbo", "text": "hello limbo"});
    let spoken = spoken_in_mud(b.http, &body, &mut g);
    assert_eq!(
        (spoken["text"].clone(), spoken["room"].clone()),
        (json!("hello limbo"), json!("Limbo"))
    );
    // A room no game hosts on any node: refused on B, nothing sent.
    let speak = |text: &str, room: &str| {
        let body = json!({"room": room, "text": text});
        post(b.http, "/bridge/speak", &body)
    };
    let r = speak("anyone?", "The Garden");
    assert_eq!(r.refusal(), (503, json!("link_down")), "{}", r.text());
    // The link goes: B no longer sends Limbo's words anywhere.
    drop(g);
    eventually(Duration::from_secs(5), "B hears mud's link is gone", || {
        let r = speak("still there?", "Limbo");
        r.status == 503 && r.json()["code"] == "link_down"
    });
}

#[test]
#[ignore = "needs redis-server"]
fn export_and_import_read_and_write_the_worlds_redis() {
    let mut redis = Redis::start();
    let a = node(&redis, "a");
    assert_eq!(say(a.http, "una", "The Garden", "one").status, 200);
    assert_eq!(say(a.http, "una", "The Garden", "two").status, 200);
    assert_eq!(chat(a.http, "vic", "hello").json()["session_messages"], 2);
    drop(a);
    let config = temp_file(
        &format!("export-{}.toml", redis.port),
        &format!(
            "world = \"w\"\n[cluster]\nredis_url = \"{}\"\n",
            redis.url()
        ),
    );
    // `worldbridge <words> --config <config>`: its output, and whether it succeeded.
    let run = |words: &[&std::path::Path]| {
        let out = bin()
            .args(words)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), out.stdout, err)
    };
    let (ok, stdout, err) = run(&["export".as_ref()]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(doc["format"], "worldbridge-export");
    assert_eq!(doc["world"], "w");
    let said: Vec<&str> = (doc["events"].as_array().unwrap().iter())
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(said, ["one", "two"]);
    assert_eq!(doc["sessions"][0]["user_id"], "vic");
    let file = temp_file(&format!("export-{}.json", redis.port), &doc.to_string());
    // Into a Redis that holds the world already: refused without --force.
    let (ok, _, err) = run(&["import".as_ref(), file.as_path()]);
    assert!(!ok && err.contains("--force"), "{err}");
    // Into an empty Redis: the events (numbered anew) and the conversation are back.
    redis.wipe();
    redis.restart();
    let (ok, _, err) = run(&["import".as_ref(), file.as_path()]);
    assert!(ok, "{err}");
    let b = node(&redis, "b");
    eventually(Duration::from_secs(5), "B has the imported says", || {
        let evs = events(b.http, "The Garden");
        (evs.iter()).filter(|e| e["type"] == "say").count() == 2
    });
    assert_eq!(
        chat(b.http, "vic", "back again").json()["session_messages"],
        4
    );
    // Another world's export is refused.
    let other = temp_file(
        &format!("other-{}.json", redis.port),
        &doc.to_string()
            .replace("\"world\":\"w\"", "\"world\":\"x\""),
    );
    let (ok, _, err) = run(&["import".as_ref(), "--force".as_ref(), other.as_path()]);
    assert!(!ok && err.contains("of the world \"x\""), "{err}");
}

// ---- federation on one elected node ----

/// The federation tables of a cluster node of world `w` peering with `p` on `p_port`.
fn fed_tables(key_file: &std::path::Path, p_port: u16) -> String {
    format!(
        "[federation]\nkey_file = \"{}\"\nsync_interval_s = 1\ntimeout_ms = 1000\n\
         portal_rooms = [\"The Bridge\"]\n\
         [[federation.peers]]\nworld = \"p\"\nurl = \"http://127.0.0.1:{p_port}\"\ntoken = \"pw\"\n",
        key_file.display()
    )
}

/// The messages said in The Bridge on `addr` that came from world `origin`, in order.
fn bridge_says(addr: SocketAddr, origin: &str) -> Vec<String> {
    (events(addr, "The Bridge").iter())
        .filter(|e| e["origin"] == origin && e["type"] == "say")
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

/// `cluster.federation` of a node's health.
fn fed_role(addr: SocketAddr) -> Value {
    get(addr, "/bridge/health")["cluster"]["federation"].clone()
}

/// A GET with a federation token.
fn as_peer(addr: SocketAddr, path: &str, token: &str) -> common::Resp {
    let auth = format!("Bearer {token}");
    let mut c = Client::connect(addr);
    c.send_raw(&request_bytes(
        "GET",
        path,
        None,
        &[("Authorization", &auth)],
    ));
    c.read_response(false).expect("an answer")
}

#[test]
#[ignore = "needs redis-server"]
fn federation_runs_on_one_node_and_moves_to_another_when_it_dies() {
    let redis = Redis::start();
    let dir = scratch_dir("cluster-fed");
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("world.key");
    let (a_port, p_port) = (free_port(), free_port());
    // Peer world p, a single process, knows w at node a's address.
    let p_cfg = fed_config(
        "p",
        p_port,
        &dir.join("p"),
        vec![fed_peer("w", a_port, "pw")],
    );
    let p = start_with(p_cfg);
    // Node a (a process, to be killed) takes federation first; b follows.
    let config = format!(
        "world = \"w\"\n[http]\nlisten = [\"127.0.0.1:{a_port}\"]\nrate_limit_requests = 100000\n\
         [line]\nlisten = []\n\
         [cluster]\nredis_url = \"{}\"\nnode_id = \"a\"\nnode_ttl_s = 2\npresence_ttl_s = 4\n{}",
        redis.url(),
        fed_tables(&key_file, p_port)
    );
    let path = temp_file(&format!("fed-node-a-{}.toml", redis.port), &config);
    let (mut a, a_http, _log) = spawn(bin().arg("--config").arg(&path).arg("--memory"));
    reaches_redis(a_http);
    eventually(Duration::from_secs(10), "node a runs federation", || {
        fed_role(a_http)["here"] == true
    });
    let mut b_cfg = node_config(&redis, "b");
    b_cfg.federation.key_file = key_file.display().to_string();
    b_cfg.federation.sync_interval_s = 1;
    b_cfg.federation.timeout_ms = 1000;
    b_cfg.federation.portal_rooms = vec!["The Bridge".into()];
    b_cfg.federation.peers = vec![fed_peer("p", p_port, "pw")];
    let b = start_node(b_cfg);
    eventually(Duration::from_secs(5), "b knows a runs federation", || {
        fed_role(b.http) == json!({"leader": "a", "here": false})
    });
    // Both nodes sign as the one world.
    let key = get(a_http, "/bridge/health")["public_key"].clone();
    assert_eq!(get(b.http, "/bridge/health")["public_key"], key);
    // b refuses federation's routes, naming a; a wrong token is still refused first.
    assert_eq!(
        call(a_http, "GET", "/bridge/federation/leader", None).status,
        200
    );
    let on_b = call(b.http, "GET", "/bridge/federation/leader", None);
    assert_eq!(on_b.status, 503, "{}", on_b.text());
    assert!(on_b.text().contains("node a"), "{}", on_b.text());
    assert_eq!(as_peer(b.http, "/bridge/state", "nope").status, 401);
    let right = as_peer(b.http, "/bridge/state", "pw");
    assert_eq!(right.refusal(), (503, json!("not_leader")));
    let trust = post(
        b.http,
        "/bridge/trust",
        &json!({"subject": "pat@p", "score": 0.5}),
    );
    assert_eq!(trust.refusal(), (503, json!("not_leader")));
    assert_eq!(
        get(b.http, "/bridge/health")["peers"][0]["state"],
        "elsewhere"
    );
    let metrics = |addr| call(addr, "GET", "/metrics", None).text();
    assert!(metrics(a_http).contains("worldbridge_cluster_federation_here{node=\"a\"} 1"));
    assert!(metrics(b.http).contains("worldbridge_cluster_federation_here{node=\"b\"} 0"));

    // A say on b (which does not run federation) reaches p; p's reaches both nodes.
    assert_eq!(say(b.http, "bea", "The Bridge", "one from b").status, 200);
    assert_eq!(say(p.http, "pat", "The Bridge", "one from p").status, 200);
    eventually(Duration::from_secs(10), "b's say reaches p", || {
        bridge_says(p.http, "w") == ["one from b"]
    });
    eventually(
        Duration::from_secs(10),
        "p's say reaches both nodes",
        || bridge_says(a_http, "p") == ["one from p"] && bridge_says(b.http, "p") == ["one from p"],
    );
    // Travel is run by a too: pat comes over from p, and is present on both nodes.
    let travel = |addr, user: &str, to: &str| {
        post(
            addr,
            "/bridge/travel",
            &json!({"user_id": user, "to_world": to}),
        )
    };
    // A travel asked of b goes to a, which runs it, and is answered on b.
    // cal talks to the agent on b (b stores the conversation), then asks b to travel.
    assert_eq!(chat(b.http, "cal", "off to p soon").status, 200);
    let threshold = |addr| get(addr, "/bridge/room/The%20Threshold/players").to_string();
    assert!(threshold(b.http).contains("cal"));
    let went = travel(b.http, "cal", "p");
    assert_eq!(went.status, 200, "{}", went.text());
    assert_eq!(
        (went.json()["user_id"].clone(), went.json()["world"].clone()),
        (json!("cal"), json!("p"))
    );
    let players = |addr| get(addr, "/bridge/room/The%20Bridge/players").to_string();
    eventually(
        Duration::from_secs(10),
        "cal is on p and has left w",
        || {
            players(p.http).contains("cal")
                && !threshold(a_http).contains("cal")
                && !threshold(b.http).contains("cal")
        },
    );
    // The conversation went along (a read it from Redis), and w keeps none of it.
    let sessions = |addr| get(addr, "/bridge/sessions")["sessions"].clone();
    let on_p = sessions(p.http);
    let cal = (on_p.as_array().unwrap().iter()).find(|s| s["user_id"] == "cal");
    assert_eq!(cal.map(|s| s["messages"].clone()), Some(json!(2)), "{on_p}");
    for node in [a_http, b.http] {
        let list = sessions(node);
        assert!(
            !(list.as_array().unwrap().iter()).any(|s| s["user_id"] == "cal"),
            "{list}"
        );
    }
    let came = travel(p.http, "pat", "w");
    assert_eq!(came.status, 200, "{}", came.text());
    eventually(Duration::from_secs(10), "pat is on both nodes", || {
        players(a_http).contains("pat") && players(b.http).contains("pat")
    });

    // a dies; a say on b before b takes over is federated once b has.
    a.kill().unwrap();
    a.wait().unwrap();
    assert_eq!(say(b.http, "bea", "The Bridge", "two from b").status, 200);
    eventually(Duration::from_secs(10), "b runs federation", || {
        fed_role(b.http) == json!({"leader": "b", "here": true})
    });
    assert_eq!(
        call(b.http, "GET", "/bridge/federation/leader", None).status,
        200
    );
    assert_eq!(say(b.http, "bea", "The Bridge", "three from b").status, 200);
    assert_eq!(say(p.http, "pat", "The Bridge", "two from p").status, 200);
    eventually(
        Duration::from_secs(10),
        "b's says reach p, once each",
        || bridge_says(p.http, "w") == ["one from b", "two from b", "three from b"],
    );
    eventually(Duration::from_secs(10), "p's new say reaches b", || {
        bridge_says(b.http, "p") == ["one from p", "two from p"]
    });
    // w's own federated events are numbered 1, 2, 3 across the change of node.
    let doc = as_peer(b.http, "/bridge/state", "pw").json();
    let own: Vec<u64> = (doc["events"].as_array().unwrap().iter())
        .filter(|e| e["origin"] == "w")
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(own, [1, 2, 3], "{doc}");
    let trust = post(
        b.http,
        "/bridge/trust",
        &json!({"subject": "pat@p", "score": 0.5}),
    );
    assert_eq!(trust.status, 200, "{}", trust.text());
    assert_eq!(trust.json()["trust"]["seq"], 4);
    // b runs travel now: bea goes to p, once.
    let went = travel(b.http, "bea", "p");
    assert_eq!(went.status, 200, "{}", went.text());
    eventually(Duration::from_secs(5), "bea is on p and has left w", || {
        players(p.http).contains("bea") && !players(b.http).contains("bea")
    });
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One Redis command over a raw connection; the reply's first line.
fn redis_cmd(redis: &Redis, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
#[ignore = "needs redis-server"]
fn a_node_whose_federation_lease_was_taken_writes_no_federation_state() {
    let redis = Redis::start();
    let dir = scratch_dir("cluster-fed-lease");
    std::fs::create_dir_all(&dir).unwrap();
    let (a_port, p_port) = (free_port(), free_port());
    let p = start_with(fed_config(
        "p",
        p_port,
        &dir.join("p"),
        vec![fed_peer("w", a_port, "pw")],
    ));
    let mut cfg = node_config(&redis, "a");
    cfg.http.listen = vec![format!("127.0.0.1:{a_port}").parse().unwrap()];
    cfg.federation.key_file = dir.join("world.key").display().to_string();
    cfg.federation.sync_interval_s = 1;
    cfg.federation.portal_rooms = vec!["The Bridge".into()];
    cfg.federation.peers = vec![fed_peer("p", p_port, "pw")];
    let a = start_node(cfg);
    eventually(Duration::from_secs(10), "a runs federation", || {
        fed_role(a.http)["here"] == true
    });
    // Another holder appears (a partition healed the wrong way, an operator's mistake):
    // a's next federation write is refused by Redis, and a stops running federation.
    let lease = "wb:{w}:fed:leader";
    assert_eq!(
        redis_cmd(&redis, &["SET", lease, "z", "PX", "60000"]),
        "+OK"
    );
    assert_eq!(
        say(a.http, "ann", "The Bridge", "while z holds it").status,
        200
    );
    eventually(Duration::from_secs(5), "a knows z runs federation", || {
        fed_role(a.http) == json!({"leader": "z", "here": false})
    });
    assert_eq!(redis_cmd(&redis, &["ZCARD", "wb:{w}:fed:ev:w"]), ":0");
    let refused = call(a.http, "GET", "/bridge/federation/leader", None);
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("node z"), "{}", refused.text());
    // The lease is free again: a takes it, reloads, and federates the say once.
    assert_eq!(redis_cmd(&redis, &["DEL", lease]), ":1");
    eventually(Duration::from_secs(5), "a runs federation again", || {
        fed_role(a.http)["here"] == true
    });
    eventually(Duration::from_secs(10), "the say reaches p", || {
        bridge_says(p.http, "w") == ["while z holds it"]
    });
    assert_eq!(redis_cmd(&redis, &["ZCARD", "wb:{w}:fed:ev:w"]), ":1");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}
