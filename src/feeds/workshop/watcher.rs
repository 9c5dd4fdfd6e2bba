//! Watching the agent's state file (`workshop.state_file`) on a small thread of its own.
//!
//! Why a thread and not stat calls on the loop: a stat is cheap, but reading and parsing a
//! YAML file is disk I/O of unbounded latency (a network home directory, a busy disk),
//! and the loop must never block. The thread polls every `workshop.poll_s`, and sends
//! what it found over a crossbeam channel, then wakes the loop.
//!
//! A change is noticed by size, mtime and inode (an editor's atomic rename), then
//! confirmed by a hash of the content, so a `touch` or a rewrite with the same bytes sends
//! nothing. A file modified within the last few seconds is re-read even when its
//! fingerprint looks the same: coarse mtime clocks can hide two writes in one tick.

use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Largest state file read; a bigger one is refused (kept as the last good state).
pub const STATE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// A file modified less than this long ago is re-read on every poll.
const RECENT: Duration = Duration::from_secs(3);

/// What the watcher saw.
#[derive(Debug, Clone, PartialEq)]
pub enum StateUpdate {
    /// A new, parsed state (an object).
    Changed(Value),
    /// The file changed but does not parse: keep the last good state.
    Invalid(String),
    /// There is no file (yet): the state is empty until it appears.
    Missing,
}

/// Parse a state file: `.json` as JSON, anything else as YAML. An empty file is the empty
/// state; the top level must be an object (a mapping).
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let value: Value = if is_json {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        other => Err(format!(
            "the state must be a mapping at the top level, not {}",
            match other {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a boolean",
            }
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime: Option<SystemTime>,
    inode: u64,
}

fn fingerprint(meta: &std::fs::Metadata) -> Fingerprint {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    Fingerprint {
        len: meta.len(),
        mtime: meta.modified().ok(),
        inode,
    }
}

/// The state of one poll loop, separate from the thread so tests can step it.
#[derive(Debug)]
pub struct Poller {
    path: PathBuf,
    seen: Option<Fingerprint>,
    /// Hash of the last content read (good or bad), to ignore rewrites with the same bytes.
    hash: Option<u64>,
    /// The last report was `Missing`.
    missing: bool,
}

impl Poller {
    pub fn new(path: PathBuf) -> Poller {
        Poller {
            path,
            seen: None,
            hash: None,
            missing: false,
        }
    }

    /// Look at the file once; `Some` when there is something to report.
    pub fn poll(&mut self) -> Option<StateUpdate> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(_) => {
                self.seen = None;
                self.hash = None;
                if self.missing {
                    return None;
                }
                self.missing = true;
                return Some(StateUpdate::Missing);
            }
        };
        self.missing = false;
        let fp = fingerprint(&meta);
        let recent = fp
            .mtime
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RECENT);
        if self.seen == Some(fp) && !recent {
            return None;
        }
        self.seen = Some(fp);
        if fp.len > STATE_MAX_BYTES {
            let h = Some(fp.len ^ u64::MAX);
            if self.hash == h {
                return None;
            }
            self.hash = h;
            return Some(StateUpdate::Invalid(format!(
                "the file is {} bytes; the most read is {STATE_MAX_BYTES}",
                fp.len
            )));
        }
        let mut bytes = Vec::with_capacity(fp.len as usize);
        let read = std::fs::File::open(&self.path)
            .and_then(|f| f.take(STATE_MAX_BYTES + 1).read_to_end(&mut bytes));
        if let Err(e) = read {
            return Some(StateUpdate::Invalid(format!("cannot read it: {e}")));
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let h = Some(h.finish());
        if self.hash == h {
            return None;
        }
        self.hash = h;
        Some(match parse_state(&self.path, &bytes) {
            Ok(v) => StateUpdate::Changed(v),
            Err(e) => StateUpdate::Invalid(e),
        })
    }
}

/// The watcher thread; dropping it (or [`StateWatcher::stop`]) stops the thread.
pub struct StateWatcher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StateWatcher {
    /// Poll `path` now and then every `every`; each report is sent on `tx`, then `wake`
    /// is called.
    pub fn spawn(
        path: PathBuf,
        every: Duration,
        tx: crossbeam_channel::Sender<StateUpdate>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<StateWatcher> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("workshop-watch".into())
            .spawn(move || {
                let mut poller = Poller::new(path);
                loop {
                    if let Some(update) = poller.poll() {
                        if tx.send(update).is_err() {
                            return;
                        }
                        wake();
                    }
                    match stop_rx.recv_timeout(every) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(StateWatcher {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Dropping the sender ends the thread's wait at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StateWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "worldbridge-{tag}-{}-{}",
            std::process::id(),
            crate::world::time::now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_yaml_json_and_refuses_what_is_not_a_mapping() {
        let y = Path::new("s.yaml");
        assert_eq!(
            parse_state(
                y,
                b"mood: calm\ntasks:\n  - wall\n  - gate\nroom: {light: dim}\n"
            ),
            Ok(json!({"mood": "calm", "tasks": ["wall", "gate"], "room": {"light": "dim"}}))
        );
        assert_eq!(parse_state(y, b""), Ok(json!({})));
        assert_eq!(parse_state(y, b"~\n"), Ok(json!({})));
        assert!(parse_state(y, b"mood: [unclosed\n")
            .unwrap_err()
            .contains("invalid YAML"));
        assert!(parse_state(y, b"- a\n- b\n")
            .unwrap_err()
            .contains("a list"));
        assert!(parse_state(y, b"\xff\xfe").unwrap_err().contains("UTF-8"));
        let j = Path::new("state.JSON");
        assert_eq!(parse_state(j, br#"{"a":1}"#), Ok(json!({"a": 1})));
        assert!(parse_state(j, b"a: 1")
            .unwrap_err()
            .contains("invalid JSON"));
    }

    #[test]
    fn poller_reports_missing_changes_and_bad_files_once_each() {
        let dir = temp_dir("poller");
        let path = dir.join("workshop-state.yaml");
        let mut p = Poller::new(path.clone());
        assert_eq!(p.poll(), Some(StateUpdate::Missing));
        assert_eq!(p.poll(), None, "missing is reported once");

        std::fs::write(&path, "mood: calm\n").unwrap();
        assert_eq!(
            p.poll(),
            Some(StateUpdate::Changed(json!({"mood": "calm"})))
        );
        assert_eq!(p.poll(), None, "same content: nothing (even while recent)");

        // Same length, different bytes, possibly the same mtime tick.
        std::fs::write(&path, "mood: wary\n").unwrap();
        assert_eq!(
            p.poll(),
            Some(StateUpdate::Changed(json!({"mood": "wary"})))
        );

        std::fs::write(&path, "mood: [\n").unwrap();
        assert!(matches!(p.poll(), Some(StateUpdate::Invalid(e)) if e.contains("YAML")));
        assert_eq!(p.poll(), None, "a bad file is reported once");

        // An atomic replace (write elsewhere, rename over).
        let tmp = dir.join("tmp.yaml");
        std::fs::write(&tmp, "mood: glad\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(
            p.poll(),
            Some(StateUpdate::Changed(json!({"mood": "glad"})))
        );

        std::fs::remove_file(&path).unwrap();
        assert_eq!(p.poll(), Some(StateUpdate::Missing));
        std::fs::write(&path, "mood: glad\n").unwrap();
        assert_eq!(
            p.poll(),
            Some(StateUpdate::Changed(json!({"mood": "glad"}))),
            "reappearing counts as a change"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn thread_sends_and_wakes_then_stops_promptly() {
        let dir = temp_dir("watcher");
        let path = dir.join("state.json");
        std::fs::write(&path, r#"{"a":1}"#).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        let watcher = StateWatcher::spawn(
            path.clone(),
            Duration::from_millis(20),
            tx,
            Arc::new(move || {
                w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, StateUpdate::Changed(json!({"a": 1})));
        std::fs::write(&path, r#"{"a":2}"#).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(second, StateUpdate::Changed(json!({"a": 2})));
        // The wake comes right after the send: give the thread a moment to make it.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while woken.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the loop was not woken"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = std::time::Instant::now();
        watcher.stop();
        assert!(t0.elapsed() < Duration::from_secs(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
