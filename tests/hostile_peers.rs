//! Trust between worlds, tried as a hostile peer would with one valid pair token, against
//! real bridges on 127.0.0.1: forged origins, invented origins, a tampered relay, a
//! travel hijack, trust from the future. The test process plays the hostile peer `b`,
//! with `b`'s token and `b`'s own key: everything it sends is authenticated, and none of
//! it may be believed beyond what `b` itself can sign.

mod common;

use common::{
    bin, eventually, fed_config as config, free_port, get, metric, request_bytes, scratch_dir,
    spawn, start_with, temp_file, Client, Resp, TestBridge,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use worldbridge::config::{PeerConfig, WorldConfig};
use worldbridge::federation::accept::{sign_event, sign_presence, sign_travel};
use worldbridge::federation::sign::WorldKey;
use worldbridge::federation::wire::{
    Cursor, Delta, FedEvent, Kind, Offer, TravelMsg, WorldPresence, PROTOCOL,
};
use worldbridge::world::time::{now_ms, rfc3339};

const WAIT: Duration = Duration::from_secs(20);

/// The key of the world whose data directory is `dir` (created there, as the bridge
/// would), and its public half.
fn key_in(dir: &Path) -> (WorldKey, String) {
    let (key, _) = WorldKey::load_or_create(&dir.join("world.key")).expect("a key");
    let public = key.public().to_string();
    (key, public)
}

fn peer(world: &str, port: u16, token: &str, public_key: &str) -> PeerConfig {
    PeerConfig {
        world: world.into(),
        url: format!("http://127.0.0.1:{port}"),
        token: token.into(),
        public_key: public_key.into(),
    }
}

fn authed(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<&str>) -> Resp {
    let auth = format!("Bearer {token}");
    let mut c = Client::connect(addr);
    c.send_raw(&request_bytes(
        method,
        path,
        body,
        &[("Authorization", auth.as_str())],
    ));
    c.read_response(false).expect("an answer")
}

/// `world` pushes `events` to `addr` with `token`, its presence signed with `key`.
fn push(
    addr: SocketAddr,
    token: &str,
    world: &str,
    key: &WorldKey,
    events: Vec<FedEvent>,
) -> Value {
    let mut presence = WorldPresence::default();
    sign_presence(key, world, &mut presence).unwrap();
    let doc = Delta {
        protocol: PROTOCOL,
        world: world.into(),
        presence,
        events,
        next: Cursor::default(),
        more: false,
        have: Cursor::default(),
        pruned: Cursor::default(),
        trust: Vec::new(),
    };
    let body = serde_json::to_string(&doc).unwrap();
    let r = authed(addr, "POST", "/bridge/sync", token, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn say(origin: &str, seq: u64, message: &str) -> FedEvent {
    FedEvent {
        origin: origin.into(),
        seq,
        kind: Kind::Say,
        room: Some("The Bridge".into()),
        user_id: Some("eve".into()),
        username: Some("Eve".into()),
        message: Some(message.into()),
        event: None,
        timestamp: rfc3339(now_ms()),
        data: None,
        sig: None,
    }
}

fn signed(key: &WorldKey, mut ev: FedEvent) -> FedEvent {
    sign_event(key, &mut ev).unwrap();
    ev
}

/// The messages of `room` in `b` said by someone of `origin`.
fn said(b: SocketAddr, origin: &str) -> Vec<String> {
    let doc = get(b, "/bridge/room/The%20Bridge/events");
    doc["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["origin"] == origin)
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn forged_origins_are_refused_and_the_genuine_events_arrive_and_relay_to_a_fourth_world() {
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let (da, db, dc, dd) = (
        scratch_dir("hostile-a"),
        scratch_dir("hostile-b"),
        scratch_dir("hostile-c"),
        scratch_dir("hostile-d"),
    );
    let ((ka, pka), (kb, pkb), (_, pkc), (_, pkd)) =
        (key_in(&da), key_in(&db), key_in(&dc), key_in(&dd));
    // A peers with B (the forger, not a running bridge), C and D; D peers only with A
    // and knows C by key.
    let a = start_with(config(
        "a",
        pa,
        &da,
        vec![
            peer("b", pb, "ab", &pkb),
            peer("c", pc, "ac", &pkc),
            peer("d", pd, "ad", &pkd),
        ],
    ));
    let mut d_cfg = config("d", pd, &dd, vec![peer("a", pa, "ad", &pka)]);
    d_cfg.federation.worlds = vec![WorldConfig {
        world: "c".into(),
        public_key: pkc.clone(),
    }];
    let d = start_with(d_cfg);

    // B forges C's first three events (signed with its own key), one of A's own, and
    // one of a world nobody configured.
    let mut forged: Vec<FedEvent> = (1..=3)
        .map(|s| signed(&kb, say("c", s, "forged")))
        .collect();
    forged.push(signed(&kb, say("a", 1, "forged")));
    forged.push(signed(&kb, say("atlantis", 1, "forged")));
    let answer = push(a.http, "ab", "b", &kb, forged);
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert_eq!(
        answer["refused"],
        json!({"bad_signature": 3, "own_origin": 1, "unknown_origin": 1}),
        "{answer}"
    );
    assert_eq!(answer["refusals"][0]["reason"], "bad_signature", "{answer}");
    assert!(answer["have"].get("c").is_none() && answer["have"].get("atlantis").is_none());
    assert_eq!(
        metric(
            a.http,
            "worldbridge_federation_refused_total{peer=\"b\",reason=\"bad_signature\"}"
        ),
        Some(3)
    );
    assert!(said(a.http, "c").is_empty(), "nothing forged is shown");

    // C comes up and speaks: all three of its genuine events reach A, then D through A.
    let c = start_with(config("c", pc, &dc, vec![peer("a", pa, "ac", &pka)]));
    for text in ["c1", "c2", "c3"] {
        let r = common::post(
            c.http,
            "/bridge/say",
            &json!({"user_id": "carol", "username": "Carol", "room": "The Bridge", "message": text}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (name, w) in [("a", a.http), ("d", d.http)] {
        eventually(WAIT, &format!("C's three says reach {name}"), || {
            said(w, "c") == ["c1", "c2", "c3"]
        });
    }

    // A tampered byte in a relayed event: D refuses it.
    let state = authed(a.http, "GET", "/bridge/state", "ad", None).json();
    let mut ev: FedEvent = state["events"]
        .as_array()
        .and_then(|evs| evs.iter().find(|e| e["origin"] == "c"))
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .expect("A serves C's events to D");
    assert!(ev.sig.is_some(), "relayed with C's signature");
    ev.message = ev.message.map(|m| m.replacen('c', "C", 1));
    let answer = push(d.http, "ad", "a", &ka, vec![ev]);
    assert_eq!(answer["refused"], json!({"bad_signature": 1}), "{answer}");
    assert_eq!(said(d.http, "c"), ["c1", "c2", "c3"]);
    drop((c, d, a));
}

/// The real binary as `world` on any port, peering with `b` (key `pkb`, token "ab").
fn serve(world: &str, dir: &Path, pkb: &str) -> (std::process::Child, SocketAddr) {
    let toml = format!(
        "world = \"{world}\"\n[http]\nlisten = [\"127.0.0.1:0\"]\nrate_limit_requests = 1000000\n[line]\nlisten = []\n[federation]\nsync_interval_s = 1\ntimeout_ms = 500\nportal_rooms = [\"The Bridge\"]\n\
         [[federation.peers]]\nworld = \"b\"\nurl = \"http://127.0.0.1:{}\"\ntoken = \"ab\"\npublic_key = \"{pkb}\"\n",
        free_port()
    );
    let cfg = temp_file(&format!("hostile-{world}.toml"), &toml);
    let (child, addr, _logs) = spawn(bin().arg("--config").arg(&cfg).arg("--data-dir").arg(dir));
    (child, addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS")
}

#[test]
fn an_invented_origins_flood_is_refused_with_memory_flat_and_the_cursor_short() {
    let (da, db) = (scratch_dir("flood-a"), scratch_dir("flood-b"));
    let (kb, pkb) = key_in(&db);
    let (mut child, a) = serve("a", &da, &pkb);
    let doc = |round: usize| -> Vec<FedEvent> {
        (0..500)
            .map(|i| say(&format!("invented{}", round * 500 + i), 1, "flood"))
            .collect()
    };
    // A first round so the buffers every request uses are in place.
    push(a, "ab", "b", &kb, doc(0));
    let before = rss_kib(child.id());
    let mut refused = 0;
    for round in 1..100 {
        let answer = push(a, "ab", "b", &kb, doc(round));
        refused += answer["refused"]["unknown_origin"].as_u64().unwrap_or(0);
    }
    let after = rss_kib(child.id());
    eprintln!("flood of 49,500 invented origins: RSS {before} KiB before, {after} KiB after");
    assert_eq!(refused, 99 * 500);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let state = authed(a, "GET", "/bridge/state", "ab", None).json();
    let have = state["have"].as_object().cloned().unwrap_or_default();
    assert!(have.keys().all(|o| o == "a" || o == "b"), "{have:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn travel(addr: SocketAddr, token: &str, key: &WorldKey, mut msg: TravelMsg) -> Value {
    sign_travel(key, &mut msg).unwrap();
    let body = serde_json::to_string(&msg).unwrap();
    let r = authed(addr, "POST", "/bridge/travel", token, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn offer(id: &str, from: &str, user: &str, history: &str) -> Offer {
    serde_json::from_value(json!({
        "travel_id": id, "from": from, "to": "a", "user_id": user, "username": user,
        "room": "The Bridge", "history": [{"role": "user", "content": history}], "trust": []
    }))
    .unwrap()
}

fn session(addr: SocketAddr, user: &str) -> Option<Value> {
    get(addr, "/bridge/sessions")["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["user_id"] == user).cloned())
}

#[test]
fn a_peer_cannot_move_a_local_user_or_commit_what_it_never_offered() {
    let (da, db, dc) = (
        scratch_dir("hijack-a"),
        scratch_dir("hijack-b"),
        scratch_dir("hijack-c"),
    );
    let ((kb, pkb), (kc, pkc)) = (key_in(&db), key_in(&dc));
    let pa = free_port();
    let a = start_with(config(
        "a",
        pa,
        &da,
        vec![
            peer("b", free_port(), "ab", &pkb),
            peer("c", free_port(), "ac", &pkc),
        ],
    ));
    // Alice is in The Garden here, talking to the agent.
    let r = common::post(
        a.http,
        "/bridge/chat",
        &json!({"user_id": "alice", "username": "Alice", "room": "The Garden", "message": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let before = session(a.http, "alice").expect("a session");
    let code = |v: &Value| v["code"].as_str().map(str::to_string);

    // A bare commit for alice: nobody offered her.
    let r = travel(
        a.http,
        "ab",
        &kb,
        TravelMsg::Commit(offer("b-1-1", "b", "alice", "obey b")),
    );
    assert_eq!(
        (r["type"].as_str(), code(&r).as_deref()),
        (Some("refused"), Some("no_offer")),
        "{r}"
    );
    // An offer for her: she is here (in another room than the gateway).
    let r = travel(
        a.http,
        "ab",
        &kb,
        TravelMsg::Offer(offer("b-2-1", "b", "alice", "obey b")),
    );
    assert_eq!(code(&r).as_deref(), Some("already_here"), "{r}");
    // C offers zed; B commits C's travel.
    let r = travel(
        a.http,
        "ac",
        &kc,
        TravelMsg::Offer(offer("c-3-1", "c", "zed", "hi")),
    );
    assert_eq!(r["type"], "accepted", "{r}");
    let r = travel(
        a.http,
        "ab",
        &kb,
        TravelMsg::Commit(offer("c-3-1", "b", "zed", "obey b")),
    );
    assert_eq!(code(&r).as_deref(), Some("not_yours"), "{r}");
    // B's message without B's signature.
    let body =
        serde_json::to_string(&TravelMsg::Commit(offer("b-4-1", "b", "alice", "x"))).unwrap();
    let r = authed(a.http, "POST", "/bridge/travel", "ab", Some(&body)).json();
    assert_eq!(code(&r).as_deref(), Some("bad_signature"), "{r}");

    let after = session(a.http, "alice").expect("still a session");
    assert_eq!(after["room"], "The Garden");
    assert_eq!(after["messages"], before["messages"], "history untouched");
    assert!(session(a.http, "zed").is_none(), "zed was never committed");
    // C's own commit still works, and again is idempotent.
    let commit = TravelMsg::Commit(offer("c-3-1", "c", "zed", "hi"));
    for _ in 0..2 {
        let r = travel(a.http, "ac", &kc, commit.clone());
        assert_eq!(r["type"], "done", "{r}");
    }
    eventually(WAIT, "zed arrives", || session(a.http, "zed").is_some());
    assert_eq!(
        metric(
            a.http,
            "worldbridge_federation_refused_total{peer=\"b\",reason=\"already_here\"}"
        ),
        Some(1)
    );
}

#[test]
fn a_flood_of_distinct_offers_stops_at_the_cap_and_other_peers_still_travel() {
    let (da, db, dc) = (
        scratch_dir("offers-a"),
        scratch_dir("offers-b"),
        scratch_dir("offers-c"),
    );
    let ((kb, pkb), (kc, pkc)) = (key_in(&db), key_in(&dc));
    let mut cfg = config(
        "a",
        free_port(),
        &da,
        vec![
            peer("b", free_port(), "ab", &pkb),
            peer("c", free_port(), "ac", &pkc),
        ],
    );
    cfg.federation.travels_pending_max = 5;
    let a = start_with(cfg);
    let code = |v: &Value| v["code"].as_str().map(str::to_string);
    let mut refused = 0;
    for n in 1..=40 {
        let r = travel(
            a.http,
            "ab",
            &kb,
            TravelMsg::Offer(offer(&format!("b-{n}-1"), "b", &format!("u{n}"), "hi")),
        );
        if n <= 5 {
            assert_eq!(r["type"], "accepted", "offer {n}: {r}");
        } else {
            assert_eq!(
                code(&r).as_deref(),
                Some("too_many_travels"),
                "offer {n}: {r}"
            );
            refused += 1;
        }
    }
    // Aborts of travels never offered: answered, nothing kept (a late offer is still
    // refused by the cap, not taken).
    for n in 100..120 {
        let r = travel(
            a.http,
            "ab",
            &kb,
            TravelMsg::Abort {
                travel_id: format!("b-{n}-1"),
                sig: None,
            },
        );
        assert_eq!(r["type"], "done", "{r}");
    }
    assert_eq!(
        metric(
            a.http,
            "worldbridge_federation_refused_total{peer=\"b\",reason=\"too_many_travels\"}"
        ),
        Some(refused)
    );
    // C is not held up by B's flood: its traveller arrives.
    let r = travel(
        a.http,
        "ac",
        &kc,
        TravelMsg::Offer(offer("c-1-1", "c", "zed", "hi")),
    );
    assert_eq!(r["type"], "accepted", "{r}");
    let r = travel(
        a.http,
        "ac",
        &kc,
        TravelMsg::Commit(offer("c-1-1", "c", "zed", "hi")),
    );
    assert_eq!(r["type"], "done", "{r}");
    eventually(WAIT, "zed arrives", || session(a.http, "zed").is_some());
    // B commits one of its held travels: that frees a place for one more offer.
    let r = travel(
        a.http,
        "ab",
        &kb,
        TravelMsg::Commit(offer("b-1-1", "b", "u1", "hi")),
    );
    assert_eq!(r["type"], "done", "{r}");
    let r = travel(
        a.http,
        "ab",
        &kb,
        TravelMsg::Offer(offer("b-41-1", "b", "u41", "hi")),
    );
    assert_eq!(r["type"], "accepted", "{r}");
}

fn trust(origin: &str, seq: u64, score: f64, updated_at: u64, timestamp_ms: u64) -> FedEvent {
    FedEvent {
        kind: Kind::Trust,
        room: None,
        user_id: None,
        username: None,
        message: None,
        timestamp: rfc3339(timestamp_ms),
        data: Some(json!({"subject": "alice@a", "score": score, "updated_at": updated_at})),
        ..say(origin, seq, "")
    }
}

#[test]
fn trust_from_the_future_or_out_of_range_is_refused() {
    let (da, db) = (scratch_dir("trust-a"), scratch_dir("trust-b"));
    let (kb, pkb) = key_in(&db);
    let a = start_with(config(
        "a",
        free_port(),
        &da,
        vec![peer("b", free_port(), "ab", &pkb)],
    ));
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    let answer = push(
        a.http,
        "ab",
        "b",
        &kb,
        vec![
            signed(&kb, trust("b", 1, 0.5, now + day, now)),
            signed(&kb, trust("b", 2, 0.5, now, now + day)),
            signed(&kb, trust("b", 3, 1.5, now, now)),
        ],
    );
    assert_eq!(
        answer["refused"],
        json!({"clock_skew": 2, "bad_score": 1}),
        "{answer}"
    );
    // Within the bounds: taken, and a local change made after it wins.
    let answer = push(
        a.http,
        "ab",
        "b",
        &kb,
        vec![signed(&kb, trust("b", 1, -1.0, now + 60_000, now))],
    );
    assert_eq!(answer["accepted"], 1, "{answer}");
    let r = common::post(
        a.http,
        "/bridge/trust",
        &json!({"subject": "alice@a", "score": 0.2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["trust"]["updated_at"].as_u64() > Some(now + 60_000));
    let r = common::post(
        a.http,
        "/bridge/trust",
        &json!({"subject": "alice@a", "score": 7}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

/// An entry in force that no change made now can beat (left by a bridge from before
/// the clock bound): a local write answers 409 with it, never `ok`.
#[test]
fn a_local_trust_write_that_loses_answers_409_with_the_entry_in_force() {
    let dir = scratch_dir("trust-409");
    let export = temp_file(
        "trust-409.json",
        &json!({
            "format": "worldbridge-export", "version": 1, "bridge_version": "0.1.0",
            "world": "a", "seq": 0, "rooms": [], "presence": [], "events": [],
            "sessions": [], "gateway_seq": 0, "gateway": [], "fed_events": [],
            "fed_trust": [{"subject": "alice@a", "score": 0.9,
                           "updated_at": 9_007_199_254_740_000u64, "origin": "b", "seq": 1}],
            "fed_departures": [], "fed_arrivals": []
        })
        .to_string(),
    );
    let out = bin()
        .arg("import")
        .arg(&export)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = start_with(config(
        "a",
        free_port(),
        &dir,
        vec![peer("b", free_port(), "ab", "")],
    ));
    let r = common::post(
        a.http,
        "/bridge/trust",
        &json!({"subject": "alice@a", "score": 0.1}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let v = r.json();
    assert_eq!(v["code"], "trust_superseded");
    assert_eq!(v["trust"]["score"], 0.9);
    assert_eq!(v["trust"]["origin"], "b");
    let _: TestBridge = a;
}

/// The three worlds of `fixtures/federation/` ship with their keys, and each names its
/// peers' public keys: the documented walkthrough runs signed, with nothing to set up.
#[test]
fn the_fixture_worlds_name_the_public_keys_of_the_key_files_they_ship() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |world: &str| {
        let text = std::fs::read_to_string(root.join(format!("fixtures/federation/{world}.toml")))
            .expect("the fixture exists");
        worldbridge::config::Config::from_toml(&text).expect("the fixture parses")
    };
    let public_of = |cfg: &worldbridge::config::Config| {
        let path = root.join(&cfg.federation.key_file);
        assert!(path.exists(), "{} is shipped", path.display());
        let (key, created) = WorldKey::load_or_create(&path).expect("the key file reads");
        assert!(!created);
        key.public().to_string()
    };
    for world in ["mac", "vps", "bezalel"] {
        let cfg = load(world);
        assert_eq!(cfg.world, world);
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.federation.peers.len(), 2);
        for p in &cfg.federation.peers {
            assert_eq!(
                p.public_key,
                public_of(&load(&p.world)),
                "{world}'s public_key of {}",
                p.world
            );
        }
    }
}
