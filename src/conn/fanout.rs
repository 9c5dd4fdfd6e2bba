//! Broadcast frames kept once for every connection of a feed, and the loop's queue of
//! connections waiting for a write.
//!
//! A broadcast to 5,000 gateway clients used to be 5,000 queue pushes, each touching a
//! different connection's memory, before a single byte was written. Here it is one entry
//! in a shared log; each member connection keeps a cursor into it and, when its turn to
//! write comes, takes everything from its cursor on in one go (its own direct frames are
//! tagged with the log position they were queued at, so the order the feed produced is
//! the order the peer reads). The log keeps what the slowest open member has not written
//! yet; a member that falls further behind than its queue caps allow is a slow consumer,
//! found by [`FanoutLog::scan_due`]'s periodic scan.

use super::ConnId;
use std::collections::VecDeque;
use tungstenite::Utf8Bytes;

/// One broadcast frame: for every member but `except`.
#[derive(Debug)]
pub struct Entry {
    pub frame: Utf8Bytes,
    pub except: Option<ConnId>,
    /// Bytes of all frames through this one (so a backlog's size is one subtraction).
    end_bytes: u64,
}

/// How much of the log a member still has to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub messages: usize,
    pub bytes: usize,
}

/// The shared log of broadcast frames; positions (`seq`) count from 0 and never repeat.
#[derive(Debug, Default)]
pub struct FanoutLog {
    /// Position of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Bytes of every frame before `entries[0]`.
    base_bytes: u64,
    /// Position at which the next scan is due.
    next_scan: u64,
    /// Bytes through the last frame at the last scan.
    scanned_bytes: u64,
}

impl FanoutLog {
    /// The position the next frame will get: a new member starts here.
    pub fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// The oldest position still kept.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn bytes_through_head(&self) -> u64 {
        self.entries.back().map_or(self.base_bytes, |e| e.end_bytes)
    }

    pub fn push(&mut self, frame: Utf8Bytes, except: Option<ConnId>) {
        let end_bytes = self.bytes_through_head() + frame.len() as u64;
        self.entries.push_back(Entry {
            frame,
            except,
            end_bytes,
        });
    }

    /// The frame at `seq`, if still kept.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        let i = seq.checked_sub(self.base)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// What a member at `cursor` has not written yet; `None` when part of it was already
    /// dropped (the member was not kept up with: a slow consumer).
    pub fn backlog(&self, cursor: u64) -> Option<Backlog> {
        if cursor < self.base {
            return None;
        }
        let start = match cursor.checked_sub(self.base + 1) {
            None => self.base_bytes,
            Some(i) => self
                .entries
                .get(i as usize)
                .map_or(self.bytes_through_head(), |e| e.end_bytes),
        };
        Some(Backlog {
            messages: self.head().saturating_sub(cursor) as usize,
            bytes: self.bytes_through_head().saturating_sub(start) as usize,
        })
    }

    /// Whether enough came in since the last scan (a quarter of the caps: the message
    /// count was set by [`FanoutLog::scanned`]) to look for slow members and trim.
    pub fn scan_due(&self, max_bytes: usize) -> bool {
        !self.entries.is_empty()
            && (self.head() >= self.next_scan
                || self.bytes_through_head() - self.scanned_bytes >= (max_bytes / 4).max(1) as u64)
    }

    /// After a scan: drop everything before `keep_from` (the slowest open member's
    /// cursor) and set when the next scan is due.
    pub fn scanned(&mut self, keep_from: u64, max_messages: usize) {
        let keep_from = keep_from.min(self.head());
        while self.base < keep_from {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.base += 1;
            self.base_bytes = e.end_bytes;
        }
        // What comes in between two scans is kept without regrowing: shrinking below
        // that only to grow again cost a reallocation or three per scan, and a scan is
        // due every max_messages / 4 broadcasts (every say and chat makes some).
        let between = (max_messages / 4).max(1);
        let floor = between.next_power_of_two().max(64);
        if self.entries.capacity() > 2 * floor && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len().max(floor));
        }
        self.next_scan = self.head() + between as u64;
        self.scanned_bytes = self.bytes_through_head();
    }
}

/// Connections waiting for their turn to write, each at most once, in the order they
/// were first given something. Whether an id is queued is kept by slot index, so
/// queueing all members of a broadcast touches a small dense table, not each connection.
#[derive(Debug, Default)]
pub struct WriteQueue {
    order: VecDeque<ConnId>,
    queued: Vec<Option<ConnId>>,
}

impl WriteQueue {
    /// Queue `id` unless it already waits; true when it was added.
    pub fn push(&mut self, id: ConnId) -> bool {
        let i = id.idx as usize;
        if i >= self.queued.len() {
            self.queued.resize(i + 1, None);
        }
        if self.queued[i] == Some(id) {
            return false;
        }
        self.queued[i] = Some(id);
        self.order.push_back(id);
        true
    }

    /// The next connection to write. An id whose slot was reused meanwhile still comes
    /// out (the caller finds it gone); the new occupant keeps its own place.
    pub fn pop(&mut self) -> Option<ConnId> {
        let id = self.order.pop_front()?;
        if let Some(q) = self.queued.get_mut(id.idx as usize) {
            if *q == Some(id) {
                *q = None;
            }
        }
        Some(id)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(idx: u32, gen: u32) -> ConnId {
        ConnId { idx, gen }
    }

    #[test]
    fn positions_backlog_and_trim() {
        let mut log = FanoutLog::default();
        assert_eq!(log.head(), 0);
        assert_eq!(log.backlog(0), Some(Backlog::default()));
        log.push("abc".into(), None);
        log.push("de".into(), Some(id(1, 0)));
        log.push("f".into(), None);
        assert_eq!(log.head(), 3);
        assert_eq!(log.get(1).unwrap().frame.as_str(), "de");
        assert_eq!(log.get(1).unwrap().except, Some(id(1, 0)));
        assert!(log.get(3).is_none());
        assert_eq!(
            log.backlog(0),
            Some(Backlog {
                messages: 3,
                bytes: 6
            })
        );
        assert_eq!(
            log.backlog(2),
            Some(Backlog {
                messages: 1,
                bytes: 1
            })
        );
        assert_eq!(log.backlog(3), Some(Backlog::default()));
        log.scanned(2, 8);
        assert_eq!((log.base(), log.len(), log.head()), (2, 1, 3));
        assert!(log.get(1).is_none());
        assert_eq!(log.get(2).unwrap().frame.as_str(), "f");
        assert_eq!(log.backlog(1), None, "dropped: a slow consumer");
        assert_eq!(
            log.backlog(2),
            Some(Backlog {
                messages: 1,
                bytes: 1
            })
        );
        // Trimming never passes the head.
        log.scanned(99, 8);
        assert_eq!((log.base(), log.head()), (3, 3));
        log.push("gh".into(), None);
        assert_eq!(
            log.backlog(3),
            Some(Backlog {
                messages: 1,
                bytes: 2
            })
        );
    }

    #[test]
    fn a_scan_is_due_every_quarter_of_the_caps() {
        let mut log = FanoutLog::default();
        log.scanned(0, 8);
        assert!(!log.scan_due(1000));
        log.push("a".into(), None);
        assert!(!log.scan_due(1000));
        log.push("b".into(), None);
        assert!(log.scan_due(1000), "2 = 8 / 4 messages since the last scan");
        log.scanned(2, 8);
        assert!(!log.scan_due(1000));
        log.push("x".repeat(250).into(), None);
        assert!(log.scan_due(1000), "250 bytes = 1000 / 4");
    }

    #[test]
    fn write_queue_holds_each_id_once_and_survives_slot_reuse() {
        let mut q = WriteQueue::default();
        assert!(q.push(id(3, 0)));
        assert!(q.push(id(1, 0)));
        assert!(!q.push(id(3, 0)), "already waiting");
        assert_eq!(q.len(), 2);
        // Slot 3 is reused by a new connection while the old id waits.
        assert!(q.push(id(3, 1)));
        assert_eq!(q.pop(), Some(id(3, 0)));
        assert!(!q.push(id(3, 1)), "the new occupant still waits");
        assert_eq!(q.pop(), Some(id(1, 0)));
        assert_eq!(q.pop(), Some(id(3, 1)));
        assert!(q.is_empty());
        assert!(q.push(id(3, 1)), "popped, so it can wait again");
    }
}
