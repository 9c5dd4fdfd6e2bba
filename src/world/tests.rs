use super::*;

fn world() -> World {
    World::new(
        "local",
        "Timmy",
        WorldFile::parse(room::DEFAULT_WORLD).unwrap(),
        WorldLimits {
            sessions: SessionLimits {
                max: 20,
                idle_timeout_ms: 3_600_000,
                history_max: 50,
            },
            events_max: 5,
            rooms_max: 7,
            occupants_max: 3,
        },
    )
}

#[test]
fn say_reaches_others_never_the_speaker_and_places_the_speaker() {
    let mut w = world();
    w.place("bob", "Bob", "The Threshold", 1);
    w.place("carol", "Carol", "The Garden", 1);
    let said = w
        .say("alice", "Alice", "The Threshold", "Anyone here?", 2)
        .unwrap();
    let heard: Vec<&str> = w
        .recipients("The Threshold", "alice")
        .map(|o| o.user_id.as_str())
        .collect();
    assert_eq!(heard, ["bob"]);
    assert_eq!(said.moved.len(), 1);
    assert_eq!(said.moved[0].event, "enter");
    assert_eq!(said.event.message.as_deref(), Some("Anyone here?"));
    assert_eq!(
        said.event.seq, 4,
        "enter bob, enter carol, enter alice, then the say"
    );
    // Saying again from the same room moves nobody.
    let again = w
        .say("alice", "Alice", "the threshold", "hello?", 3)
        .unwrap();
    assert!(again.moved.is_empty());
    assert_eq!(again.event.room, "The Threshold");
}

#[test]
fn a_new_name_is_what_the_room_lists_to_a_say_and_to_the_agent() {
    let mut w = world();
    w.place("bob", "Bob", "The Threshold", 1);
    w.place("alice", "Alice", "The Threshold", 1);
    // Bob renames himself where he is, then Alice renames herself by moving.
    w.say("bob", "Robert", "The Threshold", "call me Robert", 2)
        .unwrap();
    w.move_user("alice", Some("Ally"), "The Garden", 3).unwrap();
    w.move_user("alice", None, "The Threshold", 4).unwrap();
    let heard: Vec<(&str, &str)> = w
        .recipients("The Threshold", "alice")
        .map(|h| (h.user_id.as_str(), h.username.as_str()))
        .collect();
    assert_eq!(heard, [("bob", "Robert")]);
    let names: Vec<&str> = w
        .players("The Threshold")
        .iter()
        .map(|o| o.username.as_str())
        .collect();
    assert_eq!(names, ["Robert", "Ally"]);
    assert_eq!(
        w.context("alice", "The Threshold", 5).present,
        ["Robert", "Ally"]
    );
}

#[test]
fn move_emits_leave_then_enter_and_refuses_same_and_unknown_rooms() {
    let mut w = world();
    w.place("alice", "Alice", "The Threshold", 1);
    let (to, evs) = w.move_user("alice", None, "The Garden", 2).unwrap();
    assert_eq!(to, "The Garden");
    let shape: Vec<(&str, &str)> = evs
        .iter()
        .map(|e| (e.event.as_str(), e.room.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![("leave", "The Threshold"), ("enter", "The Garden")]
    );
    assert_eq!(evs[0].username, "Alice");
    assert_eq!(
        w.move_user("alice", None, "The Garden", 3),
        Err(WorldError::AlreadyThere("The Garden".into()))
    );
    assert_eq!(
        w.move_user("alice", None, "Narnia", 3),
        Err(WorldError::UnknownRoom("Narnia".into()))
    );
    assert_eq!(w.players("The Threshold").len(), 0);
    assert_eq!(w.players("The Garden").len(), 1);
}

#[test]
fn events_are_windowed_and_filtered_by_time_and_seq() {
    let mut w = world();
    for i in 0..8u64 {
        w.say("a", "A", "The Forge", &format!("m{i}"), 100 + i)
            .unwrap();
    }
    let all = w.events("The Forge", None, None).unwrap();
    assert_eq!(all.len(), 5, "window of events_max");
    assert_eq!(all.last().unwrap().message.as_deref(), Some("m7"));
    let since = w.events("The Forge", Some(105), None).unwrap();
    assert_eq!(
        since
            .iter()
            .map(|e| e.message.clone().unwrap())
            .collect::<Vec<_>>(),
        ["m6", "m7"]
    );
    let last_seq = all.last().unwrap().seq;
    assert_eq!(
        w.events("The Forge", None, Some(last_seq - 1))
            .unwrap()
            .len(),
        1
    );
    assert!(w.events("Nowhere", None, None).is_err());
}

#[test]
fn rooms_are_created_on_first_mention_and_looked_up_forgivingly() {
    let mut w = world();
    assert_eq!(w.resolve("the tower"), Some("The Tower"));
    assert!(w.room("Balmora, Temple").is_none());
    w.say("p", "P", "Balmora, Temple", "hi", 1).unwrap();
    assert!(w.room("Balmora, Temple").is_some());
    assert!(w.ensure_room("").is_err());
    assert!(w.ensure_room("bad\nname").is_err());
}

#[test]
fn context_carries_room_people_and_recent_events() {
    let mut w = world();
    w.place("bob", "Bob", "The Tower", 1);
    w.say("alice", "Alice", "The Tower", "hi Bob", 2).unwrap();
    let ctx = w.context("alice", "The Tower", 10);
    assert_eq!(ctx.room, "The Tower");
    assert!(ctx.room_desc.contains("LED"));
    assert_eq!(ctx.present, vec!["Bob", "Alice"]);
    assert!(ctx
        .recent_events
        .contains(&"Alice said: hi Bob".to_string()));
    assert!(ctx.exits.iter().any(|e| e.contains("The Threshold")));
}

#[test]
fn expiry_removes_idle_presence_and_sessions() {
    let mut w = world();
    w.place("a", "A", "The Tower", 0);
    w.sessions.touch("a", "A", "The Tower", 0, &|_| false);
    w.place("b", "B", "The Tower", 3_000_000);
    let (gone, leaves) = w.expire(3_600_001, &|_| false);
    assert_eq!(gone, vec!["a".to_string()]);
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0].user_id, "a");
    assert_eq!(w.players("The Tower").len(), 1);
}

#[test]
fn outbox_collects_every_new_event_once() {
    let mut w = world();
    w.say("a", "A", "The Tower", "x", 1).unwrap();
    assert_eq!(w.take_new_events().len(), 2);
    assert!(w.take_new_events().is_empty());
}

#[test]
fn room_and_occupant_limits_hold() {
    let mut w = world();
    assert!(w.ensure_room("Sixth").is_ok());
    assert!(w.ensure_room("Seventh").is_ok());
    assert_eq!(w.ensure_room("Eighth"), Err(WorldError::Limit("rooms.max")));
    assert!(
        w.ensure_room("the tower").is_ok(),
        "known rooms still resolve"
    );
    w.place("a", "A", "The Tower", 1);
    w.place("b", "B", "The Tower", 2);
    w.place("c", "C", "The Tower", 3);
    let evs = w.place("d", "D", "The Tower", 4);
    assert_eq!(
        evs.len(),
        2,
        "the least recently active leaves, then d enters"
    );
    assert_eq!(
        (evs[0].user_id.as_str(), evs[0].event.as_str()),
        ("a", "leave")
    );
    assert!(w.occupant("a").is_none());
    assert_eq!(w.players("The Tower").len(), 3);
}

#[test]
fn a_remote_event_is_shown_without_placing_anyone_and_keeps_its_origin() {
    let mut w = world();
    w.place("bob", "Bob", "The Threshold", 1);
    let shown = Relayed {
        room: "the threshold".into(),
        kind: room::EventKind::Say,
        event: "message".into(),
        user_id: "alice@mac".into(),
        username: "Alice@mac".into(),
        message: Some("hello from mac".into()),
        origin: "mac".into(),
    };
    let ev = w.show_remote(&shown, 2).expect("the room exists");
    assert_eq!(
        (ev.origin.as_str(), ev.room.as_str()),
        ("mac", "The Threshold")
    );
    assert_eq!(ev.username, "Alice@mac");
    assert!(w.occupant("alice@mac").is_none(), "nobody is placed");
    let names: Vec<&str> = w.occupants().map(|o| o.user_id.as_str()).collect();
    assert_eq!(names, ["bob"]);
    let events = w.events("The Threshold", None, None).unwrap();
    assert_eq!(
        events.last().and_then(|e| e.message.as_deref()),
        Some("hello from mac")
    );
    let gone = Relayed {
        room: "Nowhere".into(),
        ..shown
    };
    assert!(w.show_remote(&gone, 3).is_none());
}
