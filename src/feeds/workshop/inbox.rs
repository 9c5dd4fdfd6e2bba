//! Visitor messages into the agent's inbox (`workshop.inbox_dir`): one JSON file per
//! message, written on a thread of its own because `fsync` can take as long as the disk
//! likes and the loop must not wait for it.
//!
//! Each file appears whole or not at all: it is written under a temporary dot-name,
//! synced, renamed into place, and the directory is synced so the rename survives a
//! crash. Names sort in arrival order: `<epoch ms, 13 digits>-<pid>-<counter>.json`.

use crate::conn::ConnId;
use crate::world::time::rfc3339;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// One visitor message as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxMessage {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub visitor: String,
    pub received_at: String,
    pub received_ms: u64,
}

impl InboxMessage {
    pub fn new(text: &str, visitor: &str, now_ms: u64) -> InboxMessage {
        InboxMessage {
            kind: "message",
            text: text.to_string(),
            visitor: visitor.to_string(),
            received_at: rfc3339(now_ms),
            received_ms: now_ms,
        }
    }
}

/// The file name for the `counter`-th message of this process.
pub fn file_name(now_ms: u64, counter: u64) -> String {
    format!("{now_ms:013}-{}-{counter:06}.json", std::process::id())
}

/// Write `body` as `dir/name` atomically and durably; creates `dir` if needed.
pub fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        // The rename is durable once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// What became of one message: written to this path, or not (the error), and the
/// connection of the visitor who sent it.
pub type Written = (ConnId, Result<PathBuf, String>);

/// The inbox writer thread. Messages are written in the order they are handed over.
pub struct Inbox {
    tx: Option<crossbeam_channel::Sender<(ConnId, InboxMessage)>>,
    thread: Option<JoinHandle<()>>,
}

impl Inbox {
    /// Start the writer for `dir`; `done` gets what became of each message (the loop
    /// answers a visitor whose message could not be written, and health shows it).
    pub fn spawn(
        dir: PathBuf,
        queue: usize,
        done: impl Fn(Written) + Send + 'static,
    ) -> io::Result<Inbox> {
        let (tx, rx) = crossbeam_channel::bounded::<(ConnId, InboxMessage)>(queue.max(1));
        let thread = std::thread::Builder::new()
            .name("workshop-inbox".into())
            .spawn(move || {
                let mut counter = 0u64;
                for (conn, msg) in rx {
                    counter += 1;
                    let name = file_name(msg.received_ms, counter);
                    let body = match serde_json::to_vec_pretty(&msg) {
                        Ok(b) => b,
                        Err(e) => {
                            done((conn, Err(e.to_string())));
                            continue;
                        }
                    };
                    match write_atomic(&dir, &name, &body) {
                        Ok(p) => done((conn, Ok(p))),
                        Err(e) => {
                            log::error!(
                                "workshop inbox: cannot write {} in {}: {e}",
                                name,
                                dir.display()
                            );
                            done((conn, Err(format!("cannot write in {}: {e}", dir.display()))));
                        }
                    }
                }
            })?;
        Ok(Inbox {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand a message to the writer; false when its queue is full (the disk is not
    /// keeping up) or it has stopped.
    pub fn submit(&self, conn: ConnId, msg: InboxMessage) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.try_send((conn, msg)).is_ok())
    }

    /// Write what is queued, then stop.
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "worldbridge-{tag}-{}-{}",
            std::process::id(),
            crate::world::time::now_ms()
        ));
        d
    }

    #[test]
    fn names_sort_in_arrival_order() {
        let a = file_name(999, 1);
        let b = file_name(1000, 2);
        let c = file_name(1000, 3);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(a.starts_with("0000000000999-"));
        assert!(a.ends_with("-000001.json"));
    }

    #[test]
    fn messages_become_whole_json_files_in_order() {
        let dir = temp_dir("inbox").join("nested");
        let (tx, rx) = crossbeam_channel::unbounded();
        let inbox = Inbox::spawn(dir.clone(), 16, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        let c = ConnId { idx: 1, gen: 0 };
        assert!(inbox.submit(
            c,
            InboxMessage::new("How's the Tower coming?", "Alexander", 1000)
        ));
        assert!(inbox.submit(c, InboxMessage::new("second", "Bo", 1000)));
        inbox.finish();
        let written: Vec<PathBuf> = rx.try_iter().map(|(_, r)| r.unwrap()).collect();
        assert_eq!(written.len(), 2);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
        let first: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(&names[0])).unwrap()).unwrap();
        assert_eq!(first["type"], "message");
        assert_eq!(first["text"], "How's the Tower coming?");
        assert_eq!(first["visitor"], "Alexander");
        assert_eq!(first["received_at"], rfc3339(1000));
        let second: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(&names[1])).unwrap()).unwrap();
        assert_eq!(second["text"], "second");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_unwritable_inbox_reports_the_error() {
        let file = temp_dir("inbox-file");
        fs::write(&file, b"not a directory").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let inbox = Inbox::spawn(file.join("inbox"), 4, move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        let c = ConnId { idx: 7, gen: 3 };
        assert!(inbox.submit(c, InboxMessage::new("x", "y", 1)));
        inbox.finish();
        let (conn, result) = rx.try_recv().unwrap();
        assert_eq!(conn, c, "the failure names the visitor's connection");
        assert!(result.unwrap_err().contains("cannot write in"));
        fs::remove_file(&file).unwrap();
    }
}
