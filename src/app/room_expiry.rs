//! State that must not outlive its users: the periodic sweep that removes rooms nobody
//! defines once they have been empty for `rooms.idle_expire_s` (memory and store), and
//! the per-address limit on creating rooms over HTTP, so rotating `user_id` cannot fill
//! `rooms.max`.
//!
//! Which rooms stay: the world file's, portal rooms (`"portal": true`, and the names in
//! `federation.portal_rooms`), the bridge's own Workshop room, rooms anyone is in, and
//! rooms a live game link reported or declared (a `room` snapshot, a perception cell, a
//! player's room): once that link is gone, the room's idle time starts.

use crate::app::outcome::Refusal;
use crate::app::App;
use crate::world::ratelimit::RateLimit;
use std::net::IpAddr;

/// The longest time between two sweeps, in ms (shorter when `rooms.idle_expire_s` is).
const SWEEP_EVERY_MAX_MS: u64 = 30_000;

/// The sweep's clock and the per-address room creation limiter.
#[derive(Debug)]
pub struct RoomSweep {
    /// When the next sweep is due (epoch ms; 0: at the first tick).
    next_ms: u64,
    /// Rooms created over HTTP, per address (IPv4, or an IPv6 /64), with the per-user
    /// limit's `http.rate_limit_requests` per `http.rate_limit_window_s`. Addresses whose
    /// allowance is whole again are forgotten at each tick, as the per-user table.
    creators: RateLimit,
}

impl RoomSweep {
    pub fn new(requests: u32, window_s: u64) -> RoomSweep {
        RoomSweep {
            next_ms: 0,
            creators: RateLimit::new(requests, window_s),
        }
    }

    /// Count one room creation from `ip`. `Err(seconds)`: over the limit.
    pub fn check_creator(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        self.creators.check(&address_key(ip), now_ms)
    }

    /// Addresses tracked now (for tests and bounds).
    pub fn creators_tracked(&self) -> usize {
        self.creators.tracked()
    }
}

/// The key an address is limited by: an IPv4 address (or an IPv4-mapped IPv6 one) as
/// is, an IPv6 address by its /64 (one host usually holds a whole /64).
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl App {
    /// A request from `ip` would create the room `room` (no room of that name exists):
    /// charge it to the address's room creation allowance. Past it: 429 `rate_limited`.
    pub fn limit_room_creation(
        &mut self,
        ip: IpAddr,
        room: &str,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        // An existing room, or a name that is refused anyway, creates nothing.
        if self.world.resolve(room).is_some() || crate::world::check_name("room", room).is_err() {
            return Ok(());
        }
        self.room_sweep.check_creator(ip, now_ms).map_err(|retry| {
            let why = format!(
                "too many new rooms from the address {ip}: at most {} rooms created per {} s from one address, whatever the user_id; use an existing room or retry in {retry} s",
                self.cfg.http.rate_limit_requests, self.cfg.http.rate_limit_window_s
            );
            self.rate_limited(why, retry)
        })
    }

    /// A 429 `rate_limited` that may be retried after `retry` seconds, counted.
    pub fn rate_limited(&mut self, why: String, retry: u64) -> Refusal {
        self.metrics.rate_limited += 1;
        Refusal::new("rate_limited", why).retry_after(retry)
    }

    /// From the periodic tick: at most every 30 s (every `rooms.idle_expire_s` when
    /// shorter), remove the expired rooms; each is logged, counted and deleted from the
    /// store with its events in the next batch. Kept federated events are tried again
    /// (a place under `rooms.max` may have opened).
    pub fn expire_rooms(&mut self, now_ms: u64) {
        self.room_sweep.creators.prune(now_ms);
        if now_ms < self.room_sweep.next_ms {
            return;
        }
        let idle_ms = self.cfg.rooms.idle_expire_s.max(1).saturating_mul(1000);
        self.room_sweep.next_ms = now_ms + idle_ms.min(SWEEP_EVERY_MAX_MS);
        let links = &self.links;
        let portals = &self.cfg.federation.portal_rooms;
        let keep = |room: &str| {
            room == crate::feeds::workshop::ROOM
                || portals.iter().any(|p| p.trim().eq_ignore_ascii_case(room))
                || links
                    .iter()
                    .any(|(_, l)| l.rooms.contains(room) || l.declared.contains(room))
        };
        let gone = self.world.expire_rooms(now_ms, idle_ms, keep);
        if gone.is_empty() {
            return;
        }
        for room in &gone {
            log::info!(
                "room expired room={room:?} (empty and unused for rooms.idle_expire_s = {} s; no world file, link or portal list defines it)",
                self.cfg.rooms.idle_expire_s
            );
        }
        self.metrics.rooms_expired += gone.len() as u64;
        if let Some(f) = &mut self.fed {
            f.unshown.rooms_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::conn::ConnId;

    fn app(idle_s: u64) -> App {
        let mut cfg = Config::default();
        cfg.store.memory = true;
        cfg.rooms.idle_expire_s = idle_s;
        cfg.http.rate_limit_requests = 3;
        cfg.http.rate_limit_window_s = 60;
        cfg.federation.portal_rooms = vec!["Listed Portal".into()];
        App::new(cfg).expect("app")
    }

    #[test]
    fn room_creation_is_limited_per_address_not_per_room_already_there() {
        let mut a = app(3600);
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        for i in 0..3 {
            let room = format!("New {i}");
            a.limit_room_creation(one, &room, 1_000).unwrap();
            a.world.ensure_room(&room).unwrap();
        }
        let refused = a.limit_room_creation(one, "New 3", 1_000).unwrap_err();
        assert_eq!(refused.code, "rate_limited");
        let text = &refused.message;
        assert!(
            text.contains("new rooms from the address 127.0.0.1"),
            "{text}"
        );
        assert_eq!(refused.retry_after, Some(20));
        // Rooms that exist cost nothing; another address has its own allowance.
        a.limit_room_creation(one, "The Garden", 1_000).unwrap();
        a.limit_room_creation(one, "new 0", 1_000).unwrap();
        a.limit_room_creation(other, "New 3", 1_000).unwrap();
        // One host's IPv6 /64 is one address; the table forgets whole allowances.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        for _ in 0..3 {
            a.limit_room_creation(v6a, "X", 1_000).unwrap();
        }
        assert!(a.limit_room_creation(v6b, "X", 1_000).is_err());
        assert_eq!(a.room_sweep.creators_tracked(), 3);
        a.expire_rooms(1_000 + 61_000);
        assert_eq!(a.room_sweep.creators_tracked(), 0);
    }

    #[test]
    fn the_sweep_keeps_linked_portal_and_workshop_rooms_and_counts_what_goes() {
        let mut a = app(1);
        let link = ConnId { idx: 9, gen: 0 };
        a.links
            .open(link, "127.0.0.1:5000".parse().unwrap(), None, 0);
        a.world.say("u", "U", "Linked", "hi", 1_000).unwrap();
        a.links.declare(link, "Linked");
        a.world.say("v", "V", "Client", "hi", 1_000).unwrap();
        a.world.ensure_room(crate::feeds::workshop::ROOM).unwrap();
        a.world.remove("u", 1_000);
        a.world.remove("v", 1_000);
        let rooms = a.world.room_count();
        a.expire_rooms(1_500);
        assert_eq!(a.world.room_count(), rooms, "nothing idle for 1 s yet");
        a.expire_rooms(2_600);
        assert!(a.world.room("Client").is_none());
        for r in ["Linked", "Listed Portal", "Workshop", "The Threshold"] {
            assert!(a.world.room(r).is_some(), "{r} expired");
        }
        assert_eq!(a.metrics.rooms_expired, 1);
        // The link goes: the normal idle rule applies to its room (idle since the last
        // sweep that saw it kept).
        a.links.close(link, None, std::time::Instant::now(), 3_000);
        a.expire_rooms(3_600);
        assert!(a.world.room("Linked").is_none());
        assert_eq!(a.metrics.rooms_expired, 2);
    }
}
