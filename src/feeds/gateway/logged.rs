//! The gateway in cluster mode: its frames go through the world's shared log.
//!
//! With several nodes serving one world, a gateway client on node A must reach clients
//! on node B, and resume on any node. So every frame the hub would deliver (a client's
//! broadcast or directed message, the bridge's publications, `agent_joined` /
//! `agent_left`) is *proposed* instead ([`Gateway::take_proposals`]); the hub takes it
//! back from the log on every node ([`Gateway::apply_logged`]), stamps it with the log's
//! number as its `gateway_seq` (and the log's `epoch`), keeps it in its resume history
//! and delivers it to the clients connected here. World events are log entries already:
//! their frames take the event's number ([`Gateway::publish_event`]). Every node's
//! history is then the same, and `?since=` works on any of them.
//!
//! The agent registry is shared the same way: `agent_joined` / `agent_left` entries say
//! which node an agent is on, so `target_id` reaches an agent anywhere and
//! `/api/gateway/status` lists them all. The last `agent_joined` of an id in the log
//! wins: the node that held it before closes its connection with 1000 "replaced".

use super::{stamp_as, Gateway, Output, Registration, CLOSE_REPLACED};
use crate::world::lookalike;
use crate::world::time::rfc3339;
use serde_json::{json, Value};
use std::collections::HashMap;

/// A gateway frame as the log carries it: who sent it, to whom, and the message as it
/// was written, without the hub's stamps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogFrame {
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub text: String,
}

/// An agent registered on another node.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    pub node: String,
    pub role: String,
    pub key: String,
}

/// The hub's cluster-mode state.
#[derive(Debug)]
pub struct Logged {
    node: String,
    /// Agents registered on other nodes, by id.
    pub(super) remote: HashMap<String, Remote>,
    /// Agents registered here whose `agent_joined` the log has not brought back yet: an
    /// older `agent_joined` of the same id from another node does not replace them.
    joining: HashMap<String, usize>,
    proposals: Vec<LogFrame>,
    /// The epoch of the log the frames come from (stamped into every frame).
    pub(super) epoch: Option<String>,
}

impl Gateway {
    /// From now on the hub's frames go through the shared log; `node` is this node.
    pub fn log_frames(&mut self, node: &str) {
        self.logged = Some(Logged {
            node: node.to_string(),
            remote: HashMap::new(),
            joining: HashMap::new(),
            proposals: Vec::new(),
            epoch: None,
        });
    }

    /// The frames proposed since the last call, in order.
    pub fn take_proposals(&mut self) -> Vec<LogFrame> {
        match &mut self.logged {
            Some(l) => std::mem::take(&mut l.proposals),
            None => Vec::new(),
        }
    }

    /// The log's epoch, stamped into the frames from now on.
    pub fn set_log_epoch(&mut self, epoch: Option<&str>) {
        if let Some(l) = &mut self.logged {
            if l.epoch.as_deref() != epoch {
                l.epoch = epoch.map(str::to_string);
            }
        }
    }

    /// The log's epoch (cluster mode).
    pub fn log_epoch(&self) -> Option<&str> {
        self.logged.as_ref().and_then(|l| l.epoch.as_deref())
    }

    /// The node an agent is registered on, when it is another one.
    pub fn remote_node(&self, agent_id: &str) -> Option<&str> {
        let l = self.logged.as_ref()?;
        l.remote.get(agent_id).map(|r| r.node.as_str())
    }

    pub(super) fn known_anywhere(&self, agent_id: &str) -> bool {
        self.agents.contains_key(agent_id) || self.remote_node(agent_id).is_some()
    }

    /// The exact id of a remote agent whose look-alike key is `key`.
    pub(super) fn remote_with_key(&self, key: &str) -> Option<&str> {
        let l = self.logged.as_ref()?;
        (l.remote.iter())
            .find(|(_, r)| r.key == key)
            .map(|(id, _)| id.as_str())
    }

    pub(super) fn propose(&mut self, from: &str, target: Option<String>, text: &str) {
        if let Some(l) = &mut self.logged {
            l.proposals.push(LogFrame {
                from: from.to_string(),
                target,
                text: text.to_string(),
            });
        }
    }

    pub(super) fn propose_lifecycle(&mut self, kind: &str, reg: &Registration, now_ms: u64) {
        if kind == "agent_joined" {
            if let Some(l) = &mut self.logged {
                *l.joining.entry(reg.agent_id.clone()).or_insert(0) += 1;
            }
        }
        let text = json!({
            "type": kind,
            "agentId": reg.agent_id,
            "role": reg.role,
            "timestamp": rfc3339(now_ms),
        })
        .to_string();
        self.propose(&reg.agent_id, None, &text);
    }

    /// The bridge's agent barks in `room` (cluster mode: the frame goes into the log with
    /// its `reply_id`; the bark's room event makes no frame of its own).
    pub fn propose_bark(&mut self, room: &str, text: &str, reply_id: Option<u64>, now_ms: u64) {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), "bark".into());
        m.insert("text".into(), text.into());
        m.insert("agentId".into(), self.limits.agent_id.clone().into());
        m.insert("room".into(), room.into());
        if let Some(id) = reply_id {
            m.insert("reply_id".into(), id.into());
        }
        m.insert("timestamp".into(), rfc3339(now_ms).into());
        let me = self.limits.agent_id.clone();
        self.propose(&me, None, &Value::Object(m).to_string());
    }

    /// A gateway frame of the log (number `seq`, appended by `node`), on this node: the
    /// registry follows joins and leaves, then the frame is stamped, kept for resumes
    /// and delivered to the clients here that it is for.
    pub fn apply_logged(
        &mut self,
        frame: LogFrame,
        seq: u64,
        node: &str,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut msg = match super::super::frame_object(&frame.text) {
            Ok(m) => m,
            Err((_, why)) => {
                log::warn!("gateway: log entry {seq} is not a frame: {why}");
                return;
            }
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let agent = msg.get("agentId").and_then(Value::as_str).unwrap_or("");
        match kind {
            "agent_joined" => {
                let role = msg.get("role").and_then(Value::as_str).unwrap_or("agent");
                self.joined_on(agent, role, node, out);
            }
            "agent_left" => {
                // A dead node's agents are announced gone by the node cleaning up after
                // it, naming the dead node.
                let from = msg.get("node").and_then(Value::as_str).unwrap_or(node);
                if let Some(l) = &mut self.logged {
                    if l.remote.get(agent).is_some_and(|r| r.node == from) {
                        l.remote.remove(agent);
                    }
                }
            }
            _ => {}
        }
        self.seq = self.seq.max(seq);
        let epoch = self.log_epoch().map(str::to_string);
        let stamped = stamp_as(&frame.text, &mut msg, &frame.from, seq, epoch.as_deref());
        self.remember(&frame.from, frame.target.clone(), stamped.clone(), now_ms);
        match &frame.target {
            Some(t) => {
                if let Some(&conn) = self.agents.get(t) {
                    self.deliver(conn, stamped, out);
                }
            }
            None => {
                let except = self.agents.get(&frame.from).copied();
                self.broadcast(except, stamped, out);
            }
        }
    }

    /// `agent_joined` of `agent` on `node`: the registry says where it is now; a
    /// connection here with that id is replaced (unless this node registered it again
    /// after, which comes later in the log).
    fn joined_on(&mut self, agent: &str, role: &str, node: &str, out: &mut Vec<Output>) {
        let Some(l) = &mut self.logged else {
            return;
        };
        if node == l.node {
            if let Some(n) = l.joining.get_mut(agent) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    l.joining.remove(agent);
                }
            }
            l.remote.remove(agent);
            return;
        }
        let ours_later = l.joining.contains_key(agent);
        l.remote.insert(
            agent.to_string(),
            Remote {
                node: node.to_string(),
                role: role.to_string(),
                key: lookalike::key(agent),
            },
        );
        if ours_later {
            return;
        }
        let Some(conn) = self.agents.remove(agent) else {
            return;
        };
        self.keys.retain(|_, id| id != agent);
        self.heartbeat.remove(conn);
        self.clients.remove(&conn);
        self.counts.replaced += 1;
        out.push(Output::Close {
            conn,
            code: CLOSE_REPLACED,
            reason: format!("replaced by a new connection for agentId {agent} on node {node}"),
        });
    }

    /// `node` is dead: each agent still registered there leaves (an `agent_left` naming
    /// the node, through the log). Agents that registered on another node since stay.
    pub fn node_gone(&mut self, node: &str, now_ms: u64) {
        let Some(l) = &self.logged else {
            return;
        };
        let mut gone: Vec<(String, String)> = (l.remote.iter())
            .filter(|(_, r)| r.node == node)
            .map(|(id, r)| (id.clone(), r.role.clone()))
            .collect();
        gone.sort();
        for (agent, role) in gone {
            let text = json!({
                "type": "agent_left",
                "agentId": agent,
                "role": role,
                "timestamp": rfc3339(now_ms),
                "node": node,
            })
            .to_string();
            self.propose(&agent, None, &text);
        }
    }

    /// The log was lost (Redis restarted empty): the history goes, the numbers start
    /// again, and every client here is told `resync_required`.
    pub fn log_reset(&mut self, epoch: Option<&str>, out: &mut Vec<Output>) {
        let old = self.seq;
        self.history.clear();
        self.seq = 0;
        self.set_log_epoch(epoch);
        if let Some(l) = &mut self.logged {
            l.remote.clear();
        }
        self.counts.resyncs += self.agents.len() as u64;
        let frame = json!({
            "type": "resync_required",
            "since": old,
            "oldest": Value::Null,
            "gateway_seq": 0,
            "epoch": epoch,
            "error": "the cluster's log was lost (Redis restarted empty): a new epoch began",
        });
        self.broadcast(None, super::Frame::from(frame.to_string()), out);
    }

    /// The agents of other nodes, as `/api/gateway/status` lists them.
    pub(super) fn remote_status(&self) -> Vec<(String, Value)> {
        let Some(l) = &self.logged else {
            return Vec::new();
        };
        (l.remote.iter())
            .filter(|(id, _)| !self.agents.contains_key(*id))
            .map(|(id, r)| {
                let v = json!({"agentId": id, "role": r.role, "node": r.node});
                (id.clone(), v)
            })
            .collect()
    }

    /// This node's id in cluster mode.
    pub(super) fn log_node(&self) -> Option<&str> {
        self.logged.as_ref().map(|l| l.node.as_str())
    }
}
