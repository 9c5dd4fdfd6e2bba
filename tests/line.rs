//! The line protocol over real sockets: framing and its errors, the handshake and token,
//! game messages feeding the same core as HTTP, relaying to the link that hosts a room,
//! the bridge's `act`/`observe`/`speak` to games, dialing with backoff, heartbeats, and
//! mock game servers that misbehave on purpose.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use worldbridge::config::{Config, DialConfig};
use worldbridge::doors::game::{Target, WorldInterface};
use worldbridge::world::protocol::GameCommand;

fn start_line(cfg: Config) -> (TestBridge, SocketAddr) {
    let b = start_with(cfg);
    let line = b.line.expect("a line listener");
    (b, line)
}

/// A game link of world `world` that has said hello.
fn game(line: SocketAddr, world: &str) -> LineClient {
    let mut g = LineClient::connect(line);
    g.hello(world, "tes3mp");
    g
}

fn health_link(b: &TestBridge, world: &str) -> Value {
    let h = get(b.http, "/bridge/health");
    h["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["world"] == world)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn handshake_ping_and_framing_errors_keep_the_connection() {
    let (_b, line) = start_line(line_config());
    let mut g = LineClient::connect(line);
    let w = g.hello("morrowind", "tes3mp");
    assert_eq!(w["world"], "local");
    assert_eq!(w["protocol"], 1);
    assert_eq!(w["heartbeat_s"], 30);

    g.send(&json!({"type": "ping", "id": 7}));
    assert_eq!(g.recv().unwrap(), json!({"type": "pong", "id": 7}));
    g.send(&json!({"type": "ping", "id": "abc"}));
    assert_eq!(g.recv().unwrap(), json!({"type": "pong", "id": "abc"}));

    g.send_raw(b"this is not json\n");
    let e = g.recv().unwrap();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_json"))
    );
    g.send_raw(b"{\"type\":\"say\",\"message\":\"\xff\xfe\"}\n");
    assert_eq!(g.recv().unwrap()["code"], "bad_json", "invalid UTF-8");
    g.send_raw(b"[1,2]\n");
    assert_eq!(g.recv().unwrap()["code"], "bad_json");
    g.send(&json!({"type": "dance", "id": 1}));
    let e = g.recv().unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("unknown_type"), Some(1))
    );
    g.send(&json!({"id": 2}));
    assert_eq!(g.recv().unwrap()["code"], "missing_field");
    g.send(&json!({"type": "say", "id": 3, "room": "Limbo", "message": "hi"}));
    let e = g.recv().unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("missing_field"), Some(3))
    );

    // CRLF, empty lines, and a message that arrives a byte at a time.
    g.send_raw(b"\r\n\n{\"type\":\"ping\",\"id\":8}\r\n");
    assert_eq!(g.recv().unwrap()["id"], 8);
    for b in b"{\"type\":\"ping\",\"id\":9}\n" {
        g.send_raw(&[*b]);
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(g.recv().unwrap()["id"], 9);

    // Two messages in one write get two answers, in order.
    g.send_raw(b"{\"type\":\"ping\",\"id\":10}\n{\"type\":\"ping\",\"id\":11}\n");
    assert_eq!(g.recv().unwrap()["id"], 10);
    assert_eq!(g.recv().unwrap()["id"], 11);
}

#[test]
fn a_one_mebibyte_line_is_refused_and_the_link_lives_on() {
    let (_b, line) = start_line(line_config());
    let mut g = game(line, "mw");
    let mut big = vec![b'x'; 1024 * 1024];
    big.push(b'\n');
    g.send_raw(&big);
    let e = g.recv().unwrap();
    assert_eq!(e["code"], "line_too_long");
    assert!(e["error"].as_str().unwrap().contains("65536"));
    g.send(&json!({"type": "ping", "id": 1}));
    assert_eq!(g.recv().unwrap(), json!({"type": "pong", "id": 1}));
}

#[test]
fn protocol_versions_are_checked() {
    let (_b, line) = start_line(line_config());
    let mut g = LineClient::connect(line);
    g.send(&json!({"type": "hello", "world": "mw", "kind": "tes3mp", "protocol": 2}));
    let e = g.recv().unwrap();
    assert_eq!(e["code"], "unsupported_version");
    assert!(g.recv().is_none(), "closed after refusing the version");

    let mut g = game(line, "mw");
    g.send(&json!({"type": "perception", "id": 5, "protocol_version": "2.0", "cell": "X"}));
    let e = g.recv().unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("unsupported_version"), Some(5))
    );
    assert!(e["error"]
        .as_str()
        .unwrap()
        .contains("newer than this bridge"));
}

#[test]
fn with_a_token_hello_must_come_first() {
    let mut cfg = line_config();
    cfg.line.token = "s3cret".into();
    let (_b, line) = start_line(cfg);

    let mut g = LineClient::connect(line);
    g.send(&json!({"type": "ping", "id": 1}));
    let e = g.recv().unwrap();
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("unauthorized"), Some(1))
    );
    assert!(g.recv().is_none(), "closed");

    let mut g = LineClient::connect(line);
    g.send(
        &json!({"type": "hello", "world": "mw", "kind": "tes3mp", "protocol": 1, "token": "nope"}),
    );
    assert_eq!(g.recv().unwrap()["code"], "unauthorized");
    assert!(g.recv().is_none(), "closed");

    let mut g = LineClient::connect(line);
    g.send(&json!({"type": "hello", "world": "mw", "kind": "tes3mp", "protocol": 1, "token": "s3cret"}));
    assert_eq!(g.recv().unwrap()["type"], "welcome");
    g.send(&json!({"type": "ping", "id": 2}));
    assert_eq!(g.recv().unwrap()["type"], "pong");
}

#[test]
fn game_messages_feed_the_same_core_as_http() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "mud");
    g.send(
        &json!({"type": "room", "id": 1, "name": "Limbo", "desc": "A grey void.",
                   "exits": {"north": "Hall"}, "objects": ["a chair", {"name": "a lamp"}]}),
    );
    assert_eq!(
        g.recv().unwrap(),
        json!({"type": "ok", "id": 1, "room": "Limbo"})
    );
    let room = get(b.http, "/bridge/world/Limbo");
    assert_eq!(room["data"]["desc_base"], "A grey void.");
    assert_eq!(room["data"]["exits"], json!({"north": "Hall"}));
    assert_eq!(room["data"]["objects"], json!(["a chair", "a lamp"]));

    g.send(&json!({"type": "presence", "id": 2, "event": "enter", "user_id": "alice", "username": "Alice", "room": "Limbo"}));
    assert_eq!(g.recv().unwrap()["type"], "ok");
    let players = get(b.http, "/bridge/room/Limbo/players");
    assert_eq!(
        players["players"],
        json!([{"user_id": "alice", "username": "Alice"}])
    );

    g.send(&json!({"type": "say", "id": 3, "user_id": "alice", "username": "Alice", "room": "Limbo", "message": "hello there"}));
    let ok = g.recv().unwrap();
    assert_eq!(ok["event"]["type"], "say");
    assert_eq!(ok["event"]["message"], "hello there");
    g.send(&json!({"type": "event", "room": "Limbo", "event": "rain", "message": "It starts to rain."}));
    g.send(&json!({"type": "presence", "event": "leave", "user_id": "alice"}));
    g.send(&json!({"type": "ping", "id": 4}));
    let (_, before) = g.recv_type("pong");
    assert!(
        before.is_empty(),
        "messages without id get no answer: {before:?}"
    );
    let evs = get(b.http, "/bridge/room/Limbo/events");
    let kinds: Vec<(String, String)> = evs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["event"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("presence", "enter"),
            ("say", "message"),
            ("event", "rain"),
            ("presence", "leave")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(get(b.http, "/bridge/room/Limbo/players")["players"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// The next `say` a link receives (presence and other events before it are skipped).
fn next_say(g: &mut LineClient) -> Value {
    g.recv_type("say").0
}

#[test]
fn two_links_whose_players_share_a_room_both_hear_it() {
    let (b, line) = start_line(line_config());
    let mut one = game(line, "mud-one");
    let mut two = game(line, "mud-two");
    one.send(
        &json!({"type": "presence", "id": 1, "event": "enter", "user_id": "bob", "room": "The Garden"}),
    );
    assert_eq!(one.recv_type("ok").0["id"], 1);
    // The second link mentions the room last: it used to be the room's only host.
    two.send(
        &json!({"type": "presence", "id": 2, "event": "enter", "user_id": "eve", "room": "The Garden"}),
    );
    assert_eq!(two.recv_type("ok").0["id"], 2);

    // A say over HTTP reaches both links.
    let r = post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "web1", "username": "Webby", "room": "The Garden", "message": "hello both"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_say(&mut one)["message"], "hello both");
    assert_eq!(next_say(&mut two)["message"], "hello both");

    // A say from link one reaches link two, and is not echoed to link one: the next say
    // link one hears is the HTTP marker sent after it.
    one.send(&json!({"type": "say", "id": 3, "user_id": "bob", "room": "The Garden", "message": "from one"}));
    assert_eq!(one.recv_type("ok").0["id"], 3);
    let heard = next_say(&mut two);
    assert_eq!(
        (heard["message"].as_str(), heard["user_id"].as_str()),
        (Some("from one"), Some("bob"))
    );
    post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "web1", "room": "The Garden", "message": "marker"}),
    );
    assert_eq!(next_say(&mut one)["message"], "marker");
    assert_eq!(next_say(&mut two)["message"], "marker");

    // A world event from link two reaches link one, not link two.
    two.send(&json!({"type": "event", "id": 4, "room": "The Garden", "event": "rain", "message": "It rains."}));
    assert_eq!(two.recv_type("ok").0["id"], 4);
    let (ev, _) = one.recv_type("event");
    assert_eq!(
        (ev["event"].as_str(), ev["message"].as_str()),
        (Some("rain"), Some("It rains."))
    );

    // Once bob leaves link one's game, link one no longer hears the Garden.
    one.send(&json!({"type": "presence", "id": 5, "event": "leave", "user_id": "bob"}));
    assert_eq!(one.recv_type("ok").0["id"], 5);
    post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "web1", "room": "The Garden", "message": "only two"}),
    );
    assert_eq!(next_say(&mut two)["message"], "only two");
    one.send(&json!({"type": "ping", "id": 6}));
    let (_, extra) = one.recv_type("pong");
    assert!(
        extra.iter().all(|e| e["type"] != "say"),
        "link one heard the Garden after its player left: {extra:?}"
    );
}

#[test]
fn says_and_presence_from_http_reach_the_hosting_link_and_never_echo() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "mud");
    let mut other = game(line, "other-mud");
    g.send(
        &json!({"type": "presence", "id": 1, "event": "enter", "user_id": "bob", "room": "Limbo"}),
    );
    assert_eq!(g.recv().unwrap()["type"], "ok");

    // The game's own say is not sent back to it.
    g.send(&json!({"type": "say", "user_id": "bob", "room": "Limbo", "message": "from the game"}));
    // An HTTP user arrives and speaks: the game sees both.
    let r = post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "web1", "username": "Webby", "room": "Limbo", "message": "hi from the web"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["recipients"],
        json!([{"user_id": "bob", "username": "bob"}])
    );
    let enter = g.recv().unwrap();
    assert_eq!(
        (
            enter["type"].as_str(),
            enter["event"].as_str(),
            enter["username"].as_str()
        ),
        (Some("presence"), Some("enter"), Some("Webby"))
    );
    let say = g.recv().unwrap();
    assert_eq!(say["type"], "say");
    assert_eq!(say["message"], "hi from the web");
    assert_eq!(say["origin"], "local");
    assert!(say["seq"].as_u64().unwrap() > enter["seq"].as_u64().unwrap());

    // A room the other link hosts: only that link hears about it.
    other.send(&json!({"type": "room", "id": 1, "name": "Elsewhere"}));
    assert_eq!(other.recv().unwrap()["type"], "ok");
    post(
        b.http,
        "/bridge/move",
        &json!({"user_id": "web1", "room": "Elsewhere"}),
    );
    let leave = g.recv().unwrap();
    assert_eq!(
        (leave["event"].as_str(), leave["room"].as_str()),
        (Some("leave"), Some("Limbo"))
    );
    let enter = other.recv().unwrap();
    assert_eq!(
        (enter["event"].as_str(), enter["room"].as_str()),
        (Some("enter"), Some("Elsewhere"))
    );
    g.send(&json!({"type": "ping", "id": 9}));
    let (_, extra) = g.recv_type("pong");
    assert!(
        extra.is_empty(),
        "nothing else reached the first link: {extra:?}"
    );

    // An HTTP say followed at once by the link's own message still reaches the link.
    post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "bob2", "room": "Limbo", "message": "quick"}),
    );
    g.send(&json!({"type": "say", "user_id": "bob", "room": "Limbo", "message": "right after"}));
    let (say, relayed) = g.recv_type("say");
    assert_eq!(say["message"], "quick");
    assert!(
        relayed.iter().all(|e| e["type"] == "presence"),
        "{relayed:?}"
    );
}

#[test]
fn chat_over_the_line_gets_the_agents_reply_with_its_id() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "morrowind");
    g.send(&json!({"type": "chat", "id": 42, "user_id": "Alice", "username": "Alice", "room": "Balmora, Temple", "message": "hello"}));
    let r = g.recv().unwrap();
    assert_eq!(r["type"], "reply");
    assert_eq!(r["id"], 42);
    assert_eq!(r["user_id"], "Alice");
    assert_eq!(r["crisis"], false);
    let text = r["text"].as_str().unwrap();
    assert!(text.contains("Hello, Alice"), "{text}");
    assert!(
        text.contains("Balmora, Temple"),
        "the agent knows the cell: {text}"
    );

    g.send(
        &json!({"type": "chat", "id": 43, "user_id": "Alice", "message": "I want to end my life"}),
    );
    let r = g.recv().unwrap();
    assert_eq!(r["crisis"], true);
    assert!(r["text"]
        .as_str()
        .unwrap()
        .starts_with("Are you safe right now?"));

    g.send(&json!({"type": "chat", "user_id": "Alice", "message": "no id"}));
    assert_eq!(g.recv().unwrap()["code"], "missing_field");
    let s = get(b.http, "/bridge/sessions");
    assert_eq!(s["sessions"][0]["user_id"], "Alice");
    assert_eq!(s["sessions"][0]["crisis"], true);
}

/// Answer the next `act` or `observe` the way a game would; returns what was asked.
fn serve_one(g: &mut LineClient) -> Value {
    loop {
        let m = g.recv().expect("a request from the bridge");
        match m["type"].as_str() {
            Some("act") => {
                g.send(&json!({"type": "result", "id": m["id"], "ok": true, "data": {"cell": m["args"]["cell"]}}));
                return m;
            }
            Some("observe") => {
                g.send(
                    &json!({"type": "perception", "id": m["id"], "protocol_version": "1.0",
                    "player": "Timmy", "cell": "Balmora, Temple",
                    "position": {"x": 4700.5, "y": 3874.7, "z": 14758.9},
                    "stats": {"health": {"current": 40, "base": 50}},
                    "inventory": [{"ref_id": "gold_001", "count": 12}],
                    "nearby": [{"name": "Vivec", "kind": "npc", "distance": 312.5}],
                    "game_hour": 13.5}),
                );
                return m;
            }
            _ => continue,
        }
    }
}

#[test]
fn act_and_observe_through_http() {
    let mut cfg = line_config();
    cfg.line.request_timeout_s = 1;
    let (b, line) = start_line(cfg);

    let r = post(
        b.http,
        "/bridge/act",
        &json!({"world": "morrowind", "action": "teleport", "args": {"cell": "Balmora, Temple"}}),
    );
    assert_eq!(r.status, 503, "no link yet: {}", r.text());
    assert_eq!(r.json()["code"], "link_down");
    assert!(r.json()["error"].as_str().unwrap().contains("morrowind"));

    let mut g = game(line, "morrowind");
    let http = b.http;
    let asker = thread::spawn(move || {
        post(
            http,
            "/bridge/act",
            &json!({"world": "morrowind", "player": "Timmy", "action": "teleport",
            "args": {"cell": "Balmora, Temple", "pos": {"x": 4700.567, "y": 3874.742, "z": 14758.99}}}),
        )
    });
    let asked = serve_one(&mut g);
    assert_eq!(asked["action"], "teleport");
    assert_eq!(asked["player"], "Timmy");
    assert_eq!(asked["protocol_version"], "1.0");
    assert!(asked["id"].as_str().unwrap().starts_with("wb-"));
    assert_eq!(asked["args"]["pos"]["x"], 4700.567);
    let r = asker.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ok": true, "world": "morrowind", "action": "teleport", "result": {"cell": "Balmora, Temple"}})
    );

    // Bad actions never reach the game.
    for (body, want) in [
        (
            json!({"world": "morrowind", "action": "fly", "args": {}}),
            "unknown action",
        ),
        (
            json!({"world": "morrowind", "action": "add_item", "args": {"ref_id": "gold_001", "count": "lots"}}),
            "whole number",
        ),
        (
            json!({"world": "morrowind", "action": "teleport"}),
            "`cell` is required",
        ),
    ] {
        let r = post(b.http, "/bridge/act", &body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["code"], "bad_action");
        assert!(
            r.json()["error"].as_str().unwrap().contains(want),
            "{}",
            r.text()
        );
    }

    // A game that refuses: 422 with its reason.
    let asker = thread::spawn(move || {
        post(
            http,
            "/bridge/act",
            &json!({"world": "morrowind", "action": "remove_item", "args": {"ref_id": "gold_001", "count": 5000}}),
        )
    });
    let m = g.recv_type("act").0;
    assert_eq!(m["action"], "remove_item", "the bad ones were never sent");
    g.send(&json!({"type": "result", "id": m["id"], "ok": false, "code": "not_enough", "error": "only 12 gold"}));
    let r = asker.join().unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["game_code"], "not_enough");
    assert!(r.json()["error"].as_str().unwrap().contains("only 12 gold"));

    // A game that does not answer: 504 after line.request_timeout_s.
    let started = Instant::now();
    let r = post(
        b.http,
        "/bridge/act",
        &json!({"world": "morrowind", "action": "console", "args": {"command": "tgm"}}),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["code"], "game_timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let late = g.recv_type("act").0;
    g.send(&json!({"type": "result", "id": late["id"], "ok": true}));

    // observe: none yet → 404 with a hint; fresh asks the game; then the stored one has an age.
    let r = call(b.http, "GET", "/bridge/observe/morrowind", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("fresh=1"));
    let asker = thread::spawn(move || call(http, "GET", "/bridge/observe/morrowind?fresh=1", None));
    assert_eq!(serve_one(&mut g)["type"], "observe");
    let r = asker.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let p = &r.json()["perception"];
    assert_eq!(p["cell"], "Balmora, Temple");
    assert_eq!(p["position"]["z"], 14758.9);
    assert_eq!(p["stats"]["health"], json!({"current": 40.0, "base": 50.0}));
    assert_eq!(p["nearby"][0]["distance"], 312.5);
    thread::sleep(Duration::from_millis(30));
    let again = get(b.http, "/bridge/observe/morrowind");
    assert_eq!(again["fresh"], false);
    assert!(again["age_ms"].as_u64().unwrap() >= 20);
    assert_eq!(again["perception"]["cell"], "Balmora, Temple");

    // The link goes down with a request waiting: 503, not a hang.
    let asker = thread::spawn(move || {
        post(
            http,
            "/bridge/act",
            &json!({"world": "morrowind", "action": "message", "args": {"text": "hi"}}),
        )
    });
    g.recv_type("act");
    drop(g);
    let r = asker.join().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("went down"));
}

#[test]
fn the_world_trait_reaches_the_game_through_the_loop() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "morrowind");
    let mut world = b.worlds.world("morrowind").for_player("Timmy");
    let server = thread::spawn(move || {
        serve_one(&mut g);
        serve_one(&mut g);
        let speak = g.recv_type("speak").0;
        (g, speak)
    });
    let p = world.observe().expect("perception");
    assert_eq!(p.cell.as_deref(), Some("Balmora, Temple"));
    assert_eq!(p.inventory[0].count, 12);
    let cmd = GameCommand::parse("teleport", &json!({"cell": "Vivec, Arena"})).unwrap();
    let r = world.act(&cmd).expect("result");
    assert!(r.ok);
    assert_eq!(r.data, Some(json!({"cell": "Vivec, Arena"})));
    world
        .speak("I am here.", &Target::Player("Alice".into()))
        .expect("spoken");
    let (_g, speak) = server.join().unwrap();
    assert_eq!(
        speak,
        json!({"type": "speak", "text": "I am here.", "user_id": "Alice"})
    );

    let mut nowhere = b.worlds.world("vvardenfell");
    let err = nowhere.observe().unwrap_err();
    assert!(
        err.to_string().contains("vvardenfell is not connected"),
        "{err}"
    );
}

#[test]
fn builtin_agent_answers_where_are_you_from_perception() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "morrowind");
    g.send(&json!({"type": "perception", "player": "Timmy", "cell": "Balmora, Temple",
        "position": {"x": 1.0, "y": 2.0, "z": 3.0}, "stats": {"health": {"current": 40, "base": 50}}}));
    g.send(&json!({"type": "chat", "id": 1, "user_id": "Alice", "room": "Balmora, Temple", "message": "Timmy, where are you?"}));
    let r = g.recv_type("reply").0;
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("Balmora, Temple") && text.contains("morrowind"),
        "{text}"
    );
    drop(b);
}

#[test]
fn speak_over_http_goes_to_the_link_and_the_room_log() {
    let (b, line) = start_line(line_config());
    let mut g = game(line, "mud");
    g.send(&json!({"type": "room", "id": 1, "name": "Limbo"}));
    g.recv();
    let r = post(
        b.http,
        "/bridge/speak",
        &json!({"room": "Limbo", "text": "The lamp flickers."}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        g.recv().unwrap(),
        json!({"type": "speak", "text": "The lamp flickers.", "room": "Limbo"})
    );
    let evs = get(b.http, "/bridge/room/Limbo/events");
    assert_eq!(evs["events"][0]["type"], "bark");
    g.send(&json!({"type": "ping", "id": 2}));
    let (_, extra) = g.recv_type("pong");
    assert!(
        extra.is_empty(),
        "the bark is not sent to the link a second time: {extra:?}"
    );
    let r = post(
        b.http,
        "/bridge/speak",
        &json!({"room": "Nowhere Hosted", "text": "x"}),
    );
    assert_eq!(r.status, 503);
}

#[test]
fn an_anonymous_one_shot_client_can_say_and_read_one_answer() {
    let (b, line) = start_line(line_config());
    let mut c = LineClient::connect(line);
    c.send(&json!({"type": "say", "id": "s1", "user_id": "npc_guard", "room": "The Threshold", "message": "Halt!"}));
    let ok = c.recv().unwrap();
    assert_eq!(ok["type"], "ok");
    assert_eq!(ok["id"], "s1");
    c.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        c.recv().is_none(),
        "the bridge closes after the client is done"
    );
    let evs = get(b.http, "/bridge/room/The%20Threshold/events");
    assert!(evs["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"] == "Halt!"));
}

#[test]
fn a_link_that_stops_reading_is_dropped_and_nothing_acknowledged_is_lost() {
    let mut cfg = line_config();
    cfg.line.max_line_bytes = 1024;
    cfg.line.max_queued_bytes = 8 * 1024;
    cfg.rooms.events_max = 100_000;
    cfg.rate_limit_lifted();
    let (b, line) = start_line(cfg);
    let mut slow = game(line, "slow");
    slow.send(&json!({"type": "room", "id": 1, "name": "Slow Room"}));
    slow.recv();
    let mut healthy = game(line, "healthy");
    // The slow link's socket buffers fill, then our queue: it must go, and quickly.
    let mut c = Client::connect(b.http);
    // Loopback socket buffers take megabytes before the queue cap is reached; a busy
    // 2-core machine can need well over 20 s of says for that, so the deadline is wide
    // and /metrics is read every 16 says, not after each.
    let started = Instant::now();
    let mut acked = 0;
    while started.elapsed() < Duration::from_secs(90) {
        let body =
            json!({"user_id": "web", "room": "Slow Room", "message": "x".repeat(900)}).to_string();
        let r = c.call("POST", "/bridge/say", Some(&body));
        assert_eq!(r.status, 200, "the bridge keeps answering: {}", r.text());
        acked += 1;
        if acked % 16 != 0 {
            continue;
        }
        let text = c.call("GET", "/metrics", None).text();
        if text.contains("worldbridge_line_slow_consumers_total 1") {
            break;
        }
    }
    let text = c.call("GET", "/metrics", None).text();
    assert!(
        text.contains("worldbridge_line_slow_consumers_total 1"),
        "dropped as a slow consumer"
    );
    healthy.send(&json!({"type": "ping", "id": 1}));
    assert_eq!(
        healthy.recv().unwrap()["type"],
        "pong",
        "the other link is unaffected"
    );
    // Every acknowledged say is in the room's log.
    let evs = get(b.http, "/bridge/room/Slow%20Room/events");
    let says = evs["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "say")
        .count();
    assert_eq!(says, acked, "every acknowledged say is kept");
    drop(slow);
}

/// A mock game server that listens, as the TES3MP script does in its `listen` role.
struct MockGame {
    listener: TcpListener,
}

impl MockGame {
    fn bind() -> MockGame {
        MockGame {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// The next connection from the bridge, with its `hello` read and answered.
    fn accept(&self) -> (LineClient, Value) {
        let (s, _) = self.listener.accept().unwrap();
        let mut c = LineClient::from_stream(s);
        let hello = c.recv().expect("hello from the bridge");
        c.send(&json!({"type": "welcome", "world": "morrowind", "kind": "tes3mp", "protocol": 1}));
        (c, hello)
    }
}

fn dial_config(addr: SocketAddr) -> Config {
    let mut cfg = test_config();
    cfg.line.dial = vec![DialConfig {
        world: "morrowind".into(),
        kind: "tes3mp".into(),
        addr,
        token: "game-token".into(),
    }];
    cfg
}

#[test]
fn the_bridge_dials_a_listening_game_and_redials_after_a_drop() {
    let mock = MockGame::bind();
    let b = start_with(dial_config(mock.addr()));
    let (mut g, hello) = mock.accept();
    assert_eq!(
        hello,
        json!({"type": "hello", "world": "local", "kind": "bridge", "protocol": 1, "token": "game-token"})
    );
    eventually(Duration::from_secs(5), "link up", || {
        health_link(&b, "morrowind")["state"] == "up"
    });

    let http = b.http;
    let asker = thread::spawn(move || {
        post(
            http,
            "/bridge/act",
            &json!({"world": "morrowind", "action": "teleport", "args": {"cell": "Balmora, Temple"}}),
        )
    });
    serve_one(&mut g);
    assert_eq!(asker.join().unwrap().status, 200);

    drop(g);
    eventually(Duration::from_secs(5), "link down", || {
        health_link(&b, "morrowind")["state"] != "up"
    });
    let (_g, _) = mock.accept();
    eventually(Duration::from_secs(5), "link up again", || {
        let l = health_link(&b, "morrowind");
        l["state"] == "up" && l["reconnects"] == 1
    });
    let metrics = call(b.http, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("worldbridge_link_up{world=\"morrowind\""),
        "{metrics}"
    );
    assert!(metrics.contains("worldbridge_link_reconnects_total{world=\"morrowind\""));
}

#[test]
fn a_game_that_refuses_for_five_seconds_is_reached_with_backoff() {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let b = start_with(dial_config(addr));
    eventually(Duration::from_secs(5), "the first attempts fail", || {
        let l = health_link(&b, "morrowind");
        l["state"] == "down"
            && l["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused"))
    });
    thread::sleep(Duration::from_secs(5));
    let attempts = health_link(&b, "morrowind")["attempts"].as_u64().unwrap();
    assert!(
        (2..=5).contains(&attempts),
        "backoff, not a busy loop: {attempts} attempts in 5 s"
    );
    let mock = MockGame {
        listener: TcpListener::bind(addr).unwrap(),
    };
    let (_g, _) = mock.accept();
    eventually(
        Duration::from_secs(10),
        "up after the game comes back",
        || health_link(&b, "morrowind")["state"] == "up",
    );
    assert_eq!(health_link(&b, "morrowind")["last_error"], Value::Null);
}

#[test]
fn a_silent_game_is_pinged_then_dropped_and_redialled() {
    let mock = MockGame::bind();
    let mut cfg = dial_config(mock.addr());
    cfg.line.heartbeat_s = 1;
    let b = start_with(cfg);
    // Accept and go silent: not even a welcome.
    let (s, _) = mock.listener.accept().unwrap();
    let mut silent = LineClient::from_stream(s);
    assert_eq!(silent.recv().unwrap()["type"], "hello");
    let started = Instant::now();
    let ping = silent.recv().expect("a ping");
    assert_eq!(ping["type"], "ping");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "ping after two heartbeats, not {waited:?}"
    );
    assert!(
        silent.recv().is_none(),
        "dropped when the ping goes unanswered"
    );
    assert!(started.elapsed() >= Duration::from_millis(2800));
    eventually(Duration::from_secs(5), "the reason is visible", || {
        health_link(&b, "morrowind")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("silent"))
    });
    let (mut g, _) = mock.accept();
    eventually(Duration::from_secs(5), "up again", || {
        health_link(&b, "morrowind")["state"] == "up"
    });
    // A live game answers pings and stays.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        g.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 256];
        if let Ok(n) = g.sock.read(&mut b) {
            assert!(n > 0, "the bridge must not drop a game that answers");
            if String::from_utf8_lossy(&b[..n]).contains("\"ping\"") {
                g.sock.write_all(b"{\"type\":\"pong\"}\n").unwrap();
            }
        }
    }
    assert_eq!(health_link(&b, "morrowind")["state"], "up");
}

#[test]
fn a_reset_mid_line_and_garbage_from_a_dialed_game_do_not_hurt_the_bridge() {
    let mock = MockGame::bind();
    let b = start_with(dial_config(mock.addr()));
    let (mut g, _) = mock.accept();
    g.send_raw(
        b"\x00\x01garbage\xff\n{\"type\":\"presence\",\"event\":\"enter\",\"user_id\":\"x\",\"ro",
    );
    let e = g.recv().unwrap();
    assert_eq!(e["code"], "bad_json");
    let sock = socket2::SockRef::from(&g.sock);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(g);
    assert_eq!(call(b.http, "GET", "/bridge/health", None).status, 200);
    let (_g, _) = mock.accept();
    eventually(Duration::from_secs(5), "up again", || {
        health_link(&b, "morrowind")["state"] == "up"
    });
    assert!(
        get(b.http, "/bridge/room/The%20Threshold/players")["players"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_game_that_never_reads_is_dropped_as_a_slow_consumer() {
    let mock = MockGame::bind();
    let mut cfg = dial_config(mock.addr());
    cfg.line.max_line_bytes = 1024;
    cfg.line.max_queued_bytes = 4096;
    cfg.rate_limit_lifted();
    let b = start_with(cfg);
    let (mut g, _) = mock.accept();
    g.send(&json!({"type": "room", "id": 1, "name": "Deaf Room"}));
    assert_eq!(g.recv().unwrap()["type"], "ok");
    // From now on the game reads nothing.
    let mut c = Client::connect(b.http);
    // A wide deadline and a health check every 16 says: see the test above.
    let deadline = Instant::now() + Duration::from_secs(90);
    for n in 1.. {
        let body =
            json!({"user_id": "web", "room": "Deaf Room", "message": "y".repeat(800)}).to_string();
        assert_eq!(c.call("POST", "/bridge/say", Some(&body)).status, 200);
        if n % 16 == 0
            && health_link(&b, "morrowind")["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("slow consumer"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never dropped");
    }
    let (_g2, _) = mock.accept();
    eventually(Duration::from_secs(5), "redialled", || {
        health_link(&b, "morrowind")["state"] == "up"
    });
    drop(g);
}

trait LiftRateLimit {
    fn rate_limit_lifted(&mut self);
}

impl LiftRateLimit for Config {
    fn rate_limit_lifted(&mut self) {
        self.http.rate_limit_requests = 1_000_000;
    }
}

#[test]
fn health_lists_inbound_links() {
    let (b, line) = start_line(line_config());
    let _g = game(line, "evennia-test");
    let link = health_link(&b, "evennia-test");
    assert_eq!(link["direction"], "inbound");
    assert_eq!(link["state"], "up");
    assert_eq!(link["kind"], "tes3mp");
    let _tcp = TcpStream::connect(line).unwrap();
}

#[test]
fn a_live_world_cannot_be_claimed_by_another_connection() {
    let (b, line) = start_line(line_config());
    let mut holder = game(line, "morrowind");
    // A second connection saying hello as the same world: refused and closed, with or
    // without a token (there is none here), and the holder keeps the world.
    let mut squatter = LineClient::connect(line);
    squatter.send(&json!({"type": "hello", "world": "morrowind", "kind": "tes3mp", "protocol": 1}));
    let e = squatter.recv().expect("an error line");
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("world_taken")),
        "{e}"
    );
    assert!(squatter.recv().is_none(), "closed after world_taken");
    // `act` still reaches the holder.
    let http = b.http;
    let asker = thread::spawn(move || {
        post(
            http,
            "/bridge/act",
            &json!({"world": "morrowind", "action": "message", "args": {"text": "hi"}}),
        )
    });
    let asked = serve_one(&mut holder);
    assert_eq!(asked["action"], "message");
    assert_eq!(asker.join().unwrap().status, 200);
    // Once the holder is gone, the world can be claimed again.
    drop(holder);
    eventually(Duration::from_secs(5), "morrowind free again", || {
        health_link(&b, "morrowind").is_null()
    });
    game(line, "morrowind");
}

#[test]
fn a_bound_world_needs_its_own_token_and_anonymous_links_cannot_rewrite_rooms() {
    let mut cfg = line_config();
    cfg.line.links = vec![worldbridge::config::LineLinkConfig {
        world: "morrowind".into(),
        token: "m-secret".into(),
        kind: "tes3mp".into(),
    }];
    let (b, line) = start_line(cfg);
    // Without the world's token (there is no line.token: anonymous links are allowed).
    for token in [None, Some("wrong")] {
        let mut g = LineClient::connect(line);
        let mut hello =
            json!({"type": "hello", "world": "morrowind", "kind": "tes3mp", "protocol": 1});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        g.send(&hello);
        let e = g.recv().expect("an error line");
        assert_eq!(e["code"], "unauthorized", "{token:?}: {e}");
        assert!(
            e["error"].as_str().unwrap().contains("[[line.links]]"),
            "{e}"
        );
        assert!(g.recv().is_none());
    }
    // With it: the world, with the configured kind whatever the hello says.
    let mut m = LineClient::connect(line);
    m.send(&json!({"type": "hello", "world": "morrowind", "kind": "generic", "protocol": 1, "token": "m-secret"}));
    assert_eq!(m.recv().unwrap()["type"], "welcome");
    assert_eq!(health_link(&b, "morrowind")["kind"], "tes3mp");

    // An anonymous link (no token anywhere) may say things and keep its own rooms...
    let mut anon = game(line, "mud");
    anon.send(&json!({"type": "room", "id": 1, "name": "Mud Hut", "desc": "Mud walls."}));
    assert_eq!(anon.recv().unwrap()["type"], "ok");
    anon.send(&json!({"type": "room", "id": 2, "name": "Mud Hut", "desc": "Still mud."}));
    assert_eq!(anon.recv().unwrap()["type"], "ok", "its own room");
    // ...but not rewrite a room of the world file, or one another link declared.
    m.send(&json!({"type": "room", "id": 3, "name": "Balmora", "desc": "A town."}));
    assert_eq!(m.recv().unwrap()["type"], "ok");
    for (id, name) in [(4, "The Threshold"), (5, "the threshold"), (6, "Balmora")] {
        anon.send(&json!({"type": "room", "id": id, "name": name, "desc": "DEFACED"}));
        let e = anon.recv().unwrap();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_i64()),
            (Some("error"), Some("forbidden"), Some(id)),
            "{name}: {e}"
        );
    }
    let world = get(b.http, "/bridge/world/The%20Threshold");
    assert!(!world["data"]["desc_base"]
        .as_str()
        .unwrap()
        .contains("DEFACED"));
    assert_eq!(
        get(b.http, "/bridge/world/Balmora")["data"]["desc_base"],
        "A town."
    );
    // The anonymous link lives on and can still talk.
    anon.send(
        &json!({"type": "say", "id": 7, "user_id": "bob", "room": "Mud Hut", "message": "hi"}),
    );
    assert_eq!(anon.recv().unwrap()["type"], "ok");
    // The bound, token-holding link may change the world file's rooms.
    m.send(
        &json!({"type": "room", "id": 8, "name": "The Threshold", "desc": "A quiet room, retold."}),
    );
    assert_eq!(m.recv().unwrap()["type"], "ok");
}

#[test]
fn a_dialed_world_cannot_be_claimed_by_an_inbound_link() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = dial_config(listener.local_addr().unwrap());
    cfg.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let world = cfg.line.dial[0].world.clone();
    let (_b, line) = start_line(cfg);
    let mut g = LineClient::connect(line);
    g.send(&json!({"type": "hello", "world": world, "kind": "tes3mp", "protocol": 1}));
    let e = g.recv().expect("an error line");
    assert_eq!(e["code"], "world_taken", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("[[line.dial]]"),
        "{e}"
    );
}
