//! Per-user conversations with the agent: one isolated history per `user_id`, a bounded
//! number of sessions (least recently active evicted), and an idle timeout.

use crate::agent::{Role, Turn};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// One user's conversation with the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub username: String,
    /// The room the user last spoke to the agent from.
    pub room: String,
    /// The last `history_max` turns, oldest first.
    pub history: VecDeque<Turn>,
    /// Messages exchanged in this session (the user's and the agent's), never capped.
    pub messages: u64,
    pub created_ms: u64,
    pub last_active_ms: u64,
    /// Order of last activity: breaks ties between sessions active in the same
    /// millisecond, so "least recently active" is exact.
    #[serde(default)]
    pub activity: u64,
    /// The crisis detector fired in this session; later replies keep the 988 line.
    pub crisis: bool,
}

/// The limits of [`Sessions`], from `[sessions]` in Config.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max: usize,
    pub idle_timeout_ms: u64,
    pub history_max: usize,
}

/// Every live session, keyed by `user_id`.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<String, Session>,
    limits: SessionLimits,
    /// Counter behind [`Session::activity`].
    clock: u64,
    /// Sessions changed or removed since [`Sessions::take_dirty`] (for the store).
    dirty: BTreeSet<String>,
    /// Whether to keep `dirty` (only when a store persists the world).
    pub track: bool,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            map: HashMap::new(),
            limits,
            clock: 0,
            dirty: BTreeSet::new(),
            track: false,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, user_id: &str) -> Option<&Session> {
        self.map.get(user_id)
    }

    /// A session to change (it is marked for the store).
    pub fn get_mut(&mut self, user_id: &str) -> Option<&mut Session> {
        self.mark(user_id);
        self.map.get_mut(user_id)
    }

    fn mark(&mut self, user_id: &str) {
        if self.track {
            self.dirty.insert(user_id.to_string());
        }
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// User ids of the sessions changed or removed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Every session (for snapshots), in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    /// Put back a session from a snapshot.
    pub fn restore(&mut self, s: Session) {
        self.clock = self.clock.max(s.activity);
        self.map.insert(s.user_id.clone(), s);
    }

    /// Sessions, most recently active first.
    pub fn list(&self) -> Vec<&Session> {
        let mut v: Vec<&Session> = self.map.values().collect();
        v.sort_by_key(|s| std::cmp::Reverse((s.last_active_ms, s.activity)));
        v
    }

    /// The user's session, created if new. Creating one past `max` evicts the least
    /// recently active session other than those in `keep` (users with a call in flight);
    /// its user id is returned.
    pub fn touch(
        &mut self,
        user_id: &str,
        username: &str,
        room: &str,
        now_ms: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        let mut evicted = None;
        if !self.map.contains_key(user_id) && self.map.len() >= self.limits.max.max(1) {
            // Sessions without a conversation (people who only said or moved) go first,
            // so a crowd of passers-by does not cost a chatter their history.
            let order = |s: &&Session| (s.messages > 0, s.last_active_ms, s.activity);
            // The first in that order, unless it is kept (asking `keep` of every session
            // costs a look-up each, on every new user once the sessions are full).
            let first = self.map.values().min_by_key(order);
            let victim = match first {
                Some(s) if keep(&s.user_id) => (self.map.values().filter(|s| !keep(&s.user_id)))
                    .min_by_key(order)
                    .or(first),
                other => other,
            }
            .map(|s| s.user_id.clone());
            if let Some(v) = victim {
                self.map.remove(&v);
                self.mark(&v);
                evicted = Some(v);
            }
        }
        let s = self
            .map
            .entry(user_id.to_string())
            .or_insert_with(|| Session {
                user_id: user_id.to_string(),
                username: username.to_string(),
                room: room.to_string(),
                history: VecDeque::new(),
                messages: 0,
                created_ms: now_ms,
                last_active_ms: now_ms,
                activity: 0,
                crisis: false,
            });
        if s.username != username {
            s.username = username.to_string();
        }
        if s.room != room {
            s.room = room.to_string();
        }
        s.last_active_ms = now_ms;
        self.clock += 1;
        s.activity = self.clock;
        self.mark(user_id);
        evicted
    }

    /// Take a user's session out (they travel to another world).
    pub fn remove(&mut self, user_id: &str) -> Option<Session> {
        let s = self.map.remove(user_id)?;
        self.mark(user_id);
        Some(s)
    }

    /// A traveller's conversation arrives: their session here holds `history` (the
    /// last `history_max` turns of it). Never evicts a session in `keep`.
    pub fn adopt(
        &mut self,
        user_id: &str,
        username: &str,
        room: &str,
        history: &[Turn],
        now_ms: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        let evicted = self.touch(user_id, username, room, now_ms, keep);
        let max = self.limits.history_max;
        if let Some(s) = self.map.get_mut(user_id) {
            let skip = history.len().saturating_sub(max);
            s.history = history.iter().skip(skip).cloned().collect();
            s.messages = s.messages.max(history.len() as u64);
        }
        evicted
    }

    /// The stored copy of a session, from the node that last talked to the agent for
    /// this user (cluster mode), replaces the conversation held here; the crisis flag
    /// stays set if either copy has it.
    pub fn take_stored(&mut self, stored: Session) {
        let max = self.limits.history_max;
        self.mark(&stored.user_id);
        match self.map.get_mut(&stored.user_id) {
            Some(s) => {
                let skip = stored.history.len().saturating_sub(max);
                s.history = stored.history.into_iter().skip(skip).collect();
                s.messages = stored.messages;
                s.crisis |= stored.crisis;
                s.created_ms = s.created_ms.min(stored.created_ms);
            }
            None => {
                self.map.insert(stored.user_id.clone(), stored);
            }
        }
    }

    /// Cluster mode: the world holds no stored conversation for `user_id` (it expired, the
    /// user travelled away, Redis lost it), so what this node kept of it is stale: its
    /// history goes (the crisis flag stays).
    pub fn forget_history(&mut self, user_id: &str) {
        if let Some(s) = self.map.get_mut(user_id) {
            s.history.clear();
            s.messages = 0;
            self.mark(user_id);
        }
    }

    /// Record one exchange: the user's message and the agent's reply.
    pub fn record(&mut self, user_id: &str, message: &str, reply: &str, now_ms: u64) {
        let max = self.limits.history_max;
        if let Some(s) = self.map.get_mut(user_id) {
            for (role, content) in [(Role::User, message), (Role::Assistant, reply)] {
                s.history.push_back(Turn {
                    role,
                    content: content.to_string(),
                });
            }
            while s.history.len() > max {
                s.history.pop_front();
            }
            s.messages += 2;
            s.last_active_ms = now_ms;
            self.clock += 1;
            s.activity = self.clock;
            self.mark(user_id);
        }
    }

    /// Remove sessions idle for longer than the timeout, except those in `keep`; their
    /// user ids are returned.
    pub fn expire(&mut self, now_ms: u64, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        let limit = self.limits.idle_timeout_ms;
        let gone: Vec<String> = self
            .map
            .values()
            .filter(|s| now_ms.saturating_sub(s.last_active_ms) > limit && !keep(&s.user_id))
            .map(|s| s.user_id.clone())
            .collect();
        for u in &gone {
            self.map.remove(u);
            self.mark(u);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            max: 3,
            idle_timeout_ms: 1000,
            history_max: 4,
        }
    }

    #[test]
    fn evicts_least_recently_active_not_busy() {
        let mut s = Sessions::new(limits());
        for (i, u) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(s.touch(u, u, "R", i as u64, &|_| false), None);
        }
        s.touch("a", "a", "R", 10, &|_| false);
        // b is least recent but busy, so c goes.
        assert_eq!(s.touch("d", "d", "R", 11, &|u| u == "b"), Some("c".into()));
        assert_eq!(s.touch("e", "e", "R", 12, &|_| false), Some("b".into()));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn history_is_capped_and_counted() {
        let mut s = Sessions::new(limits());
        s.touch("a", "A", "R", 0, &|_| false);
        for i in 0..5 {
            s.record("a", &format!("q{i}"), &format!("r{i}"), i);
        }
        let a = s.get("a").unwrap();
        assert_eq!(a.messages, 10);
        assert_eq!(a.history.len(), 4);
        assert_eq!(a.history[0].content, "q3");
        assert_eq!(a.history[3].content, "r4");
    }

    #[test]
    fn expiry_spares_busy_and_recent() {
        let mut s = Sessions::new(limits());
        s.touch("old", "o", "R", 0, &|_| false);
        s.touch("busy", "b", "R", 0, &|_| false);
        s.touch("new", "n", "R", 900, &|_| false);
        assert_eq!(s.expire(1500, &|u| u == "busy"), vec!["old".to_string()]);
        assert!(s.get("busy").is_some() && s.get("new").is_some());
    }
}
