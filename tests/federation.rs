//! Federation between real bridges on 127.0.0.1: three worlds syncing events, presence
//! and trust; a peer that stops, one with a wrong token, one that never answers.

mod common;

use common::{
    call, eventually, fed_config as config, fed_peer as peer, free_port, get, post, request_bytes,
    scratch_dir, start_with, test_config, Client, LineClient, Resp, TestBridge,
};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// A request with the pair's token.
fn as_peer(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let mut c = Client::connect(addr);
    c.send_raw(&request_bytes(method, path, None, &headers));
    c.read_response(false).expect("an answer")
}

/// The events of `room` in `b` that came from `origin` with this `event` name.
fn from_origin(b: &TestBridge, room: &str, origin: &str, event: &str) -> Vec<Value> {
    let path = format!("/bridge/room/{}/events", room.replace(' ', "%20"));
    let doc = get(b.http, &path);
    doc["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["origin"] == origin && e["event"] == event)
        .collect()
}

fn peer_health(b: &TestBridge, world: &str) -> Value {
    let h = get(b.http, "/bridge/health");
    h["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["world"] == world).cloned())
        .unwrap_or(Value::Null)
}

/// A port that accepts connections and never answers.
fn tarpit() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// A port that answers every request with 200 and a body that is not a state document.
fn garbage() -> u16 {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"not\": \"state\"\x01");
        }
    });
    port
}

#[test]
fn three_worlds_share_events_presence_and_trust_and_survive_a_peer_going_away() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let pit = tarpit();
    let junk = garbage();
    let (da, db, dc) = (
        scratch_dir("fed-a"),
        scratch_dir("fed-b"),
        scratch_dir("fed-c"),
    );
    let a = start_with(config(
        "a",
        pa,
        &da,
        vec![
            peer("b", pb, "ab-secret"),
            peer("c", pc, "ac-secret"),
            peer("mallory", pc, "not-the-token"),
            peer("tarpit", pit, "tarpit-secret"),
            peer("junk", junk, "junk-secret"),
        ],
    ));
    let b_cfg = config(
        "b",
        pb,
        &db,
        vec![peer("a", pa, "ab-secret"), peer("c", pc, "bc-secret")],
    );
    let b = start_with(b_cfg.clone());
    let c = start_with(config(
        "c",
        pc,
        &dc,
        vec![peer("a", pa, "ac-secret"), peer("b", pb, "bc-secret")],
    ));

    // A federation-scope world event in A reaches B and C exactly once.
    let mut game = LineClient::connect(a.line.expect("line listener"));
    game.send(
        &json!({"type": "event", "id": 1, "room": "The Forge", "event": "fire",
                      "message": "The forge flares.", "scope": "federation"}),
    );
    let (ok, _) = game.recv_type("ok");
    assert_eq!(ok["id"], 1, "{ok}");
    for (name, w) in [("b", &b), ("c", &c)] {
        eventually(WAIT, &format!("the fire reaches {name}"), || {
            !from_origin(w, "The Forge", "a", "fire").is_empty()
        });
    }
    // A local-scope event stays home.
    game.send(&json!({"type": "event", "id": 2, "room": "The Forge", "event": "smoke"}));
    game.recv_type("ok");

    // A portal say in A shows up in B's and C's portal room as Alice@a.
    let r = post(
        a.http,
        "/bridge/say",
        &json!({"user_id": "alice", "username": "Alice", "room": "The Bridge", "message": "hello worlds"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for (name, w) in [("b", &b), ("c", &c)] {
        eventually(WAIT, &format!("the say reaches {name}"), || {
            !from_origin(w, "The Bridge", "a", "message").is_empty()
        });
    }
    // Two more sync rounds: still exactly once, although B and C also relay to each other.
    std::thread::sleep(Duration::from_millis(2500));
    for w in [&b, &c] {
        let fire = from_origin(w, "The Forge", "a", "fire");
        assert_eq!(fire.len(), 1, "{fire:?}");
        assert_eq!(fire[0]["message"], "The forge flares.");
        assert!(from_origin(w, "The Forge", "a", "smoke").is_empty());
        let said = from_origin(w, "The Bridge", "a", "message");
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(said[0]["username"], "Alice@a");
        assert_eq!(said[0]["message"], "hello worlds");
    }

    // Presence: A reports Alice; B sees A online.
    let state = as_peer(a.http, "GET", "/bridge/state", Some("ab-secret"));
    assert_eq!(state.status, 200, "{}", state.text());
    let doc = state.json();
    assert_eq!(doc["world"], "a");
    assert_eq!(doc["presence"]["characters"][0]["username"], "Alice");
    assert_eq!(peer_health(&b, "a")["state"], "online");

    // Trust set in C reaches A and B.
    let r = post(
        c.http,
        "/bridge/trust",
        &json!({"subject": "alice@a", "score": 0.8}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for (w, token) in [(&a, "ac-secret"), (&b, "bc-secret")] {
        eventually(WAIT, "the trust change arrives", || {
            let doc = as_peer(w.http, "GET", "/bridge/state", Some(token)).json();
            doc["trust"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|e| e["subject"] == "alice@a" && e["score"] == 0.8)
            })
        });
    }

    // A wrong token is refused, and A shows why; the peer that never answers too.
    assert_eq!(as_peer(c.http, "GET", "/bridge/state", None).status, 401);
    assert_eq!(
        as_peer(c.http, "GET", "/bridge/state", Some("not-the-token")).status,
        401
    );
    eventually(WAIT, "mallory's 401 in A's health", || {
        let m = peer_health(&a, "mallory");
        m["state"] == "offline" && m["last_error"].as_str().is_some_and(|e| e.contains("401"))
    });
    eventually(WAIT, "the tarpit's timeout in A's health", || {
        peer_health(&a, "tarpit")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within"))
    });
    eventually(WAIT, "the garbage peer's error in A's health", || {
        let j = peer_health(&a, "junk");
        j["state"] == "offline" && j["last_error"].as_str().is_some_and(|e| !e.is_empty())
    });

    // B stops: A and C keep serving chat and keep syncing with each other.
    b.stop().expect("b stops cleanly");
    let r = post(
        a.http,
        "/bridge/say",
        &json!({"user_id": "alice", "username": "Alice", "room": "The Bridge", "message": "b is gone"}),
    );
    assert_eq!(r.status, 200);
    eventually(WAIT, "C still hears A", || {
        from_origin(&c, "The Bridge", "a", "message").len() == 2
    });
    let r = post(
        c.http,
        "/bridge/chat",
        &json!({"user_id": "carol", "username": "Carol", "room": "The Bridge", "message": "hi"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(WAIT, "A shows B offline", || {
        let h = peer_health(&a, "b");
        h["state"] == "offline" && h["last_error"].is_string()
    });
    assert_eq!(peer_health(&a, "c")["state"], "online");

    // B comes back on its data directory: it catches up, with no duplicates.
    let b = start_with(b_cfg);
    eventually(WAIT, "B catches up", || {
        from_origin(&b, "The Bridge", "a", "message").len() == 2
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(from_origin(&b, "The Bridge", "a", "message").len(), 2);
    assert_eq!(from_origin(&b, "The Forge", "a", "fire").len(), 1);
    eventually(WAIT, "A shows B online again", || {
        peer_health(&a, "b")["state"] == "online"
    });
}

#[test]
fn world_events_of_the_default_kinds_cross_without_a_scope_and_local_ones_stay() {
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (scratch_dir("kinds-a"), scratch_dir("kinds-b"));
    let a = start_with(config("a", pa, &da, vec![peer("b", pb, "ab-secret")]));
    let b = start_with(config("b", pb, &db, vec![peer("a", pa, "ab-secret")]));

    // B's game has a player in The Forge, so its link is shown that room's events.
    let mut b_game = LineClient::connect(b.line.expect("line listener"));
    b_game.hello("b", "generic");
    b_game.send(
        &json!({"type": "presence", "id": 1, "event": "enter", "user_id": "bob",
                        "username": "Bob", "room": "The Forge"}),
    );
    b_game.recv_type("ok");

    let mut a_game = LineClient::connect(a.line.expect("line listener"));
    a_game.hello("a", "generic");
    let mut raise = |id: u64, event: &str, message: &str, scope: Option<&str>| {
        let mut m = json!({"type": "event", "id": id, "room": "The Forge", "event": event,
                           "message": message});
        if let Some(s) = scope {
            m["scope"] = json!(s);
        }
        a_game.send(&m);
        let (ok, _) = a_game.recv_type("ok");
        assert_eq!(ok["id"], id, "{ok}");
    };
    raise(1, "fire", "The forge flares.", None);
    raise(2, "fire", "The forge smoulders.", Some("local"));
    raise(3, "bell", "A bell rings.", None);
    raise(4, "rain", "Rain on the roof.", None);

    eventually(WAIT, "the rain reaches B", || {
        !from_origin(&b, "The Forge", "a", "rain").is_empty()
    });
    let fire = from_origin(&b, "The Forge", "a", "fire");
    assert_eq!(fire.len(), 1, "only the unscoped fire crosses: {fire:?}");
    assert_eq!(fire[0]["message"], "The forge flares.");
    assert_eq!(fire[0]["type"], "event");
    assert!(
        from_origin(&b, "The Forge", "a", "bell").is_empty(),
        "bell is no event kind"
    );

    // B's game link is shown the fire and then the rain, nothing between.
    let (fire_line, before) = b_game.recv_type("event");
    assert!(before.iter().all(|l| l["type"] != "event"), "{before:?}");
    assert_eq!(
        (
            &fire_line["event"],
            &fire_line["origin"],
            &fire_line["room"]
        ),
        (&json!("fire"), &json!("a"), &json!("The Forge")),
        "{fire_line}"
    );
    assert_eq!(fire_line["message"], "The forge flares.");
    let (rain_line, _) = b_game.recv_type("event");
    assert_eq!(
        rain_line["event"], "rain",
        "the local fire never reached B: {rain_line}"
    );
}

#[test]
fn federation_routes_are_refused_without_federation_or_with_a_bad_document() {
    let plain = start_with(test_config());
    let r = as_peer(plain.http, "GET", "/bridge/state", Some("x"));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = as_peer(plain.http, "GET", "/bridge/federation/leader", None);
    assert_eq!(r.refusal(), (404, json!("federation_off")));

    let mut cfg = common::line_config();
    cfg.world = "a".into();
    cfg.federation.peers = vec![peer("b", free_port(), "ab")];
    let a = start_with(cfg);
    let mut game = LineClient::connect(a.line.expect("line listener"));
    game.send(
        &json!({"type": "event", "id": 1, "room": "The Forge", "event": "fire", "scope": "galaxy"}),
    );
    let (err, _) = game.recv_type("error");
    assert_eq!(err["code"], "bad_field", "{err}");
    game.send(
        &json!({"type": "event", "id": 2, "room": "The Forge", "event": "fire", "scope": "local"}),
    );
    assert_eq!(game.recv_type("ok").0["id"], 2);
    let r = as_peer(a.http, "GET", "/bridge/state?since=b:x", Some("ab"));
    assert_eq!(r.status, 400, "{}", r.text());
    let mut c = Client::connect(a.http);
    let body = json!({"protocol": 1, "world": "mallory", "presence": {"epoch": 1, "seq": 1, "characters": []},
                      "events": [], "next": {}, "more": false, "have": {}})
    .to_string();
    c.send_raw(&request_bytes(
        "POST",
        "/bridge/sync",
        Some(&body),
        &[("Authorization", "Bearer ab")],
    ));
    let r = c.read_response(false).unwrap();
    assert_eq!(
        r.status,
        400,
        "a document that claims another sender: {}",
        r.text()
    );
    let r = as_peer(a.http, "POST", "/bridge/sync", Some("ab"));
    assert_eq!(r.status, 400, "{}", r.text());
    // A single process runs its own federation: the leader route answers 200, no node.
    let r = as_peer(a.http, "GET", "/bridge/federation/leader", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"world": "a", "node": null}));
}

#[test]
fn old_federated_events_are_pruned_and_a_late_peer_is_told_so_across_a_restart() {
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (scratch_dir("prune-a"), scratch_dir("prune-b"));
    let mut a_cfg = config("a", pa, &da, vec![peer("b", pb, "ab-secret")]);
    a_cfg.federation.events_keep = 5;
    let a = start_with(a_cfg.clone());
    let say = |b: &TestBridge, i: usize| {
        let r = post(
            b.http,
            "/bridge/say",
            &json!({"user_id": "alice", "username": "Alice", "room": "The Bridge", "message": format!("m{i}")}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    for i in 0..20 {
        say(&a, i);
    }
    let snapshot = |b: &TestBridge| -> Value {
        let r = as_peer(b.http, "GET", "/bridge/state", Some("ab-secret"));
        assert_eq!(r.status, 200);
        r.json()
    };
    let seqs = |doc: &Value| -> Vec<u64> {
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    // Pruning runs once a sync round (B is not there yet: it runs anyway).
    eventually(WAIT, "A keeps only its last 5 events", || {
        snapshot(&a)["pruned"]["a"] == 15
    });
    assert_eq!(seqs(&snapshot(&a)), vec![16, 17, 18, 19, 20]);

    // Restarted on its data directory: the same log, and the next event is 21.
    a.stop().expect("a stops cleanly");
    let a = start_with(a_cfg);
    let doc = snapshot(&a);
    assert_eq!(doc["pruned"]["a"], 15, "{doc}");
    assert_eq!(seqs(&doc), vec![16, 17, 18, 19, 20]);
    say(&a, 20);
    eventually(WAIT, "event 21 served", || {
        seqs(&snapshot(&a)).last() == Some(&21)
    });

    // B, started only now, gets what A still keeps and nothing older, once.
    let b = start_with(config("b", pb, &db, vec![peer("a", pa, "ab-secret")]));
    eventually(WAIT, "B has A's kept events", || {
        from_origin(&b, "The Bridge", "a", "message").len() >= 5
    });
    std::thread::sleep(Duration::from_millis(2500));
    let got = from_origin(&b, "The Bridge", "a", "message");
    let mut texts: Vec<String> = got
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    // Seq 16 (m15) may have been pruned too by then (21 events, 5 kept).
    let kept: Vec<String> = (16..=20).map(|i| format!("m{i}")).collect();
    texts.retain(|t| t != "m15");
    assert_eq!(texts, kept, "only kept events, each once");
    drop(a);
}

#[test]
fn documents_stay_under_the_peer_body_limit_so_big_events_still_cross() {
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (scratch_dir("bytes-a"), scratch_dir("bytes-b"));
    let mut a_cfg = config("a", pa, &da, vec![peer("b", pb, "ab-secret")]);
    a_cfg.federation.page_max_bytes = 32 * 1024;
    // B cannot reach A (a port nobody listens on): what it gets, A pushed.
    let mut b_cfg = config("b", pb, &db, vec![peer("a", free_port(), "ab-secret")]);
    b_cfg.http.body_max_bytes = 64 * 1024;
    b_cfg.federation.page_max_bytes = 32 * 1024;
    b_cfg.rooms.events_max = 200;
    let a = start_with(a_cfg);
    let b = start_with(b_cfg);
    eventually(WAIT, "A has pushed to B once", || {
        peer_health(&a, "b")["last_sync"].is_string()
    });
    // 60 says of 3,000 bytes: 180 KB, nearly three times what B takes in one body.
    let text = "x".repeat(3000);
    for i in 0..60 {
        let r = post(
            a.http,
            "/bridge/say",
            &json!({"user_id": "alice", "username": "Alice", "room": "The Bridge", "message": format!("{i} {text}")}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    eventually(WAIT, "B has all 60", || {
        from_origin(&b, "The Bridge", "a", "message").len() == 60
    });
    // A's pushes to B were never refused for their size.
    let h = peer_health(&a, "b");
    assert!(h["last_error"].is_null(), "{h}");
    // And the metrics say so.
    let metrics = |t: &TestBridge| call(t.http, "GET", "/metrics", None).text();
    let ma = metrics(&a);
    for line in [
        "worldbridge_federation_peer_up{peer=\"b\"} 1",
        "worldbridge_federation_events_total{how=\"own\"} 60",
        "worldbridge_federation_sync_rounds_total{peer=\"b\",outcome=\"error\"} 0",
        "worldbridge_federation_events_held 60",
    ] {
        assert!(ma.lines().any(|l| l == line), "A lacks {line:?}:\n{ma}");
    }
    let mb = metrics(&b);
    for line in [
        "worldbridge_federation_events_total{how=\"accepted\"} 60",
        "worldbridge_federation_peer_lag_events{peer=\"a\"} 0",
    ] {
        assert!(mb.lines().any(|l| l == line), "B lacks {line:?}:\n{mb}");
    }
    // B never reached A: its own rounds with A failed.
    assert!(mb.contains("worldbridge_federation_sync_rounds_total{peer=\"a\",outcome=\"error\"}"));
    assert!(
        !mb.contains("worldbridge_federation_sync_rounds_total{peer=\"a\",outcome=\"error\"} 0")
    );
}

#[test]
fn configured_portal_rooms_exist_show_says_and_receive_travellers_and_a_full_world_keeps_and_counts(
) {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let gate = vec!["The Gate".to_string()];
    let mut a_cfg = config(
        "a",
        pa,
        &scratch_dir("portal-a"),
        vec![peer("b", pb, "ab-secret"), peer("c", pc, "ac-secret")],
    );
    a_cfg.federation.portal_rooms = gate.clone();
    let mut b_cfg = config(
        "b",
        pb,
        &scratch_dir("portal-b"),
        vec![peer("a", pa, "ab-secret")],
    );
    b_cfg.federation.portal_rooms = gate.clone();
    // C has no portal room and no room to spare: the built-in world's 5 rooms.
    let mut c_cfg = config(
        "c",
        pc,
        &scratch_dir("portal-c"),
        vec![peer("a", pa, "ac-secret")],
    );
    c_cfg.federation.portal_rooms = vec![];
    c_cfg.rooms.max = 5;
    let a = start_with(a_cfg);
    let b = start_with(b_cfg);
    let c = start_with(c_cfg);

    // The Gate is in no world file: it exists from the start, a plain portal room.
    let w = get(b.http, "/bridge/world/The%20Gate");
    assert_eq!(w["room"], "The Gate", "{w}");
    assert_eq!(w["data"]["desc_base"], "A gateway to other worlds.", "{w}");
    assert_eq!(w["data"]["portal"], true, "{w}");

    let r = post(
        a.http,
        "/bridge/say",
        &json!({"user_id": "alice", "username": "Alice", "room": "The Gate", "message": "hello worlds"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(WAIT, "alice's say shows in b's gate", || {
        from_origin(&b, "The Gate", "a", "message")
            .iter()
            .any(|e| e["message"] == "hello worlds" && e["username"] == "Alice@a")
    });
    // C cannot make the room: the say is kept, logged and counted, not lost silently.
    eventually(WAIT, "c counts the say it cannot show", || {
        call(c.http, "GET", "/metrics", None)
            .text()
            .contains("worldbridge_federation_events_unshown_total{reason=\"room_limit\"} 1")
    });
    let m = call(c.http, "GET", "/metrics", None).text();
    assert!(m.contains("worldbridge_federation_events_kept 1"), "{m}");
    assert_eq!(
        call(c.http, "GET", "/bridge/world/The%20Gate", None).status,
        404
    );

    // A traveller from a arrives in b's configured portal room.
    eventually(WAIT, "a sees b online", || {
        peer_health(&a, "b")["state"] == "online"
    });
    let r = post(
        a.http,
        "/bridge/travel",
        &json!({"user_id": "alice", "to_world": "b"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["room"], "The Gate", "{}", r.text());
    eventually(WAIT, "alice arrives in b's gate", || {
        get(b.http, "/bridge/room/The%20Gate/players")["players"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["user_id"] == "alice"))
    });
}
