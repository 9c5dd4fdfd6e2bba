//! The WorldInterface of seed 003: what an agent can do in a game, whatever the game.
//!
//! [`WorldInterface`] is `observe` / `act` / `speak`. Two implementations:
//! - [`LinkWorld`]: a handle, usable from any thread (an agent worker, a test), whose
//!   calls travel over a channel to the event loop and from there over the game's line
//!   link; the loop answers on a channel of the call's own.
//! - [`MockWorld`]: an in-memory game for tests and demos that applies commands to a
//!   perception the way a game would.

use crate::app::outcome::{Outcome, Reply};
use crate::world::protocol::{
    ActionResult, GameCommand, Item, Perception, QuestEntry, Stat, Stats, Vec3,
};
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Who the agent's words are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Everyone,
    Room(String),
    Player(String),
}

/// Why a game call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GameError {
    /// The game is not connected.
    Down(String),
    /// The game did not answer in time.
    Timeout(String),
    /// The game or the bridge refused the request: (code, why).
    Refused(String, String),
}

impl std::fmt::Display for GameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GameError::Down(m) | GameError::Timeout(m) => f.write_str(m),
            GameError::Refused(code, m) => write!(f, "{m} ({code})"),
        }
    }
}

/// observe / act / speak.
pub trait WorldInterface {
    /// What the agent's character perceives now.
    fn observe(&mut self) -> Result<Perception, GameError>;
    /// Carry out a command. A game that refuses it answers `Ok` with `ok: false`.
    fn act(&mut self, cmd: &GameCommand) -> Result<ActionResult, GameError>;
    /// Say something in the game.
    fn speak(&mut self, text: &str, target: &Target) -> Result<(), GameError>;
}

/// A call from a [`LinkWorld`] handle to the event loop.
#[derive(Debug)]
pub enum LoopRequest {
    Act {
        world: String,
        player: Option<String>,
        cmd: GameCommand,
        reply: Sender<Reply>,
    },
    Observe {
        world: String,
        player: Option<String>,
        reply: Sender<Reply>,
    },
    Speak {
        world: String,
        target: Target,
        text: String,
        reply: Sender<Reply>,
    },
}

/// A game world reached through the bridge's link to it.
pub struct LinkWorld {
    world: String,
    player: Option<String>,
    tx: Sender<LoopRequest>,
    waker: Arc<Waker>,
    /// How long to wait for the loop's answer (the loop itself answers 504 after
    /// `line.request_timeout_s`; this only guards against a stopped loop).
    wait: Duration,
}

/// Makes [`LinkWorld`] handles for a running bridge; cheap to clone and send.
#[derive(Clone)]
pub struct Worlds {
    pub(crate) tx: Sender<LoopRequest>,
    pub(crate) waker: Arc<Waker>,
    pub(crate) wait: Duration,
}

impl Worlds {
    /// A handle to the game `world`.
    pub fn world(&self, world: &str) -> LinkWorld {
        LinkWorld {
            world: world.to_string(),
            player: None,
            tx: self.tx.clone(),
            waker: self.waker.clone(),
            wait: self.wait,
        }
    }
}

impl LinkWorld {
    /// Act on and observe this player (default: the game's choice).
    pub fn for_player(mut self, player: &str) -> LinkWorld {
        self.player = Some(player.to_string());
        self
    }

    fn call(&self, make: impl FnOnce(Sender<Reply>) -> LoopRequest) -> Result<Outcome, GameError> {
        let (reply, rx): (Sender<Reply>, Receiver<Reply>) = crossbeam_channel::bounded(1);
        self.tx
            .send(make(reply))
            .map_err(|_| GameError::Down("the bridge has stopped".into()))?;
        let _ = self.waker.wake();
        let reply = rx
            .recv_timeout(self.wait)
            .map_err(|_| GameError::Timeout("the bridge did not answer".into()))?;
        reply.map_err(|r| match r.code {
            "link_down" => GameError::Down(r.message),
            "game_timeout" => GameError::Timeout(r.message),
            code => GameError::Refused(code.to_string(), r.message),
        })
    }
}

impl WorldInterface for LinkWorld {
    fn observe(&mut self) -> Result<Perception, GameError> {
        let outcome = self.call(|reply| LoopRequest::Observe {
            world: self.world.clone(),
            player: self.player.clone(),
            reply,
        })?;
        match outcome {
            Outcome::Observed { perception, .. } => Ok(*perception),
            other => Err(unexpected("observe", &other)),
        }
    }

    fn act(&mut self, cmd: &GameCommand) -> Result<ActionResult, GameError> {
        let outcome = self.call(|reply| LoopRequest::Act {
            world: self.world.clone(),
            player: self.player.clone(),
            cmd: cmd.clone(),
            reply,
        })?;
        let Outcome::Acted {
            world,
            action,
            result,
        } = outcome
        else {
            return Err(unexpected("act", &outcome));
        };
        if result.ok {
            return Ok(ActionResult {
                ok: true,
                data: Some(result.data.unwrap_or_else(|| serde_json::json!({}))),
                code: None,
                error: None,
            });
        }
        // A game's own refusal of an action is an answer, not an error: the same words
        // the HTTP door shows.
        let code = result.code.unwrap_or_else(|| "failed".into());
        let why = result.error.unwrap_or_else(|| "no reason given".into());
        Ok(ActionResult {
            ok: false,
            data: None,
            code: Some(code),
            error: Some(format!("{world} could not {action}: {why}")),
        })
    }

    fn speak(&mut self, text: &str, target: &Target) -> Result<(), GameError> {
        self.call(|reply| LoopRequest::Speak {
            world: self.world.clone(),
            target: target.clone(),
            text: text.to_string(),
            reply,
        })
        .map(|_| ())
    }
}

/// The loop answered a call with an outcome of another kind (a bug, not the game's).
fn unexpected(call: &str, outcome: &Outcome) -> GameError {
    GameError::Refused(
        "internal_error".into(),
        format!("the bridge answered {call} with {outcome:?}"),
    )
}

/// An in-memory game: commands change its perception as a game would.
#[derive(Debug, Clone, Default)]
pub struct MockWorld {
    pub perception: Perception,
    /// Everything said through [`WorldInterface::speak`], in order.
    pub spoken: Vec<(String, Target)>,
    /// Console commands run, in order.
    pub console: Vec<String>,
}

impl MockWorld {
    /// A player standing in `cell` with full stats and nothing in their pockets.
    pub fn new(player: &str, cell: &str) -> MockWorld {
        let full = |v| {
            Some(Stat {
                current: v,
                base: v,
            })
        };
        MockWorld {
            perception: Perception {
                world: Some("mock".into()),
                player: Some(player.into()),
                cell: Some(cell.into()),
                position: Some(Vec3::default()),
                stats: Some(Stats {
                    health: full(50.0),
                    magicka: full(50.0),
                    fatigue: full(50.0),
                }),
                level: Some(1),
                players: vec![player.into()],
                ..Perception::default()
            },
            ..MockWorld::default()
        }
    }
}

fn refused(code: &str, why: String) -> ActionResult {
    ActionResult {
        ok: false,
        data: None,
        code: Some(code.into()),
        error: Some(why),
    }
}

fn done(data: Value) -> ActionResult {
    ActionResult {
        ok: true,
        data: Some(data),
        code: None,
        error: None,
    }
}

impl WorldInterface for MockWorld {
    fn observe(&mut self) -> Result<Perception, GameError> {
        Ok(self.perception.clone())
    }

    fn act(&mut self, cmd: &GameCommand) -> Result<ActionResult, GameError> {
        let p = &mut self.perception;
        Ok(match cmd {
            GameCommand::Teleport { cell, pos, rot } => {
                p.cell = Some(cell.clone());
                p.position = Some(pos.unwrap_or_default());
                if rot.is_some() {
                    p.rotation = *rot;
                }
                done(serde_json::json!({"cell": cell}))
            }
            GameCommand::AddItem { ref_id, count, .. } => {
                let count = i64::from(*count);
                match p.inventory.iter_mut().find(|i| &i.ref_id == ref_id) {
                    Some(i) => i.count += count,
                    None => p.inventory.push(Item {
                        ref_id: ref_id.clone(),
                        count,
                    }),
                }
                done(serde_json::json!({"ref_id": ref_id, "count": count}))
            }
            GameCommand::RemoveItem { ref_id, count } => {
                let count = i64::from(*count);
                match p.inventory.iter().position(|i| &i.ref_id == ref_id) {
                    Some(at) if p.inventory[at].count >= count => {
                        p.inventory[at].count -= count;
                        if p.inventory[at].count == 0 {
                            p.inventory.remove(at);
                        }
                        done(serde_json::json!({"ref_id": ref_id, "count": count}))
                    }
                    _ => refused(
                        "not_enough",
                        format!("the player does not carry {count} {ref_id}"),
                    ),
                }
            }
            GameCommand::Journal { quest, index, .. } => {
                let index = i64::from(*index);
                match p.journal.iter_mut().find(|q| &q.quest == quest) {
                    Some(q) => q.index = q.index.max(index),
                    None => p.journal.push(QuestEntry {
                        quest: quest.clone(),
                        index,
                    }),
                }
                done(serde_json::json!({"quest": quest, "index": index}))
            }
            GameCommand::SetStat { name, value } => {
                let stats = p.stats.get_or_insert_with(Stats::default);
                let slot = match name.as_str() {
                    "health" => Some(&mut stats.health),
                    "magicka" => Some(&mut stats.magicka),
                    "fatigue" => Some(&mut stats.fatigue),
                    _ => None,
                };
                match slot {
                    Some(s) => {
                        *s = Some(Stat {
                            current: *value,
                            base: value.max(s.map_or(0.0, |s| s.base)),
                        })
                    }
                    None if name == "level" => p.level = Some(*value as i64),
                    None => {}
                }
                done(serde_json::json!({"name": name, "value": value}))
            }
            GameCommand::Console { command } => {
                self.console.push(command.clone());
                done(serde_json::json!({"ran": command}))
            }
            GameCommand::Message { text, to } => {
                let target = to.clone().map_or(Target::Everyone, Target::Player);
                self.spoken.push((text.clone(), target));
                done(serde_json::json!({}))
            }
        })
    }

    fn speak(&mut self, text: &str, target: &Target) -> Result<(), GameError> {
        self.spoken.push((text.to_string(), target.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(action: &str, args: Value) -> GameCommand {
        GameCommand::parse(action, &args).expect("valid command")
    }

    #[test]
    fn the_mock_world_applies_commands_like_a_game() {
        let mut w = MockWorld::new("Timmy", "Seyda Neen");
        let r = w
            .act(&cmd(
                "teleport",
                json!({"cell": "Balmora, Temple", "pos": {"x": 1, "y": 2, "z": 3}}),
            ))
            .unwrap();
        assert!(r.ok);
        let p = w.observe().unwrap();
        assert_eq!(p.cell.as_deref(), Some("Balmora, Temple"));
        assert_eq!(
            p.position,
            Some(Vec3 {
                x: 1.0,
                y: 2.0,
                z: 3.0
            })
        );

        w.act(&cmd("add_item", json!({"ref_id": "gold_001", "count": 10})))
            .unwrap();
        w.act(&cmd("add_item", json!({"ref_id": "gold_001", "count": 5})))
            .unwrap();
        assert_eq!(w.observe().unwrap().inventory[0].count, 15);
        let too_many = w
            .act(&cmd(
                "remove_item",
                json!({"ref_id": "gold_001", "count": 20}),
            ))
            .unwrap();
        assert!(!too_many.ok);
        assert_eq!(too_many.code.as_deref(), Some("not_enough"));
        assert!(
            w.act(&cmd(
                "remove_item",
                json!({"ref_id": "gold_001", "count": 15})
            ))
            .unwrap()
            .ok
        );
        assert!(w.observe().unwrap().inventory.is_empty());

        w.act(&cmd("journal", json!({"quest": "a1_1", "index": 10})))
            .unwrap();
        w.act(&cmd("journal", json!({"quest": "a1_1", "index": 5})))
            .unwrap();
        assert_eq!(
            w.observe().unwrap().journal[0].index,
            10,
            "a quest never goes back"
        );

        w.act(&cmd("set_stat", json!({"name": "health", "value": 20})))
            .unwrap();
        let health = w.observe().unwrap().stats.unwrap().health.unwrap();
        assert_eq!((health.current, health.base), (20.0, 50.0));

        w.speak("hello", &Target::Room("Balmora, Temple".into()))
            .unwrap();
        w.act(&cmd("message", json!({"text": "hi", "to": "Alice"})))
            .unwrap();
        assert_eq!(w.spoken.len(), 2);
        assert_eq!(w.spoken[1], ("hi".into(), Target::Player("Alice".into())));
    }
}
