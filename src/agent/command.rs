//! The `command` backend: a long-lived subprocess per worker (e.g. the Hermes agent) that
//! speaks JSON lines on stdin/stdout.
//!
//! Protocol, one request at a time:
//! - in (one line on the child's stdin):
//!   `{"purpose": "reply", "user_id": "...", "username": "...", "message": "...", "crisis": false,
//!     "messages": [{"role": "system"|"user"|"assistant", "content": "..."}...],
//!     "context": {"world", "agent_name", "room", "room_desc", "exits": [...],
//!                 "present": [...], "recent_events": [...]}}`
//!   where `messages` is the full chat (system prompt with persona, world context and
//!   crisis protocol, then the history, then the new user message). With
//!   `agent.crisis_model_check`, some requests have `"purpose": "crisis_check"`: their
//!   `messages` are a classifier prompt and the user's message, and the answer's `text`
//!   should start with yes or no;
//! - out (one line on the child's stdout): `{"text": "..."}` or `{"error": "..."}`.
//!   A request with `"stream": true` (the caller takes the answer in parts) may first get
//!   `{"type": "part", "text": "..."}` lines, each passed on as it comes; the final
//!   `{"text"}` is still required (the whole answer). Parts are ignored otherwise.
//!   Blank lines are ignored; a line is at most 1 MiB. stderr is inherited (the child's
//!   logs go to ours).
//!
//! Lifecycle: `agent.command` (argv[0] + args) is spawned on first use and kept for later
//! calls. A reader thread per child turns stdout into lines on a channel and a writer thread
//! feeds stdin, so the worker waits with `recv_timeout` and a child that stops reading
//! cannot wedge it. When the reply does not come within `req.timeout` the child is killed
//! and reaped and the call is [`AgentError::Timeout`]; when the child exits, closes stdout
//! or writes something that is not the protocol, the call is [`AgentError::Backend`]. In
//! both cases the next call starts a fresh child. An `{"error"}` reply keeps the child.
//! Dropping the backend kills the child.
//!
//! Limit: only the direct child is killed. A wrapper script should `exec` the real agent,
//! or its own children may outlive it (holding the pipes until they exit).

use super::{prompt, AgentError, AgentRequest, Backend, WorldContext};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Instant;

/// Longest reply line we accept from the child.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A subprocess agent, owned by one worker; the child is started on first use.
pub struct CommandBackend {
    argv: Vec<String>,
    persona: String,
    child: Option<Running>,
}

/// One live child and its two pipe threads' channels.
struct Running {
    process: Child,
    to_child: crossbeam_channel::Sender<Vec<u8>>,
    from_child: crossbeam_channel::Receiver<Event>,
}

/// What the pipe threads report.
#[derive(Debug)]
enum Event {
    Line(String),
    /// stdout reached end of file: the child exited or closed it.
    Eof,
    TooLong,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

#[derive(Serialize)]
struct WireRequest<'a> {
    purpose: super::Purpose,
    user_id: &'a str,
    username: &'a str,
    message: &'a str,
    crisis: bool,
    messages: Vec<super::Turn>,
    context: &'a WorldContext,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    error: Option<String>,
}

impl CommandBackend {
    /// `argv` must name a program; it is not started until the first call.
    pub fn new(argv: &[String], persona: &str) -> Result<CommandBackend, String> {
        match argv.first() {
            Some(program) if !program.trim().is_empty() => Ok(CommandBackend {
                argv: argv.to_vec(),
                persona: persona.to_string(),
                child: None,
            }),
            _ => Err(
                "agent.command is required for backend command (argv of the agent program)".into(),
            ),
        }
    }

    /// The live child's process id, if one is running.
    pub fn child_id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.process.id())
    }

    fn spawn(&self) -> Result<Running, AgentError> {
        let mut process = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| AgentError::Backend(format!("cannot start {:?}: {e}", self.argv[0])))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            let _ = process.kill();
            let _ = process.wait();
            return Err(AgentError::Backend("the agent command has no pipes".into()));
        };
        let (event_tx, from_child) = crossbeam_channel::unbounded();
        let (to_child, lines_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let pid = process.id();
        let reader_tx = event_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("agent-cmd-out-{pid}"))
            .spawn(move || read_lines(stdout, reader_tx))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name(format!("agent-cmd-in-{pid}"))
                    .spawn(move || write_lines(stdin, lines_rx, event_tx))
            });
        if let Err(e) = spawned {
            let _ = process.kill();
            let _ = process.wait();
            return Err(AgentError::Backend(format!(
                "cannot start pipe threads: {e}"
            )));
        }
        log::info!("agent command: started {:?} pid={pid}", self.argv[0]);
        Ok(Running {
            process,
            to_child,
            from_child,
        })
    }

    /// Stop the child (if any) after a protocol failure; the next call starts a new one.
    /// When the child went away by itself, its exit status is added to the message.
    fn fail(&mut self, why: String, exited: bool) -> AgentError {
        let status = self.child.take().map(Running::stop);
        let why = match status {
            Some(Some(status)) if exited => format!("{why} ({status})"),
            _ => why,
        };
        log::warn!("agent command: {why}; it restarts on the next call");
        AgentError::Backend(why)
    }
}

impl Backend for CommandBackend {
    fn reply(
        &mut self,
        req: &AgentRequest,
        mut sink: Option<&mut dyn FnMut(&str)>,
    ) -> Result<String, AgentError> {
        let deadline = Instant::now() + req.timeout;
        // A child that died between calls is replaced before it is asked anything.
        if let Some(child) = &mut self.child {
            if let Some(stale) = child.drain() {
                log::warn!(
                    "agent command: child pid={} went away between calls ({stale:?})",
                    child.process.id()
                );
                if let Some(dead) = self.child.take() {
                    dead.stop();
                }
            }
        }
        if self.child.is_none() {
            self.child = Some(self.spawn()?);
        }
        let wire = WireRequest {
            purpose: req.purpose,
            user_id: &req.user_id,
            username: &req.username,
            message: &req.message,
            crisis: req.crisis,
            messages: prompt::messages(&self.persona, req),
            context: &req.context,
            stream: sink.is_some(),
        };
        let mut line = serde_json::to_vec(&wire)
            .map_err(|e| AgentError::Backend(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        let Some(child) = &mut self.child else {
            return Err(AgentError::Backend(
                "the agent command is not running".into(),
            ));
        };
        if child.to_child.send(line).is_err() {
            return Err(self.fail("the agent command's stdin is closed".into(), true));
        }
        loop {
            let Some(child) = &mut self.child else {
                return Err(AgentError::Backend(
                    "the agent command is not running".into(),
                ));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match child.from_child.recv_timeout(left) {
                Ok(event) => event,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let pid = child.process.id();
                    if let Some(slow) = self.child.take() {
                        slow.stop();
                    }
                    log::warn!(
                        "agent command: job={} no reply within {} ms, killed pid={pid}",
                        req.job_id,
                        req.timeout.as_millis()
                    );
                    return Err(AgentError::Timeout);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Event::Eof,
            };
            let line = match event {
                Event::Line(line) if line.trim().is_empty() => continue,
                Event::Line(line) => line,
                Event::Eof => {
                    return Err(self.fail("the agent command exited or closed stdout".into(), true))
                }
                Event::WriteFailed(e) => {
                    return Err(self.fail(
                        format!("the agent command exited or closed stdin ({e})"),
                        true,
                    ))
                }
                Event::TooLong => {
                    return Err(self.fail(
                        format!(
                            "the agent command wrote a line over {MAX_LINE_BYTES} bytes, killed it"
                        ),
                        false,
                    ))
                }
                Event::ReadFailed(e) => {
                    return Err(self.fail(
                        format!("reading from the agent command failed ({e}), killed it"),
                        false,
                    ))
                }
            };
            return match serde_json::from_str::<WireReply>(&line) {
                Ok(WireReply {
                    kind: Some(kind),
                    text,
                    ..
                }) if kind == "part" => {
                    if let (Some(sink), Some(text)) = (sink.as_mut(), text) {
                        sink(&text);
                    }
                    continue;
                }
                Ok(WireReply {
                    text: Some(text), ..
                }) => Ok(text),
                Ok(WireReply {
                    error: Some(error), ..
                }) => Err(AgentError::Backend(format!(
                    "the agent command answered an error: {error}"
                ))),
                Ok(_) => Err(self.fail(
                    "the agent command's reply has neither \"text\" nor \"error\", killed it"
                        .into(),
                    false,
                )),
                Err(e) => Err(self.fail(
                    format!("the agent command wrote a line that is not JSON ({e}), killed it"),
                    false,
                )),
            };
        }
    }
}

impl Running {
    /// Events left over from an earlier call. Stray lines are dropped (they answer nothing);
    /// the first sign that the child is gone is returned.
    fn drain(&mut self) -> Option<Event> {
        while let Ok(event) = self.from_child.try_recv() {
            match event {
                Event::Line(line) => {
                    log::warn!(
                        "agent command: dropped a stray line of {} bytes",
                        line.len()
                    )
                }
                gone => return Some(gone),
            }
        }
        None
    }

    /// Kill and reap the child. The status is the child's own when it was already exiting,
    /// SIGKILL otherwise.
    fn stop(mut self) -> Option<ExitStatus> {
        let _ = self.process.kill();
        self.process.wait().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After `stop` this is a no-op on an already reaped child.
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Reader thread: stdout → lines on the channel, until EOF, an error or an overlong line.
fn read_lines(stdout: ChildStdout, events: crossbeam_channel::Sender<Event>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut buf = Vec::new();
        let limit = MAX_LINE_BYTES as u64 + 1;
        match reader.by_ref().take(limit).read_until(b'\n', &mut buf) {
            Ok(0) => {
                let _ = events.send(Event::Eof);
                return;
            }
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE_BYTES => {
                let _ = events.send(Event::TooLong);
                return;
            }
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if events.send(Event::Line(line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = events.send(Event::ReadFailed(e));
                return;
            }
        }
    }
}

/// Writer thread: request lines → stdin. Ends (closing stdin) when the backend drops the
/// sender or a write fails; a failure is reported as an event.
fn write_lines(
    mut stdin: ChildStdin,
    lines: crossbeam_channel::Receiver<Vec<u8>>,
    events: crossbeam_channel::Sender<Event>,
) {
    for line in lines {
        if let Err(e) = stdin.write_all(&line).and_then(|()| stdin.flush()) {
            let _ = events.send(Event::WriteFailed(e));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Role, Turn};
    use std::time::Duration;

    fn sh(script: &str, args: &[&str]) -> CommandBackend {
        let mut argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            script.into(),
            "sh".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        CommandBackend::new(&argv, "You are Timmy.").unwrap()
    }

    fn request(message: &str, timeout: Duration) -> AgentRequest {
        AgentRequest {
            job_id: 9,
            user_id: "alice_01".into(),
            username: "Alice".into(),
            history: vec![Turn {
                role: Role::User,
                content: "earlier".into(),
            }],
            message: message.into(),
            context: WorldContext {
                world: "local".into(),
                room: "The Threshold".into(),
                present: vec!["Alice".into()],
                ..WorldContext::default()
            },
            crisis: false,
            timeout,
            purpose: crate::agent::Purpose::Reply,
            system: None,
            stream: false,
        }
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("wb-cmd-{tag}-{}-{nanos}", std::process::id()))
    }

    const COUNTER: &str =
        r#"n=0; while read -r line; do n=$((n+1)); echo "{\"text\":\"reply $n from $$\"}"; done"#;

    #[test]
    fn answers_and_reuses_the_process() {
        let mut b = sh(COUNTER, &[]);
        assert_eq!(b.child_id(), None, "started lazily");
        let first = b.answer(&request("hi", Duration::from_secs(5))).unwrap();
        let pid = b.child_id().unwrap();
        assert_eq!(first, format!("reply 1 from {pid}"));
        let second = b.answer(&request("again", Duration::from_secs(5))).unwrap();
        assert_eq!(second, format!("reply 2 from {pid}"));
    }

    #[test]
    fn sends_the_protocol_line() {
        let path = temp_path("seen");
        let script =
            r#"while read -r line; do printf '%s\n' "$line" > "$1"; echo '{"text":"ok"}'; done"#;
        let mut b = sh(script, &[path.to_str().unwrap()]);
        assert_eq!(
            b.answer(&request("What do you see?", Duration::from_secs(5))),
            Ok("ok".into())
        );
        let seen = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&seen).unwrap();
        assert_eq!(v["user_id"], "alice_01");
        assert_eq!(v["username"], "Alice");
        assert_eq!(v["message"], "What do you see?");
        assert_eq!(v["crisis"], false);
        assert_eq!(v["context"]["room"], "The Threshold");
        assert_eq!(v["context"]["present"], serde_json::json!(["Alice"]));
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "user"]);
        assert_eq!(v["messages"][2]["content"], "What do you see?");
    }

    #[test]
    fn an_error_reply_is_a_backend_error_and_keeps_the_child() {
        let script = r#"n=0; while read -r line; do n=$((n+1)); if [ $n = 1 ]; then echo '{"error":"model overloaded"}'; else echo '{"text":"fine"}'; fi; done"#;
        let mut b = sh(script, &[]);
        let err = b.answer(&request("a", Duration::from_secs(5))).unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("model overloaded")),
            "{err:?}"
        );
        let pid = b.child_id();
        assert_eq!(
            b.answer(&request("b", Duration::from_secs(5))),
            Ok("fine".into())
        );
        assert_eq!(b.child_id(), pid);
    }

    #[test]
    fn a_slow_child_times_out_and_the_next_call_gets_a_fresh_one() {
        let script = r#"while read -r line; do case "$line" in *slow*) sleep 5;; *) echo "{\"text\":\"fast from $$\"}";; esac; done"#;
        let mut b = sh(script, &[]);
        let first = b.answer(&request("hi", Duration::from_secs(5))).unwrap();
        let pid1 = b.child_id().unwrap();
        assert_eq!(first, format!("fast from {pid1}"));

        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        assert_eq!(
            b.answer(&request("be slow", timeout)),
            Err(AgentError::Timeout)
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_millis(500),
            "{elapsed:?}"
        );
        assert_eq!(b.child_id(), None, "killed");

        let again = b.answer(&request("hi", Duration::from_secs(5))).unwrap();
        let pid2 = b.child_id().unwrap();
        assert_ne!(pid1, pid2);
        assert_eq!(again, format!("fast from {pid2}"));
    }

    #[test]
    fn a_child_that_exits_is_a_backend_error_then_restarts() {
        // First start: exit at once. Later starts: answer.
        let marker = temp_path("exit");
        let script = r#"if [ -e "$1" ]; then while read -r l; do echo '{"text":"back"}'; done; else : > "$1"; exit 3; fi"#;
        let mut b = sh(script, &[marker.to_str().unwrap()]);
        let err = b
            .answer(&request("hi", Duration::from_secs(5)))
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("exited") && w.contains('3')),
            "{err:?}"
        );
        assert_eq!(
            b.answer(&request("hi", Duration::from_secs(5))),
            Ok("back".into())
        );
        std::fs::remove_file(&marker).unwrap();
    }

    #[test]
    fn a_line_that_is_not_json_is_a_backend_error_then_restarts() {
        let script = r#"while read -r l; do echo "not json from $$"; done"#;
        let mut b = sh(script, &[]);
        let err = b
            .answer(&request("hi", Duration::from_secs(5)))
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("not JSON")),
            "{err:?}"
        );
        assert_eq!(b.child_id(), None);
        assert!(b.answer(&request("hi", Duration::from_secs(5))).is_err());
    }

    #[test]
    fn a_missing_program_is_a_backend_error() {
        let mut b = CommandBackend::new(&["/nonexistent/wb-agent".into()], "p").unwrap();
        let err = b
            .answer(&request("hi", Duration::from_secs(1)))
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::Backend(w) if w.contains("/nonexistent/wb-agent")),
            "{err:?}"
        );
    }

    #[test]
    fn empty_argv_is_a_config_error() {
        assert!(CommandBackend::new(&[], "p").is_err());
        assert!(CommandBackend::new(&["".into()], "p").is_err());
    }

    #[test]
    fn drop_kills_the_child() {
        let mut b = sh(COUNTER, &[]);
        b.answer(&request("hi", Duration::from_secs(5))).unwrap();
        let pid = b.child_id().unwrap();
        let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let had_proc = proc_dir.exists();
        drop(b);
        // Reaped by Drop: the pid is gone (checked where /proc exists).
        if had_proc {
            assert!(!proc_dir.exists(), "pid {pid} still exists");
        }
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn part_lines_go_to_the_sink_and_the_final_text_is_the_answer() {
        let script = r#"read line; case "$line" in *'"stream":true'*) ;; *) echo '{"error":"no stream flag"}'; exit;; esac
echo '{"type":"part","text":"One."}'; echo '{"type":"part","text":" Two."}'; echo '{"text":"One. Two."}'
read line; echo '{"type":"part","text":"ignored"}'; echo '{"text":"plain"}'"#;
        let argv = ["sh".to_string(), "-c".into(), script.into()];
        let mut b = CommandBackend::new(&argv, "persona").expect("backend");
        let mut req = AgentRequest {
            job_id: 1,
            user_id: "u".into(),
            username: "u".into(),
            history: Vec::new(),
            message: "hi".into(),
            context: WorldContext::default(),
            crisis: false,
            timeout: Duration::from_secs(10),
            purpose: crate::agent::Purpose::Reply,
            system: None,
            stream: true,
        };
        let mut got = Vec::new();
        let text = b.reply(&req, Some(&mut |p| got.push(p.to_string())));
        assert_eq!(text, Ok("One. Two.".into()));
        assert_eq!(got, vec!["One.", " Two."]);
        req.stream = false;
        assert_eq!(
            b.answer(&req),
            Ok("plain".into()),
            "parts are skipped unstreamed"
        );
    }
}
