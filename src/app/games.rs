//! The hub's side of the games: the bridge's own requests to them (`act`, `observe`,
//! `speak`), shared by the HTTP door and the `WorldInterface` handles, answered when the
//! game's `result` or `perception` comes back (or refused: the link is down, the game
//! did not answer in time); and what happens when a link goes away.

use crate::app::calls::ReplyTo;
use crate::app::forward::GameAsk;
use crate::app::links::{Asked, Pending};
use crate::app::outcome::{Outcome, Refusal};
use crate::app::{Answer, App};
use crate::codec::ndjson::encode;
use crate::conn::ConnId;
use crate::world::protocol::{ActionResult, GameCommand};
use crate::world::time::now_ms;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The longest a [`crate::doors::game::LinkWorld`] waits for the loop beyond the game's own
/// deadline (`line.request_timeout_s`), in case the loop has stopped.
pub const HANDLE_GRACE: Duration = Duration::from_secs(5);

impl App {
    /// The world id a link speaks for (`"generic"` for an anonymous one).
    pub fn link_world(&self, conn: ConnId) -> String {
        self.links
            .get(conn)
            .and_then(|l| l.world.clone())
            .unwrap_or_else(|| "generic".into())
    }

    /// Queue a message for a link.
    fn send_to_link(&mut self, link: ConnId, msg: &Value) {
        let mut line = Vec::with_capacity(256);
        encode(msg, &mut line);
        self.out.lines.push((link, line));
    }

    /// The link of `world`, or 503 naming it.
    fn link_for(&self, world: &str) -> Result<ConnId, Refusal> {
        self.links.link_of(world).ok_or_else(|| {
            let known = self.links.worlds();
            Refusal::new(
                "link_down",
                format!(
                    "world {world} is not connected{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (connected: {})", known.join(", "))
                    }
                ),
            )
        })
    }

    /// Ask `world` to carry out `cmd`; the answer comes later (or 503 now). In cluster
    /// mode a world whose link is on another node is asked through that node.
    pub fn act(
        &mut self,
        world: &str,
        player: Option<&str>,
        cmd: &GameCommand,
        reply_to: ReplyTo,
    ) -> Answer {
        let link = match self.link_for(world) {
            Ok(l) => l,
            Err(r) => {
                let ask = GameAsk::Act {
                    action: cmd.action().to_string(),
                    args: cmd.args(),
                    player: player.map(str::to_string),
                };
                let elsewhere = self.game_elsewhere(world, ask, &reply_to);
                return elsewhere.unwrap_or(Answer::Now(Err(r)));
            }
        };
        let asked = Asked::Act {
            action: cmd.action().to_string(),
        };
        let id = self.links.ask(
            link,
            world,
            asked,
            reply_to,
            Instant::now(),
            self.game_timeout(),
        );
        self.metrics.count_game("act");
        self.send_to_link(link, &cmd.to_message(&id, player));
        Answer::Later
    }

    /// The latest perception of `world`; with `fresh`, ask the game first.
    pub fn observe(
        &mut self,
        world: &str,
        player: Option<&str>,
        fresh: bool,
        reply_to: ReplyTo,
    ) -> Answer {
        let here = self.link_for(world);
        if let Err(r) = &here {
            // The link may be on another node (cluster mode): it has the perception.
            let ask = GameAsk::Observe {
                player: player.map(str::to_string),
                fresh,
            };
            if let Some(answer) = self.game_elsewhere(world, ask, &reply_to) {
                return answer;
            }
            if fresh || self.links.perception(world).is_none() {
                return Answer::Now(Err(r.clone()));
            }
        }
        if !fresh {
            return Answer::Now(match self.links.perception(world) {
                Some(seen) => Ok(Outcome::Observed {
                    world: world.to_string(),
                    age_ms: seen.at.elapsed().as_millis() as u64,
                    fresh: false,
                    perception: Box::new(seen.perception.clone()),
                }),
                None => Err(Refusal::new(
                    "no_perception",
                    format!("{world} has sent no perception yet; ask with ?fresh=1"),
                )),
            });
        }
        let link = match here {
            Ok(l) => l,
            Err(r) => return Answer::Now(Err(r)),
        };
        let id = self.links.ask(
            link,
            world,
            Asked::Observe,
            reply_to,
            Instant::now(),
            self.game_timeout(),
        );
        self.metrics.count_game("observe");
        let mut msg = json!({"type": "observe", "id": id});
        if let Some(p) = player {
            msg["player"] = json!(p);
        }
        self.send_to_link(link, &msg);
        Answer::Later
    }

    /// [`App::speak`], or, for a `world` whose link is on another node (cluster mode), or a
    /// `room` only a link on another node hosts, through that node.
    pub fn speak_anywhere(
        &mut self,
        world: Option<&str>,
        room: Option<&str>,
        user_id: Option<&str>,
        text: &str,
        reply_to: ReplyTo,
    ) -> Answer {
        if let Some(w) = self.speak_elsewhere(world, room) {
            let ask = GameAsk::Speak {
                room: room.map(str::to_string),
                user_id: user_id.map(str::to_string),
                text: text.to_string(),
            };
            if let Some(answer) = self.game_elsewhere(&w, ask, &reply_to) {
                return answer;
            }
        }
        Answer::Now(self.speak(world, room, user_id, text).map(Outcome::Ok))
    }

    /// The world a `speak` must go to on another node, if it must: the `world` named when
    /// no link here speaks for it, else the world whose link hosts `room` when no link
    /// here does (cluster mode).
    fn speak_elsewhere(&self, world: Option<&str>, room: Option<&str>) -> Option<String> {
        if let Some(w) = world {
            return self.link_for(w).is_err().then(|| w.to_string());
        }
        let room = room?;
        let room = self.world.resolve(room).unwrap_or(room);
        if self.links.host_of(room).is_some() {
            return None;
        }
        let cluster = self.cluster.as_ref()?;
        cluster.links.world_hosting(room).map(str::to_string)
    }

    /// The agent speaks in a game: to one player (`user_id`), a room, or everyone. The
    /// link is the one of `world`, else the host of `room`. A room the bridge knows also
    /// records it as a `bark` event.
    pub fn speak(
        &mut self,
        world: Option<&str>,
        room: Option<&str>,
        user_id: Option<&str>,
        text: &str,
    ) -> Result<Value, Refusal> {
        let room = room
            .and_then(|r| self.world.resolve(r))
            .map(str::to_string)
            .or(room.map(str::to_string));
        let link = match (world, &room) {
            (Some(w), _) => self.link_for(w)?,
            (None, Some(r)) => self.links.host_of(r).ok_or_else(|| {
                Refusal::new("link_down", format!("no game link hosts the room {r:?}"))
            })?,
            (None, None) => {
                return Err(Refusal::new(
                    "missing_field",
                    "`speak` needs `world` or `room`",
                ))
            }
        };
        let mut msg = json!({"type": "speak", "text": text});
        if let Some(r) = &room {
            msg["room"] = json!(r);
        }
        if let Some(u) = user_id {
            msg["user_id"] = json!(u);
        }
        self.send_to_link(link, &msg);
        self.route_events(None);
        let event = room.and_then(|r| self.bark_in_room(&r, text, None, now_ms()));
        // The link already has the words as `speak`; the bark goes to everyone else.
        self.route_events(Some(link));
        let world = self.link_world(link);
        Ok(json!({"ok": true, "world": world, "event": event}))
    }

    /// How long a game has to answer `act` and `observe`.
    pub fn game_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.line.request_timeout_s)
    }

    /// Requests to games whose time is up: 504.
    pub fn expire_game_requests(&mut self, now: Instant) {
        let secs = self.cfg.line.request_timeout_s;
        for p in self.links.expire(now) {
            let what = match &p.asked {
                Asked::Act { action } => format!("`{action}`"),
                Asked::Observe => "`observe`".to_string(),
            };
            let why = format!("{} did not answer {what} within {secs} s", p.world);
            log::warn!("{why}");
            self.answer(p.reply_to, Err(Refusal::new("game_timeout", why)));
        }
    }

    /// A link is gone: its waiting requests get 503.
    pub fn link_closed(&mut self, conn: ConnId, why: Option<&str>, now: Instant) {
        let world = self.link_world(conn);
        let gone: Vec<Pending> = self.links.close(conn, why, now, now_ms());
        for p in gone {
            let refusal = Refusal::new(
                "link_down",
                format!("the link to {world} went down before it answered"),
            );
            self.answer(p.reply_to, Err(refusal));
        }
    }
}

/// What a game's `result` answers an `act` (or an `observe` that got one) with.
pub fn acted(p: &Pending, result: ActionResult) -> Outcome {
    let action = match &p.asked {
        Asked::Act { action } => action.clone(),
        Asked::Observe => "observe".to_string(),
    };
    Outcome::Acted {
        world: p.world.clone(),
        action,
        result,
    }
}
