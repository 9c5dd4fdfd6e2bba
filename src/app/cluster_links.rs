//! Cluster mode: a game link is connected to one node, and every node knows which.
//!
//! A node tells the log when it holds a world's link, which rooms that link hosts, and
//! when it no longer holds it (entries of kind `link`: `{"world", "node", "up", "rooms"}`);
//! every node keeps the last word per world. `act`, `observe` and `speak` for a world
//! whose link is on another live node (or a `speak` naming only a room such a link hosts)
//! go to that node's inbox ([`Msg::Game`]), are carried out there as if they came there,
//! and their answers come back the same way (`app::forward`). When a node joins, every
//! node says again which links it holds (the newcomer's log may begin after the first
//! word); when a node dies, the node cleaning up after it says its links are gone.
//!
//! A request sent elsewhere waits at most `line.request_timeout_s` plus `node_ttl_s`
//! (then 504 `game_timeout`), and gets 503 `link_down` at once if that node dies.

use crate::app::calls::ReplyTo;
use crate::app::forward::{GameAsk, Msg};
use crate::app::outcome::{Refusal, Reply};
use crate::app::{Answer, App};
use crate::store::cluster::{Record, KIND_LINK};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// One `link` entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LinkNews {
    world: String,
    node: String,
    up: bool,
    /// The rooms (canonical names) the world's link hosts there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rooms: Vec<String>,
}

/// A request this node sent to the node holding a game's link.
#[derive(Debug)]
struct RemoteGame {
    node: String,
    world: String,
    reply_to: ReplyTo,
    deadline: Instant,
}

/// What a node knows of the world's game links across nodes.
#[derive(Debug, Default)]
pub struct LinkMap {
    /// The worlds whose link this node last told the log it holds, with their rooms.
    announced: BTreeMap<String, Vec<String>>,
    /// Which node holds each world's link, as the log says last.
    holders: HashMap<String, String>,
    /// The rooms each world's link hosts, as the log says last.
    rooms: HashMap<String, Vec<String>>,
    /// Entries for the next proposal.
    pending: Vec<LinkNews>,
    /// Requests sent to a link on another node, by id.
    asks: HashMap<u64, RemoteGame>,
    /// The other nodes alive at the last look (a newcomer makes every node re-announce).
    seen: BTreeSet<String>,
    /// The links' generation `announced` was taken at (`None`: announce again).
    announced_at: Option<u64>,
}

impl LinkMap {
    /// The node holding `world`'s link, if the log names one.
    pub fn holder(&self, world: &str) -> Option<&str> {
        self.holders.get(world).map(String::as_str)
    }

    /// The world whose link hosts `room` (a canonical name), if the log names one.
    pub fn world_hosting(&self, room: &str) -> Option<&str> {
        (self.rooms.iter())
            .find(|(w, rooms)| self.holders.contains_key(*w) && rooms.iter().any(|r| r == room))
            .map(|(w, _)| w.as_str())
    }
}

impl App {
    /// The `link` entries for this node's next proposal: links that came up or went down
    /// here since the last one.
    pub(crate) fn link_records(&mut self) -> Vec<Record> {
        let Some(c) = &mut self.cluster else {
            return Vec::new();
        };
        let m = &mut c.links;
        let generation = self.links.generation();
        if m.announced_at != Some(generation) {
            m.announced_at = Some(generation);
            let here = self.links.hosted();
            let came = (here.iter())
                .filter(|(w, rooms)| m.announced.get(*w) != Some(rooms))
                .map(|(w, rooms)| (w, true, rooms.clone()));
            let went = (m.announced.keys())
                .filter(|w| !here.contains_key(*w))
                .map(|w| (w, false, Vec::new()));
            let news: Vec<LinkNews> = (came.chain(went))
                .map(|(w, up, rooms)| LinkNews {
                    world: w.clone(),
                    node: c.node.clone(),
                    up,
                    rooms,
                })
                .collect();
            m.pending.extend(news);
            m.announced = here;
        }
        if m.pending.is_empty() {
            return Vec::new();
        }
        let now = crate::world::time::now_ms();
        (m.pending.drain(..))
            .filter_map(|n| serde_json::to_string(&n).ok())
            .map(|body| Record {
                kind: KIND_LINK,
                ts_ms: now,
                body,
            })
            .collect()
    }

    /// A `link` entry of the log.
    pub(crate) fn apply_link(&mut self, seq: u64, body: &str) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let news: LinkNews = match serde_json::from_str(body) {
            Ok(n) => n,
            Err(e) => return log::warn!("cluster: log entry {seq} is not a link: {e}"),
        };
        let m = &mut c.links;
        match news.up {
            true => {
                m.rooms.insert(news.world.clone(), news.rooms);
                m.holders.insert(news.world, news.node);
            }
            false if m.holder(&news.world) == Some(news.node.as_str()) => {
                m.holders.remove(&news.world);
                m.rooms.remove(&news.world);
            }
            false => {}
        }
    }

    /// The nodes alive changed: a newcomer hears again which links this node holds, and
    /// requests waiting on a node that is gone get 503.
    pub(crate) fn link_nodes(&mut self, alive: &[String]) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let others: BTreeSet<String> = (alive.iter()).filter(|n| **n != c.node).cloned().collect();
        let m = &mut c.links;
        if others.difference(&m.seen).next().is_some() {
            m.announced.clear();
            m.announced_at = None;
        }
        m.seen = others;
        let lost: Vec<u64> = (m.asks.iter())
            .filter(|(_, g)| !alive.contains(&g.node))
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<RemoteGame> = lost
            .iter()
            .filter_map(|id| c.links.asks.remove(id))
            .collect();
        for g in gone {
            let why = format!(
                "the node holding {}'s link ({}) went down before it answered",
                g.world, g.node
            );
            self.answer(g.reply_to, Err(Refusal::new("link_down", why)));
        }
    }

    /// `node` died and this node cleans up after it: its links are gone, for everyone.
    pub(crate) fn links_gone_with(&mut self, node: &str) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let m = &mut c.links;
        let worlds: Vec<String> = (m.holders.iter())
            .filter(|(_, n)| *n == node)
            .map(|(w, _)| w.clone())
            .collect();
        for world in worlds {
            m.pending.push(LinkNews {
                world,
                node: node.to_string(),
                up: false,
                rooms: Vec::new(),
            });
        }
    }

    /// Send `ask` to the node that holds `world`'s link, if another live node does
    /// (`None`: none does, or the request itself came from another node and is not sent
    /// on).
    pub(crate) fn game_elsewhere(
        &mut self,
        world: &str,
        ask: GameAsk,
        reply_to: &ReplyTo,
    ) -> Option<Answer> {
        let node = self.cluster.as_ref()?.links.holder(world)?.to_string();
        let within = self.game_timeout();
        let w = world.to_string();
        self.ask_node(&node, world, within, reply_to, move |id, from| Msg::Game {
            id,
            from,
            world: w,
            ask,
        })
    }

    /// Send what `msg` makes (from the request's id and this node's) to `node` if it is
    /// another live node, and keep `reply_to` for its answer for `within` (plus
    /// `node_ttl_s`). `about` names what was asked, for the refusals.
    pub(crate) fn ask_node(
        &mut self,
        node: &str,
        about: &str,
        within: std::time::Duration,
        reply_to: &ReplyTo,
        msg: impl FnOnce(u64, String) -> Msg,
    ) -> Option<Answer> {
        if matches!(reply_to, ReplyTo::Remote { .. }) {
            return None;
        }
        let id = self.calls.next_job_id();
        let c = self.cluster.as_mut()?;
        if node == c.node || !c.nodes.iter().any(|n| n == node) {
            return None;
        }
        c.links.asks.insert(
            id,
            RemoteGame {
                node: node.to_string(),
                world: about.to_string(),
                reply_to: reply_to.clone(),
                deadline: Instant::now() + within + c.store.settings.node_ttl,
            },
        );
        let msg = msg(id, c.node.clone());
        self.send_msg(node, &msg);
        Some(Answer::Later)
    }

    /// The answer to a request this node sent to a link elsewhere.
    pub(crate) fn game_answered(&mut self, id: u64, reply: Reply) {
        let asked = (self.cluster.as_mut()).and_then(|c| c.links.asks.remove(&id));
        if let Some(g) = asked {
            self.answer(g.reply_to, reply);
        }
    }

    /// Requests sent elsewhere whose time is up: 504.
    pub(crate) fn expire_remote_games(&mut self, now: Instant) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        if c.links.asks.is_empty() {
            return;
        }
        let late: Vec<u64> = (c.links.asks.iter())
            .filter(|(_, g)| g.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let secs = self.cfg.line.request_timeout_s;
        for id in late {
            let Some(g) = self.cluster.as_mut().and_then(|c| c.links.asks.remove(&id)) else {
                continue;
            };
            let why = format!(
                "{} (its link is on node {}) did not answer within {secs} s",
                g.world, g.node
            );
            self.answer(g.reply_to, Err(Refusal::new("game_timeout", why)));
        }
    }
}
