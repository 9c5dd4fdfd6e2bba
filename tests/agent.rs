//! The agent behind the HTTP API: a mock OpenAI-compatible server (a real TCP server in a
//! thread) proves what the bridge sends, isolation between users, timeouts, failures, the
//! per-user ordering, the bounded queue, and the crisis protocol with and without a model.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How the mock answers one request.
#[derive(Clone)]
enum Mock {
    /// 200 with this assistant content after a delay.
    Reply(Duration, String),
    Status(u16),
    Hang,
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    auth: Option<String>,
    body: Value,
}

struct MockAgent {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Highest number of requests in progress at once, per first word of the user message.
    max_parallel: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn mock_agent(behave: impl Fn(&Value) -> Mock + Send + Sync + 'static) -> MockAgent {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let max_parallel = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let now_parallel: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let behave = Arc::new(behave);
    let (s, mp) = (seen.clone(), max_parallel.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (s, mp, np, behave) = (s.clone(), mp.clone(), now_parallel.clone(), behave.clone());
            std::thread::spawn(move || serve(stream, s, mp, np, behave));
        }
    });
    MockAgent {
        addr,
        seen,
        max_parallel,
    }
}

fn serve(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_parallel: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    now_parallel: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    behave: Arc<dyn Fn(&Value) -> Mock + Send + Sync>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let who = last_user(&body).split(':').next().unwrap_or("").to_string();
        {
            let mut np = now_parallel.lock().unwrap();
            let n = np.entry(who.clone()).or_insert(0);
            *n += 1;
            let mut mp = max_parallel.lock().unwrap();
            let m = mp.entry(who.clone()).or_insert(0);
            *m = (*m).max(*n);
        }
        seen.lock().unwrap().push(Seen {
            path,
            auth,
            body: body.clone(),
        });
        let action = behave(&body);
        let (status, payload) = match action {
            Mock::Reply(delay, content) => {
                std::thread::sleep(delay);
                (200, json!({"choices":[{"index":0,"message":{"role":"assistant","content":content},"finish_reason":"stop"}]}).to_string())
            }
            Mock::Status(code) => (
                code,
                json!({"error":{"message":"mock failure"}}).to_string(),
            ),
            Mock::Hang => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
        };
        *now_parallel.lock().unwrap().get_mut(&who).unwrap() -= 1;
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn openai_config(agent: SocketAddr, timeout_s: u64) -> worldbridge::config::Config {
    let mut cfg = test_config();
    cfg.agent.backend = "openai".into();
    cfg.agent.base_url = format!("http://{agent}/v1");
    cfg.agent.model = "test-model".into();
    cfg.agent.timeout_s = timeout_s;
    cfg
}

fn chat(addr: SocketAddr, user: &str, message: &str, room: &str) -> Resp {
    post(
        addr,
        "/bridge/chat",
        &json!({"user_id":user,"username":user,"message":message,"room":room}),
    )
}

fn assert_protocol_order(text: &str) {
    let pos = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from: {text}"))
    };
    let safe = pos("Are you safe right now?");
    let lifeline = pos("988");
    let home = pos("741741");
    let grounding = pos("5 things");
    assert!(
        safe < lifeline && lifeline < home && home < grounding,
        "protocol order in: {text}"
    );
    assert!(text.contains("HOME"));
    assert_eq!(safe, 0, "the reply begins with the question: {text}");
}

#[test]
fn sends_model_messages_room_context_and_the_crisis_protocol() {
    let agent = mock_agent(|b| Mock::Reply(Duration::ZERO, format!("ack {}", last_user(b))));
    let mut cfg = openai_config(agent.addr, 5);
    cfg.agent.api_key_env = "WORLDBRIDGE_TEST_KEY_A".into();
    std::env::set_var("WORLDBRIDGE_TEST_KEY_A", "k-123");
    let b = start_with(cfg);
    post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"bob","username":"Bob","room":"The Tower"}),
    );
    let r = chat(b.http, "alice", "alice: what is this place?", "The Tower");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["response"], "ack alice: what is this place?");
    let seen = agent.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/v1/chat/completions");
    assert_eq!(s.auth.as_deref(), Some("Bearer k-123"));
    assert_eq!(s.body["model"], "test-model");
    let msgs = s.body["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    let system = msgs[0]["content"].as_str().unwrap();
    for needle in [
        "The Tower",
        "green LED",
        "Bob",
        "988",
        "741741",
        "Are you safe right now?",
    ] {
        assert!(
            system.contains(needle),
            "system prompt lacks {needle:?}: {system}"
        );
    }
    assert_eq!(msgs.last().unwrap()["role"], "user");
    assert_eq!(
        msgs.last().unwrap()["content"],
        "alice: what is this place?"
    );
}

#[test]
fn two_users_histories_never_mix_under_concurrent_load() {
    let agent =
        mock_agent(|b| Mock::Reply(Duration::from_millis(5), format!("ack {}", last_user(b))));
    let b = start_with(openai_config(agent.addr, 10));
    let http = b.http;
    let threads: Vec<_> = ["userA", "userB"]
        .into_iter()
        .map(|u| {
            std::thread::spawn(move || {
                let mut c = Client::connect(http);
                for i in 0..8 {
                    let body = json!({"user_id":u,"message":format!("{u}: message {i}"),"room":"The Garden"}).to_string();
                    let r = c.call("POST", "/bridge/chat", Some(&body));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["response"], format!("ack {u}: message {i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = agent.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 16);
    for s in &seen {
        let me = last_user(&s.body).split(':').next().unwrap().to_string();
        let other = if me == "userA" { "userB" } else { "userA" };
        for m in s.body["messages"].as_array().unwrap().iter().skip(1) {
            let content = m["content"].as_str().unwrap();
            assert!(
                !content.contains(other),
                "{me}'s history contains {other}'s line: {content}"
            );
        }
    }
    // The last call of each user carries its whole conversation so far (7 exchanges).
    let last_a = seen
        .iter()
        .find(|s| last_user(&s.body) == "userA: message 7")
        .unwrap();
    assert_eq!(
        last_a.body["messages"].as_array().unwrap().len(),
        1 + 14 + 1
    );
}

#[test]
fn a_slow_agent_does_not_slow_health_on_other_connections() {
    let agent = mock_agent(|_| Mock::Reply(Duration::from_secs(2), "finally".into()));
    let b = start_with(openai_config(agent.addr, 10));
    let http = b.http;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = chat(http, "slow", "hello", "The Forge");
        tx.send(r.status).unwrap();
    });
    eventually(Duration::from_secs(5), "the chat reaches the agent", || {
        !agent.seen.lock().unwrap().is_empty()
    });
    let mut c = Client::connect(http);
    for _ in 0..20 {
        assert_eq!(c.call("GET", "/bridge/health", None).status, 200);
    }
    assert!(
        rx.try_recv().is_err(),
        "health answered while the chat still waits on the agent"
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 200);
}

#[test]
fn a_hanging_agent_gives_504_and_the_session_stays_consistent() {
    let agent = mock_agent(|_| Mock::Hang);
    let b = start_with(openai_config(agent.addr, 1));
    let t = Instant::now();
    let r = chat(b.http, "h", "hello?", "The Bridge");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["code"], "agent_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
    let s = get(b.http, "/bridge/sessions");
    assert_eq!(s["sessions"][0]["user_id"], "h");
    assert_eq!(s["sessions"][0]["messages"], 0, "no half exchange recorded");
    assert_eq!(get(b.http, "/bridge/stats")["agent"]["calls"]["timeout"], 1);
}

#[test]
fn an_agent_error_gives_a_clean_json_error() {
    let agent = mock_agent(|_| Mock::Status(500));
    let b = start_with(openai_config(agent.addr, 2));
    let r = chat(b.http, "e", "hello?", "The Bridge");
    assert!(
        r.status == 502 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    let j = r.json();
    assert!(
        j["code"] == "agent_error" || j["code"] == "agent_timeout",
        "{j}"
    );
    assert!(agent.seen.lock().unwrap().len() >= 2, "5xx is retried");
    assert_eq!(get(b.http, "/bridge/health")["status"], "ok");
}

#[test]
fn crisis_gets_the_full_protocol_even_when_the_agent_is_down() {
    // Nothing listens on this port: connection refused.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = start_with(openai_config(dead, 2));
    let r = chat(b.http, "c1", "I don't want to be here anymore", "The Tower");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_protocol_order(j["response"].as_str().unwrap());
    assert_eq!(j["crisis"], true);
    let s = get(b.http, "/bridge/sessions");
    assert_eq!(s["sessions"][0]["crisis"], true);
    let m = call(b.http, "GET", "/metrics", None).text();
    assert!(
        m.contains("worldbridge_crisis_detections_total{category=\"suicide\"} 1"),
        "{m}"
    );
}

#[test]
fn crisis_with_a_hanging_agent_still_answers_with_the_protocol() {
    let agent = mock_agent(|_| Mock::Hang);
    let b = start_with(openai_config(agent.addr, 1));
    let r = chat(
        b.http,
        "c2",
        "everyone would be better off without me",
        "The Tower",
    );
    assert_eq!(r.status, 200);
    assert_protocol_order(r.json()["response"].as_str().unwrap());
}

#[test]
fn crisis_protocol_leads_the_agents_words_and_later_replies_keep_988() {
    let agent = mock_agent(|_| Mock::Reply(Duration::ZERO, "I am here with you.".into()));
    let b = start_with(openai_config(agent.addr, 5));
    let r = chat(b.http, "c3", "I want to kill myself", "The Tower");
    let text = r.json()["response"].as_str().unwrap().to_string();
    assert_protocol_order(&text);
    assert!(text.ends_with("I am here with you."), "{text}");
    let later = chat(b.http, "c3", "tell me about the garden", "The Tower");
    let later = later.json()["response"].as_str().unwrap().to_string();
    assert!(later.starts_with("I am here with you."));
    assert!(
        later.contains("988"),
        "flagged session keeps the lifeline: {later}"
    );
    // An idiom is not a crisis.
    let calm = chat(b.http, "c4", "this traffic is killing me", "The Tower");
    assert_eq!(calm.json()["crisis"], false);
    assert!(!calm.json()["response"].as_str().unwrap().contains("988"));
}

#[test]
fn one_call_in_flight_per_user_and_the_next_waits_its_turn() {
    let agent =
        mock_agent(|b| Mock::Reply(Duration::from_millis(300), format!("ack {}", last_user(b))));
    let b = start_with(openai_config(agent.addr, 10));
    let http = b.http;
    let threads: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30 * i));
                chat(http, "solo", &format!("solo: line {i}"), "The Tower").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(agent.max_parallel.lock().unwrap().get("solo"), Some(&1));
    let seen = agent.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    // Each call saw the exchanges before it.
    let lens: Vec<usize> = seen
        .iter()
        .map(|s| s.body["messages"].as_array().unwrap().len())
        .collect();
    assert_eq!(lens, vec![2, 4, 6]);
}

#[test]
fn a_full_queue_gives_503_with_retry_after() {
    let agent = mock_agent(|_| Mock::Reply(Duration::from_secs(2), "ok".into()));
    let mut cfg = openai_config(agent.addr, 10);
    cfg.agent.workers = 1;
    cfg.agent.queue = 1;
    let b = start_with(cfg);
    let http = b.http;
    let started = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let started = started.clone();
            std::thread::spawn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                chat(http, &format!("q{i}"), "hello", "The Tower")
            })
        })
        .collect();
    let results: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<&Resp> = results.iter().filter(|r| r.status == 503).collect();
    assert!(
        !busy.is_empty(),
        "statuses: {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(busy[0].json()["code"], "agent_busy");
    assert_eq!(busy[0].header("retry-after"), Some("1"));
    assert!(results.iter().any(|r| r.status == 200));
}

#[test]
fn a_graceful_stop_finishes_the_chat_in_flight() {
    let agent = mock_agent(|_| Mock::Reply(Duration::from_millis(800), "made it".into()));
    let b = start_with(openai_config(agent.addr, 5));
    let http = b.http;
    let t = std::thread::spawn(move || chat(http, "late", "hello", "The Tower"));
    eventually(Duration::from_secs(5), "the chat reaches the agent", || {
        !agent.seen.lock().unwrap().is_empty()
    });
    b.stop().expect("the bridge stops cleanly");
    let r = t.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["response"], "made it");
    assert_eq!(r.header("connection"), Some("close"));
}

// ---- agent.crisis_model_check: the model's classification can only add a detection ----

/// Whether a mock request is the crisis classification rather than a reply.
fn is_check(body: &Value) -> bool {
    body["messages"][0]["content"]
        .as_str()
        .is_some_and(|s| s.contains("safety classifier"))
}

fn check_config(agent: SocketAddr, check_ms: u64) -> worldbridge::config::Config {
    let mut cfg = openai_config(agent, 5);
    cfg.agent.workers = 4;
    cfg.agent.crisis_model_check = true;
    cfg.agent.crisis_model_check_ms = check_ms;
    cfg
}

/// A message the local detector does not flag (checked here, so the test stays honest).
const QUIET: &str = "the colours went out of things a while ago";

#[test]
fn a_classifier_that_says_yes_adds_the_protocol_the_detector_missed() {
    assert!(worldbridge::agent::crisis::CrisisDetector::builtin()
        .detect(QUIET)
        .is_none());
    let agent = mock_agent(|body| {
        if is_check(body) {
            Mock::Reply(Duration::ZERO, "Yes.".into())
        } else {
            Mock::Reply(Duration::from_millis(400), "I'm listening.".into())
        }
    });
    let b = start_with(check_config(agent.addr, 1500));
    let r = chat(b.http, "m1", QUIET, "The Tower");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let text = j["response"].as_str().unwrap();
    assert_protocol_order(text);
    assert!(text.ends_with("I'm listening."), "{text}");
    assert_eq!(j["crisis"], true);
    let m = call(b.http, "GET", "/metrics", None).text();
    assert!(
        m.contains("worldbridge_crisis_detections_total{category=\"model_check\"} 1"),
        "{m}"
    );
    let seen = agent.seen.lock().unwrap();
    let check = seen
        .iter()
        .find(|s| is_check(&s.body))
        .expect("a classification");
    assert_eq!(check.body["messages"][1]["content"], QUIET);
    assert_eq!(check.body["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn a_classifier_that_says_no_never_removes_a_local_detection() {
    let agent = mock_agent(|body| {
        if is_check(body) {
            Mock::Reply(Duration::ZERO, "no".into())
        } else {
            Mock::Reply(Duration::from_millis(200), "I'm here.".into())
        }
    });
    let b = start_with(check_config(agent.addr, 1500));
    let r = chat(b.http, "m2", "i want to kill myself", "The Tower");
    let j = r.json();
    assert_protocol_order(j["response"].as_str().unwrap());
    assert_eq!(j["crisis"], true);
    // And a "no" about a quiet message changes nothing.
    let r = chat(b.http, "m3", "hello there", "The Tower");
    let j = r.json();
    assert_eq!(j["crisis"], false);
    assert!(!j["response"].as_str().unwrap().contains("988"));
    std::thread::sleep(Duration::from_millis(100));
    let s = get(b.http, "/bridge/sessions");
    let m3 = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["user_id"] == "m3")
        .cloned()
        .unwrap();
    assert_eq!(m3["crisis"], false);
}

#[test]
fn a_slow_classifier_does_not_delay_the_reply_and_a_late_yes_flags_the_session() {
    let agent = mock_agent(|body| {
        if is_check(body) {
            Mock::Reply(Duration::from_millis(800), "yes".into())
        } else {
            Mock::Reply(Duration::ZERO, "The garden is quiet.".into())
        }
    });
    let b = start_with(check_config(agent.addr, 3000));
    let started = Instant::now();
    let r = chat(b.http, "m4", QUIET, "The Tower");
    let took = started.elapsed();
    let j = r.json();
    assert!(
        took < Duration::from_millis(700),
        "the reply waited {took:?}"
    );
    assert_eq!(j["response"], "The garden is quiet.");
    assert_eq!(j["crisis"], false);
    // The yes arrives after the reply: the session is flagged and later replies keep 988.
    eventually(Duration::from_secs(5), "the session is flagged", || {
        get(b.http, "/bridge/sessions")["sessions"][0]["crisis"] == true
    });
    let later = chat(b.http, "m4", "what now", "The Tower");
    let later = later.json()["response"].as_str().unwrap().to_string();
    assert!(later.contains("988"), "{later}");
    let m = call(b.http, "GET", "/metrics", None).text();
    assert!(
        m.contains("worldbridge_crisis_detections_total{category=\"model_check\"} 1"),
        "{m}"
    );

    // A classifier slower than agent.crisis_model_check_ms is ignored.
    let slow = mock_agent(|body| {
        if is_check(body) {
            Mock::Reply(Duration::from_millis(1500), "yes".into())
        } else {
            Mock::Reply(Duration::ZERO, "Hello.".into())
        }
    });
    let b = start_with(check_config(slow.addr, 300));
    let started = Instant::now();
    let r = chat(b.http, "m5", QUIET, "The Tower");
    assert!(started.elapsed() < Duration::from_millis(700));
    assert_eq!(r.json()["crisis"], false);
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(
        get(b.http, "/bridge/sessions")["sessions"][0]["crisis"],
        false
    );
}
