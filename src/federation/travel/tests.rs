//! Travel under crashes, losses and duplicates: a simulated origin (`mac`) and destination
//! (`vps`) with their durable rows and world presence, a network of two queues, and a
//! crash that can strike between any two steps of either side. After a crash the side is
//! rebuilt from its durable rows only and runs recovery. Whatever happened, once the
//! network heals the character is in exactly one world, and at no moment in two.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, VecDeque};

const TIMEOUT: u64 = 10_000;
const ALICE: &str = "alice";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Origin,
    Destination,
}

struct Sim {
    now: u64,
    origin: Departures,
    origin_rows: BTreeMap<String, Departure>,
    origin_present: BTreeSet<String>,
    dest: Arrivals,
    dest_rows: BTreeMap<String, Arrival>,
    dest_present: BTreeSet<String>,
    to_dest: VecDeque<TravelMsg>,
    to_origin: VecDeque<TravelReply>,
    told: Vec<(bool, String)>,
    /// Crash this side after this many steps of its next batch.
    crash: Option<(Side, usize)>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            now: 1_000,
            origin: Departures::new("mac", TIMEOUT),
            origin_rows: BTreeMap::new(),
            origin_present: [ALICE.to_string()].into(),
            dest: Arrivals::new("vps", 64),
            dest_rows: BTreeMap::new(),
            dest_present: BTreeSet::new(),
            to_dest: VecDeque::new(),
            to_origin: VecDeque::new(),
            told: Vec::new(),
            crash: None,
        }
    }

    fn begin(&mut self) -> Result<(), TravelError> {
        let history = vec![Turn {
            role: crate::agent::Role::User,
            content: "take me to vps".into(),
        }];
        let steps = self.origin.begin(
            ALICE,
            "Alice",
            Some("Gate"),
            history,
            Vec::new(),
            "vps",
            Some(PeerStatus::Online),
            self.now,
        )?;
        self.run_origin(steps);
        Ok(())
    }

    fn crash_at(&mut self, side: Side, i: usize) -> bool {
        if self.crash == Some((side, i)) {
            self.crash = None;
            match side {
                Side::Origin => self.restart_origin(),
                Side::Destination => self.restart_dest(),
            }
            return true;
        }
        false
    }

    fn run_origin(&mut self, steps: Vec<Step>) {
        for (i, step) in steps.into_iter().enumerate() {
            if self.crash_at(Side::Origin, i) {
                return;
            }
            match step {
                Step::Save(d) => {
                    self.origin_rows.insert(d.offer.travel_id.clone(), d);
                }
                Step::Forget(id) => {
                    self.origin_rows.remove(&id);
                }
                Step::Send { to, msg } => {
                    assert_eq!(to, "vps");
                    self.to_dest.push_back(msg);
                }
                Step::Remove { user_id } => {
                    self.origin_present.remove(&user_id);
                }
                Step::Tell { ok, text, .. } => self.told.push((ok, text)),
            }
            self.check_never_in_two_worlds();
        }
        if self.crash.is_none_or(|(s, _)| s != Side::Origin) {
            assert_eq!(
                self.origin.records, self.origin_rows,
                "the origin's steps mirror its state"
            );
        }
    }

    fn run_dest(&mut self, landings: Vec<Landing>) {
        for (i, l) in landings.into_iter().enumerate() {
            if self.crash_at(Side::Destination, i) {
                return;
            }
            match l {
                Landing::Save(a) => {
                    self.dest_rows.insert(a.travel_id.clone(), a);
                }
                Landing::Forget(id) => {
                    self.dest_rows.remove(&id);
                }
                Landing::Place { offer, room } => {
                    assert_eq!(room, "Gate");
                    assert_eq!(offer.history.len(), 1, "history comes along");
                    self.dest_present.insert(offer.user_id);
                }
                Landing::Reply(r) => self.to_origin.push_back(r),
            }
            self.check_never_in_two_worlds();
        }
    }

    fn restart_origin(&mut self) {
        self.origin = Departures::new("mac", TIMEOUT);
        self.origin
            .restore(self.origin_rows.values().cloned().collect());
        let steps = self.origin.recover();
        self.run_origin(steps);
    }

    fn restart_dest(&mut self) {
        self.dest = Arrivals::new("vps", 64);
        self.dest
            .restore(self.dest_rows.values().cloned().collect());
        let landings = self.dest.recover();
        self.run_dest(landings);
    }

    fn deliver_to_dest(&mut self, keep_copy: bool) -> bool {
        let Some(msg) = self.to_dest.front().cloned() else {
            return false;
        };
        if !keep_copy {
            self.to_dest.pop_front();
        }
        let here = Here {
            room: "Gate",
            occupied: self.dest_present.contains(ALICE),
        };
        let landings = self.dest.on_msg("mac", &msg, here, self.now);
        self.run_dest(landings);
        true
    }

    fn deliver_to_origin(&mut self, keep_copy: bool) -> bool {
        let Some(reply) = self.to_origin.front().cloned() else {
            return false;
        };
        if !keep_copy {
            self.to_origin.pop_front();
        }
        let steps = self.origin.on_reply(&reply);
        self.run_origin(steps);
        true
    }

    fn tick(&mut self, dt: u64) {
        self.now += dt;
        let steps = self.origin.tick(self.now);
        self.run_origin(steps);
    }

    fn check_never_in_two_worlds(&self) {
        assert!(
            !(self.origin_present.contains(ALICE) && self.dest_present.contains(ALICE)),
            "alice is in two worlds"
        );
    }

    /// The network heals and time passes: everything is delivered, ticks repeat.
    fn settle(&mut self) {
        self.crash = None;
        for _ in 0..10 {
            while self.deliver_to_dest(false) || self.deliver_to_origin(false) {}
            self.tick(TIMEOUT + 1);
        }
        while self.deliver_to_dest(false) || self.deliver_to_origin(false) {}
    }

    /// Where alice ended, after checking she is in exactly one world and nothing is
    /// left undecided.
    fn settled_in(&self) -> &'static str {
        let in_mac = self.origin_present.contains(ALICE);
        let in_vps = self.dest_present.contains(ALICE);
        assert!(in_mac ^ in_vps, "alice must be in exactly one world");
        assert!(
            self.origin_rows.is_empty(),
            "origin left {:?}",
            self.origin_rows
        );
        assert!(
            !self
                .dest_rows
                .values()
                .any(|a| matches!(a.stay, Stay::Held { .. })),
            "destination still holds a promise"
        );
        let told_ok = self.told.iter().any(|(ok, _)| *ok);
        let told_fail = self.told.iter().any(|(ok, _)| !*ok);
        if in_vps {
            assert!(
                !told_fail,
                "told a failure, yet she travelled: {:?}",
                self.told
            );
            "vps"
        } else {
            assert!(!told_ok, "told she left, yet she stayed: {:?}", self.told);
            "mac"
        }
    }
}

#[test]
fn the_happy_path_moves_alice_with_four_messages() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    assert!(sim.deliver_to_dest(false), "offer");
    assert!(sim.dest_present.is_empty(), "a promise does not place her");
    assert!(sim.deliver_to_origin(false), "accepted");
    assert!(sim.origin_present.is_empty());
    assert_eq!(sim.told, vec![(true, "Alice left for vps".to_string())]);
    assert!(sim.deliver_to_dest(false), "commit");
    assert!(sim.deliver_to_origin(false), "done");
    assert!(sim.to_dest.is_empty() && sim.to_origin.is_empty());
    assert_eq!(sim.settled_in(), "vps");
}

#[test]
fn a_destination_that_never_answers_fails_cleanly_and_alice_stays() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    sim.to_dest.clear(); // vps is down: the offer goes nowhere
    sim.tick(TIMEOUT - 1);
    assert!(sim.told.is_empty(), "not before the deadline");
    sim.tick(1);
    assert_eq!(sim.told, vec![(false, "world vps is offline".to_string())]);
    assert!(sim.origin.travelling(ALICE).is_none(), "free to try again");
    sim.settle();
    assert_eq!(sim.settled_in(), "mac");
}

#[test]
fn an_offline_peer_is_refused_before_anything_is_saved() {
    let mut d = Departures::new("mac", TIMEOUT);
    let err = d
        .begin(
            ALICE,
            "Alice",
            None,
            vec![],
            vec![],
            "vps",
            Some(PeerStatus::Offline),
            0,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "world vps is offline");
    assert!(d.is_empty());
    let err = d
        .begin(ALICE, "Alice", None, vec![], vec![], "nowhere", None, 0)
        .unwrap_err();
    assert_eq!(err, TravelError::NotAPeer("nowhere".into()));
    assert_eq!(
        d.begin(
            ALICE,
            "Alice",
            None,
            vec![],
            vec![],
            "mac",
            Some(PeerStatus::Online),
            0
        ),
        Err(TravelError::SameWorld)
    );
}

#[test]
fn one_travel_at_a_time() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    assert_eq!(
        sim.begin(),
        Err(TravelError::AlreadyTravelling("vps".into()))
    );
}

#[test]
fn offers_are_idempotent_by_travel_id() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    sim.deliver_to_dest(true);
    sim.deliver_to_dest(false);
    assert_eq!(sim.to_origin.len(), 2);
    assert!(matches!(
        sim.to_origin[1],
        TravelReply::Accepted {
            duplicate: true,
            ..
        }
    ));
    sim.settle();
    assert_eq!(sim.settled_in(), "vps");
}

#[test]
fn an_offer_arriving_after_the_abort_is_refused() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    let offer = sim.to_dest.pop_front().expect("the offer");
    sim.tick(TIMEOUT); // no answer: aborted
    sim.deliver_to_dest(false); // the abort
    sim.to_dest.push_back(offer); // the delayed offer
    sim.deliver_to_dest(false);
    assert!(matches!(
        sim.to_origin.back(),
        Some(TravelReply::Refused { reason, .. }) if reason == "this travel was called off"
    ));
    sim.settle();
    assert_eq!(sim.settled_in(), "mac");
}

#[test]
fn a_traveller_whose_name_is_taken_there_is_refused() {
    let mut sim = Sim::new();
    sim.dest_present.insert("bob".into());
    sim.begin().expect("begins");
    // Someone else called alice is already in vps.
    let msg = sim.to_dest.pop_front().expect("offer");
    let here = Here {
        room: "Gate",
        occupied: true,
    };
    let landings = sim.dest.on_msg("mac", &msg, here, sim.now);
    sim.run_dest(landings);
    sim.deliver_to_origin(false);
    assert_eq!(
        sim.told,
        vec![(
            false,
            "world vps refused: alice is already in vps".to_string()
        )]
    );
    assert!(sim.origin_rows.is_empty());
    assert!(sim.origin_present.contains(ALICE));
}

#[test]
fn a_peer_cannot_speak_for_another_world() {
    let mut dest = Arrivals::new("vps", 64);
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    let msg = sim.to_dest.pop_front().expect("offer");
    let here = Here {
        room: "Gate",
        occupied: false,
    };
    let landings = dest.on_msg("bezalel", &msg, here, 0);
    assert!(matches!(
        &landings[..],
        [Landing::Reply(TravelReply::Refused { .. })]
    ));
    assert!(dest.get(msg.travel_id()).is_none(), "nothing saved");

    // Nor call off another world's travel.
    sim.to_dest.push_front(msg.clone());
    sim.deliver_to_dest(false);
    let abort = TravelMsg::Abort {
        travel_id: msg.travel_id().to_string(),
        sig: None,
    };
    let landings = sim.dest.on_msg("bezalel", &abort, here, 0);
    assert!(matches!(
        &landings[..],
        [Landing::Reply(TravelReply::Refused { reason, .. })] if reason.contains("not one of bezalel's")
    ));
    assert!(matches!(
        sim.dest.get(msg.travel_id()).map(|a| &a.stay),
        Some(Stay::Held { .. })
    ));
}

/// The five messages of the happy path, as operations of the simulation.
#[derive(Debug, Clone, Copy)]
enum Op {
    Begin,
    ToDest,
    ToOrigin,
}

const HAPPY_PATH: [Op; 5] = [
    Op::Begin,
    Op::ToDest,
    Op::ToOrigin,
    Op::ToDest,
    Op::ToOrigin,
];

fn run_happy_path(sim: &mut Sim, crash: Option<(usize, Side, usize)>) {
    for (n, op) in HAPPY_PATH.iter().enumerate() {
        if let Some((at, side, step)) = crash {
            if at == n {
                sim.crash = Some((side, step));
            }
        }
        match op {
            Op::Begin => {
                sim.begin().expect("begins");
            }
            Op::ToDest => {
                sim.deliver_to_dest(false);
            }
            Op::ToOrigin => {
                sim.deliver_to_origin(false);
            }
        }
        if sim.crash.is_some() {
            // The crash point lay beyond this batch: it strikes right after it.
            let side = sim.crash.map(|(s, _)| s);
            sim.crash = None;
            match side {
                Some(Side::Origin) => sim.restart_origin(),
                Some(Side::Destination) => sim.restart_dest(),
                None => {}
            }
        }
    }
}

/// Every crash point of the protocol, one at a time: each side, after each message of
/// the happy path, after each step of what that message made it do.
#[test]
fn every_crash_point_ends_with_alice_in_exactly_one_world() {
    let mut outcomes = BTreeMap::new();
    for at in 0..HAPPY_PATH.len() {
        for side in [Side::Origin, Side::Destination] {
            for step in 0..5 {
                let mut sim = Sim::new();
                run_happy_path(&mut sim, Some((at, side, step)));
                sim.settle();
                let place = sim.settled_in();
                outcomes.insert((at, format!("{side:?}"), step), place);
            }
        }
    }
    // The named cases of the protocol's argument.
    let o = |at, side: &str, step| outcomes[&(at, side.to_string(), step)];
    assert_eq!(
        o(0, "Origin", 1),
        "mac",
        "origin crashed after pending, before the offer"
    );
    assert_eq!(
        o(0, "Origin", 2),
        "mac",
        "origin crashed after sending the offer"
    );
    assert_eq!(
        o(1, "Destination", 0),
        "mac",
        "destination crashed before holding"
    );
    assert_eq!(
        o(1, "Destination", 1),
        "mac",
        "destination held, crashed before answering"
    );
    assert_eq!(
        o(2, "Origin", 0),
        "mac",
        "origin got accepted, crashed before departing"
    );
    assert_eq!(
        o(2, "Origin", 1),
        "vps",
        "origin departed, crashed before removing"
    );
    assert_eq!(
        o(2, "Origin", 3),
        "vps",
        "origin removed, crashed before the commit"
    );
    assert_eq!(
        o(3, "Destination", 1),
        "vps",
        "destination arrived, crashed before placing"
    );
    assert_eq!(
        o(3, "Destination", 2),
        "vps",
        "destination placed, crashed before done"
    );
    assert_eq!(
        o(4, "Origin", 0),
        "vps",
        "origin got done, crashed before forgetting"
    );
    let mut no_crash = Sim::new();
    run_happy_path(&mut no_crash, None);
    assert_eq!(no_crash.settled_in(), "vps");
}

/// One thing that can happen to the two bridges and the network between them.
#[derive(Debug, Clone)]
enum Chaos {
    ToDest,
    ToOrigin,
    DupToDest,
    DupToOrigin,
    DropToDest,
    DropToOrigin,
    Crash(bool),
    CrashDuringNext(bool, usize),
    Tick(u64),
}

fn chaos() -> impl Strategy<Value = Chaos> {
    prop_oneof![
        4 => Just(Chaos::ToDest),
        4 => Just(Chaos::ToOrigin),
        1 => Just(Chaos::DupToDest),
        1 => Just(Chaos::DupToOrigin),
        1 => Just(Chaos::DropToDest),
        1 => Just(Chaos::DropToOrigin),
        1 => any::<bool>().prop_map(Chaos::Crash),
        1 => (any::<bool>(), 0usize..4).prop_map(|(o, s)| Chaos::CrashDuringNext(o, s)),
        2 => (0u64..2 * TIMEOUT).prop_map(Chaos::Tick),
    ]
}

fn side(origin: bool) -> Side {
    if origin {
        Side::Origin
    } else {
        Side::Destination
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random schedules of deliveries, copies, losses, crashes (also in the middle of a
    /// batch of steps) and time: never in two worlds at any moment, exactly one at the end.
    #[test]
    fn travel_is_exactly_once_under_chaos(ops in proptest::collection::vec(chaos(), 0..40)) {
        let mut sim = Sim::new();
        sim.begin().expect("begins");
        for op in ops {
            match op {
                Chaos::ToDest => { sim.deliver_to_dest(false); }
                Chaos::ToOrigin => { sim.deliver_to_origin(false); }
                Chaos::DupToDest => { sim.deliver_to_dest(true); }
                Chaos::DupToOrigin => { sim.deliver_to_origin(true); }
                Chaos::DropToDest => { sim.to_dest.pop_front(); }
                Chaos::DropToOrigin => { sim.to_origin.pop_front(); }
                Chaos::Crash(true) => sim.restart_origin(),
                Chaos::Crash(false) => sim.restart_dest(),
                Chaos::CrashDuringNext(o, s) => sim.crash = Some((side(o), s)),
                Chaos::Tick(dt) => sim.tick(dt),
            }
        }
        sim.settle();
        let place = sim.settled_in();
        prop_assert!(place == "mac" || place == "vps");
    }
}

#[test]
fn settled_arrivals_are_forgotten_after_a_while_and_promises_are_kept() {
    let mut sim = Sim::new();
    sim.begin().expect("begins");
    sim.deliver_to_dest(false); // held
    let mut dest = sim.dest.clone();
    assert!(
        dest.expire(sim.now + 100 * TIMEOUT, TIMEOUT).is_empty(),
        "a promise stays"
    );
    sim.deliver_to_origin(false);
    sim.deliver_to_dest(false); // arrived
    let id = sim
        .to_origin
        .back()
        .map(|r| r.travel_id().to_string())
        .expect("done");
    assert!(
        sim.dest.expire(sim.now + TIMEOUT, TIMEOUT).is_empty(),
        "not yet"
    );
    assert_eq!(
        sim.dest.expire(sim.now + TIMEOUT + 1, TIMEOUT),
        vec![Landing::Forget(id)]
    );
}

#[test]
fn a_travel_id_names_its_origin_exactly() {
    assert_eq!(origin_of("mac-1764612003000-1"), Some("mac"));
    assert_eq!(origin_of("mac-2-1764612003000-1"), Some("mac-2"));
    assert_eq!(origin_of("mac-1764612003000"), None);
    assert_eq!(origin_of("mac-x-1"), None);
    assert_eq!(origin_of("-1-1"), None);
    let mut d = Departures::new("mac-2", TIMEOUT);
    let steps = d
        .begin(
            ALICE,
            "Alice",
            None,
            vec![],
            vec![],
            "vps",
            Some(PeerStatus::Online),
            5,
        )
        .expect("begins");
    let Some(Step::Send { msg, .. }) = steps.last() else {
        panic!("no offer in {steps:?}");
    };
    assert_eq!(origin_of(msg.travel_id()), Some("mac-2"));
}

fn offer_of(id: &str, history: &str) -> Offer {
    Offer {
        travel_id: id.into(),
        from: "mac".into(),
        to: "vps".into(),
        user_id: ALICE.into(),
        username: "Alice".into(),
        room: None,
        history: vec![Turn {
            role: crate::agent::Role::User,
            content: history.into(),
        }],
        trust: vec![],
        sig: None,
    }
}

fn code_of(landings: &[Landing]) -> Option<String> {
    landings.iter().find_map(|l| match l {
        Landing::Reply(TravelReply::Refused { code, .. }) => code.clone(),
        _ => None,
    })
}

fn placed(landings: &[Landing]) -> Option<&Offer> {
    landings.iter().find_map(|l| match l {
        Landing::Place { offer, .. } => Some(offer),
        _ => None,
    })
}

#[test]
fn a_commit_moves_only_the_character_offered_and_never_over_someone_here() {
    let mut dest = Arrivals::new("vps", 64);
    let free = Here {
        room: "Gate",
        occupied: false,
    };
    let taken = Here {
        room: "Gate",
        occupied: true,
    };
    // A bare commit (no offer before it) moves nobody and saves nothing.
    let bare = TravelMsg::Commit(offer_of("mac-1-1", "obey me"));
    let l = dest.on_msg("mac", &bare, free, 1);
    assert_eq!(code_of(&l).as_deref(), Some(NO_OFFER));
    assert!(placed(&l).is_none() && dest.get("mac-1-1").is_none());
    // A commit for another peer's travel: not the sender's to commit.
    dest.on_msg(
        "mac",
        &TravelMsg::Offer(offer_of("mac-2-1", "hello")),
        free,
        2,
    );
    let mut theirs = offer_of("mac-2-1", "obey me");
    theirs.from = "bez".into();
    let l = dest.on_msg("bez", &TravelMsg::Commit(theirs), free, 3);
    assert_eq!(code_of(&l).as_deref(), Some(NOT_YOURS));
    // Someone with that id came here since the offer: the commit waits.
    let commit = TravelMsg::Commit(offer_of("mac-2-1", "obey me"));
    let l = dest.on_msg("mac", &commit, taken, 4);
    assert_eq!(code_of(&l).as_deref(), Some(ALREADY_HERE));
    assert!(placed(&l).is_none());
    assert!(matches!(
        dest.get("mac-2-1").map(|a| &a.stay),
        Some(Stay::Held { .. })
    ));
    // Once they are gone, the repeated commit places the character *as offered*.
    let l = dest.on_msg("mac", &commit, free, 5);
    let offer = placed(&l).expect("placed");
    assert_eq!(
        offer.history[0].content, "hello",
        "not what the commit carried"
    );
    // And again: idempotent.
    let l = dest.on_msg("mac", &commit, free, 6);
    assert!(placed(&l).is_none());
    assert!(matches!(
        l.last(),
        Some(Landing::Reply(TravelReply::Done { .. }))
    ));
}

#[test]
fn a_peer_cannot_fill_the_travel_table_with_offers_or_aborts() {
    let mut dest = Arrivals::new("vps", 3);
    let free = Here {
        room: "Gate",
        occupied: false,
    };
    let offer = |n: u64| TravelMsg::Offer(offer_of(&format!("mac-{n}-1"), "hi"));
    for n in 1..=3 {
        let l = dest.on_msg("mac", &offer(n), free, n);
        assert_eq!(code_of(&l), None, "offer {n} held");
    }
    // The fourth distinct offer is refused and leaves nothing behind.
    let l = dest.on_msg("mac", &offer(4), free, 4);
    assert_eq!(code_of(&l).as_deref(), Some(TOO_MANY_TRAVELS));
    assert!(dest.get("mac-4-1").is_none());
    // A re-sent offer already held is still answered as before.
    let l = dest.on_msg("mac", &offer(1), free, 5);
    assert!(matches!(
        l.last(),
        Some(Landing::Reply(TravelReply::Accepted {
            duplicate: true,
            ..
        }))
    ));
    // Aborts of travels never offered are answered, but keep no row past the cap.
    let abort = TravelMsg::Abort {
        travel_id: "mac-9-1".into(),
        sig: None,
    };
    let l = dest.on_msg("mac", &abort, free, 6);
    assert!(matches!(
        l.last(),
        Some(Landing::Reply(TravelReply::Done { .. }))
    ));
    assert!(dest.get("mac-9-1").is_none());
    // Another peer has its own allowance.
    let mut bez = offer_of("bez-1-1", "hi");
    bez.from = "bez".into();
    let l = dest.on_msg("bez", &TravelMsg::Offer(bez), free, 7);
    assert_eq!(code_of(&l), None);
    // Committing one frees a place: arrivals do not count.
    let l = dest.on_msg(
        "mac",
        &TravelMsg::Commit(offer_of("mac-1-1", "hi")),
        free,
        8,
    );
    assert!(placed(&l).is_some());
    let l = dest.on_msg("mac", &offer(4), free, 9);
    assert_eq!(code_of(&l), None);
}
