//! Heartbeats for long-lived connections (the gateway's agents, the Workshop's browsers):
//! a ping round every interval; a connection that has said nothing at all, not even a
//! pong, for a full interval after it was pinged is declared dead. Also [`Flood`], the
//! per-connection cap on messages per second.
//!
//! Socket-free: it names connections by [`ConnId`] and takes `now` in epoch ms; the
//! transport sends the pings and closes the dead.

use crate::conn::ConnId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct Liveness {
    last_heard_ms: u64,
    /// When the last ping went out and nothing has been heard since.
    pinged_ms: Option<u64>,
}

/// The ping schedule and the silence detector.
#[derive(Debug)]
pub struct Heartbeat {
    interval_ms: u64,
    next_round_ms: u64,
    peers: HashMap<ConnId, Liveness>,
}

/// What a round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Ping these.
    pub ping: Vec<ConnId>,
    /// Silent for a full interval after a ping: close these.
    pub dead: Vec<ConnId>,
}

impl Heartbeat {
    pub fn new(interval_ms: u64, now_ms: u64) -> Heartbeat {
        let interval_ms = interval_ms.max(1);
        Heartbeat {
            interval_ms,
            next_round_ms: now_ms + interval_ms,
            peers: HashMap::new(),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    pub fn add(&mut self, conn: ConnId, now_ms: u64) {
        self.peers.insert(
            conn,
            Liveness {
                last_heard_ms: now_ms,
                pinged_ms: None,
            },
        );
    }

    pub fn remove(&mut self, conn: ConnId) {
        self.peers.remove(&conn);
    }

    /// Anything arrived from `conn` (a message, a pong).
    pub fn heard(&mut self, conn: ConnId, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(&conn) {
            p.last_heard_ms = p.last_heard_ms.max(now_ms);
            p.pinged_ms = None;
        }
    }

    pub fn last_heard_ms(&self, conn: ConnId) -> Option<u64> {
        self.peers.get(&conn).map(|p| p.last_heard_ms)
    }

    /// When the next round is due (for the loop's poll timeout).
    pub fn next_round_ms(&self) -> u64 {
        self.next_round_ms
    }

    /// Run a round if one is due. The dead are forgotten here; the rest are pinged.
    pub fn tick(&mut self, now_ms: u64) -> Round {
        let mut round = Round::default();
        if now_ms < self.next_round_ms {
            return round;
        }
        // A stalled loop does not fire a burst of rounds: the next one is a full interval
        // from now.
        self.next_round_ms = now_ms + self.interval_ms;
        for (&conn, p) in self.peers.iter_mut() {
            match p.pinged_ms {
                Some(at) if now_ms.saturating_sub(at) >= self.interval_ms => round.dead.push(conn),
                // Pinged less than an interval ago (it joined the round late): wait.
                Some(_) => {}
                None => {
                    p.pinged_ms = Some(now_ms);
                    round.ping.push(conn);
                }
            }
        }
        for conn in &round.dead {
            self.peers.remove(conn);
        }
        round.ping.sort_by_key(|c| (c.idx, c.gen));
        round.dead.sort_by_key(|c| (c.idx, c.gen));
        round
    }
}

/// A per-connection cap on messages per second, in fixed one-second windows: a few
/// bytes per connection, where a sliding log would keep one timestamp per message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flood {
    window_start_ms: u64,
    count: u32,
}

/// What [`Flood::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flooding {
    Allowed,
    /// The first message over the cap in this window: say so once.
    Refused,
    /// Over the cap again in the same window: drop it quietly.
    RefusedAgain,
}

impl Flood {
    pub fn check(&mut self, now_ms: u64, max_per_s: u32) -> Flooding {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        match self.count.cmp(&max_per_s.saturating_add(1)) {
            std::cmp::Ordering::Less => Flooding::Allowed,
            std::cmp::Ordering::Equal => Flooding::Refused,
            std::cmp::Ordering::Greater => Flooding::RefusedAgain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(idx: u32) -> ConnId {
        ConnId { idx, gen: 0 }
    }

    #[test]
    fn silent_after_a_ping_for_a_full_interval_is_dead() {
        let mut hb = Heartbeat::new(1000, 0);
        hb.add(id(1), 0);
        hb.add(id(2), 0);
        assert_eq!(hb.tick(999), Round::default(), "not due yet");
        let r = hb.tick(1000);
        assert_eq!(r.ping, vec![id(1), id(2)]);
        assert!(r.dead.is_empty());
        // 1 answers, 2 stays silent.
        hb.heard(id(1), 1200);
        let r = hb.tick(2000);
        assert_eq!(r.dead, vec![id(2)]);
        assert_eq!(r.ping, vec![id(1)]);
        // 2 is forgotten; 1 keeps going while it answers.
        hb.heard(id(1), 2100);
        assert_eq!(hb.tick(3000).ping, vec![id(1)]);
        assert_eq!(hb.last_heard_ms(id(2)), None);
    }

    #[test]
    fn traffic_counts_as_an_answer_and_rounds_do_not_burst() {
        let mut hb = Heartbeat::new(1000, 0);
        hb.add(id(1), 0);
        hb.tick(1000);
        hb.heard(id(1), 1500);
        // The loop stalled for 10 intervals: one round, nobody dies for the stall.
        let r = hb.tick(11_000);
        assert_eq!(r.ping, vec![id(1)]);
        assert!(r.dead.is_empty());
        assert_eq!(hb.next_round_ms(), 12_000);
    }

    #[test]
    fn flood_allows_the_cap_per_second_and_says_so_once() {
        let mut f = Flood::default();
        for _ in 0..3 {
            assert_eq!(f.check(5000, 3), Flooding::Allowed);
        }
        assert_eq!(f.check(5100, 3), Flooding::Refused);
        assert_eq!(f.check(5200, 3), Flooding::RefusedAgain);
        assert_eq!(f.check(6000, 3), Flooding::Allowed, "a new second");
    }

    #[test]
    fn removed_connections_are_not_pinged() {
        let mut hb = Heartbeat::new(10, 0);
        hb.add(id(1), 0);
        hb.remove(id(1));
        assert_eq!(hb.tick(10), Round::default());
    }
}
