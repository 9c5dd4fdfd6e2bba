//! Federation, socket-free: what one bridge holds about the others, and the documents
//! it exchanges with them. The HTTP routes, the peer-sync thread and the store tables
//! wire this in; nothing here touches a socket, a clock or a disk.
//!
//! - [`wire`]: the serde shapes below, and the checks on everything a peer sends.
//! - [`merge`]: the event log keyed by `(origin, seq)`, contiguous marks, paged deltas.
//! - [`trust`]: subject → score, last writer wins by `(updated_at, origin, seq)`.
//! - [`presence`]: each peer's own characters, `last_seen`, offline after 3 intervals.
//! - [`portal`]: which local events leave (portal says, `scope: "federation"` events),
//!   and how arriving ones are shown (`Alice@mac`).
//! - [`travel`]: moving a character exactly once, both sides, with recovery.
//!
//! # Federation (for README.md)
//!
//! Each bridge has a `world` id (`world = "mac"`); each peer is a
//! `[[federation.peers]]` entry with its world id, base URL and the pair's shared token
//! (sent as `Authorization: Bearer <token>` both ways). Every `sync_interval_s` (5 s) a
//! bridge pulls each peer's `GET /bridge/state?since=<cursor>` and pushes its own delta
//! with `POST /bridge/sync`. A peer that is down changes nothing here but its presence
//! marks; each world goes on alone.
//!
//! **What federates.** A `say` in a portal room (`"portal": true` on the room, or named
//! in `federation.portal_rooms`) reaches every peer's portal room, spoken by
//! `Alice@mac`. A world event sent with `"scope": "federation"` (fire, rain, growth…)
//! happens in the room of the same name in every world (or its portal room). Trust
//! changes reach every world. Presence: each world is the only authority for its own
//! characters; peers show them, and show them `away` (with the world `offline`) when the
//! world has been silent for 3 intervals, until it answers again.
//!
//! **Events and cursors.** A federated event is named by `(origin, seq)`: `seq` counts
//! the origin's federated events 1, 2, 3… with no holes. A cursor says, per origin, the
//! last seq held without a gap: `{"mac": 120, "vps": 77}`, or in a query string
//! `?since=mac:120,vps:77`. Merging is set union by `(origin, seq)`: receiving an event
//! twice, in any order, or from two peers, gives the same state. A world serves its own
//! events and those it received, never an event to its origin, and only what lies beyond
//! the asker's cursor; since every world asks with what it holds, an event crosses each
//! link about once and never circles.
//!
//! `GET /bridge/state` (no cursor) is a snapshot: presence, the first page of events,
//! the whole trust map. With `?since=` it is a delta: presence and the events after the
//! cursor. At most 500 events per document; `more: true` means ask again with `next`.
//!
//! ```json
//! {
//!   "protocol": 1,
//!   "world": "mac",
//!   "presence": {
//!     "epoch": 1764612000000, "seq": 812,
//!     "characters": [{"user_id": "alice", "username": "Alice", "room": "The Bridge"}]
//!   },
//!   "events": [
//!     {"origin": "mac", "seq": 121, "kind": "say", "room": "The Bridge",
//!      "user_id": "alice", "username": "Alice", "message": "hello vps",
//!      "timestamp": "2026-12-01T18:00:00.000Z"},
//!     {"origin": "vps", "seq": 78, "kind": "event", "room": "The Forge",
//!      "event": "fire", "message": "The forge flares.",
//!      "timestamp": "2026-12-01T18:00:01.000Z"},
//!     {"origin": "mac", "seq": 122, "kind": "trust", "timestamp": "2026-12-01T18:00:02.000Z",
//!      "data": {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000}}
//!   ],
//!   "next": {"mac": 122, "vps": 78},
//!   "more": false,
//!   "have": {"bezalel": 40, "mac": 122, "vps": 78},
//!   "trust": [
//!     {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000,
//!      "origin": "mac", "seq": 122}
//!   ]
//! }
//! ```
//!
//! `presence.epoch` is when the world's process started and `presence.seq` its event
//! counter: a newer `(epoch, seq)` replaces an older report, never the reverse. `have` is
//! what the sender holds (a pusher sends it only what lies beyond). `pruned` (absent
//! here) says, per origin, up to which seq old events are no longer kept; a receiver
//! counts those as seen. `trust` comes only in a snapshot.
//!
//! `POST /bridge/sync`: the body is the same document, made for that peer (events beyond
//! the `have` it last told us, never its own). The answer says what was taken:
//!
//! ```json
//! {"protocol": 1, "world": "vps", "accepted": 2, "duplicates": 1, "refused": 0,
//!  "have": {"bezalel": 40, "mac": 122, "vps": 78}}
//! ```
//!
//! (`refusals`, when some were refused: `[{"origin": "mac", "seq": 9, "error": "…"}]`.)
//!
//! **Trust** is a map subject → `{score, updated_at, origin, seq}`; a subject is a
//! character (`bob@vps`) or a world (`vps`). The change with the latest
//! `(updated_at, origin, seq)` wins, in every world alike; `updated_at` is epoch ms.
//!
//! **Travel** (`POST /bridge/travel` between peers, with the pair's token) moves a
//! character exactly once. The origin offers; the destination promises and answers; the
//! origin, and only it, decides: it removes the character and commits, or aborts.
//!
//! ```json
//! {"type": "offer", "travel_id": "mac-1764612003000-1", "from": "mac", "to": "vps",
//!  "user_id": "alice", "username": "Alice", "room": "The Bridge",
//!  "history": [{"role": "user", "content": "take me to vps"}],
//!  "trust": [{"subject": "alice@mac", "score": 0.9, "updated_at": 1764612000000,
//!             "origin": "mac", "seq": 100}]}
//! {"type": "accepted", "travel_id": "mac-1764612003000-1", "duplicate": false}
//! {"type": "refused", "travel_id": "mac-1764612003000-1", "reason": "alice is already in vps"}
//! {"type": "commit", "travel_id": "mac-1764612003000-1", "from": "mac", "to": "vps", "…": "the offer again"}
//! {"type": "abort", "travel_id": "mac-1764612003000-1"}
//! {"type": "done", "travel_id": "mac-1764612003000-1"}
//! ```
//!
//! If the destination is offline or does not accept in time, the traveller is told
//! "world vps is offline" and stays. After a crash of either bridge at any step,
//! recovery settles every travel with the character in exactly one world.

pub mod merge;
pub mod portal;
pub mod presence;
pub mod travel;
pub mod trust;
pub mod wire;
