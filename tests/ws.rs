//! WebSocket end to end: the Matrix gateway (`/ws/matrix`), the Workshop feed (`/`,
//! `/ws/workshop`) and the status page, with real tungstenite clients over sockets on
//! 127.0.0.1:0.

mod common;

use common::ws::*;
use common::{call, eventually, get, post, scratch_dir, start_with, test_config, TestBridge};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tungstenite::Message;
use worldbridge::config::Config;

fn gateway_config() -> Config {
    let mut cfg = test_config();
    // Tests talk fast; the rate limits are for people and runaway clients.
    cfg.http.rate_limit_requests = 100_000;
    cfg.gateway.max_messages_per_s = 100_000;
    cfg
}

fn start() -> TestBridge {
    start_with(gateway_config())
}

#[test]
fn a_client_cannot_speak_as_another_agent_or_as_the_hub() {
    let b = start();
    let (mut alice, _) = agent(b.http, "alice", "agent");
    let (mut bob, _) = agent(b.http, "bob", "client");
    next_of(&mut alice, "agent_joined");

    // A spoofed `from` is overwritten with the sender's registered id.
    send(
        &mut alice,
        &json!({"type": "bark", "from": "timmy", "text": "hello"}),
    );
    let m = next_of(&mut bob, "bark");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("hello"))
    );

    // Hub-owned types and the bridge's own id are refused and reach nobody.
    for (msg, code) in [
        (
            json!({"type": "agent_left", "agentId": "bob", "role": "client"}),
            "reserved_type",
        ),
        (
            json!({"type": "resync_required", "since": 0}),
            "reserved_type",
        ),
        (
            json!({"type": "bark", "agentId": "timmy", "text": "I am Timmy"}),
            "reserved_agent_id",
        ),
        (
            json!({"type": "bark", "agentId": "Tımmy", "text": "I am Timmy"}),
            "reserved_agent_id",
        ),
    ] {
        send(&mut alice, &msg);
        let e = next_of(&mut alice, "error");
        assert_eq!(e["code"], code, "{msg}");
    }
    silent_for(&mut bob, Duration::from_millis(200));

    // Look-alike ids: of the bridge's agent, and of a connected agent.
    for (id, code) in [
        ("TIMMY", "reserved_agent_id"),
        ("timmy\u{200b}", "reserved_agent_id"),
        ("Alice", "agent_id_taken"),
        ("аlice", "agent_id_taken"),
    ] {
        let mut ws = connect(b.http, "/ws/matrix");
        send(
            &mut ws,
            &json!({"type": "agent_register", "agentId": id, "role": "agent"}),
        );
        let e = next(&mut ws);
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{id:?}"
        );
    }
    silent_for(&mut alice, Duration::from_millis(200));
    send(
        &mut bob,
        &json!({"type": "agent_message", "target_id": "alice", "text": "still you?"}),
    );
    let m = next_of(&mut alice, "agent_message");
    assert_eq!(m["from"], "bob");
}

#[test]
fn register_joined_broadcast_directed_and_left() {
    let b = start();
    let (mut a, ack) = agent(b.http, "alice", "agent");
    assert_eq!(
        ack["agents"],
        json!([{"agentId": "alice", "role": "agent"}])
    );
    assert_eq!(ack["bridge_agent"], "timmy");
    let (mut bo, _) = agent(b.http, "bob", "client");
    let j = next_of(&mut a, "agent_joined");
    assert_eq!(
        (j["agentId"].as_str(), j["role"].as_str()),
        (Some("bob"), Some("client"))
    );
    assert!(j["timestamp"].as_str().is_some());
    let (mut c, ack) = agent(b.http, "carol", "watcher");
    assert_eq!(ack["agents"].as_array().unwrap().len(), 3);
    assert_eq!(next_of(&mut a, "agent_joined")["agentId"], "carol");
    assert_eq!(next_of(&mut bo, "agent_joined")["agentId"], "carol");

    // Broadcast: every other registered client, unchanged but for gateway_seq.
    send(
        &mut a,
        &json!({"type": "agent_state", "agentId": "alice", "state": {"mood": "bright"}}),
    );
    for ws in [&mut bo, &mut c] {
        let m = next(ws);
        assert_eq!(m["type"], "agent_state");
        assert_eq!(m["state"], json!({"mood": "bright"}));
        assert!(m["gateway_seq"].as_u64().is_some());
    }
    silent_for(&mut a, Duration::from_millis(200));

    // Directed: only the target.
    send(
        &mut a,
        &json!({"type": "agent_message", "target_id": "carol", "text": "psst"}),
    );
    assert_eq!(next(&mut c)["text"], "psst");
    silent_for(&mut bo, Duration::from_millis(200));

    // Unknown target: an error to the sender, nothing to anyone else.
    send(
        &mut a,
        &json!({"type": "agent_message", "target_id": "nobody"}),
    );
    let e = next(&mut a);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_target"))
    );
    silent_for(&mut bo, Duration::from_millis(100));

    // Status.
    let st = get(b.http, "/api/gateway/status");
    assert_eq!(st["count"], 3);
    let ids: Vec<&str> = st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agentId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["alice", "bob", "carol"]);
    let alice = &st["agents"][0];
    assert_eq!(alice["role"], "agent");
    assert!(alice["connected_at"].as_str().unwrap().ends_with('Z'));
    assert!(alice["last_seen"].as_str().is_some());
    assert!(alice["messages_in"].as_u64().unwrap() >= 4);

    // Leaving.
    c.close(None).unwrap();
    let l = next_of(&mut a, "agent_left");
    assert_eq!(
        (l["agentId"].as_str(), l["role"].as_str()),
        (Some("carol"), Some("watcher"))
    );
    assert_eq!(next_of(&mut bo, "agent_left")["agentId"], "carol");
    eventually(Duration::from_secs(5), "carol gone from status", || {
        get(b.http, "/api/gateway/status")["count"] == 2
    });
}

#[test]
fn a_message_before_register_is_an_error_and_not_routed() {
    let b = start();
    let (mut a, _) = agent(b.http, "alice", "agent");
    let mut anon = connect(b.http, "/ws/matrix");
    send(&mut anon, &json!({"type": "bark", "text": "sneaky"}));
    let e = next(&mut anon);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("not_registered"))
    );
    send(&mut anon, &json!("not even an object"));
    assert_eq!(next(&mut anon)["code"], "bad_message");
    anon.send(Message::text("{broken")).unwrap();
    assert_eq!(next(&mut anon)["code"], "bad_json");
    silent_for(&mut a, Duration::from_millis(200));
}

#[test]
fn an_agent_token_binds_its_id_and_nobody_else_can_take_it() {
    let mut cfg = gateway_config();
    cfg.gateway.token = "shared".into();
    cfg.gateway.agents = vec![worldbridge::config::GatewayAgent {
        id: "perplexity".into(),
        token: "p-secret".into(),
        role: "interviewer".into(),
    }];
    let b = start_with(cfg);
    // The agent token opens the gateway (it is not the shared token) and binds the id.
    let (mut p, ack) = agent_at(b.http, "/ws/matrix?token=p-secret", "perplexity", "agent");
    assert_eq!(ack["role"], "interviewer", "the configured role");
    // A holder of the shared token cannot register the bound id, nor a look-alike.
    for id in ["perplexity", "Perplexity"] {
        let mut ws = connect(b.http, "/ws/matrix?token=shared");
        send(
            &mut ws,
            &json!({"type": "agent_register", "agentId": id, "role": "agent"}),
        );
        assert_eq!(next(&mut ws)["code"], "agent_id_bound", "{id}");
    }
    // The agent token is that agent only.
    let mut ws = connect(b.http, "/ws/matrix?token=p-secret");
    send(
        &mut ws,
        &json!({"type": "agent_register", "agentId": "mallory", "role": "agent"}),
    );
    assert_eq!(next(&mut ws)["code"], "wrong_agent_id");
    // A wrong token is still a 401 before the upgrade.
    assert!(tungstenite::connect(format!("ws://{}/ws/matrix?token=p-secre", b.http)).is_err());
    // And the bound agent keeps its connection through all of this.
    let (mut other, _) = agent_at(b.http, "/ws/matrix?token=shared", "alice", "agent");
    send(
        &mut other,
        &json!({"type": "agent_message", "target_id": "perplexity", "text": "hi"}),
    );
    let m = next_of(&mut p, "agent_message");
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("hi"))
    );
}

/// An upgrade with an `Origin` header, as a browser sends it.
fn connect_from(addr: SocketAddr, path: &str, origin: &str) -> Result<Ws, (u16, Value)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert("Origin", origin.parse().unwrap());
    match tungstenite::connect(req) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("{origin}: {e}"),
    }
}

#[test]
fn pages_from_other_origins_cannot_open_a_websocket() {
    let b = start();
    for path in ["/", "/ws/workshop", "/ws/matrix"] {
        for origin in ["http://evil.example", "https://evil.localhost:8080"] {
            let (status, body) = connect_from(b.http, path, origin).map(|_| ()).unwrap_err();
            assert_eq!(
                (status, body["code"].as_str()),
                (403, Some("forbidden_origin")),
                "{path} {origin}"
            );
        }
        for origin in ["null", "http://localhost:5173", "http://127.0.0.1:3000"] {
            assert!(
                connect_from(b.http, path, origin).is_ok(),
                "{path} {origin}"
            );
        }
        // A client that sends no Origin (not a browser) is not affected.
        connect(b.http, path);
    }
    let metrics = call(b.http, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("worldbridge_ws_origin_refused_total 6"),
        "{metrics}"
    );

    // The operator's own list replaces the defaults; cors_origins are allowed too.
    let mut cfg = gateway_config();
    cfg.websocket.allowed_origins = vec!["https://matrix.example".into()];
    cfg.http.cors_origins = vec!["https://cors.example".into()];
    let b = start_with(cfg);
    assert!(connect_from(b.http, "/ws/matrix", "https://matrix.example").is_ok());
    assert!(connect_from(b.http, "/ws/matrix", "https://cors.example").is_ok());
    assert!(connect_from(b.http, "/ws/matrix", "http://localhost:5173").is_err());
}

#[test]
fn token_is_checked_before_the_upgrade() {
    let mut cfg = gateway_config();
    cfg.gateway.token = "s3cret".into();
    let b = start_with(cfg);
    for path in ["/ws/matrix", "/ws/matrix?token=wrong"] {
        match tungstenite::connect(format!("ws://{}{path}", b.http)) {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{path}");
                let body: Value = serde_json::from_slice(resp.body().as_ref().unwrap()).unwrap();
                assert_eq!(body["code"], "unauthorized");
            }
            other => panic!(
                "{path}: expected 401, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
    let (_ws, ack) = agent_at(b.http, "/ws/matrix?token=s3cret", "a", "agent");
    assert_eq!(ack["agentId"], "a");

    // Without gateway.token, http.token guards the gateway.
    let mut cfg = gateway_config();
    cfg.http.token = "api".into();
    let b = start_with(cfg);
    assert!(tungstenite::connect(format!("ws://{}/ws/matrix", b.http)).is_err());
    agent_at(b.http, "/ws/matrix?token=api", "a", "agent");
    // The Workshop feed too, on both of its paths.
    for path in ["/", "/ws/workshop"] {
        match tungstenite::connect(format!("ws://{}{path}", b.http)) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401, "{path}"),
            other => panic!(
                "{path}: expected 401, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
        let mut ws = connect(b.http, &format!("{path}?token=api"));
        assert_eq!(next(&mut ws)["type"], "state");
    }
}

#[test]
fn bad_handshakes_get_json_errors() {
    let b = start();
    let r = call(b.http, "GET", "/ws/matrix", None);
    assert_eq!(r.status, 426);
    assert_eq!(r.json()["code"], "upgrade_required");
    assert_eq!(r.header("Upgrade"), Some("websocket"));
    let r = call(b.http, "POST", "/ws/workshop", Some("{}"));
    assert_eq!(r.status, 405);
    let mut c = common::Client::connect(b.http);
    c.send_raw(
        b"GET /ws/matrix HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    let r = call(b.http, "GET", "/ws/matrix?since=abc", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "bad_since");
    let r = call(b.http, "GET", "/ws/matrix?since=3&epoch=yesterday", None);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "bad_epoch");
}

#[test]
fn duplicate_agent_id_replaces_the_old_connection() {
    let b = start();
    let (mut watcher, _) = agent(b.http, "w", "watcher");
    let (mut old, _) = agent(b.http, "dup", "agent");
    next_of(&mut watcher, "agent_joined");
    let (mut new, _) = agent(b.http, "dup", "agent");
    let (code, reason) = close_of(&mut old);
    assert_eq!(code, 1000);
    assert!(reason.contains("replaced"), "{reason}");
    // The watcher hears no agent_left for the replaced connection; messages to "dup"
    // reach the new one.
    let j = next(&mut watcher);
    assert_eq!(
        (j["type"].as_str(), j["agentId"].as_str()),
        (Some("agent_joined"), Some("dup"))
    );
    send(
        &mut watcher,
        &json!({"type": "ping_me", "target_id": "dup"}),
    );
    assert_eq!(next(&mut new)["type"], "ping_me");
    silent_for(&mut watcher, Duration::from_millis(300));
    assert_eq!(get(b.http, "/api/gateway/status")["count"], 2);
}

#[test]
fn silent_clients_are_pruned_and_live_ones_stay() {
    let mut cfg = gateway_config();
    cfg.gateway.heartbeat_s = 1;
    let b = start_with(cfg);
    let (mut live, _) = agent(b.http, "live", "agent");
    // Registered, then never reads again: it never answers a ping.
    let (_silent, _) = agent(b.http, "silent", "agent");
    let t0 = Instant::now();
    let left = next_of(&mut live, "agent_left");
    assert_eq!(left["agentId"], "silent");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "pruned after {took:?}"
    );
    // The live one (it reads, so it answers pings) is still registered.
    silent_for(&mut live, Duration::from_millis(2500));
    let st = get(b.http, "/api/gateway/status");
    assert_eq!(st["count"], 1);
    assert_eq!(st["agents"][0]["agentId"], "live");
    assert!(st["totals"]["pruned"].as_u64().unwrap() >= 1);
}

#[test]
fn a_flooding_client_is_refused_past_its_rate() {
    let mut cfg = gateway_config();
    cfg.gateway.max_messages_per_s = 5;
    let b = start_with(cfg);
    let (mut a, _) = agent(b.http, "flood", "agent");
    let (mut other, _) = agent(b.http, "other", "agent");
    for n in 0..20 {
        send(&mut a, &json!({"type": "m", "n": n}));
    }
    let e = next_of(&mut a, "error");
    assert_eq!(e["code"], "rate_limited");
    // The register counted as the first message of that second: at most 4 routed.
    let mut got = 0;
    set_timeout(&other, Duration::from_millis(500));
    while let Ok(Message::Text(_)) = other.read() {
        got += 1;
    }
    assert!((1..=4).contains(&got), "{got} routed");
    silent_for(&mut a, Duration::from_millis(300));
}

#[test]
fn an_oversized_message_is_closed_with_1009() {
    let mut cfg = gateway_config();
    cfg.gateway.max_message_bytes = 4096;
    let b = start_with(cfg);
    let (mut a, _) = agent(b.http, "big", "agent");
    let big = json!({"type": "x", "blob": "y".repeat(5000)}).to_string();
    a.send(Message::text(big)).unwrap();
    let (code, reason) = close_of(&mut a);
    assert_eq!(code, 1009);
    assert!(reason.contains("4096"), "{reason}");
    eventually(Duration::from_secs(5), "big gone", || {
        get(b.http, "/api/gateway/status")["count"] == 0
    });
}

/// A gateway with 64 KiB messages and `queued_bytes` of queue per client; "slow"
/// registers first (so it hears every joined) and then never reads; `readers` watchers
/// and a "sender" come after it.
fn one_slow_among(queued_bytes: usize, readers: usize) -> (TestBridge, Ws, Vec<Ws>, Ws) {
    let mut cfg = gateway_config();
    cfg.gateway.max_message_bytes = 64 * 1024;
    cfg.gateway.max_queued_bytes = queued_bytes;
    let b = start_with(cfg);
    let (slow, _) = agent(b.http, "slow", "agent");
    let readers = (0..readers)
        .map(|i| agent(b.http, &format!("r{i}"), "watcher").0)
        .collect();
    let (sender, _) = agent(b.http, "sender", "agent");
    (b, slow, readers, sender)
}

/// "slow" was closed as a slow consumer and left; the stats after it.
fn slow_one_dropped(b: &TestBridge) -> Value {
    eventually(Duration::from_secs(10), "slow consumer dropped", || {
        let st = get(b.http, "/api/gateway/status");
        !st["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agentId"] == "slow")
    });
    let stats = get(b.http, "/bridge/stats");
    assert!(stats["websocket"]["slow_consumers"].as_u64().unwrap() >= 1);
    stats
}

#[test]
fn a_client_that_stops_reading_does_not_delay_the_others() {
    let _heavy = heavy();
    const READERS: usize = 50;
    // 400 broadcasts of 4 KiB, one every 2 ms: 2 MB/s to each of 50 readers. The one
    // that never reads also gets 60 KiB messages of its own, so its kernel buffers (on
    // loopback they take a few MB) and then its 512 KiB queue fill within a second.
    const MESSAGES: usize = 400;
    let (b, _slow, readers, mut sender) = one_slow_among(512 * 1024, READERS);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for (i, mut ws) in readers.into_iter().enumerate() {
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let mut got = 0;
            let mut worst = Duration::ZERO;
            while got < MESSAGES {
                let m = next(&mut ws);
                if m["type"] != "tick" {
                    continue;
                }
                assert_eq!(m["n"], got, "reader {i} got them in order");
                let sent = Duration::from_micros(m["t_us"].as_u64().unwrap());
                worst = worst.max(since_epoch().saturating_sub(sent));
                got += 1;
            }
            tx.send(worst).unwrap();
        }));
    }
    drop(tx);
    let pad = "p".repeat(4000);
    let bulk = json!({"type": "bulk", "target_id": "slow", "pad": "b".repeat(60_000)});
    for n in 0..MESSAGES {
        let t_us = since_epoch().as_micros() as u64;
        send(
            &mut sender,
            &json!({"type": "tick", "n": n, "t_us": t_us, "pad": pad}),
        );
        if n % 4 == 0 {
            send(&mut sender, &bulk);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let worst: Vec<Duration> = rx.iter().collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(worst.len(), READERS, "every reader got all {MESSAGES}");
    let max = worst.iter().max().unwrap();
    assert!(*max < Duration::from_secs(2), "a reader waited {max:?}");
    slow_one_dropped(&b);
}

#[test]
fn a_member_that_stops_reading_broadcasts_is_closed_and_the_shared_log_stays_small() {
    let _heavy = heavy();
    // Broadcasts only (nothing addressed to the slow one): it falls behind in the shared
    // log once its kernel buffers are full, and only the log's scan can find it.
    const MESSAGES: usize = 300;
    let (b, mut slow, readers, mut sender) = one_slow_among(256 * 1024, 3);
    // How many ticks each reader has read: the sender keeps at most one tick ahead of
    // the slowest reader, so the readers keep up however loaded the machine is, while the
    // one that never reads falls behind all the same.
    let progress: Vec<_> = (0..readers.len())
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)))
        .collect();
    let threads: Vec<_> = readers
        .into_iter()
        .zip(progress.clone())
        .enumerate()
        .map(|(i, (mut ws, read))| {
            std::thread::spawn(move || {
                let mut got = 0;
                while got < MESSAGES {
                    let m = next(&mut ws);
                    if m["type"] == "tick" {
                        assert_eq!(m["n"], got, "reader {i} got them in order");
                        got += 1;
                        read.store(got, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let pad = "p".repeat(50_000);
    for n in 0..MESSAGES {
        send(&mut sender, &json!({"type": "tick", "n": n, "pad": pad}));
        let read = |p: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
            p.load(std::sync::atomic::Ordering::SeqCst)
        };
        eventually(Duration::from_secs(10), "the readers keep up", || {
            progress.iter().all(|p| read(p) + 1 >= n)
        });
    }
    for t in threads {
        t.join().unwrap();
    }
    let stats = slow_one_dropped(&b);
    // Everyone left is caught up: the log keeps at most what came since its last trim.
    let kept = stats["websocket"]["broadcast_log"].as_u64().unwrap();
    assert!(kept <= 64, "the shared log still holds {kept} frames");
    // What the slow one finally reads: ticks in order, then the 1008 close, unless the
    // bridge already dropped the socket (it waits CLOSE_GRACE for a close handshake; the
    // close frame sits behind megabytes the slow one never read): then a reset.
    set_timeout(&slow, Duration::from_secs(5));
    let mut last = None;
    let code = loop {
        match slow.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "tick" {
                    let n = v["n"].as_u64().unwrap();
                    assert!(
                        last.is_none_or(|l| n == l + 1),
                        "in order: {last:?} then {n}"
                    );
                    last = Some(n);
                }
            }
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ))
            | Err(tungstenite::Error::Io(_)) => break None,
            Err(e) => panic!("neither a close frame nor a reset: {e}"),
        }
    };
    assert!(matches!(code, Some(1008) | None), "closed with {code:?}");
    assert!(
        last.unwrap_or(0) < MESSAGES as u64 - 1,
        "it did not get them all"
    );
}

/// The load tests take turns: on a 2-core machine, running them side by side would
/// measure the scheduler, not the bridge.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
}

#[test]
fn a_thousand_clients_each_receive_a_broadcast() {
    let _heavy = heavy();
    let b = start();
    const N: usize = 1000;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        clients.push(agent(b.http, &format!("c{i}"), "watcher").0);
    }
    let (mut sender, _) = agent(b.http, "sender", "agent");
    send(&mut sender, &json!({"type": "announce", "text": "to all"}));
    let t0 = Instant::now();
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = next_of(ws, "announce");
        assert_eq!(m["text"], "to all", "client {i}");
    }
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(get(b.http, "/api/gateway/status")["count"], N + 1);
}

#[test]
fn resume_with_since_replays_or_asks_for_resync() {
    let mut cfg = gateway_config();
    cfg.gateway.history_max = 5;
    let b = start_with(cfg);
    let (mut a, _) = agent(b.http, "a", "agent");
    let (mut bo, _) = agent(b.http, "b", "agent");
    send(&mut a, &json!({"type": "m", "n": 0}));
    let seen = next(&mut bo)["gateway_seq"].as_u64().unwrap();
    bo.close(None).unwrap();
    next_of(&mut a, "agent_left");
    send(&mut a, &json!({"type": "m", "n": 1}));
    send(&mut a, &json!({"type": "m", "n": 2}));
    // Make sure the bridge has both before b comes back.
    send(&mut a, &json!({"type": "x", "target_id": "nobody"}));
    next_of(&mut a, "error");

    let (mut back, _) = agent_at(b.http, &format!("/ws/matrix?since={seen}"), "b", "agent");
    let one = next(&mut back);
    let two = next(&mut back);
    assert_eq!((one["n"].as_u64(), two["n"].as_u64()), (Some(1), Some(2)));
    assert!(one["gateway_seq"].as_u64().unwrap() > seen);

    // The history holds 5 frames: far enough back, the client must resync.
    for n in 3..12 {
        send(&mut a, &json!({"type": "m", "n": n}));
    }
    send(&mut a, &json!({"type": "x", "target_id": "nobody"}));
    next_of(&mut a, "error");
    let (mut late, _) = agent_at(b.http, &format!("/ws/matrix?since={seen}"), "c", "agent");
    let r = next(&mut late);
    assert_eq!(r["type"], "resync_required", "{r}");
    assert_eq!(r["since"], seen);
}

#[test]
fn world_events_and_agent_replies_reach_gateway_clients() {
    let b = start();
    let (mut w, _) = agent(b.http, "watch", "watcher");
    let r = post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "u1", "username": "Una", "room": "The Garden", "message": "hello garden"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let say = next_of(&mut w, "say");
    assert_eq!(say["message"], "hello garden");
    assert_eq!(say["room"], "The Garden");
    assert_eq!(say["username"], "Una");
    // Una entered the Garden first (presence).
    // A chat for the bridge's own agent comes back as a bark from "timmy".
    let (mut m, _) = agent(b.http, "matrix-user", "client");
    send(
        &mut m,
        &json!({"type": "chat_message", "target_id": "timmy", "text": "Hello Timmy", "room": "The Tower"}),
    );
    let bark = next_of(&mut m, "bark");
    assert_eq!(bark["agentId"], "timmy");
    assert_eq!(bark["room"], "The Tower");
    assert!(!bark["text"].as_str().unwrap().is_empty());
    assert_eq!(next_of(&mut w, "bark")["text"], bark["text"]);
}

// ---------------------------------------------------------------------------
// The Workshop feed
// ---------------------------------------------------------------------------

struct Workshop {
    bridge: TestBridge,
    state: std::path::PathBuf,
    inbox: std::path::PathBuf,
}

fn workshop(initial: Option<&str>, diff: bool) -> Workshop {
    let dir = scratch_dir("ws-workshop");
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("workshop-state.yaml");
    if let Some(text) = initial {
        std::fs::write(&state, text).unwrap();
    }
    let mut cfg = gateway_config();
    cfg.workshop.state_file = state.display().to_string();
    cfg.workshop.inbox_dir = dir.join("inbox").display().to_string();
    cfg.workshop.poll_s = 1;
    cfg.workshop.diff = diff;
    let inbox = dir.join("inbox");
    let bridge = start_with(cfg);
    Workshop {
        bridge,
        state,
        inbox,
    }
}

/// The first `state` frame, once the watcher has read the file.
fn state_on_connect(addr: SocketAddr, path: &str, want: &Value) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = connect(addr, path);
        let s = next(&mut ws);
        assert_eq!(s["type"], "state");
        if &s["data"] == want {
            return ws;
        }
        assert!(Instant::now() < deadline, "state never became {want}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn workshop_state_then_diffs_and_full_state_on_reconnect() {
    let w = workshop(
        Some("mood: focused\ntower:\n  floors: 3\n  roof: false\n"),
        true,
    );
    let addr = w.bridge.http;
    // The seed's client: new WebSocket("ws://localhost:8765") — the root path.
    let mut ws = state_on_connect(
        addr,
        "/",
        &json!({"mood": "focused", "tower": {"floors": 3, "roof": false}}),
    );
    std::fs::write(
        &w.state,
        "tower:\n  floors: 4\n  roof: false\ntasks: [wall, gate]\n",
    )
    .unwrap();
    let d = next(&mut ws);
    assert_eq!(d["type"], "state_diff", "{d}");
    assert_eq!(
        d["data"],
        json!({"mood": null, "tower": {"floors": 4}, "tasks": ["wall", "gate"]})
    );
    // A reconnect gets the whole state again, on either path.
    drop(ws);
    let mut again = connect(addr, "/ws/workshop");
    let s = next(&mut again);
    assert_eq!(s["type"], "state");
    assert_eq!(
        s["data"],
        json!({"tower": {"floors": 4, "roof": false}, "tasks": ["wall", "gate"]})
    );
}

#[test]
fn workshop_browsers_that_stop_answering_pings_are_closed() {
    let mut cfg = gateway_config();
    cfg.workshop.heartbeat_s = 1;
    let b = start_with(cfg);
    let mut live = connect(b.http, "/ws/workshop");
    next(&mut live);
    let mut silent = connect(b.http, "/ws/workshop");
    next(&mut silent);
    send(&mut silent, &json!({"type": "enter", "visitor": "Ghost"}));
    eventually(Duration::from_secs(5), "Ghost present", || {
        get(b.http, "/bridge/stats")["websocket"]["workshop_visitors"] == json!(["Ghost"])
    });
    // `silent` never reads again, so it never answers a ping; `live` keeps reading.
    silent_for(&mut live, Duration::from_millis(3500));
    let ws = &get(b.http, "/bridge/stats")["websocket"];
    assert_eq!(ws["workshop_connections"], 1, "{ws}");
    assert_eq!(
        ws["workshop_visitors"],
        json!([]),
        "Ghost left with the connection"
    );
    drop(silent);
}

#[test]
fn invalid_yaml_keeps_the_last_good_state() {
    let w = workshop(Some("mood: calm\n"), true);
    let addr = w.bridge.http;
    let mut ws = state_on_connect(addr, "/ws/workshop", &json!({"mood": "calm"}));
    std::fs::write(&w.state, "mood: [unclosed\n").unwrap();
    silent_for(&mut ws, Duration::from_millis(2500));
    let mut other = connect(addr, "/ws/workshop");
    assert_eq!(next(&mut other)["data"], json!({"mood": "calm"}));
    std::fs::write(&w.state, "mood: glad\n").unwrap();
    let d = next(&mut ws);
    assert_eq!(d, json!({"type": "state_diff", "data": {"mood": "glad"}}));
}

#[test]
fn without_diffs_changes_are_full_states_and_a_missing_file_is_empty() {
    let w = workshop(None, false);
    let addr = w.bridge.http;
    let mut ws = connect(addr, "/");
    assert_eq!(next(&mut ws), json!({"type": "state", "data": {}}));
    std::fs::write(&w.state, "a: 1\n").unwrap();
    assert_eq!(next(&mut ws), json!({"type": "state", "data": {"a": 1}}));
}

#[test]
fn a_visitor_whose_message_cannot_be_saved_is_told_and_health_shows_it() {
    let w = workshop(Some("mood: calm\n"), true);
    let addr = w.bridge.http;
    // The inbox path is taken by a file: no message can be written there.
    std::fs::write(&w.inbox, b"not a directory").unwrap();
    assert_eq!(
        get(addr, "/bridge/health")["inbox"],
        json!({"status": "ok"})
    );
    let mut ws = state_on_connect(addr, "/", &json!({"mood": "calm"}));
    send(
        &mut ws,
        &json!({"type": "message", "text": "Anyone home?", "visitor": "Alexander"}),
    );
    // Timmy still answers (the message reached the agent; only the inbox file is
    // missing), and the visitor is told, in whichever order the two finish.
    let (mut e, mut bark) = (Value::Null, Value::Null);
    while e.is_null() || bark.is_null() {
        let m = next(&mut ws);
        match m["type"].as_str() {
            Some("error") => e = m,
            Some("bark") => bark = m,
            _ => {}
        }
    }
    assert!(!bark["text"].as_str().unwrap().is_empty());
    assert_eq!(e["code"], "inbox_unavailable");
    assert!(
        e["error"].as_str().unwrap().contains("could not be saved"),
        "{e}"
    );
    let inbox = get(addr, "/bridge/health")["inbox"].clone();
    assert_eq!(inbox["status"], "unavailable", "{inbox}");
    assert!(
        inbox["error"].as_str().unwrap().contains("cannot write in"),
        "{inbox}"
    );

    // Once the directory can be written again, the next message clears the mark.
    std::fs::remove_file(&w.inbox).unwrap();
    send(
        &mut ws,
        &json!({"type": "message", "text": "Now?", "visitor": "Alexander"}),
    );
    eventually(Duration::from_secs(5), "health back to ok", || {
        get(addr, "/bridge/health")["inbox"] == json!({"status": "ok"})
    });
}

#[test]
fn a_visitor_message_lands_in_the_inbox_and_timmy_barks_back() {
    let w = workshop(Some("mood: calm\n"), true);
    let addr = w.bridge.http;
    let (mut gw, _) = agent(addr, "watch", "watcher");
    let mut ws = state_on_connect(addr, "/", &json!({"mood": "calm"}));
    send(&mut ws, &json!({"type": "enter", "visitor": "Alexander"}));
    send(
        &mut ws,
        &json!({"type": "message", "text": "How's the Tower coming?", "visitor": "Alexander"}),
    );
    let bark = next_of(&mut ws, "bark");
    assert!(!bark["text"].as_str().unwrap().is_empty(), "{bark}");
    // The gateway hears the visitor enter the Workshop, and Timmy's bark there.
    let p = next_of(&mut gw, "presence");
    assert_eq!(
        (p["username"].as_str(), p["room"].as_str()),
        (Some("Alexander"), Some("Workshop"))
    );
    let gbark = next_of(&mut gw, "bark");
    assert_eq!(gbark["room"], "Workshop");
    assert_eq!(gbark["text"], bark["text"]);

    let mut files = Vec::new();
    // Readers of the inbox skip dot-files: a message is written under a temporary
    // `.name.tmp` and renamed once synced.
    eventually(Duration::from_secs(5), "the inbox file", || {
        files = std::fs::read_dir(&w.inbox)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        files.len() == 1
    });
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with(".json") && !name.starts_with('.'), "{name}");
    let msg: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["text"], "How's the Tower coming?");
    assert_eq!(msg["visitor"], "Alexander");
    assert!(msg["received_at"].as_str().unwrap().ends_with('Z'));

    // The visitor is present in the Workshop room until they leave.
    let players = get(addr, "/bridge/room/Workshop/players");
    assert_eq!(players["players"][0]["username"], "Alexander");
    send(&mut ws, &json!({"type": "leave", "visitor": "Alexander"}));
    eventually(Duration::from_secs(5), "Alexander left", || {
        get(addr, "/bridge/room/Workshop/players")["players"]
            .as_array()
            .unwrap()
            .is_empty()
    });

    // Bad frames get error frames.
    send(&mut ws, &json!({"type": "dance"}));
    assert_eq!(next_of(&mut ws, "error")["code"], "unknown_type");
}

#[test]
fn a_workshop_bark_carries_the_state_files_mood_else_the_personas() {
    let w = workshop(Some("mood: contemplative\n"), true);
    let addr = w.bridge.http;
    let mut ws = state_on_connect(addr, "/", &json!({"mood": "contemplative"}));
    send(
        &mut ws,
        &json!({"type": "message", "text": "How's the Tower coming?", "visitor": "Alexander"}),
    );
    let bark = next_of(&mut ws, "bark");
    assert_eq!(bark["mood"], "contemplative", "{bark}");
    assert!(!bark["text"].as_str().unwrap().is_empty(), "{bark}");
    // A mood that is not a string (or none at all): the persona's default, `agent.mood`.
    std::fs::write(&w.state, "mood: {level: 3}\n").unwrap();
    let mut ws = state_on_connect(addr, "/", &json!({"mood": {"level": 3}}));
    send(
        &mut ws,
        &json!({"type": "message", "text": "And now?", "visitor": "Alexander"}),
    );
    assert_eq!(next_of(&mut ws, "bark")["mood"], "calm");
}

#[test]
fn plain_get_root_is_the_status_page() {
    let b = start();
    let r = call(b.http, "GET", "/", None);
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    let html = r.text();
    assert!(html.contains("<title>worldbridge</title>"));
    assert!(
        html.contains("/ws/matrix"),
        "the page opens the gateway stream"
    );
    // Self-contained: nothing is loaded from anywhere else.
    assert!(!html.contains("<script src"), "no external script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
}

// ---------------------------------------------------------------------------
// The status page in a real browser
// ---------------------------------------------------------------------------

/// Headless Chromium over the DevTools protocol: load the page, see its WebSocket
/// connect, post a `say` over HTTP, see it appear; save a screenshot.
#[test]
#[ignore = "needs chromium"]
fn status_page_in_chromium_shows_live_events() {
    let b = start();
    in_chromium(&format!("http://{}/", b.http), |page| {
        eventually(Duration::from_secs(20), "the page's WebSocket", || {
            eval(page, "document.body.dataset.ws || ''") == json!("open")
        });
        let r = post(
            b.http,
            "/bridge/say",
            &json!({"user_id": "vis", "username": "Visitor", "room": "The Garden", "message": "hello from the test"}),
        );
        assert_eq!(r.status, 200);
        eventually(Duration::from_secs(10), "the say on the page", || {
            eval(page, "document.getElementById('stream').innerText")
                .as_str()
                .is_some_and(|t| t.contains("hello from the test"))
        });
        // The rooms panel refreshes after the event: Visitor is in The Garden.
        eventually(
            Duration::from_secs(10),
            "Visitor in the rooms panel",
            || {
                eval(page, "document.getElementById('room-list').innerText")
                    .as_str()
                    .is_some_and(|t| t.contains("Visitor"))
            },
        );
        let png = cdp(page, "Page.captureScreenshot", json!({"format": "png"}));
        let data = base64_decode(png["data"].as_str().unwrap());
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
        std::fs::write(&out, data).unwrap();
        eprintln!("screenshot: {}", out.display());
    });
}

/// A page that opens the Workshop feed and writes what happened into `body.dataset.ws`.
fn feed_page(bridge: SocketAddr) -> String {
    format!(
        r#"<!doctype html><html><body><script>
const ws = new WebSocket("ws://{bridge}/ws/workshop");
ws.onmessage = (e) => {{ document.body.dataset.ws = "got:" + JSON.parse(e.data).type; }};
ws.onerror = () => {{ document.body.dataset.ws = document.body.dataset.ws || "error"; }};
ws.onclose = () => {{ document.body.dataset.ws = document.body.dataset.ws || "closed"; }};
</script></body></html>"#
    )
}

#[test]
#[ignore = "needs chromium"]
fn a_page_from_another_origin_cannot_open_the_feed_in_chromium_and_a_file_page_can() {
    let b = start();
    // "Another origin": a page served by a web server on this machine under a name
    // Chromium resolves to loopback itself (*.localhost), as a site in another tab would.
    let site = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let site_port = site.local_addr().unwrap().port();
    let page = feed_page(b.http);
    std::thread::spawn(move || {
        for conn in site.incoming().take(8) {
            use std::io::{Read, Write};
            let Ok(mut conn) = conn else { break };
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    let dir = scratch_dir("origin-page");
    std::fs::create_dir_all(&dir).unwrap();
    let file_page = dir.join("feed.html");
    std::fs::write(&file_page, feed_page(b.http)).unwrap();

    in_chromium(&format!("http://evil.localhost:{site_port}/"), |page| {
        let mut seen = Value::Null;
        eventually(
            Duration::from_secs(20),
            "the other site's page to try",
            || {
                seen = eval(
                    page,
                    "document.body ? (document.body.dataset.ws || '') : ''",
                );
                seen != json!("")
            },
        );
        assert_eq!(seen, json!("error"), "refused before the upgrade");
        let metrics = call(b.http, "GET", "/metrics", None).text();
        assert!(
            metrics.contains("worldbridge_ws_origin_refused_total 1"),
            "{metrics}"
        );

        cdp(
            page,
            "Page.navigate",
            json!({"url": format!("file://{}", file_page.display())}),
        );
        eventually(Duration::from_secs(20), "the file:// page's feed", || {
            eval(
                page,
                "document.body ? (document.body.dataset.ws || '') : ''",
            ) == json!("got:state")
        });
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Headless Chromium on `url` with a throw-away profile; `check` gets the page's DevTools
/// connection. The browser is stopped and its profile removed even when a check fails.
fn in_chromium(url: &str, check: impl FnOnce(&mut Ws)) {
    let profile = scratch_dir("chromium");
    let mut child = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("chromium runs");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let devtools = devtools_port(child.stderr.take().unwrap());
        let mut page = cdp_page(devtools);
        check(&mut page);
    }));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The port from Chromium's "DevTools listening on ws://127.0.0.1:PORT/..." line.
fn devtools_port(stderr: std::process::ChildStderr) -> u16 {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                if let Some(port) = rest.split('/').next().and_then(|p| p.parse::<u16>().ok()) {
                    let _ = tx.send(port);
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("chromium printed its DevTools address")
}

/// A DevTools connection to the page target.
fn cdp_page(port: u16) -> Ws {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut url = None;
    eventually(Duration::from_secs(10), "the page target", || {
        // DevTools only answers a Host that is an IP address or localhost.
        let mut c = common::Client::connect(addr);
        c.send_raw(format!("GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        let list = c.read_response(false).expect("a response").json();
        url = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
        url.is_some()
    });
    let (ws, _) = tungstenite::connect(url.unwrap()).expect("devtools websocket");
    set_timeout(&ws, Duration::from_secs(20));
    ws
}

fn cdp(ws: &mut Ws, method: &str, params: Value) -> Value {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ID: AtomicU64 = AtomicU64::new(1);
    let id = ID.fetch_add(1, Ordering::SeqCst);
    send(ws, &json!({"id": id, "method": method, "params": params}));
    loop {
        let m = next(ws);
        if m["id"] == id {
            assert!(m.get("error").is_none(), "{method}: {m}");
            return m["result"].clone();
        }
    }
}

fn eval(ws: &mut Ws, expr: &str) -> Value {
    cdp(
        ws,
        "Runtime.evaluate",
        json!({"expression": expr, "returnByValue": true}),
    )["result"]["value"]
        .clone()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

#[test]
fn the_bridge_stops_cleanly_with_websocket_clients_connected() {
    let b = start();
    let (mut a, _) = agent(b.http, "a", "agent");
    let mut w = connect(b.http, "/");
    next(&mut w);
    let t = std::thread::spawn(move || {
        let ca = close_of(&mut a);
        let cw = close_of(&mut w);
        (ca, cw)
    });
    let t0 = Instant::now();
    b.stop().expect("clean stop");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let ((code_a, _), (code_w, reason)) = t.join().unwrap();
    assert_eq!((code_a, code_w), (1001, 1001));
    assert!(reason.contains("stopping"), "{reason}");
}
