//! The `openai` backend: any OpenAI-compatible chat server (Ollama, llama.cpp server, vLLM,
//! hosted APIs).
//!
//! One call is `POST {base_url}/chat/completions` with
//! `{"model", "messages": [{"role", "content"}...], "temperature", "max_tokens"}` and the
//! reply is `choices[0].message.content`. `Authorization: Bearer <key>` is sent when the
//! environment variable named by `agent.api_key_env` is set and non-empty; it is read on
//! every call (so a rotated key is picked up) and never logged.
//!
//! Time: the whole call, retries included, finishes within `req.timeout`; each attempt gets
//! the time that remains as its ureq global timeout. 429 and 5xx are retried after 250 ms,
//! doubling up to 4 s, or after the server's `Retry-After` seconds, as long as the wait
//! leaves at least 100 ms for another attempt; otherwise the last status is reported.
//! Other statuses, refused connections and unusable bodies fail at once with
//! [`AgentError::Backend`]; running out of time is [`AgentError::Timeout`].
//!
//! Streamed (a request with `stream`), the body asks `"stream": true` and each
//! `data: {"choices":[{"delta":{"content":…}}]}` event's text goes to the sink as it
//! arrives, up to `data: [DONE]`; a server that ignores `stream` and answers one JSON
//! completion is read as usual. Retries happen only before the first byte of an answer.
//! The gap between two chunks is bounded by the loop (`agent.chunk_timeout_s`).
//!
//! ureq (blocking, no async runtime) fits a worker thread that owns its backend; its
//! connection pool keeps one worker's calls on a warm connection.

use super::{prompt, AgentError, AgentRequest, Backend};
use crate::config::AgentConfig;
use std::io;
use std::time::{Duration, Instant};

/// First wait before retrying a 429/5xx; doubles on each retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// A retry is only worth it when at least this much time is left after the wait.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
/// Cap on a response body we are willing to read (a chat completion is a few KiB).
const BODY_LIMIT: u64 = 4 * 1024 * 1024;
/// How much of an error body goes into the error message.
const EXCERPT_CHARS: usize = 200;

/// A client of one OpenAI-compatible server, owned by one worker.
pub struct OpenAi {
    agent: ureq::Agent,
    url: String,
    model: String,
    temperature: f64,
    max_tokens: u32,
    api_key_env: String,
    persona: String,
}

/// How one HTTP attempt ended.
enum Attempt {
    Answer(String),
    /// 429 or 5xx: worth another try if time allows.
    Retry {
        status: u16,
        retry_after: Option<Duration>,
        excerpt: String,
    },
    Failed(AgentError),
}

impl OpenAi {
    /// Checks the config (a model name and an http(s) base URL are required); makes no
    /// network call.
    pub fn new(cfg: &AgentConfig, persona: &str) -> Result<OpenAi, String> {
        if cfg.model.trim().is_empty() {
            return Err("agent.model is required for backend openai".into());
        }
        let base = cfg.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "agent.base_url must start with http:// or https://, got {:?}",
                cfg.base_url
            ));
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("worldbridge/", env!("CARGO_PKG_VERSION")));
        if crate::config::is_loopback(base) {
            // A local model server is never reached through an HTTP(S)_PROXY from the env.
            config = config.proxy(None);
        }
        Ok(OpenAi {
            agent: config.build().new_agent(),
            url: format!("{base}/chat/completions"),
            model: cfg.model.trim().to_string(),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            api_key_env: cfg.api_key_env.clone(),
            persona: persona.to_string(),
        })
    }

    fn attempt(
        &self,
        body: &[u8],
        budget: Duration,
        key: Option<&str>,
        sink: Option<&mut dyn FnMut(&str)>,
    ) -> Attempt {
        let mut request = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("content-type", "application/json")
            .header(
                "accept",
                match sink {
                    Some(_) => "text/event-stream, application/json",
                    None => "application/json",
                },
            );
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(self.transport_error(e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let events = (response.headers().get("content-type"))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if let (Some(sink), 200..=299, true) = (sink, status, events) {
            let reader = response.body_mut().with_config().limit(BODY_LIMIT).reader();
            return match read_events(io::BufReader::new(reader), sink) {
                Ok(text) => Attempt::Answer(text),
                Err(EventsError::Io(e)) if is_timeout(&e) => Attempt::Failed(AgentError::Timeout),
                Err(e) => Attempt::Failed(AgentError::Backend(format!(
                    "{} streamed an answer but {e}",
                    self.url
                ))),
            };
        }
        let text = match response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => return Attempt::Failed(self.transport_error(e)),
        };
        match status {
            200..=299 => match parse_content(&text) {
                Ok(answer) => Attempt::Answer(answer),
                Err(why) => Attempt::Failed(AgentError::Backend(format!(
                    "{} answered {status} but {why}: {}",
                    self.url,
                    excerpt(&text)
                ))),
            },
            429 | 500..=599 => Attempt::Retry {
                status,
                retry_after,
                excerpt: excerpt(&text),
            },
            _ => Attempt::Failed(AgentError::Backend(format!(
                "{} answered HTTP {status}: {}",
                self.url,
                excerpt(&text)
            ))),
        }
    }

    fn transport_error(&self, e: ureq::Error) -> AgentError {
        match e {
            ureq::Error::Timeout(_) => AgentError::Timeout,
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => AgentError::Timeout,
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                AgentError::Backend(format!(
                    "cannot connect to {}: connection refused",
                    self.url
                ))
            }
            e => AgentError::Backend(format!("{}: {e}", self.url)),
        }
    }
}

impl Backend for OpenAi {
    fn reply(
        &mut self,
        req: &AgentRequest,
        mut sink: Option<&mut dyn FnMut(&str)>,
    ) -> Result<String, AgentError> {
        let deadline = Instant::now() + req.timeout;
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": prompt::messages(&self.persona, req),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        });
        if sink.is_some() {
            body["stream"] = serde_json::Value::Bool(true);
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| AgentError::Backend(format!("cannot encode the request: {e}")))?;
        let key = std::env::var(&self.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty());
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            let budget = deadline.saturating_duration_since(Instant::now());
            if budget.is_zero() {
                return Err(AgentError::Timeout);
            }
            attempts += 1;
            let sink = sink.as_mut().map(|s| &mut **s as &mut dyn FnMut(&str));
            let (status, retry_after, excerpt) =
                match self.attempt(&body, budget, key.as_deref(), sink) {
                    Attempt::Answer(text) => return Ok(text),
                    Attempt::Failed(e) => return Err(e),
                    Attempt::Retry {
                        status,
                        retry_after,
                        excerpt,
                    } => (status, retry_after, excerpt),
                };
            let wait = retry_after.unwrap_or(backoff);
            let left = deadline.saturating_duration_since(Instant::now());
            if wait + MIN_ATTEMPT > left {
                let why = match retry_after {
                    Some(ra) => format!("Retry-After {}s is past the deadline", ra.as_secs()),
                    None => "no time left to retry".to_string(),
                };
                return Err(AgentError::Backend(format!(
                    "{} answered HTTP {status} ({attempts} attempt(s), {why}): {excerpt}",
                    self.url
                )));
            }
            log::warn!(
                "agent openai: job={} HTTP {status} from {}, retry in {} ms",
                req.job_id,
                self.url,
                wait.as_millis()
            );
            std::thread::sleep(wait);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Why reading an event stream failed.
#[derive(Debug)]
enum EventsError {
    Io(io::Error),
    Bad(String),
}

impl std::fmt::Display for EventsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsError::Io(e) => write!(f, "reading it failed: {e}"),
            EventsError::Bad(why) => f.write_str(why),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut || e.to_string().to_lowercase().contains("timeout")
}

/// Read `chat.completion.chunk` events up to `data: [DONE]` (or the end of the body),
/// handing each `delta.content` to `sink`; the whole text, trimmed and non-empty.
fn read_events(
    reader: impl io::BufRead,
    sink: &mut dyn FnMut(&str),
) -> Result<String, EventsError> {
    let mut whole = String::new();
    for line in reader.lines() {
        let line = line.map_err(EventsError::Io)?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).map_err(|e| {
            EventsError::Bad(format!("an event is not JSON ({e}): {}", excerpt(data)))
        })?;
        if let Some(err) = v.get("error") {
            return Err(EventsError::Bad(format!(
                "the stream reported an error: {}",
                excerpt(&err.to_string())
            )));
        }
        let piece = v
            .pointer("/choices/0/delta/content")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if !piece.is_empty() {
            sink(piece);
            whole.push_str(piece);
        }
    }
    let whole = whole.trim();
    if whole.is_empty() {
        return Err(EventsError::Bad("the stream had no content".into()));
    }
    Ok(whole.to_string())
}

/// `choices[0].message.content` of a chat completion, trimmed and non-empty.
fn parse_content(text: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON ({e})"))?;
    let content = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(|c| c.as_str())
        .ok_or("it has no choices[0].message.content")?;
    let content = content.trim();
    if content.is_empty() {
        return Err("the content is empty".into());
    }
    Ok(content.to_string())
}

/// The first [`EXCERPT_CHARS`] characters of a body, whitespace collapsed, for error text.
fn excerpt(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None if flat.is_empty() => "(empty body)".into(),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::WorldContext;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// What the mock server does with one connection.
    enum Step {
        Respond {
            status: u16,
            headers: Vec<(&'static str, String)>,
            body: String,
        },
        /// Read the request, then hold the connection without answering.
        Silent,
    }

    fn respond(status: u16, body: &str) -> Step {
        Step::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn completion(text: &str) -> String {
        serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        })
        .to_string()
    }

    /// A request as the mock server saw it.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A one-connection-per-step OpenAI-compatible server on 127.0.0.1:0.
    struct Mock {
        addr: SocketAddr,
        seen: crossbeam_channel::Receiver<Seen>,
        _stop: crossbeam_channel::Sender<()>,
    }

    fn mock(steps: Vec<Step>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = crossbeam_channel::unbounded();
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for step in steps {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream);
                let Some(request) = read_request(&mut reader) else {
                    continue;
                };
                let _ = seen_tx.send(request);
                let mut stream = reader.into_inner();
                match step {
                    Step::Respond {
                        status,
                        headers,
                        body,
                    } => {
                        let mut head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n",
                            body.len()
                        );
                        for (n, v) in headers {
                            head.push_str(&format!("{n}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(body.as_bytes());
                    }
                    Step::Silent => held.push(stream),
                }
            }
            // Keep silent connections open until the test drops the mock.
            let _ = stop_rx.recv_timeout(Duration::from_secs(30));
            drop(held);
        });
        Mock {
            addr,
            seen,
            _stop: stop,
        }
    }

    fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        Some(Seen {
            request_line: request_line.trim_end().to_string(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        })
    }

    /// An env var name no other test uses, so tests can run in parallel.
    fn unique_env(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "WB_TEST_KEY_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn backend(base_url: String, key_env: &str) -> OpenAi {
        let cfg = AgentConfig {
            backend: "openai".into(),
            base_url,
            model: "mimo-test".into(),
            api_key_env: key_env.into(),
            temperature: 0.25,
            max_tokens: 64,
            ..AgentConfig::default()
        };
        OpenAi::new(&cfg, "You are Timmy.").unwrap()
    }

    fn request(timeout: Duration) -> AgentRequest {
        AgentRequest {
            job_id: 3,
            user_id: "alice_01".into(),
            username: "Alice".into(),
            history: Vec::new(),
            message: "What do you see?".into(),
            context: WorldContext {
                room: "The Threshold".into(),
                ..WorldContext::default()
            },
            crisis: false,
            timeout,
            purpose: crate::agent::Purpose::Reply,
            system: None,
            stream: false,
        }
    }

    #[test]
    fn sends_path_model_messages_and_key() {
        let server = mock(vec![Step::Respond {
            status: 200,
            headers: Vec::new(),
            body: completion("  I see bare stone walls.  "),
        }]);
        let env = unique_env("SEND");
        std::env::set_var(&env, "sk-test-123");
        let mut b = backend(format!("http://{}/v1/", server.addr), &env);
        let answer = b.answer(&request(Duration::from_secs(5)));
        assert_eq!(answer, Ok("I see bare stone walls.".to_string()));
        let seen = server.seen.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(seen.request_line, "POST /v1/chat/completions HTTP/1.1");
        assert_eq!(seen.header("authorization"), Some("Bearer sk-test-123"));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(seen.body["model"], "mimo-test");
        assert_eq!(seen.body["temperature"], 0.25);
        assert_eq!(seen.body["max_tokens"], 64);
        let messages = seen.body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "system");
        assert!(messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("The Threshold"));
        assert_eq!(
            messages[1],
            serde_json::json!({"role": "user", "content": "What do you see?"})
        );
        std::env::remove_var(&env);
    }

    #[test]
    fn no_key_no_authorization_header() {
        let server = mock(vec![respond(200, &completion("hi"))]);
        let env = unique_env("NOKEY");
        let mut b = backend(format!("http://{}/v1", server.addr), &env);
        assert_eq!(b.answer(&request(Duration::from_secs(5))), Ok("hi".into()));
        let seen = server.seen.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(seen.header("authorization"), None);
    }

    #[test]
    fn a_500_then_200_is_retried() {
        let server = mock(vec![
            respond(500, "{\"error\":\"warming up\"}"),
            respond(200, &completion("second time lucky")),
        ]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let started = Instant::now();
        let answer = b.answer(&request(Duration::from_secs(5)));
        assert_eq!(answer, Ok("second time lucky".into()));
        assert!(started.elapsed() >= FIRST_BACKOFF, "waited before retrying");
        assert_eq!(server.seen.try_iter().count(), 2);
    }

    #[test]
    fn a_429_honours_retry_after_when_it_fits() {
        let server = mock(vec![
            Step::Respond {
                status: 429,
                headers: vec![("retry-after", "0".into())],
                body: "slow down".into(),
            },
            respond(200, &completion("ok")),
        ]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let started = Instant::now();
        assert_eq!(b.answer(&request(Duration::from_secs(5))), Ok("ok".into()));
        assert!(
            started.elapsed() < FIRST_BACKOFF,
            "Retry-After 0 beats the backoff"
        );
    }

    #[test]
    fn a_retry_after_past_the_deadline_fails_at_once() {
        let server = mock(vec![Step::Respond {
            status: 503,
            headers: vec![("retry-after", "60".into())],
            body: "maintenance".into(),
        }]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let started = Instant::now();
        let err = b.answer(&request(Duration::from_secs(2))).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        let AgentError::Backend(why) = err else {
            panic!("expected a backend error, got {err:?}");
        };
        assert!(
            why.contains("503") && why.contains("Retry-After 60s"),
            "{why}"
        );
    }

    #[test]
    fn a_persistent_500_is_a_backend_error_within_the_timeout() {
        let server = mock(
            (0..10)
                .map(|_| respond(500, "{\"error\":\"boom\"}"))
                .collect(),
        );
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = b.answer(&request(timeout)).unwrap_err();
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        let AgentError::Backend(why) = err else {
            panic!("expected a backend error, got {err:?}");
        };
        assert!(why.contains("HTTP 500") && why.contains("boom"), "{why}");
        // At 0, 250, 750 and 1750 ms; the next wait (2 s) does not fit. A slow machine
        // may fit one attempt fewer.
        let attempts = server.seen.try_iter().count();
        assert!((3..=4).contains(&attempts), "{attempts} attempts");
    }

    #[test]
    fn other_4xx_fails_at_once_with_status_and_excerpt() {
        let server = mock(vec![respond(
            404,
            "{\"error\":{\"message\":\"model 'mimo-test' not found\"}}",
        )]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let err = b.answer(&request(Duration::from_secs(5))).unwrap_err();
        let AgentError::Backend(why) = err else {
            panic!("expected a backend error, got {err:?}");
        };
        assert!(
            why.contains("HTTP 404") && why.contains("not found"),
            "{why}"
        );
        assert_eq!(server.seen.try_iter().count(), 1);
    }

    #[test]
    fn bad_json_or_missing_content_is_a_backend_error() {
        let server = mock(vec![
            respond(200, "<html>proxy error</html>"),
            respond(200, "{\"choices\":[]}"),
        ]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let err = b.answer(&request(Duration::from_secs(5))).unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("not JSON")),
            "{err:?}"
        );
        let err = b.answer(&request(Duration::from_secs(5))).unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("choices[0].message.content")),
            "{err:?}"
        );
    }

    #[test]
    fn a_server_that_never_answers_is_a_timeout() {
        let server = mock(vec![Step::Silent]);
        let mut b = backend(format!("http://{}/v1", server.addr), "WB_TEST_UNSET_KEY");
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = b.answer(&request(timeout)).unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err, AgentError::Timeout);
        assert!(
            elapsed >= timeout - Duration::from_millis(50),
            "{elapsed:?}"
        );
        assert!(
            elapsed < timeout + Duration::from_millis(500),
            "{elapsed:?}"
        );
        assert_eq!(server.seen.try_iter().count(), 1, "the request was sent");
    }

    #[test]
    fn connection_refused_is_a_backend_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut b = backend(format!("http://{addr}/v1"), "WB_TEST_UNSET_KEY");
        let started = Instant::now();
        let err = b.answer(&request(Duration::from_secs(5))).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("connection refused")),
            "{err:?}"
        );
    }

    #[test]
    fn config_is_checked() {
        let cfg = AgentConfig {
            backend: "openai".into(),
            ..AgentConfig::default()
        };
        let err = OpenAi::new(&cfg, "p").err().unwrap();
        assert_eq!(err, "agent.model is required for backend openai");
        let cfg = AgentConfig {
            model: "m".into(),
            base_url: "127.0.0.1:11434/v1".into(),
            ..cfg
        };
        assert!(OpenAi::new(&cfg, "p").err().unwrap().contains("http://"));
    }

    #[test]
    fn excerpt_is_short_and_flat() {
        assert_eq!(excerpt("  a\n  b "), "a b");
        assert_eq!(excerpt(""), "(empty body)");
        let long = "é".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn events(body: &str) -> (Result<String, String>, Vec<String>) {
        let mut got = Vec::new();
        let r = read_events(io::Cursor::new(body.as_bytes()), &mut |p| {
            got.push(p.to_string())
        });
        (r.map_err(|e| e.to_string()), got)
    }

    #[test]
    fn chunk_events_go_to_the_sink_until_done() {
        let chunk = |t: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"delta": {"content": t}}]})
            )
        };
        let body = format!(
            ": comment\n\ndata: {}\n\n{}{}data: [DONE]\n\n{}",
            serde_json::json!({"choices": [{"delta": {"role": "assistant"}}]}),
            chunk("Hello"),
            chunk(" there."),
            chunk("ignored after DONE")
        );
        let (r, got) = events(&body);
        assert_eq!(r, Ok("Hello there.".into()));
        assert_eq!(got, vec!["Hello", " there."]);
        // A body that ends without [DONE] still counts; no content is an error.
        assert_eq!(events(&chunk("Hi")).0, Ok("Hi".into()));
        assert!(events("data: [DONE]\n\n")
            .0
            .unwrap_err()
            .contains("no content"));
        assert!(events("data: {oops\n\n")
            .0
            .unwrap_err()
            .contains("not JSON"));
        let err = events("data: {\"error\": {\"message\": \"overloaded\"}}\n\n").0;
        assert!(err.unwrap_err().contains("overloaded"));
    }
}
