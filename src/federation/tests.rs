//! The federation core as a whole: documents between worlds, and the properties the
//! issue asks for: any order, any copies, any road (directly or through another world)
//! gives the same state; trust converges; paging never loses or repeats an event; a
//! full mesh settles with no echo and no traffic once everyone holds everything.

use super::*;
use crate::config::PeerConfig;
use crate::world::room::EventKind;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeSet;
use wire::PresenceEntry;

const ORIGINS: [&str; 3] = ["mac", "vps", "bezalel"];
const SUBJECTS: [&str; 3] = ["alice@mac", "bob@vps", "vps"];

/// A world's key in these tests: fixed, from its name.
pub(crate) fn test_key(world: &str) -> sign::WorldKey {
    let mut seed = [0u8; 32];
    for (i, b) in world.bytes().enumerate().take(32) {
        seed[i] = b;
    }
    sign::WorldKey::from_seed(seed)
}

/// `ev` signed by its origin's test key.
pub(crate) fn signed(mut ev: FedEvent) -> FedEvent {
    accept::sign_event(&test_key(&ev.origin), &mut ev).expect("signs");
    ev
}

/// A world of the three, each peer's key configured. Its clock bound is wide: these
/// tests are about merging (the rules of `accept` have their own).
fn fed(world: &str) -> Federation {
    fed_with(world, true)
}

fn fed_with(world: &str, keys: bool) -> Federation {
    let peers = ORIGINS
        .iter()
        .filter(|w| **w != world)
        .map(|w| PeerConfig {
            world: w.to_string(),
            url: format!("http://{w}.test:4004/"),
            token: format!("secret-{w}"),
            public_key: if keys {
                test_key(w).public().to_string()
            } else {
                String::new()
            },
        })
        .collect();
    // The worlds of the property tests, known by key (not peers).
    let worlds = ["a", "b", "c", "feeder"]
        .iter()
        .filter(|w| keys && **w != world)
        .map(|w| crate::config::WorldConfig {
            world: w.to_string(),
            public_key: test_key(w).public().to_string(),
        })
        .collect();
    let cfg = FederationConfig {
        sync_interval_s: 5,
        portal_rooms: vec!["Gate".into()],
        peers,
        worlds,
        max_clock_skew_s: 1 << 40,
        ..FederationConfig::default()
    };
    let mut f = Federation::new(world, &cfg, 1_000).expect("valid config");
    f.set_key(test_key(world));
    f
}

fn presence(f: &Federation, seq: u64, names: &[&str]) -> WorldPresence {
    f.presence_report(
        seq,
        names
            .iter()
            .map(|n| PresenceEntry {
                user_id: n.to_lowercase(),
                username: n.to_string(),
                room: "Gate".into(),
            })
            .collect(),
    )
}

/// A document from `from` carrying `events` (as a feeder, not a real world's page).
pub(crate) fn doc(from: &str, events: Vec<FedEvent>) -> Delta {
    let mut presence = WorldPresence::default();
    accept::sign_presence(&test_key(from), from, &mut presence).expect("signs");
    Delta {
        protocol: PROTOCOL,
        world: from.into(),
        presence,
        events,
        next: Cursor::default(),
        more: false,
        have: Cursor::default(),
        pruned: Cursor::default(),
        trust: Vec::new(),
    }
}

/// A say in `f`'s portal room "Gate", federated and made durable (so it is served).
fn stored_say(f: &mut Federation, text: &str) -> FedEvent {
    let world = f.world().to_string();
    let ev = f
        .local_event(
            &local(EventKind::Say, &world, "Gate", text),
            true,
            Scope::World,
        )
        .expect("federates");
    f.stored(ev.seq);
    ev
}

fn local(kind: EventKind, world: &str, room: &str, text: &str) -> Event {
    Event {
        kind,
        event: if kind == EventKind::Event {
            "fire"
        } else {
            "message"
        }
        .into(),
        user_id: "alice".into(),
        username: "Alice".into(),
        room: room.into(),
        message: Some(text.into()),
        timestamp: "2026-12-01T18:00:00.000Z".into(),
        seq: 1,
        origin: world.into(),
        ts_ms: 0,
    }
}

// ---------------------------------------------------------------------------
// Documents between two worlds
// ---------------------------------------------------------------------------

#[test]
fn a_portal_say_reaches_the_peer_as_alice_at_mac_and_only_once_stored() {
    let mut mac = fed("mac");
    let mut vps = fed("vps");
    let say = local(EventKind::Say, "mac", "Gate", "hello vps");
    let ev = mac
        .local_event(&say, true, Scope::World)
        .expect("a portal say federates");
    assert_eq!((ev.origin.as_str(), ev.seq), ("mac", 1));
    assert!(mac
        .local_event(
            &local(EventKind::Say, "mac", "Gate", "x"),
            false,
            Scope::World
        )
        .is_none());

    let early = mac.delta(
        Some("vps"),
        Some(&vps.log.have()),
        100,
        presence(&mac, 3, &["Alice"]),
    );
    assert!(early.events.is_empty(), "not served before it is stored");
    mac.stored(ev.seq);
    let d = mac.delta(
        Some("vps"),
        Some(&vps.log.have()),
        100,
        presence(&mac, 3, &["Alice"]),
    );
    assert_eq!(d.events, vec![ev.clone()]);
    assert!(d.trust.is_empty(), "a delta, not a snapshot");

    let applied = vps.apply("mac", &d, 2_000).expect("merges");
    assert_eq!(applied.accepted, vec![ev.clone()]);
    assert_eq!(applied.rows(), vec![FedRow::Event(ev.clone())]);
    let none = |_: &str| None;
    let shown = vps.shown(&applied.accepted[0], &["Gate".into()], &none);
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (shown[0].room.as_str(), shown[0].username.as_str()),
        ("Gate", "Alice@mac")
    );
    let chars = vps.presence.characters(2_000);
    assert_eq!(chars.len(), 1);
    assert_eq!(
        (chars[0].world, chars[0].entry.username.as_str()),
        ("mac", "Alice")
    );

    let again = vps.apply("mac", &d, 2_500).expect("merges");
    assert!(again.accepted.is_empty());
    assert_eq!(again.duplicates, 1);
    let answer = vps.sync_answer(&again);
    assert_eq!((answer.accepted, answer.duplicates), (0, 1));
    assert_eq!(answer.have.get("mac"), 1);
}

#[test]
fn a_document_is_refused_whole_when_it_lies_about_its_sender() {
    let mac = fed("mac");
    let mut vps = fed("vps");
    let d = mac.delta(Some("vps"), None, 10, presence(&mac, 1, &[]));
    let err = vps.apply("bezalel", &d, 0).unwrap_err();
    assert!(err.to_string().contains("says it is from mac"), "{err}");
    let mut newer = d.clone();
    newer.protocol = PROTOCOL + 1;
    assert!(vps.apply("mac", &newer, 0).is_err());
    let mut flood = d;
    flood.events = (1..=PAGE_MAX as u64 + 1)
        .map(|s| merge::tests::ev("mac", s))
        .collect();
    assert!(vps.apply("mac", &flood, 0).is_err(), "more than a page");
}

#[test]
fn our_own_events_are_never_taken_from_a_peer_and_bad_ones_are_listed() {
    let mut mac = fed("mac");
    let mut bad = merge::tests::ev("vps", 2);
    bad.timestamp = "soon".into();
    let d = doc(
        "vps",
        vec![
            merge::tests::ev("mac", 1),
            bad,
            signed(merge::tests::ev("vps", 1)),
        ],
    );
    let applied = mac.apply("vps", &d, 0).expect("merges");
    assert_eq!(applied.accepted.len(), 1);
    assert_eq!(applied.refused.len(), 2);
    assert_eq!(applied.refused[0].reason, "own_origin");
    assert!(applied.refused[1].error.contains("not RFC 3339"));
    let answer = mac.sync_answer(&applied);
    assert_eq!(
        answer.refused,
        BTreeMap::from([("malformed".to_string(), 1), ("own_origin".to_string(), 1)])
    );
    assert_eq!(answer.refusals.len(), 2);
}

#[test]
fn a_snapshot_carries_trust_and_a_trust_change_travels_as_an_event() {
    let mut mac = fed("mac");
    let mut vps = fed("vps");
    let ev = mac.set_trust("bob@vps", 0.8, 5_000).expect("sets");
    assert_eq!(ev.kind, Kind::Trust);
    mac.stored(ev.seq);
    assert_eq!(mac.trust.get("bob@vps").map(|t| t.score), Some(0.8));
    assert!(mac.set_trust("bob@vps", f64::NAN, 5_000).is_err());

    let snap = mac.delta(Some("vps"), None, 10, presence(&mac, 1, &[]));
    assert_eq!(snap.trust.len(), 1);
    let applied = vps.apply("mac", &snap, 6_000).expect("merges");
    assert_eq!(
        applied.trust.len(),
        1,
        "the event set it; the map entry is no news"
    );
    assert_eq!(vps.trust.get("bob@vps"), mac.trust.get("bob@vps"));

    // vps's clock is behind: its later change still wins, everywhere.
    let ev2 = vps.set_trust("bob@vps", 0.1, 1_000).expect("sets");
    vps.stored(ev2.seq);
    let d = vps.delta(
        Some("mac"),
        Some(&mac.log.have()),
        10,
        presence(&vps, 1, &[]),
    );
    mac.apply("vps", &d, 7_000).expect("merges");
    assert_eq!(mac.trust.get("bob@vps").map(|t| t.score), Some(0.1));
    assert_eq!(mac.trust.entries(), vps.trust.entries());
}

#[test]
fn a_push_sends_only_what_the_peer_lacks() {
    let mut mac = fed("mac");
    let mut vps = fed("vps");
    for i in 0..3 {
        stored_say(&mut mac, &format!("m{i}"));
    }
    let first = mac.push_body("vps", 100, presence(&mac, 1, &[]));
    assert!(
        first.events.is_empty(),
        "vps has not said what it holds yet"
    );
    vps.apply("mac", &first, 0).expect("merges");
    // vps pulled the first event meanwhile, then answers a pull that tells mac its cursor.
    let one = mac.delta(
        Some("vps"),
        Some(&Cursor::default()),
        1,
        presence(&mac, 1, &[]),
    );
    vps.apply("mac", &one, 0).expect("merges");
    let ans = vps.sync_answer(&Applied::default());
    mac.on_sync_answer("vps", &ans, 0).expect("answer from vps");
    let push = mac.push_body("vps", 100, presence(&mac, 2, &[]));
    assert_eq!(
        push.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let applied = vps.apply("mac", &push, 0).expect("merges");
    assert_eq!((applied.accepted.len(), applied.duplicates), (2, 0));
    assert!(mac
        .on_sync_answer("bezalel", &vps.sync_answer(&applied), 0)
        .is_err());
}

#[test]
fn peers_come_from_config_and_tokens_match_exactly() {
    let mac = fed("mac");
    assert_eq!(mac.peers().len(), 2);
    assert_eq!(
        mac.peer("vps").map(|p| p.url.as_str()),
        Some("http://vps.test:4004")
    );
    assert_eq!(
        mac.peer_by_token("secret-vps").map(|p| p.world.as_str()),
        Some("vps")
    );
    assert!(mac.peer_by_token("secret-vp").is_none());
    assert!(mac.peer_by_token("").is_none());
    let open = Peer {
        world: "x".into(),
        url: String::new(),
        token: String::new(),
    };
    assert!(!open.token_matches(""), "no token: nobody gets in");

    let me = PeerConfig {
        world: "mac".into(),
        url: "http://x".into(),
        token: "t".into(),
        public_key: String::new(),
    };
    let cfg = FederationConfig {
        peers: vec![me],
        ..FederationConfig::default()
    };
    assert!(Federation::new("mac", &cfg, 0).is_err(), "itself as a peer");
    let twice = FederationConfig {
        peers: vec![fed_peer("vps"), fed_peer("vps")],
        ..FederationConfig::default()
    };
    assert!(Federation::new("mac", &twice, 0).is_err());
    assert!(Federation::new("m:c", &FederationConfig::default(), 0).is_err());
}

fn fed_peer(world: &str) -> PeerConfig {
    PeerConfig {
        world: world.into(),
        url: "http://x".into(),
        token: "t".into(),
        public_key: String::new(),
    }
}

#[test]
fn restore_goes_on_from_the_stored_seq() {
    let mut mac = fed("mac");
    let a = mac
        .local_event(
            &local(EventKind::Say, "mac", "Gate", "a"),
            true,
            Scope::World,
        )
        .expect("federates");
    let b = mac
        .local_event(
            &local(EventKind::Event, "mac", "The Forge", "flare"),
            false,
            Scope::Federation,
        )
        .expect("federates");
    let t = mac.set_trust("vps", 0.5, 10).expect("sets");
    let mut again = fed("mac");
    again.restore(
        vec![],
        vec![a, b, t.clone()],
        mac.trust.entries(),
        vec![],
        vec![],
    );
    assert_eq!(again.last_seq(), 3);
    assert_eq!(again.trust.get("vps").map(|e| e.seq), Some(t.seq));
    let c = again
        .local_event(
            &local(EventKind::Say, "mac", "Gate", "c"),
            true,
            Scope::World,
        )
        .expect("federates");
    assert_eq!(c.seq, 4);
}

#[test]
fn pruning_keeps_events_keep_per_origin_tells_peers_and_survives_a_restore() {
    let cfg = |world: &str| FederationConfig {
        sync_interval_s: 5,
        events_keep: 3,
        portal_rooms: vec!["Gate".into()],
        peers: vec![PeerConfig {
            world: if world == "mac" { "vps" } else { "mac" }.into(),
            url: "http://x".into(),
            token: "t".into(),
            public_key: String::new(),
        }],
        max_clock_skew_s: 1 << 40,
        ..FederationConfig::default()
    };
    let mut mac = Federation::new("mac", &cfg("mac"), 1).unwrap();
    let mut stored = Vec::new();
    for i in 0..10 {
        stored.push(stored_say(&mut mac, &format!("m{i}")));
    }
    let moved = mac.prune();
    let mark = Pruned {
        origin: "mac".into(),
        upto: 7,
    };
    assert_eq!(moved, vec![mark.clone()]);
    assert!(mac.prune().is_empty(), "nothing more until more arrive");
    assert_eq!(mac.log.len(), 3);

    // A peer that never saw any: told 1..=7 are gone, given 8..=10.
    let snap = mac.delta(Some("vps"), None, 100, presence(&mac, 1, &[]));
    assert_eq!(snap.pruned.get("mac"), 7);
    let seqs: Vec<u64> = snap.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
    let mut vps = Federation::new("vps", &cfg("vps"), 1).unwrap();
    let applied = vps.apply("mac", &snap, 5).unwrap();
    assert_eq!(applied.pruned, vec![mark.clone()]);
    assert_eq!(applied.rows()[0], FedRow::Pruned(mark.clone()));
    assert_eq!(vps.log.mark("mac"), 10);
    // The same document again: nothing new to store.
    let again = vps.apply("mac", &snap, 6).unwrap();
    assert!(again.rows().is_empty(), "{:?}", again.rows());

    // Restored from what the store kept (the mark and the kept events): the same log,
    // and the next own event is 11.
    let mut back = Federation::new("mac", &cfg("mac"), 2).unwrap();
    back.restore(vec![mark], stored[7..].to_vec(), vec![], vec![], vec![]);
    assert_eq!(back.log.have(), mac.log.have());
    assert_eq!(back.log.len(), 3);
    let next = back
        .local_event(
            &local(EventKind::Say, "mac", "Gate", "later"),
            true,
            Scope::World,
        )
        .unwrap();
    assert_eq!(next.seq, 11);
}

#[test]
fn a_faulty_peer_cannot_make_us_skip_or_hoard_events() {
    let mut mac = fed("mac");
    let far = signed(merge::tests::ev("vps", AHEAD_MAX + 2));
    let applied = mac
        .apply(
            "vps",
            &doc("vps", vec![signed(merge::tests::ev("vps", 2)), far]),
            0,
        )
        .expect("merges");
    assert_eq!(applied.accepted.len(), 1, "a gap of one is kept");
    assert!(
        applied.refused[0].error.contains("ahead"),
        "{:?}",
        applied.refused
    );
    assert_eq!(mac.log.mark("vps"), 0);

    let mut lying = doc("vps", vec![]);
    lying.pruned.set("bezalel", 1_000);
    lying.have.set("bezalel", 10);
    let err = mac.apply("vps", &lying, 0).unwrap_err();
    assert!(err.to_string().contains("beyond what it holds"), "{err}");
    assert_eq!(mac.log.mark("bezalel"), 0);

    let mut bad_trust = doc("vps", vec![]);
    bad_trust.trust.push(TrustEntry {
        subject: String::new(),
        score: 1.0,
        updated_at: 1,
        origin: "vps".into(),
        seq: 3,
        timestamp: None,
        sig: None,
    });
    let applied = mac.apply("vps", &bad_trust, 0).expect("merges");
    assert_eq!(applied.refused.len(), 1);
    assert!(mac.trust.is_empty());
}

#[test]
fn alice_travels_from_mac_to_vps_with_her_trust() {
    let mut mac = fed("mac");
    let mut vps = fed("vps");
    let t = mac.set_trust("alice@mac", 0.9, 100).expect("sets");
    mac.stored(t.seq);

    // vps has never been heard from: tried. Then silent for 3 intervals: refused.
    let steps = mac
        .begin_travel("alice", "Alice", Some("Gate"), vec![], "vps", false, 1_000)
        .expect("an unknown peer is tried");
    let offer = match &steps[..] {
        [travel::Step::Save(_), travel::Step::Send { msg, .. }] => msg.clone(),
        other => panic!("unexpected steps {other:?}"),
    };
    let d = vps.delta(Some("mac"), None, 10, presence(&vps, 1, &[]));
    mac.apply("vps", &d, 1_000).expect("merges");
    let err = mac
        .begin_travel("bob", "Bob", None, vec![], "vps", false, 1_000 + 15_001)
        .unwrap_err();
    assert_eq!(err.to_string(), "world vps is offline");
    // Heard from a moment ago, but the last sync could not reach it: refused at once.
    let err = mac
        .begin_travel("bob", "Bob", None, vec![], "vps", true, 1_001)
        .unwrap_err();
    assert_eq!(err.to_string(), "world vps is offline");
    assert_eq!(
        mac.begin_travel("bob", "Bob", None, vec![], "atlantis", false, 1_000)
            .unwrap_err()
            .to_string(),
        "there is no world called atlantis to travel to"
    );

    let here = travel::Here {
        room: "Gate",
        occupied: false,
    };
    let mut offer = offer;
    mac.sign_travel(&mut offer);
    let raw = serde_json::to_value(&offer).unwrap();
    let (landings, won) = vps.on_travel("mac", &offer, &raw, here, 1_100);
    assert!(won.is_empty(), "a promise brings nothing yet");
    let reply = match landings.last() {
        Some(travel::Landing::Reply(r)) => r.clone(),
        other => panic!("no reply: {other:?}"),
    };
    let steps = mac.departures.on_reply(&reply);
    let commit = steps
        .iter()
        .find_map(|s| match s {
            travel::Step::Send { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .expect("a commit");
    let mut commit = commit;
    mac.sign_travel(&mut commit);
    let raw = serde_json::to_value(&commit).unwrap();
    let (landings, won) = vps.on_travel("mac", &commit, &raw, here, 1_200);
    assert!(landings
        .iter()
        .any(|l| matches!(l, travel::Landing::Place { room, .. } if room == "Gate")));
    assert_eq!(won.len(), 1);
    assert_eq!(vps.trust.get("alice@mac").map(|e| e.score), Some(0.9));
    let done = match landings.last() {
        Some(travel::Landing::Reply(r)) => r.clone(),
        other => panic!("no reply: {other:?}"),
    };
    assert_eq!(
        mac.departures.on_reply(&done),
        vec![travel::Step::Forget(offer.travel_id().to_string())]
    );
    assert!(mac.departures.is_empty());
}

/// The shapes docs/federation.md documents parse as the types say.
#[test]
fn the_documented_json_shapes_parse() {
    let state = r#"{
      "protocol": 1,
      "world": "mac",
      "presence": {
        "epoch": 1764612000000, "seq": 812,
        "characters": [{"user_id": "alice", "username": "Alice", "room": "The Bridge"}]
      },
      "events": [
        {"origin": "mac", "seq": 121, "kind": "say", "room": "The Bridge",
         "user_id": "alice", "username": "Alice", "message": "hello vps",
         "timestamp": "2026-12-01T18:00:00.000Z"},
        {"origin": "vps", "seq": 78, "kind": "event", "room": "The Forge",
         "event": "fire", "message": "The forge flares.",
         "timestamp": "2026-12-01T18:00:01.000Z"},
        {"origin": "mac", "seq": 122, "kind": "trust", "timestamp": "2026-12-01T18:00:02.000Z",
         "data": {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000}}
      ],
      "next": {"mac": 122, "vps": 78},
      "more": false,
      "have": {"bezalel": 40, "mac": 122, "vps": 78},
      "trust": [
        {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000,
         "origin": "mac", "seq": 122}
      ]
    }"#;
    let d: Delta = serde_json::from_str(state).expect("the state example parses");
    assert_eq!(d.check(), Ok(()));
    assert!(d.events.iter().all(|e| e.check().is_ok()));
    // The documented example carries no signatures: a peer without public_key.
    let mut vps = fed_with("vps", false);
    let applied = vps.apply("mac", &d, 0).expect("merges");
    assert_eq!(
        applied.accepted.len(),
        2,
        "the vps event is refused: it is vps's own"
    );

    let answer = r#"{"protocol": 1, "world": "vps", "accepted": 2, "duplicates": 1, "refused": 0,
      "have": {"bezalel": 40, "mac": 122, "vps": 78}}"#;
    let a: SyncAnswer = serde_json::from_str(answer).expect("the sync answer parses");
    assert_eq!(a.have.get("mac"), 122);

    for line in [
        r#"{"type": "offer", "travel_id": "mac-1764612003000-1", "from": "mac", "to": "vps",
            "user_id": "alice", "username": "Alice", "room": "The Bridge",
            "history": [{"role": "user", "content": "take me to vps"}],
            "trust": [{"subject": "alice@mac", "score": 0.9, "updated_at": 1764612000000,
                       "origin": "mac", "seq": 100}]}"#,
        r#"{"type": "abort", "travel_id": "mac-1764612003000-1"}"#,
    ] {
        let m: wire::TravelMsg = serde_json::from_str(line).expect("a travel message parses");
        assert_eq!(m.travel_id(), "mac-1764612003000-1");
    }
    for line in [
        r#"{"type": "accepted", "travel_id": "mac-1764612003000-1", "duplicate": false}"#,
        r#"{"type": "refused", "travel_id": "mac-1764612003000-1", "reason": "alice is already in vps"}"#,
        r#"{"type": "done", "travel_id": "mac-1764612003000-1"}"#,
    ] {
        let r: wire::TravelReply = serde_json::from_str(line).expect("a travel reply parses");
        assert_eq!(r.travel_id(), "mac-1764612003000-1");
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// What a generated event is, before it gets its origin's next seq.
#[derive(Debug, Clone)]
enum Gen {
    Say(u8),
    Fire,
    Trust { subject: usize, score: i8, at: u64 },
}

fn gen() -> impl Strategy<Value = (usize, Gen)> {
    let g = prop_oneof![
        any::<u8>().prop_map(Gen::Say),
        Just(Gen::Fire),
        (0..SUBJECTS.len(), any::<i8>(), 0u64..4).prop_map(|(subject, score, at)| Gen::Trust {
            subject,
            score,
            at
        }),
    ];
    (0..ORIGINS.len(), g)
}

fn materialise(origin: &str, seq: u64, g: &Gen) -> FedEvent {
    let mut e = merge::tests::ev(origin, seq);
    match g {
        Gen::Say(n) => e.message = Some(format!("say {n}")),
        Gen::Fire => {
            e.kind = Kind::Event;
            e.event = Some("fire".into());
        }
        Gen::Trust { subject, score, at } => {
            e.kind = Kind::Trust;
            e.room = None;
            e.user_id = None;
            e.username = None;
            e.message = None;
            e.data = Some(serde_json::json!({
                "subject": SUBJECTS[*subject],
                "score": f64::from(*score) / 128.0,
                "updated_at": at,
            }));
        }
    }
    signed(e)
}

/// Events of three origins, each origin's seqs dense from 1.
fn universe() -> impl Strategy<Value = Vec<FedEvent>> {
    proptest::collection::vec(gen(), 0..40).prop_map(|gens| {
        let mut next = [0u64; 3];
        gens.iter()
            .map(|(o, g)| {
                next[*o] += 1;
                materialise(ORIGINS[*o], next[*o], g)
            })
            .collect()
    })
}

/// The events, some of them twice or more, in a random order.
fn delivery(events: &[FedEvent]) -> impl Strategy<Value = Vec<FedEvent>> {
    let events = events.to_vec();
    proptest::collection::vec(any::<Index>(), 0..=events.len()).prop_flat_map(move |dups| {
        let mut all = events.clone();
        if !events.is_empty() {
            all.extend(dups.iter().map(|i| events[i.index(events.len())].clone()));
        }
        Just(all).prop_shuffle()
    })
}

/// Feed `events` to `to` in documents of `chunk` events from a feeder world.
fn feed(to: &mut Federation, events: &[FedEvent], chunk: usize) {
    for part in events.chunks(chunk.max(1)) {
        to.apply("feeder", &doc("feeder", part.to_vec()), 0)
            .expect("a feeder document merges");
    }
}

/// Pull one page from `from` into `to`, asking with what `to` holds.
fn pull(to: &mut Federation, from: &Federation, limit: usize) -> (usize, bool) {
    let d = from.delta(
        Some(to.world()),
        Some(&to.log.have()),
        limit,
        WorldPresence::default(),
    );
    assert!(
        d.events.iter().all(|e| e.origin != to.world()),
        "{} was sent its own events",
        to.world()
    );
    assert!(d.events.len() <= limit.max(1));
    let applied = to.apply(from.world(), &d, 0).expect("a page merges");
    (applied.accepted.len() + applied.duplicates as usize, d.more)
}

fn same_state(a: &Federation, b: &Federation) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.log, &b.log);
    prop_assert_eq!(a.log.have(), b.log.have());
    prop_assert_eq!(a.trust.entries(), b.trust.entries());
    Ok(())
}

fn trust_winners(events: &[FedEvent]) -> Vec<TrustEntry> {
    let mut best: BTreeMap<String, TrustEntry> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Trust) {
        let t = Trust::entry_of(e).expect("generated trust is valid");
        let k = |t: &TrustEntry| (t.updated_at, t.origin.clone(), t.seq);
        if best.get(&t.subject).is_none_or(|held| k(held) < k(&t)) {
            best.insert(t.subject.clone(), t);
        }
    }
    best.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any permutation and duplication, fed in any chunks, directly or through an
    /// intermediate world that is paged from while it is still being fed, converges to
    /// one state: every event once, full marks, the trust winners.
    #[test]
    fn merge_converges_whatever_the_order_copies_and_road(
        (events, first, second, direct) in universe().prop_flat_map(|u| {
            (Just(u.clone()), delivery(&u), delivery(&u), delivery(&u))
        }),
        chunk in 1usize..6,
        limits in proptest::collection::vec(1usize..6, 1..20),
        pulls in proptest::collection::vec(any::<bool>(), 0..80),
        take_direct in proptest::collection::vec(any::<bool>(), 0..80),
    ) {
        // a: straight from the feeder.
        let mut a = fed("a");
        feed(&mut a, &first, chunk);
        prop_assert_eq!(a.log.len(), events.len());
        for o in ORIGINS {
            let n = events.iter().filter(|e| e.origin == o).count() as u64;
            prop_assert_eq!(a.log.mark(o), n);
        }
        prop_assert_eq!(a.trust.entries(), trust_winners(&events));

        // c is fed one event at a time in another order; b pulls pages from c between
        // c's deliveries, and also gets some events directly.
        let mut c = fed("c");
        let mut b = fed("b");
        let mut direct_left = direct.iter();
        for (i, ev) in second.iter().enumerate() {
            feed(&mut c, std::slice::from_ref(ev), 1);
            if pulls.get(i).copied().unwrap_or(false) {
                pull(&mut b, &c, limits[i % limits.len()]);
            }
            if take_direct.get(i).copied().unwrap_or(false) {
                if let Some(d) = direct_left.next() {
                    feed(&mut b, std::slice::from_ref(d), 1);
                }
            }
        }
        for round in 0.. {
            prop_assert!(round <= events.len() + 1, "paging does not end");
            let (_, more) = pull(&mut b, &c, limits[round % limits.len()]);
            if !more {
                break;
            }
        }
        same_state(&a, &c)?;
        same_state(&a, &b)?;
        // Once b holds everything, a round moves nothing.
        let (moved, more) = pull(&mut b, &c, 5);
        prop_assert_eq!((moved, more), (0, false));
    }

    /// Trust alone: the winners are the same whatever order and copies the changes come in.
    #[test]
    fn trust_converges_regardless_of_order(
        (events, order) in universe().prop_flat_map(|u| (Just(u.clone()), delivery(&u))),
    ) {
        let mut t = Trust::new();
        for e in order.iter().filter(|e| e.kind == Kind::Trust) {
            t.apply(Trust::entry_of(e).expect("valid"));
        }
        prop_assert_eq!(t.entries(), trust_winners(&events));
    }

    /// Paging from any cursor, with any bound, with gaps and pruned history: every event
    /// that should come comes exactly once, in bounded pages, and the paging ends.
    #[test]
    fn delta_paging_never_loses_or_repeats_an_event(
        held in proptest::collection::btree_set((0..ORIGINS.len(), 1u64..25), 0..60),
        start in proptest::collection::vec(0u64..25, 3),
        asker in proptest::option::of(0..ORIGINS.len()),
        keep in proptest::option::of(0usize..8),
        limit in 1usize..8,
        max_bytes in proptest::option::of(1usize..600),
    ) {
        let mut log = merge::EventLog::new();
        for (o, s) in &held {
            log.insert(merge::tests::ev(ORIGINS[*o], *s));
        }
        if let Some(k) = keep {
            log.prune(k);
        }
        let asker = asker.map(|i| ORIGINS[i]);
        let mut cursor = Cursor::default();
        for (i, o) in ORIGINS.iter().enumerate() {
            cursor.set(o, start[i]);
        }
        let mut expected = BTreeSet::new();
        for e in log.iter() {
            let from = cursor.get(&e.origin);
            if Some(e.origin.as_str()) != asker && e.seq > from && e.seq <= log.mark(&e.origin) {
                expected.insert((e.origin.clone(), e.seq));
            }
        }
        let mut got = Vec::new();
        let mut at = cursor;
        for round in 0.. {
            prop_assert!(round <= held.len() + 3, "paging does not end");
            let page = log.delta_within(&at, asker, limit, max_bytes.unwrap_or(usize::MAX));
            prop_assert!(page.events.len() <= limit);
            if let Some(max) = max_bytes {
                let size: usize = page.events.iter().map(|e| serde_json::to_vec(e).unwrap().len() + 1).sum();
                prop_assert!(page.events.len() <= 1 || size <= max, "{} bytes in a page of {} events", size, page.events.len());
            }
            got.extend(page.events.iter().map(|e| (e.origin.clone(), e.seq)));
            at = page.next;
            if !page.more {
                break;
            }
        }
        let unique: BTreeSet<_> = got.iter().cloned().collect();
        prop_assert_eq!(unique.len(), got.len(), "an event came twice");
        prop_assert_eq!(unique, expected);
        for o in ORIGINS {
            if Some(o) != asker {
                prop_assert!(at.get(o) >= log.mark(o), "the last cursor reaches the mark");
            }
        }
    }
}

/// One step of a three-world full mesh.
#[derive(Debug, Clone)]
enum Mesh {
    Say(usize),
    Trust(usize, usize, i8),
    Store(usize),
    Pull(usize, usize, usize),
    Push(usize, usize, usize),
}

fn mesh_step() -> impl Strategy<Value = Mesh> {
    prop_oneof![
        3 => (0..3usize).prop_map(Mesh::Say),
        1 => (0..3usize, 0..SUBJECTS.len(), any::<i8>()).prop_map(|(w, s, v)| Mesh::Trust(w, s, v)),
        2 => (0..3usize).prop_map(Mesh::Store),
        3 => (0..3usize, 0..3usize, 1usize..4).prop_map(|(a, b, l)| Mesh::Pull(a, b, l)),
        3 => (0..3usize, 0..3usize, 1usize..4).prop_map(|(a, b, l)| Mesh::Push(a, b, l)),
    ]
}

fn push(worlds: &mut [Federation], from: usize, to: usize, limit: usize) -> usize {
    let body = worlds[from].push_body(worlds[to].world(), limit, WorldPresence::default());
    assert!(body.events.iter().all(|e| e.origin != worlds[to].world()));
    let to_world = worlds[to].world().to_string();
    let from_world = worlds[from].world().to_string();
    let applied = worlds[to]
        .apply(&from_world, &body, 0)
        .expect("a push merges");
    let answer = worlds[to].sync_answer(&applied);
    worlds[from]
        .on_sync_answer(&to_world, &answer, 0)
        .expect("the answer is from the peer");
    body.events.len()
}

fn pull_mesh(worlds: &mut [Federation], to: usize, from: usize, limit: usize) -> usize {
    let server = worlds[from].clone();
    pull(&mut worlds[to], &server, limit).0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Three worlds, each a peer of the other two, making events and syncing in any
    /// order by pull and push: no world is ever sent its own events, all settle on one
    /// state, and once settled a full round of pulls and pushes moves nothing (no loop).
    #[test]
    fn a_full_mesh_settles_with_no_echo_and_no_loop(steps in proptest::collection::vec(mesh_step(), 0..60)) {
        let mut worlds: Vec<Federation> = ORIGINS.iter().map(|w| fed(w)).collect();
        let mut now = 1_000u64;
        for step in steps {
            now += 7;
            match step {
                Mesh::Say(w) => {
                    let name = worlds[w].world().to_string();
                    let ev = local(EventKind::Say, &name, "Gate", &format!("at {now}"));
                    worlds[w].local_event(&ev, true, Scope::World);
                }
                Mesh::Trust(w, s, v) => {
                    worlds[w]
                        .set_trust(SUBJECTS[s], f64::from(v) / 128.0, now)
                        .expect("valid trust");
                }
                Mesh::Store(w) => {
                    let upto = worlds[w].last_seq();
                    worlds[w].stored(upto);
                }
                Mesh::Pull(a, b, l) if a != b => {
                    pull_mesh(&mut worlds, a, b, l);
                }
                Mesh::Push(a, b, l) if a != b => {
                    push(&mut worlds, a, b, l);
                }
                Mesh::Pull(..) | Mesh::Push(..) => {}
            }
        }
        for w in worlds.iter_mut() {
            let upto = w.last_seq();
            w.stored(upto);
        }
        let total: u64 = worlds.iter().map(|w| w.last_seq()).sum();
        for round in 0.. {
            prop_assert!(round <= total + 2, "the mesh does not settle");
            let mut moved = 0;
            for a in 0..3 {
                for b in 0..3 {
                    if a != b {
                        moved += pull_mesh(&mut worlds, a, b, 3);
                    }
                }
            }
            if moved == 0 {
                break;
            }
        }
        prop_assert_eq!(worlds[0].log.len() as u64, total);
        same_state(&worlds[0], &worlds[1])?;
        same_state(&worlds[0], &worlds[2])?;
        let mut moved = 0;
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    moved += pull_mesh(&mut worlds, a, b, PAGE_MAX);
                    moved += push(&mut worlds, a, b, PAGE_MAX);
                }
            }
        }
        prop_assert_eq!(moved, 0, "settled worlds still send each other events");
    }
}
