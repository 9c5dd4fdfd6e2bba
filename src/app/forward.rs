//! Cluster mode: a chat for a user whose session another node owns is forwarded to that
//! node and answered through the node it arrived at.
//!
//! One node owns a user's session at a time: the one holding the user's lease in Redis,
//! taken for a call and renewed while the user has calls under way there. A chat that
//! arrives at node B while node A (alive) holds the lease is not run on B: B runs the
//! crisis detector (so the protocol text, streamed, goes out at once as part 0), then
//! sends the chat to A's inbox as an [`Msg::Ask`]. A queues it behind the user's call
//! in flight there, as if it had come to A (one call in flight per user, 429
//! `too_many_waiting` past the queue), and sends back the reply's parts and its end
//! ([`Msg::Answer`] or [`Msg::Refused`]) once the session it wrote is stored; B hands
//! them to the request that waits, whatever door it came through. If A dies first
//! (its liveness key is gone), B asks for the lease again, now waiting for it, and runs
//! the call itself with the history A stored.
//!
//! The same channel carries the bridge's own requests to games (`act`, `observe`,
//! `speak`) for a world whose link is connected to another node ([`Msg::Game`], see
//! `app::cluster_links`), and a user's travel for the node running federation
//! ([`Msg::Travel`]), answered the same way: [`Msg::Answer`] carries the hub's own
//! [`Outcome`], [`Msg::Refused`] the refusal.
//!
//! Socket-free: messages go through the cluster store (`store::cluster`, a Redis stream
//! per node), as JSON.

use crate::app::calls::{Call, CallKind, ReplyTo};
use crate::app::outcome::{Outcome, Refusal, Reply};
use crate::app::stream::Part;
use crate::app::{Answer, App, CallInput};
use crate::world::protocol::GameCommand;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One message between two nodes about a forwarded chat; `id` is the job id of the call
/// on the node the chat arrived at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// A chat for the owner to run (`from`: the node to answer).
    Ask {
        id: u64,
        from: String,
        user_id: String,
        username: String,
        room: String,
        message: String,
        /// The receiving node's crisis detector fired (or the message asks about the
        /// hotlines): the owner shapes the reply by this, not by its own reading.
        crisis: bool,
        resources: bool,
        stream: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
    },
    /// A part of the streamed reply.
    Part {
        id: u64,
        index: u32,
        text: String,
        crisis: bool,
    },
    /// What the other node's request came to: a chat's reply (once the session holding
    /// it is stored), a game's answer, a travel; the hub's own [`Outcome`].
    Answer { id: u64, outcome: Outcome },
    /// A request for the game `world`, whose link is connected to the receiving node.
    Game {
        id: u64,
        from: String,
        world: String,
        ask: GameAsk,
    },
    /// A user's travel to another world, for the node that runs federation.
    Travel {
        id: u64,
        from: String,
        user_id: String,
        to_world: String,
    },
    /// The owner refused the chat (or the link's node the request) or could not answer.
    Refused {
        id: u64,
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
}

/// What the bridge asks of a game on another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GameAsk {
    Act {
        action: String,
        args: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        player: Option<String>,
    },
    Observe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        player: Option<String>,
        fresh: bool,
    },
    Speak {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        text: String,
    },
}

/// The codes another node may refuse a forwarded chat or game request with; any other
/// reads as `agent_error` with its sentence kept.
const CODES: [&str; 16] = [
    "travel_refused",
    "not_here",
    "not_leader",
    "federation_off",
    "too_many_waiting",
    "agent_busy",
    "agent_timeout",
    "agent_error",
    "store_unavailable",
    "store_unknown",
    "link_down",
    "game_timeout",
    "game_error",
    "no_perception",
    "bad_action",
    "missing_field",
];

/// A call of this node that another node runs.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub node: String,
    pub user: String,
}

impl Msg {
    /// The refusal this message carries, with a code this bridge knows.
    fn refusal(code: &str, message: String, retry_after: Option<u64>) -> Refusal {
        let known = CODES.iter().find(|c| **c == code).copied();
        let mut r = Refusal::new(known.unwrap_or("agent_error"), message);
        r.retry_after = retry_after;
        r
    }
}

impl App {
    /// How long a forwarded call may wait for its answer: the owner's queue and call
    /// (`agent.timeout_s`), or, if the owner dies, its lease running out and the call
    /// here.
    fn forward_deadline(&self, now: Instant) -> Instant {
        let ttl = (self.cluster.as_ref()).map_or(Duration::ZERO, |c| c.store.settings.node_ttl);
        now + ttl + 2 * self.agent_timeout()
    }

    /// `node`, alive, holds `user`'s lease: the call that waited for it goes there.
    pub(crate) fn forward_to(&mut self, user: String, node: String) {
        let now = Instant::now();
        let deadline = self.forward_deadline(now);
        let Some(c) = &mut self.cluster else {
            return;
        };
        let Some(job) = c.awaiting.remove(&user) else {
            return;
        };
        let Some(call) = self.calls.get_mut(job) else {
            // It timed out meanwhile: the next one goes.
            return self.start_next(Some(&user), now);
        };
        call.deadline = deadline;
        let ask = Msg::Ask {
            id: job,
            from: c.node.clone(),
            user_id: user.clone(),
            username: call.username.clone(),
            room: call.room.clone(),
            message: call.message.clone(),
            crisis: call.crisis,
            resources: call.resources,
            stream: call.stream.is_some(),
            system: call.system.clone(),
        };
        log::debug!(
            "cluster: chat of {user} (job {job}) forwarded to {node}, which holds the session"
        );
        c.forwarded_out += 1;
        if let Ok(body) = serde_json::to_string(&ask) {
            c.store.send_to(&node, body);
        }
        c.forwarded.insert(job, Forwarded { node, user });
    }

    /// Messages from other nodes.
    pub(crate) fn on_inbox(&mut self, messages: Vec<String>) {
        for m in messages {
            match serde_json::from_str::<Msg>(&m) {
                Ok(msg) => self.on_msg(msg),
                Err(e) => {
                    log::warn!("cluster: a message from another node does not read ({e}); skipped")
                }
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Ask {
                id,
                from,
                user_id,
                username,
                room,
                message,
                crisis,
                resources,
                stream,
                system,
            } => {
                let reply_to = ReplyTo::Remote { node: from, id };
                if let Some(c) = &mut self.cluster {
                    c.forwarded_in += 1;
                }
                let input = CallInput {
                    kind: CallKind::Chat,
                    user_id: Some(user_id),
                    username,
                    room,
                    message,
                    stream,
                    system,
                };
                let now_ms = crate::world::time::now_ms();
                let read = (crisis, resources);
                if let Answer::Now(reply) =
                    self.start_call(input, reply_to.clone(), read, now_ms, now)
                {
                    self.answer(reply_to, reply);
                }
            }
            Msg::Part {
                id,
                index,
                text,
                crisis,
            } => {
                let Some(call) = self.forwarded_call(id) else {
                    return;
                };
                let to = call.reply_to.clone();
                let part = (call.stream.as_mut()).and_then(|s| s.relayed(index, text, crisis, now));
                if let Some(part) = part {
                    self.out.parts.push((to, part));
                }
            }
            Msg::Answer { id, outcome } => self.remote_answered(id, Ok(outcome), now),
            Msg::Refused {
                id,
                code,
                message,
                retry_after,
            } => {
                let refusal = Msg::refusal(&code, message, retry_after);
                self.remote_answered(id, Err(refusal), now);
            }
            Msg::Game {
                id,
                from,
                world,
                ask,
            } => self.serve_game(id, from, &world, ask),
            Msg::Travel {
                id,
                from,
                user_id,
                to_world,
            } => {
                let to = ReplyTo::Remote { node: from, id };
                let now_ms = crate::world::time::now_ms();
                if let Err(r) = self.travel_request(&user_id, &to_world, to.clone(), now_ms) {
                    self.answer(to, Err(r));
                }
            }
        }
    }

    /// The end of something this node sent elsewhere: a forwarded chat, or a request to
    /// a game on another node.
    fn remote_answered(&mut self, id: u64, reply: Reply, now: Instant) {
        let chat = (self.cluster.as_ref()).is_some_and(|c| c.forwarded.contains_key(&id));
        match chat {
            true => self.forward_ended(id, reply, now),
            false => self.game_answered(id, reply),
        }
    }

    /// A request for a game whose link is on this node, from `from`: carried out as if
    /// it came here, answered to `from`.
    fn serve_game(&mut self, id: u64, from: String, world: &str, ask: GameAsk) {
        let to = ReplyTo::Remote { node: from, id };
        let answer = match ask {
            GameAsk::Act {
                action,
                args,
                player,
            } => match GameCommand::parse(&action, &args) {
                Ok(cmd) => self.act(world, player.as_deref(), &cmd, to.clone()),
                Err(e) => Answer::Now(Err(Refusal::new("bad_action", e))),
            },
            GameAsk::Observe { player, fresh } => {
                self.observe(world, player.as_deref(), fresh, to.clone())
            }
            GameAsk::Speak {
                room,
                user_id,
                text,
            } => Answer::Now(
                self.speak(Some(world), room.as_deref(), user_id.as_deref(), &text)
                    .map(Outcome::Ok),
            ),
        };
        if let Answer::Now(reply) = answer {
            self.answer(to, reply);
        }
    }

    /// The call of `id` if it is still forwarded (not timed out, not taken back).
    fn forwarded_call(&mut self, id: u64) -> Option<&mut Call> {
        let c = self.cluster.as_mut()?;
        if !c.forwarded.contains_key(&id) {
            return None;
        }
        let call = self.calls.get_mut(id);
        if call.is_none() {
            c.forwarded.remove(&id);
        }
        call
    }

    /// The owner answered a forwarded call: the request here gets it, and the user's
    /// next call goes.
    fn forward_ended(&mut self, id: u64, reply: Reply, now: Instant) {
        let Some(f) = self.cluster.as_mut().and_then(|c| c.forwarded.remove(&id)) else {
            return;
        };
        let Some(call) = self.calls.finish(id) else {
            return;
        };
        if let Ok(Outcome::Chat(r)) = &reply {
            if let Some(s) = self.world.sessions.get_mut(&f.user) {
                s.crisis |= r.crisis;
            }
        }
        self.start_next(Some(&f.user), now);
        self.answer(call.reply_to, reply);
    }

    /// The nodes alive changed: calls forwarded to a node that is gone wait for its
    /// lease to run out and are run here, with the history it stored.
    pub(crate) fn forwards_lost(&mut self, alive: &[String]) {
        let now = Instant::now();
        let deadline = self.forward_deadline(now);
        let Some(c) = &mut self.cluster else {
            return;
        };
        let lost: Vec<u64> = (c.forwarded.iter())
            .filter(|(_, f)| !alive.contains(&f.node))
            .map(|(job, _)| *job)
            .collect();
        for job in lost {
            let Some(f) = c.forwarded.remove(&job) else {
                continue;
            };
            let Some(call) = self.calls.get_mut(job) else {
                continue;
            };
            log::warn!(
                "cluster: node {} is gone with the chat of {} (job {job}); it runs here once the session's lease is free",
                f.node, f.user
            );
            call.deadline = deadline;
            c.awaiting.insert(f.user.clone(), job);
            c.store.lease(&f.user, false);
        }
    }

    /// A part for a call another node forwarded here: to that node (`thinking` is that
    /// node's own to send).
    pub(crate) fn part_to_node(&mut self, node: &str, id: u64, part: Part) {
        let Part::Text {
            index,
            text,
            crisis,
        } = part
        else {
            return;
        };
        self.send_msg(
            node,
            &Msg::Part {
                id,
                index,
                text,
                crisis,
            },
        );
    }

    /// The answer for a call or game request another node forwarded here: to that node.
    pub(crate) fn reply_to_node(&mut self, node: &str, id: u64, reply: Reply) {
        let msg = match reply {
            Ok(outcome) => Msg::Answer { id, outcome },
            Err(r) => Msg::Refused {
                id,
                code: r.code.to_string(),
                message: r.message,
                retry_after: r.retry_after,
            },
        };
        self.send_msg(node, &msg);
    }

    pub(crate) fn send_msg(&mut self, node: &str, msg: &Msg) {
        let Some(c) = &self.cluster else {
            return;
        };
        if let Ok(body) = serde_json::to_string(msg) {
            c.store.send_to(node, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node b's ask 7 for una's "hello", the crisis protocol already given.
    fn ask(stream: bool, system: Option<&str>) -> Msg {
        Msg::Ask {
            id: 7,
            from: "b".into(),
            user_id: "una".into(),
            username: "Una".into(),
            room: "The Threshold".into(),
            message: "hello".into(),
            crisis: true,
            resources: false,
            stream,
            system: system.map(str::to_string),
        }
    }

    #[test]
    fn messages_read_back_as_written() {
        let all = [
            ask(true, Some("be brief")),
            Msg::Part {
                id: 7,
                index: 1,
                text: " Hi.".into(),
                crisis: false,
            },
            Msg::Answer {
                id: 7,
                outcome: Outcome::Chat(crate::app::outcome::ChatReply {
                    text: "Hi.".into(),
                    user: "Una".into(),
                    room: "The Threshold".into(),
                    session_messages: 4,
                    crisis: true,
                }),
            },
            Msg::Refused {
                id: 7,
                code: "too_many_waiting".into(),
                message: "wait".into(),
                retry_after: Some(1),
            },
            Msg::Game {
                id: 8,
                from: "b".into(),
                world: "mud".into(),
                ask: GameAsk::Act {
                    action: "message".into(),
                    args: serde_json::json!({"text": "hi"}),
                    player: Some("una".into()),
                },
            },
            Msg::Game {
                id: 9,
                from: "b".into(),
                world: "mud".into(),
                ask: GameAsk::Speak {
                    room: None,
                    user_id: Some("una".into()),
                    text: "hello".into(),
                },
            },
            Msg::Answer {
                id: 8,
                outcome: Outcome::Acted {
                    world: "mud".into(),
                    action: "message".into(),
                    result: crate::world::protocol::ActionResult {
                        ok: false,
                        data: None,
                        code: Some("no_player".into()),
                        error: Some("nobody".into()),
                    },
                },
            },
            Msg::Answer {
                id: 10,
                outcome: Outcome::Observed {
                    world: "mud".into(),
                    age_ms: 5,
                    fresh: true,
                    perception: Box::default(),
                },
            },
            Msg::Answer {
                id: 9,
                outcome: Outcome::Ok(serde_json::json!({"ok": true})),
            },
            Msg::Answer {
                id: 9,
                outcome: Outcome::Ok(serde_json::json!("not an object")),
            },
            Msg::Travel {
                id: 11,
                from: "b".into(),
                user_id: "cal".into(),
                to_world: "p".into(),
            },
            Msg::Answer {
                id: 11,
                outcome: Outcome::Travelled {
                    user_id: "cal".into(),
                    world: "p".into(),
                    room: Some("The Bridge".into()),
                    message: "Cal left for p".into(),
                },
            },
        ];
        for m in all {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Msg>(&text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn the_owner_answers_an_ask_and_nothing_else_is_believed() {
        let mut app = App::new(crate::config::Config::default()).expect("app");
        let text = serde_json::to_string(&ask(false, None)).unwrap();
        // Not JSON, an unknown type, and an answer or a part for a request this node
        // never sent (a replay, or another node's): skipped, nothing answered.
        let stray = [
            "not json".to_string(),
            r#"{"type":"launch","id":1}"#.to_string(),
            serde_json::to_string(&Msg::Answer {
                id: 99,
                outcome: Outcome::Ok(serde_json::json!({"ok": true})),
            })
            .unwrap(),
            serde_json::to_string(&Msg::Part {
                id: 99,
                index: 0,
                text: "forged".into(),
                crisis: false,
            })
            .unwrap(),
        ];
        app.on_inbox(stray.to_vec());
        assert!(app.out.answers.is_empty() && app.out.parts.is_empty());
        // The ask is run here and answered to the node it came from, with the crisis
        // reading that node made.
        app.on_inbox(vec![text]);
        match app.out.answers.as_slice() {
            [(ReplyTo::Remote { node, id: 7 }, Ok(Outcome::Chat(r)))] => {
                assert_eq!(node, "b");
                assert!(r.crisis && r.text.contains("988"), "{}", r.text);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_keeps_a_known_code_and_reads_others_as_agent_error() {
        let r = Msg::refusal("too_many_waiting", "wait".into(), Some(1));
        assert_eq!((r.code, r.retry_after), ("too_many_waiting", Some(1)));
        let r = Msg::refusal("made_up", "odd".into(), None);
        assert_eq!((r.code, r.message.as_str()), ("agent_error", "odd"));
    }
}
