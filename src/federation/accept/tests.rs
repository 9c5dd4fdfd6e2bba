//! Each acceptance rule on its own, then through [`Federation::apply`]: forged origins,
//! invented origins, relays with and without keys, tampering, clocks, scores, and a
//! local trust change that cannot win.

use super::*;
use crate::config::{FederationConfig, PeerConfig, WorldConfig};
use crate::federation::merge::tests::ev;
use crate::federation::tests::{doc, signed, test_key};
use crate::federation::wire::{Cursor, Delta};
use crate::federation::{Federation, TrustRefused};

/// 2026-12-01T18:00:00Z, the time of the test events.
const NOW: u64 = 1_796_148_000_000;

/// `mac`, peering with `vps` (key known) and `bez` (key known unless `keyless`), and
/// knowing `far` by key (not a peer).
fn mac(keyless: &[&str]) -> Federation {
    let peer = |w: &str| PeerConfig {
        world: w.into(),
        url: "http://x".into(),
        token: format!("t-{w}"),
        public_key: if keyless.contains(&w) {
            String::new()
        } else {
            test_key(w).public().to_string()
        },
    };
    let cfg = FederationConfig {
        peers: vec![peer("vps"), peer("bez")],
        worlds: vec![WorldConfig {
            world: "far".into(),
            public_key: test_key("far").public().to_string(),
        }],
        ..FederationConfig::default()
    };
    let mut f = Federation::new("mac", &cfg, NOW).expect("valid config");
    f.set_key(test_key("mac"));
    f
}

fn trust_event(origin: &str, seq: u64, score: f64, updated_at: u64) -> FedEvent {
    let mut e = ev(origin, seq);
    e.kind = Kind::Trust;
    (e.room, e.user_id, e.username, e.message) = (None, None, None, None);
    e.data =
        Some(serde_json::json!({"subject": "alice@mac", "score": score, "updated_at": updated_at}));
    signed(e)
}

fn reason(f: &Federation, from: &str, e: &FedEvent) -> Option<&'static str> {
    f.origins()
        .event(from, e, NOW)
        .err()
        .map(|r| r.reason.as_str())
}

#[test]
fn each_rule_names_its_reason() {
    let f = mac(&[]);
    assert_eq!(reason(&f, "vps", &signed(ev("vps", 1))), None);
    assert_eq!(reason(&f, "vps", &signed(ev("mac", 1))), Some("own_origin"));
    assert_eq!(
        reason(&f, "vps", &signed(ev("atlantis", 1))),
        Some("unknown_origin")
    );
    // Relayed with the origin's signature: taken, from a peer or a configured world.
    assert_eq!(reason(&f, "vps", &signed(ev("bez", 1))), None);
    assert_eq!(reason(&f, "vps", &signed(ev("far", 1))), None);
    // Forged by the relay: signed with its own key, or not at all.
    let mut forged = ev("bez", 1);
    sign_event(&test_key("vps"), &mut forged).unwrap();
    assert_eq!(reason(&f, "vps", &forged), Some("bad_signature"));
    assert_eq!(reason(&f, "vps", &ev("bez", 1)), Some("bad_signature"));
    assert_eq!(reason(&f, "vps", &ev("vps", 1)), Some("bad_signature"));
    let mut bad = signed(ev("vps", 1));
    bad.seq = 0;
    assert_eq!(reason(&f, "vps", &bad), Some("malformed"));
    // Clocks: far ahead refused, a little ahead and long ago fine.
    let mut ahead = ev("vps", 1);
    ahead.timestamp = crate::world::time::rfc3339(NOW + 301_000);
    assert_eq!(
        reason(&f, "vps", &signed(ahead.clone())),
        Some("clock_skew")
    );
    ahead.timestamp = crate::world::time::rfc3339(NOW + 299_000);
    assert_eq!(reason(&f, "vps", &signed(ahead)), None);
    let mut old = ev("vps", 1);
    old.timestamp = "2001-01-01T00:00:00Z".into();
    assert_eq!(reason(&f, "vps", &signed(old)), None);
    // Trust: updated_at bounded like a timestamp, scores in [-1, 1].
    assert_eq!(reason(&f, "vps", &trust_event("vps", 1, -1.0, NOW)), None);
    assert_eq!(
        reason(&f, "vps", &trust_event("vps", 1, 0.5, u64::MAX >> 11)),
        Some("clock_skew")
    );
    assert_eq!(
        reason(&f, "vps", &trust_event("vps", 1, 1.5, NOW)),
        Some("bad_score")
    );
}

#[test]
fn a_keyless_peer_speaks_only_for_itself_and_is_not_relayed() {
    let f = mac(&["bez"]);
    // bez's own events, unsigned: taken from bez.
    assert_eq!(reason(&f, "bez", &ev("bez", 1)), None);
    // Nothing of anyone else from bez, however well signed.
    assert_eq!(
        reason(&f, "bez", &signed(ev("vps", 1))),
        Some("not_relayable")
    );
    // And bez's events only from bez.
    assert_eq!(
        reason(&f, "vps", &signed(ev("bez", 1))),
        Some("not_relayable")
    );
    assert!(!f.origins().relayable("bez"));
    assert!(f.origins().relayable("vps") && f.origins().relayable("mac"));
    assert_eq!(f.origins().keyless_peers().collect::<Vec<_>>(), ["bez"]);
}

#[test]
fn refused_events_are_not_seen_and_the_genuine_ones_still_arrive() {
    let mut f = mac(&[]);
    // vps forges bez's first events.
    let mut forged: Vec<FedEvent> = (1..=3).map(|s| ev("bez", s)).collect();
    for e in &mut forged {
        e.message = Some("forged".into());
        sign_event(&test_key("vps"), e).unwrap();
    }
    let applied = f.apply("vps", &doc("vps", forged), NOW).unwrap();
    assert!(applied.accepted.is_empty());
    let answer = f.sync_answer(&applied);
    assert_eq!(answer.refused.get("bad_signature"), Some(&3));
    assert_eq!(answer.refusals[0].reason, "bad_signature");
    assert_eq!(f.log.mark("bez"), 0, "nothing counted as seen");
    assert_eq!(f.refusals.count("vps", "bad_signature"), 3);
    // The genuine ones, relayed by vps or sent by bez: all taken.
    let genuine: Vec<FedEvent> = (1..=3).map(|s| signed(ev("bez", s))).collect();
    let applied = f.apply("vps", &doc("vps", genuine), NOW).unwrap();
    assert_eq!(applied.accepted.len(), 3);
    assert_eq!(f.log.mark("bez"), 3);
    assert_eq!(
        f.log.get("bez", 1).and_then(|e| e.message.as_deref()),
        Some("bez 1")
    );
}

#[test]
fn invented_origins_add_nothing_held() {
    let mut f = mac(&[]);
    let flood: Vec<FedEvent> = (0..500).map(|i| signed(ev(&format!("w{i}"), 1))).collect();
    let mut d = doc("vps", flood);
    d.have = Cursor((0..500).map(|i| (format!("w{i}"), 1)).collect());
    d.pruned = d.have.clone();
    let applied = f.apply("vps", &d, NOW).unwrap();
    assert_eq!(
        f.sync_answer(&applied).refused.get("unknown_origin"),
        Some(&500)
    );
    assert!(f.log.is_empty());
    assert!(
        f.log.have().is_empty(),
        "no origin added, by events or pruned marks"
    );
}

/// `f` merges an empty document from vps with this presence report.
fn with_presence(f: &mut Federation, presence: WorldPresence) -> crate::federation::Applied {
    let d = Delta {
        presence,
        ..doc("vps", vec![])
    };
    f.apply("vps", &d, NOW).unwrap()
}

#[test]
fn presence_must_be_signed_by_its_world_and_not_from_the_future() {
    let mut f = mac(&[]);
    let mut d = doc("vps", vec![]);
    d.presence.seq = 9; // changed after signing
    let applied = f.apply("vps", &d, NOW).unwrap();
    assert!(applied.presence.is_none());
    assert_eq!(applied.refused[0].reason, "bad_signature");
    // Signed by another world: refused too.
    let mut p = WorldPresence::default();
    sign_presence(&test_key("bez"), "bez", &mut p).unwrap();
    let applied = with_presence(&mut f, p);
    assert_eq!(applied.refused[0].reason, "bad_signature");
    let mut p = WorldPresence {
        epoch: NOW + 3_600_000,
        ..WorldPresence::default()
    };
    sign_presence(&test_key("vps"), "vps", &mut p).unwrap();
    let applied = with_presence(&mut f, p);
    assert_eq!(applied.refused[0].reason, "clock_skew");
    let applied = f.apply("vps", &doc("vps", vec![]), NOW).unwrap();
    assert!(applied.presence.is_some() && applied.refused.is_empty());
}

#[test]
fn snapshot_trust_entries_carry_their_signature() {
    let mut f = mac(&[]);
    let good =
        crate::federation::trust::Trust::entry_of(&trust_event("bez", 4, 0.25, NOW)).unwrap();
    let mut tampered = good.clone();
    tampered.score = 1.0;
    let mut unsigned = good.clone();
    (unsigned.timestamp, unsigned.sig) = (None, None);
    let mut own = good.clone();
    own.origin = "mac".into();
    let mut d = doc("vps", vec![]);
    d.trust = vec![good.clone(), tampered, unsigned, own];
    let applied = f.apply("vps", &d, NOW).unwrap();
    assert_eq!(applied.trust, vec![good]);
    let reasons: Vec<&str> = applied.refused.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["bad_signature", "bad_signature"],
        "our own entry is skipped"
    );
}

#[test]
fn a_local_trust_change_that_cannot_win_is_refused_with_the_entry_in_force() {
    let mut f = mac(&[]);
    // An entry in force from before the clock bound (stored by an older bridge).
    let held = TrustEntry {
        subject: "alice@mac".into(),
        score: 0.9,
        updated_at: u64::MAX,
        origin: "vps".into(),
        seq: 1,
        timestamp: None,
        sig: None,
    };
    f.trust.apply(held.clone());
    match f.set_trust("alice@mac", 0.1, NOW) {
        Err(TrustRefused::Superseded(t)) => assert_eq!(t, held),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(f.trust.get("alice@mac"), Some(&held));
    assert!(matches!(
        f.set_trust("alice@mac", 2.0, NOW),
        Err(TrustRefused::Invalid(_))
    ));
    // Within the bound, a later change wins as before.
    let ev = f.set_trust("bob@vps", 0.3, NOW).unwrap();
    assert!(ev.sig.is_some(), "signed by this world");
    verify_event(&test_key("mac").public(), &ev).unwrap();
}

#[test]
fn own_events_are_signed_again_with_a_new_key() {
    let mut f = mac(&[]);
    let first = f.set_trust("bob@vps", 0.3, NOW).unwrap();
    f.stored(first.seq);
    f.set_trust("bob@vps", 0.4, NOW + 1).unwrap(); // not yet durable
    let rotated = test_key("mac-2");
    f.set_key(rotated.clone());
    let served = f.log.get("mac", first.seq).expect("held");
    verify_event(&rotated.public(), served).unwrap();
    assert!(verify_event(&test_key("mac").public(), served).is_err());
    f.stored(first.seq + 1);
    verify_event(
        &rotated.public(),
        f.log.get("mac", first.seq + 1).expect("held"),
    )
    .unwrap();
}

#[test]
fn travel_messages_are_checked_against_the_senders_key() {
    let f = mac(&["bez"]);
    let mut msg = TravelMsg::Abort {
        travel_id: "vps-1-1".into(),
        sig: None,
    };
    sign_travel(&test_key("vps"), &mut msg).unwrap();
    let raw = serde_json::to_value(&msg).unwrap();
    assert_eq!(f.origins().travel("vps", &raw), Ok(()));
    let mut changed = raw.clone();
    changed["travel_id"] = "vps-1-2".into();
    assert_eq!(
        f.origins().travel("vps", &changed).unwrap_err().reason,
        Reason::BadSignature
    );
    // A keyless peer's messages are taken on its token alone.
    assert_eq!(f.origins().travel("bez", &changed), Ok(()));
}

#[test]
fn refusals_are_logged_once_a_minute_per_peer_and_reason() {
    let mut t = Tally::default();
    assert!(t.note("vps", "bad_signature", 3, 0));
    assert!(!t.note("vps", "bad_signature", 1, 59_999));
    assert!(t.note("vps", "unknown_origin", 1, 59_999), "another reason");
    assert!(t.note("bez", "bad_signature", 1, 59_999), "another peer");
    assert!(t.note("vps", "bad_signature", 1, 60_000));
    assert_eq!(t.count("vps", "bad_signature"), 5);
}

#[test]
fn bad_keys_in_config_are_refused_at_start_with_the_key_named() {
    let cfg = |key: &str| FederationConfig {
        peers: vec![PeerConfig {
            world: "vps".into(),
            url: "http://x".into(),
            token: "t".into(),
            public_key: key.into(),
        }],
        ..FederationConfig::default()
    };
    let err = Federation::new("mac", &cfg("ed25519:AAAA"), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("peer \"vps\": public_key"), "{err}");
    let err = Federation::new("mac", &cfg("vps-key"), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ed25519:<base64>"), "{err}");
    let mut c = cfg("");
    c.worlds = vec![WorldConfig {
        world: "vps".into(),
        public_key: test_key("vps").public().to_string(),
    }];
    assert!(
        Federation::new("mac", &c, 0).is_err(),
        "a peer is not also a world"
    );
    c.worlds[0].world = "far".into();
    c.worlds[0].public_key = String::new();
    let err = Federation::new("mac", &c, 0).unwrap_err().to_string();
    assert!(err.contains("needs a public_key"), "{err}");
}

mod property {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = FedEvent> {
        (
            1u64..1 << 40,
            0..3usize,
            ".{0,40}",
            "[A-Za-z][A-Za-z ]{0,12}",
            -1.0f64..=1.0,
            0u64..NOW,
        )
            .prop_map(|(seq, kind, message, room, score, at)| {
                let mut e = ev("vps", seq);
                e.message = Some(message);
                e.room = Some(room);
                match kind {
                    0 => {}
                    1 => {
                        e.kind = Kind::Event;
                        e.event = Some("fire".into());
                    }
                    _ => {
                        e.kind = Kind::Trust;
                        (e.room, e.user_id, e.username, e.message) = (None, None, None, None);
                        e.data = Some(serde_json::json!(
                            {"subject": "alice@mac", "score": score, "updated_at": at}
                        ));
                    }
                }
                e
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A signed event verifies after the wire; any single byte of its wire text
        /// changed, it no longer parses, or it parses and is refused `bad_signature`
        /// (or is refused by an earlier rule), never taken.
        #[test]
        fn any_changed_byte_of_a_signed_event_is_refused(
            e in event(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let f = mac(&[]);
            let e = signed(e);
            let text = serde_json::to_vec(&e).unwrap();
            let back: FedEvent = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(f.origins().event("vps", &back, NOW), Ok(()));
            let mut bytes = text.clone();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            // (A changed byte that spells the same event, `\u001f` as `\u001F`, is no
            // change to the event.)
            if let Some(changed) = serde_json::from_slice::<FedEvent>(&bytes).ok().filter(|c| *c != e) {
                let verdict = f.origins().event("vps", &changed, NOW);
                prop_assert!(verdict.is_err(), "byte {} of {:?} changed and taken", i, String::from_utf8_lossy(&bytes));
            }
        }
    }
}
