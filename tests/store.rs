//! Durable state, as a user sees it through the real binary: a restart keeps everything,
//! a `kill -9` under load loses nothing that was acknowledged, export → import → export
//! is exact, group commit really batches, and bad data directories are clear errors.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wb-durable-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn serve(dir: &Path, extra_toml: &str) -> (Child, std::net::SocketAddr) {
    let cfg = temp_file(
        &format!("{}.toml", dir.file_name().unwrap().to_string_lossy()),
        &format!("[http]\nlisten = [\"127.0.0.1:0\"]\nrate_limit_requests = 1000000\n[line]\nlisten = []\n{extra_toml}"),
    );
    let (child, addr, _logs) = spawn(bin().arg("--config").arg(&cfg).arg("--data-dir").arg(dir));
    (child, addr)
}

/// `worldbridge export --data-dir DIR --out FILE`.
fn export(dir: &Path, out: &Path) -> bool {
    let st = bin()
        .args(["export", "--data-dir"])
        .arg(dir)
        .arg("--out")
        .arg(out)
        .status();
    st.unwrap().success()
}

/// `worldbridge import FILE --data-dir DIR [--force]`.
fn import(file: &Path, dir: &Path, force: bool) -> std::process::Output {
    let mut cmd = bin();
    cmd.arg("import").arg(file).arg("--data-dir").arg(dir);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

/// Start the binary on `dir`, expecting it to refuse; returns what it said.
fn refused(dir: &Path) -> String {
    let out = bin()
        .args([
            "--http",
            "127.0.0.1:0",
            "--line",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "it must not start on {}",
        dir.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sigterm(mut child: Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean exit after SIGTERM");
}

fn chat(addr: std::net::SocketAddr, user: &str, message: &str) -> Value {
    let r = post(
        addr,
        "/bridge/chat",
        &json!({"user_id": user, "username": user, "message": message, "room": "The Garden"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn everything_is_there_after_a_restart_and_conversations_continue() {
    let dir = data_dir("restart");
    let (child, addr) = serve(&dir, "");
    assert_eq!(chat(addr, "alice", "hello")["session_messages"], 2);
    assert_eq!(
        chat(addr, "alice", "I don't want to be here anymore")["crisis"],
        true
    );
    let r = post(
        addr,
        "/bridge/say",
        &json!({"user_id": "bob", "username": "Bob", "room": "Limbo", "message": "a new room"}),
    );
    assert_eq!(r.status, 200);
    post(
        addr,
        "/bridge/move",
        &json!({"user_id": "bob", "room": "The Tower"}),
    );
    let before_events = get(addr, "/bridge/room/Limbo/events");
    let before_world = get(addr, "/bridge/world/Limbo");
    sigterm(child);

    let (child, addr) = serve(&dir, "");
    assert_eq!(get(addr, "/bridge/room/Limbo/events"), before_events);
    assert_eq!(get(addr, "/bridge/world/Limbo"), before_world);
    assert_eq!(
        get(addr, "/bridge/room/The%20Tower/players")["players"],
        json!([{"user_id": "bob", "username": "Bob"}])
    );
    let s = get(addr, "/bridge/sessions");
    let alice = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["user_id"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice["messages"], 4);
    assert_eq!(alice["crisis"], true, "the crisis flag survives");
    let next = chat(addr, "alice", "how are you");
    assert_eq!(next["session_messages"], 6, "the conversation goes on");
    assert!(
        next["response"].as_str().unwrap().contains("988"),
        "a flagged session keeps the lifeline"
    );
    // Sequence numbers go on from where they were.
    let ev = post(
        addr,
        "/bridge/say",
        &json!({"user_id": "bob", "room": "Limbo", "message": "again"}),
    )
    .json();
    let last_before = before_events["events"].as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert!(ev["event"]["seq"].as_u64().unwrap() > last_before);
    sigterm(child);
}

#[test]
fn nothing_acknowledged_is_lost_when_the_process_is_killed() {
    let dir = data_dir("crash");
    let (mut child, addr) = serve(&dir, "[rooms]\nevents_max = 1000000\n");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let msg = format!("w{w}-{i}");
                    let body = json!({"user_id": format!("writer{w}"), "room": "The Forge", "message": msg}).to_string();
                    c.send("POST", "/bridge/say", Some(&body));
                    match c.read_response(false) {
                        Some(r) if r.status == 200 => acked.lock().unwrap().push(msg),
                        _ => break,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acked.lock().unwrap().len() < 2000 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL, mid-write.
    child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "the load ran: {} acknowledged",
        acked.len()
    );

    let conn = rusqlite::Connection::open(dir.join("world.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);

    let (child, addr) = serve(&dir, "[rooms]\nevents_max = 1000000\n");
    let evs = get(addr, "/bridge/room/The%20Forge/events");
    let stored: HashSet<String> = evs["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged says were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    sigterm(child);
}

#[test]
fn export_import_export_is_exact() {
    let dir = data_dir("export");
    let (child, addr) = serve(&dir, "");
    chat(addr, "alice", "hello");
    post(
        addr,
        "/bridge/say",
        &json!({"user_id": "bob", "room": "Limbo", "message": "Ünïcödé ✓ \"quoted\""}),
    );
    // Export works while the bridge runs (a reader does not need the lock).
    let out1 = dir.with_extension("1.json");
    assert!(export(&dir, &out1));
    sigterm(child);

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out1).unwrap()).unwrap();
    assert_eq!(doc["format"], "worldbridge-export");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["world"], "local");
    assert!(doc["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["spec"]["name"] == "Limbo"));

    let dir2 = data_dir("import");
    assert!(import(&out1, &dir2, false).status.success());
    let again = import(&out1, &dir2, false);
    assert!(
        !again.status.success(),
        "a non-empty world is not overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(import(&out1, &dir2, true).status.success());
    let out2 = dir.with_extension("2.json");
    assert!(export(&dir2, &out2));
    assert_eq!(
        std::fs::read_to_string(&out1).unwrap(),
        std::fs::read_to_string(&out2).unwrap(),
        "identical documents"
    );

    // A newer major version is refused.
    let mut newer = doc.clone();
    newer["version"] = json!(2);
    let f = temp_file("newer-export.json", &newer.to_string());
    let out = import(&f, &data_dir("newer"), false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer than this worldbridge"));

    // The imported world serves what was exported.
    let (child, addr) = serve(&dir2, "");
    let evs = get(addr, "/bridge/room/Limbo/events");
    assert_eq!(
        evs["events"].as_array().unwrap().last().unwrap()["message"],
        "Ünïcödé ✓ \"quoted\""
    );
    sigterm(child);
}

#[test]
fn group_commit_puts_many_writes_in_one_transaction() {
    let dir = data_dir("group");
    let (child, addr) = serve(&dir, "");
    let writers: Vec<_> = (0..32)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..50 {
                    let body = json!({"user_id": format!("u{w}"), "room": "The Garden", "message": format!("m{i}")}).to_string();
                    assert_eq!(c.call("POST", "/bridge/say", Some(&body)).status, 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let store = get(addr, "/bridge/stats")["store"].clone();
    let (batches, tx) = (
        store["batches"].as_u64().unwrap(),
        store["transactions"].as_u64().unwrap(),
    );
    assert!(batches >= 1 && tx >= 1, "{store}");
    assert!(tx < 1600, "1,600 writes in fewer transactions: {store}");
    assert!(tx <= batches, "{store}");
    let metrics = call(addr, "GET", "/metrics", None).text();
    assert!(metrics.contains("worldbridge_store_transactions_total"));
    sigterm(child);
}

#[test]
fn a_second_process_and_bad_directories_are_refused_clearly() {
    let dir = data_dir("second");
    let (child, _addr) = serve(&dir, "");
    let err = refused(&dir);
    assert!(
        err.contains("another worldbridge is already using the data directory"),
        "{err}"
    );
    sigterm(child);

    // A data directory that cannot be created: its parent is a file.
    let file = temp_file("not-a-dir", "x");
    let err = refused(&file.join("sub"));
    assert!(err.contains("cannot create the data directory"), "{err}");

    // A corrupt database file.
    let bad = data_dir("corrupt");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("world.db"), vec![7u8; 4096]).unwrap();
    let err = refused(&bad);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_gateway_client_resumes_across_a_restart() {
    use tungstenite::Message;
    let dir = data_dir("gateway");
    let (child, addr) = serve(&dir, "");
    let next_text = |ws: &mut tungstenite::WebSocket<_>| -> Value {
        loop {
            if let Message::Text(t) = ws.read().expect("a frame") {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    };
    let mut sender = ws_connect(addr, "/ws/matrix");
    sender
        .send(Message::text(
            json!({"type": "agent_register", "agentId": "sender", "role": "npc"}).to_string(),
        ))
        .unwrap();
    assert_eq!(next_text(&mut sender)["type"], "agent_registered");
    let mut seqs = Vec::new();
    for i in 0..3 {
        sender
            .send(Message::text(
                json!({"type": "bark", "text": format!("line {i}")}).to_string(),
            ))
            .unwrap();
        // The sender's own broadcast is not echoed: read the gateway's sequence from the status.
        let st = eventually_status(addr, seqs.last().copied().unwrap_or(0));
        seqs.push(st);
    }
    sigterm(child);

    let (child, addr2) = serve(&dir, "");
    let mut ws = ws_connect(addr2, &format!("/ws/matrix?since={}", seqs[0]));
    ws.send(Message::text(
        json!({"type": "agent_register", "agentId": "late", "role": "watcher"}).to_string(),
    ))
    .unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let v = next_text(&mut ws);
        if v["type"] == "bark" {
            texts.push(v["text"].as_str().unwrap().to_string());
        }
        assert_ne!(
            v["type"], "resync_required",
            "the history survived the restart: {v}"
        );
    }
    assert_eq!(
        texts,
        ["line 1", "line 2"],
        "what was missed, in order, after a restart"
    );
    let status = get(addr2, "/api/gateway/status");
    assert!(
        status["gateway_seq"].as_u64().unwrap() >= seqs[2],
        "the sequence goes on: {status}"
    );
    sigterm(child);
}

/// A WebSocket client with a 10 s read timeout.
fn ws_connect(
    addr: std::net::SocketAddr,
    path: &str,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).expect("ws connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// Wait until the gateway's sequence passes `after`; returns it.
fn eventually_status(addr: std::net::SocketAddr, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seq = get(addr, "/api/gateway/status")["gateway_seq"]
            .as_u64()
            .unwrap_or(0);
        if seq > after {
            return seq;
        }
        assert!(
            Instant::now() < deadline,
            "the broadcast never reached the gateway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The names `GET /bridge/rooms` lists.
fn room_names(addr: std::net::SocketAddr) -> Vec<String> {
    get(addr, "/bridge/rooms")["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_idle_client_room_expires_frees_its_place_and_stays_gone_after_a_restart() {
    let dir = data_dir("expiry");
    // The five built-in rooms and one more.
    let toml = "[rooms]\nidle_expire_s = 1\nmax = 6\n";
    let (child, addr) = serve(&dir, toml);
    let say = |room: &str, user: &str| {
        post(
            addr,
            "/bridge/say",
            &json!({"user_id": user, "room": room, "message": "anyone here?"}),
        )
    };
    assert_eq!(say("Limbo", "bob").status, 200);
    let full = say("Elsewhere", "carol");
    assert_eq!(full.status, 403, "{}", full.text());
    assert_eq!(full.json()["code"], "limit_reached");
    // Bob leaves: Limbo is empty, and nothing defines it.
    let r = post(
        addr,
        "/bridge/move",
        &json!({"user_id": "bob", "room": "The Tower"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(Duration::from_secs(10), "Limbo expires", || {
        !room_names(addr).contains(&"Limbo".to_string())
    });
    assert_eq!(
        call(addr, "GET", "/bridge/room/Limbo/events", None).status,
        404,
        "its events went with it"
    );
    let metrics = call(addr, "GET", "/metrics", None).text();
    assert!(
        metrics.contains("worldbridge_rooms_expired_total 1"),
        "{metrics}"
    );
    // Its place under rooms.max is free again; the world file's rooms are all there.
    assert_eq!(say("Elsewhere", "carol").status, 200);
    let names = room_names(addr);
    for r in ["The Threshold", "The Tower", "Elsewhere"] {
        assert!(names.contains(&r.to_string()), "{r} missing: {names:?}");
    }
    sigterm(child);

    // Nothing of Limbo survives a restart, in the API or in the database.
    let out = dir.join("after.json");
    assert!(export(&dir, &out));
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let names: Vec<&str> = exported["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"Limbo") && names.contains(&"Elsewhere"),
        "{names:?}"
    );
    let rooms_of_events: HashSet<&str> = exported["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["room"].as_str().unwrap())
        .collect();
    assert!(!rooms_of_events.contains("Limbo"), "{rooms_of_events:?}");
    assert!(rooms_of_events.contains("Elsewhere"));
    let (child, addr) = serve(&dir, "[rooms]\nmax = 6\n");
    let names = room_names(addr);
    assert!(!names.contains(&"Limbo".to_string()), "{names:?}");
    assert!(names.contains(&"Elsewhere".to_string()), "{names:?}");
    assert_eq!(call(addr, "GET", "/bridge/world/Limbo", None).status, 404);
    sigterm(child);
}
