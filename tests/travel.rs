//! Travel between real bridges on 127.0.0.1: a character moves with its conversation
//! and trust, exactly once; a world that is down refuses cleanly; killed bridges
//! (SIGKILL of the real binary) leave the character in exactly one world on restart.

mod common;

use common::{
    bin, call, eventually, fed_config as config, fed_peer as peer, free_port, get, post,
    request_bytes, scratch_dir, spawn, start_with, temp_file, Client, LineClient,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn players(addr: SocketAddr, room: &str) -> Vec<String> {
    let doc = get(
        addr,
        &format!("/bridge/room/{}/players", room.replace(' ', "%20")),
    );
    doc["players"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["user_id"].as_str().map(str::to_string))
        .collect()
}

fn session(addr: SocketAddr, user: &str) -> Option<Value> {
    let doc = get(addr, "/bridge/sessions");
    doc["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["user_id"] == user).cloned())
}

fn presence(addr: SocketAddr, room: &str, user: &str, what: &str) -> usize {
    let doc = get(
        addr,
        &format!("/bridge/room/{}/events", room.replace(' ', "%20")),
    );
    doc["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["user_id"] == user && e["event"] == what)
        .count()
}

#[test]
fn a_character_travels_with_its_history_and_a_world_that_is_down_refuses() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (da, db) = (scratch_dir("travel-a"), scratch_dir("travel-b"));
    let a = start_with(config(
        "a",
        pa,
        &da,
        vec![peer("b", pb, "ab-secret"), peer("c", pc, "ac-secret")],
    ));
    let b = start_with(config("b", pb, &db, vec![peer("a", pa, "ab-secret")]));

    let r = post(
        a.http,
        "/bridge/chat",
        &json!({"user_id": "timmy", "username": "Timmy", "room": "The Bridge", "message": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(players(a.http, "The Bridge").contains(&"timmy".to_string()));
    eventually(WAIT, "a and b see each other", || {
        let h = get(a.http, "/bridge/health");
        h["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["world"] == "b" && p["state"] == "online")
        })
    });

    // A → B: the answer comes once decided, with the world and room.
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "timmy", "to_world": "b"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["world"], "b", "{doc}");
    assert_eq!(doc["room"], "The Bridge", "{doc}");
    eventually(WAIT, "timmy arrives in b", || {
        players(b.http, "The Bridge").contains(&"timmy".to_string())
    });
    assert!(!players(a.http, "The Bridge").contains(&"timmy".to_string()));
    assert!(session(a.http, "timmy").is_none(), "the session left a");
    let s = session(b.http, "timmy").expect("the session arrived in b");
    assert!(s["messages"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert_eq!(presence(a.http, "The Bridge", "timmy", "leave"), 1);
    assert_eq!(presence(b.http, "The Bridge", "timmy", "enter"), 1);

    // Travelling again from a: timmy is not there any more.
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "timmy", "to_world": "b"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // To c, which is not running: refused with the sentence; the character stays.
    let r = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "timmy", "username": "Timmy", "room": "The Bridge", "message": "again"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        a.http,
        "/bridge/chat",
        &json!({"user_id": "tommy", "username": "Tommy", "room": "The Bridge", "message": "hi"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "tommy", "to_world": "c"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("world c is offline"), "{}", r.text());
    assert!(players(a.http, "The Bridge").contains(&"tommy".to_string()));
    assert!(session(a.http, "tommy").is_some());

    // Back from b to a through a game's travel exit (the line protocol).
    let mut game = LineClient::connect(b.line.expect("line listener"));
    game.send(&json!({"type": "travel", "user_id": "timmy", "to_world": "a"}));
    let (err, _) = game.recv_type("error");
    assert_eq!(err["code"], "missing_field", "{err}");
    game.send(&json!({"type": "travel", "id": 7, "user_id": "timmy", "to_world": "a"}));
    let (ok, _) = game.recv_type("ok");
    assert_eq!(ok["id"], 7, "{ok}");
    assert_eq!(ok["world"], "a", "{ok}");
    assert_eq!(ok["room"], "The Bridge", "{ok}");
    eventually(WAIT, "timmy is back in a", || {
        players(a.http, "The Bridge").contains(&"timmy".to_string())
    });
    assert!(!players(b.http, "The Bridge").contains(&"timmy".to_string()));
    assert_eq!(presence(a.http, "The Bridge", "timmy", "enter"), 2);
}

#[test]
fn travel_to_a_world_whose_last_sync_failed_is_refused_at_once() {
    // c is a peer on a closed port: the first sync round fails with "connection refused".
    let (pa, pc) = (free_port(), free_port());
    let a = start_with(config(
        "a",
        pa,
        &scratch_dir("travel-fast-a"),
        vec![peer("c", pc, "ac-secret")],
    ));
    eventually(WAIT, "a sync round with c has failed", || {
        get(a.http, "/bridge/health")["peers"][0]["last_error"].is_string()
    });
    let r = post(
        a.http,
        "/bridge/chat",
        &json!({"user_id": "tommy", "username": "Tommy", "room": "The Bridge", "message": "hi"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let asked = std::time::Instant::now();
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "tommy", "to_world": "c"}),
    );
    let took = asked.elapsed();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "travel_refused", "{}", r.text());
    assert!(r.text().contains("world c is offline"), "{}", r.text());
    // The travel timeout is at least 10 s; a refusal that waited for it took that long.
    assert!(
        took < Duration::from_secs(1),
        "refused after {took:?}, not at once"
    );
    assert!(players(a.http, "The Bridge").contains(&"tommy".to_string()));

    // c comes up: once a hears from it (c's own sync reaches a before a's next pull
    // does), the traveller is let through.
    let c = start_with(config(
        "c",
        pc,
        &scratch_dir("travel-fast-c"),
        vec![peer("a", pa, "ac-secret")],
    ));
    eventually(WAIT, "a hears from c", || {
        get(a.http, "/bridge/health")["peers"][0]["state"] == "online"
    });
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "tommy", "to_world": "c"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(WAIT, "tommy arrives in c", || {
        players(c.http, "The Bridge").contains(&"tommy".to_string())
    });
}

/// The real binary as world `world` on `port` (0: any), its data in `dir`.
fn serve(world: &str, port: u16, dir: &Path, peers: &[(&str, u16, &str)]) -> (Child, SocketAddr) {
    let mut toml = format!(
        "world = \"{world}\"\n[http]\nlisten = [\"127.0.0.1:{port}\"]\nrate_limit_requests = 1000000\n[line]\nlisten = []\n[federation]\nsync_interval_s = 1\ntimeout_ms = 1000\nportal_rooms = [\"The Bridge\"]\n"
    );
    for (w, p, t) in peers {
        toml.push_str(&format!(
            "[[federation.peers]]\nworld = \"{w}\"\nurl = \"http://127.0.0.1:{p}\"\ntoken = \"{t}\"\n"
        ));
    }
    let cfg = temp_file(&format!("travel-{world}.toml"), &toml);
    let (child, addr, _logs) = spawn(bin().arg("--config").arg(&cfg).arg("--data-dir").arg(dir));
    (child, addr)
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A travel message to `addr` as peer `token`.
fn as_peer(addr: SocketAddr, token: &str, msg: &Value) -> Value {
    let body = msg.to_string();
    let auth = format!("Bearer {token}");
    let mut c = Client::connect(addr);
    c.send_raw(&request_bytes(
        "POST",
        "/bridge/travel",
        Some(&body),
        &[("Authorization", auth.as_str())],
    ));
    let r = c.read_response(false).expect("an answer");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn offer(kind: &str) -> Value {
    json!({"type": kind, "travel_id": "a-1764612003000-1", "from": "a", "to": "b",
           "user_id": "timmy", "username": "Timmy", "room": "The Bridge",
           "history": [{"role": "user", "content": "take me to b"},
                       {"role": "assistant", "content": "off you go"}],
           "trust": []})
}

#[test]
fn the_destination_killed_between_accept_and_commit_takes_the_character_after_restart() {
    let dir = scratch_dir("travel-kill-b");
    let (child, addr) = serve("b", 0, &dir, &[("a", free_port(), "ab-secret")]);
    let r = as_peer(addr, "ab-secret", &offer("offer"));
    assert_eq!(r["type"], "accepted", "{r}");
    assert_eq!(r["room"], "The Bridge", "{r}");
    assert!(players(addr, "The Bridge").is_empty(), "held, not placed");
    kill(child);

    let (child, addr) = serve("b", 0, &dir, &[("a", free_port(), "ab-secret")]);
    let again = as_peer(addr, "ab-secret", &offer("offer"));
    assert_eq!(again["type"], "accepted", "the promise survived: {again}");
    assert_eq!(again["duplicate"], true, "{again}");
    let done = as_peer(addr, "ab-secret", &offer("commit"));
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(players(addr, "The Bridge"), ["timmy"]);
    let s = session(addr, "timmy").expect("the conversation arrived");
    assert_eq!(s["messages"], 2, "{s}");
    kill(child);

    // Killed after the arrival: the character is placed again, once; a repeated commit
    // is answered done.
    let (child, addr) = serve("b", 0, &dir, &[("a", free_port(), "ab-secret")]);
    assert_eq!(players(addr, "The Bridge"), ["timmy"]);
    assert_eq!(as_peer(addr, "ab-secret", &offer("commit"))["type"], "done");
    assert_eq!(presence(addr, "The Bridge", "timmy", "enter"), 1);
    // The wrong token, or a message for another world's travel, is refused.
    let r = call(
        addr,
        "POST",
        "/bridge/travel",
        Some(&offer("abort").to_string()),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    kill(child);
}

#[test]
fn the_origin_killed_mid_travel_leaves_the_character_in_exactly_one_world() {
    for (round, delay_ms) in [(0, 0u64), (1, 3), (2, 40)] {
        let (pa, pb) = (free_port(), free_port());
        let da = scratch_dir(&format!("travel-kill-a{round}"));
        let db = scratch_dir(&format!("travel-kill-a{round}-b"));
        let b = start_with(config("b", pb, &db, vec![peer("a", pa, "ab-secret")]));
        let (child, a) = serve("a", pa, &da, &[("b", pb, "ab-secret")]);
        let r = post(
            a,
            "/bridge/chat",
            &json!({"user_id": "timmy", "username": "Timmy", "room": "The Bridge", "message": "hi"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        eventually(WAIT, "a sees b", || {
            get(a, "/bridge/health")["peers"][0]["state"] == "online"
        });
        let mut c = Client::connect(a);
        c.send(
            "POST",
            "/bridge/travel",
            Some(&json!({"user_id": "timmy", "to_world": "b"}).to_string()),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(child);

        let (child, a) = serve("a", pa, &da, &[("b", pb, "ab-secret")]);
        let here = |addr: SocketAddr| players(addr, "The Bridge").contains(&"timmy".to_string());
        eventually(WAIT, "settled: timmy in exactly one world", || {
            here(a) != here(b.http)
        });
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            here(a) != here(b.http),
            "round {round}: in a {}, in b {}",
            here(a),
            here(b.http)
        );
        kill(child);
    }
}

#[test]
fn the_destination_killed_mid_travel_leaves_the_character_in_exactly_one_world() {
    for (round, delay_ms) in [(0, 0u64), (1, 5), (2, 60)] {
        let (pa, pb) = (free_port(), free_port());
        let da = scratch_dir(&format!("travel-killb-a{round}"));
        let db = scratch_dir(&format!("travel-killb-b{round}"));
        let a = start_with(config("a", pa, &da, vec![peer("b", pb, "ab-secret")]));
        let (child, _) = serve("b", pb, &db, &[("a", pa, "ab-secret")]);
        let r = post(
            a.http,
            "/bridge/chat",
            &json!({"user_id": "timmy", "username": "Timmy", "room": "The Bridge", "message": "hi"}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        eventually(WAIT, "a sees b", || {
            get(a.http, "/bridge/health")["peers"][0]["state"] == "online"
        });
        let mut c = Client::connect(a.http);
        c.send(
            "POST",
            "/bridge/travel",
            Some(&json!({"user_id": "timmy", "to_world": "b"}).to_string()),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(child);

        let (child, b) = serve("b", pb, &db, &[("a", pa, "ab-secret")]);
        let here = |addr: SocketAddr| players(addr, "The Bridge").contains(&"timmy".to_string());
        eventually(WAIT, "settled: timmy in exactly one world", || {
            here(a.http) != here(b)
        });
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            here(a.http) != here(b),
            "round {round}: in a {}, in b {}",
            here(a.http),
            here(b)
        );
        kill(child);
    }
}
