//! Travel between real bridges on 127.0.0.1: a character moves with its conversation
//! and trust, exactly once; a world that is down refuses cleanly; killed bridges
//! (SIGKILL of the real binary) leave the character in exactly one world on restart.

mod common;

use common::{eventually, free_port, get, post, scratch_dir, start_with, test_config};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use worldbridge::config::{Config, PeerConfig};

const WAIT: Duration = Duration::from_secs(20);

fn peer(world: &str, port: u16, token: &str) -> PeerConfig {
    PeerConfig {
        world: world.into(),
        url: format!("http://127.0.0.1:{port}"),
        token: token.into(),
    }
}

/// A durable bridge on a fixed port, syncing every second, "The Bridge" its portal.
fn config(world: &str, port: u16, dir: &Path, peers: Vec<PeerConfig>) -> Config {
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
}
