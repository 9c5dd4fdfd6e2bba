//! Agent calls in flight: at most one per user (a user's next message waits its turn),
//! each with a deadline, each remembering where its answer goes.
//!
//! Socket-free: a call's destination is a [`ReplyTo`], which the event loop resolves
//! (checking the connection's generation) when the answer is ready.

use crate::conn::ConnId;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Where an answer goes.
#[derive(Debug, Clone)]
pub enum ReplyTo {
    /// A parked HTTP request on this connection.
    Http(ConnId),
    /// A line-protocol `chat` on this connection that carried this `id`, from this user.
    Line {
        conn: ConnId,
        id: serde_json::Value,
        user_id: String,
    },
    /// A line-protocol request on this connection answered by an `ok` or `error` line
    /// (the `id` it carried, if any).
    LineRequest {
        conn: ConnId,
        id: Option<serde_json::Value>,
    },
    /// A thread waiting for the answer (a [`crate::doors::game::LinkWorld`] handle).
    Channel(crossbeam_channel::Sender<crate::app::outcome::Reply>),
    /// A message from a WebSocket feed: the agent's answer is spoken aloud as a `bark`
    /// in `room` (every feed hears it; with `workshop` the Workshop's browsers too).
    /// A streamed answer's parts are `bark_part` frames with `reply_id` (the call's job),
    /// which its final `bark` carries too.
    Bark {
        room: String,
        workshop: bool,
        reply_id: Option<u64>,
    },
    /// A chat another node forwarded here (cluster mode: this node owns the user's
    /// session); its parts and answer go back to that node, for its call `id`.
    Remote { node: String, id: u64 },
}

/// What kind of request made the call (it decides the response's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `POST /bridge/chat`: a user's session with the agent.
    Chat,
    /// `POST /api/v1/generate`: a stateless prompt (Evennia's LLM contrib).
    Generate,
}

/// One agent call, waiting or in flight.
#[derive(Debug, Clone)]
pub struct Call {
    pub job_id: u64,
    pub kind: CallKind,
    pub reply_to: ReplyTo,
    /// `None` for stateless calls.
    pub user_id: Option<String>,
    pub username: String,
    pub room: String,
    pub message: String,
    /// The crisis detector fired on `message`.
    pub crisis: bool,
    /// `message` asks about the hotlines themselves: the reply leads with the numbers.
    pub resources: bool,
    pub created: Instant,
    /// Waiting: until when it may wait for its turn. In flight: for the agent's answer.
    pub deadline: Instant,
    /// The caller asked for the reply in parts (`None`: one answer at the end).
    pub stream: Option<Box<crate::app::stream::Stream>>,
    /// The caller's own instructions for the system prompt.
    pub system: Option<String>,
}

#[derive(Debug, Default)]
pub struct Calls {
    in_flight: HashMap<u64, Call>,
    /// user → the job in flight for them.
    busy: HashMap<String, u64>,
    waiting: HashMap<String, VecDeque<Call>>,
    next_job: u64,
}

impl Calls {
    pub fn next_job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.next_job
    }

    pub fn is_busy(&self, user_id: &str) -> bool {
        self.busy.contains_key(user_id)
    }

    pub fn waiting_for(&self, user_id: &str) -> usize {
        self.waiting.get(user_id).map_or(0, VecDeque::len)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Queue a call behind the one in flight for the same user.
    pub fn enqueue(&mut self, call: Call) {
        if let Some(u) = call.user_id.clone() {
            self.waiting.entry(u).or_default().push_back(call);
        }
    }

    /// Record a call as submitted to the agent.
    pub fn start(&mut self, call: Call) {
        if let Some(u) = &call.user_id {
            self.busy.insert(u.clone(), call.job_id);
        }
        self.in_flight.insert(call.job_id, call);
    }

    /// The call a reply answers; frees its user. `None`: it already timed out.
    pub fn finish(&mut self, job_id: u64) -> Option<Call> {
        let call = self.in_flight.remove(&job_id)?;
        if let Some(u) = &call.user_id {
            if self.busy.get(u) == Some(&job_id) {
                self.busy.remove(u);
            }
        }
        Some(call)
    }

    /// A call in flight or waiting, by job id (to mark it crisis before it is answered).
    pub fn get_mut(&mut self, job_id: u64) -> Option<&mut Call> {
        if let Some(c) = self.in_flight.get_mut(&job_id) {
            return Some(c);
        }
        self.waiting
            .values_mut()
            .flat_map(|q| q.iter_mut())
            .find(|c| c.job_id == job_id)
    }

    /// The user's next waiting call, if the user is free.
    pub fn next_for(&mut self, user_id: &str) -> Option<Call> {
        if self.is_busy(user_id) {
            return None;
        }
        let q = self.waiting.get_mut(user_id)?;
        let call = q.pop_front();
        if q.is_empty() {
            self.waiting.remove(user_id);
        }
        call
    }

    /// Remove and return every call whose deadline has passed (in flight or waiting).
    pub fn expire(&mut self, now: Instant) -> Vec<Call> {
        let late: Vec<u64> = self
            .in_flight
            .values()
            .filter(|c| c.deadline <= now)
            .map(|c| c.job_id)
            .collect();
        let mut out: Vec<Call> = late.into_iter().filter_map(|j| self.finish(j)).collect();
        for q in self.waiting.values_mut() {
            while q.front().is_some_and(|c| c.deadline <= now) {
                out.extend(q.pop_front());
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        out
    }

    /// Every call, in flight or waiting (to send a streamed call's `thinking`).
    pub fn each_mut(&mut self) -> impl Iterator<Item = &mut Call> {
        (self.in_flight.values_mut()).chain(self.waiting.values_mut().flat_map(|q| q.iter_mut()))
    }

    /// The earliest deadline, for the loop's poll timeout (a streamed call's `thinking`
    /// included).
    pub fn next_deadline(&self) -> Option<Instant> {
        let thinking = (self.in_flight.values())
            .chain(self.waiting.values().flat_map(|q| q.iter()))
            .filter_map(|c| c.stream.as_ref().and_then(|s| s.thinking_deadline()))
            .min();
        let a = self.in_flight.values().map(|c| c.deadline).min();
        let b = self
            .waiting
            .values()
            .filter_map(|q| q.front().map(|c| c.deadline))
            .min();
        a.into_iter().chain(b).chain(thinking).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call(c: &mut Calls, user: &str, deadline: Instant) -> Call {
        Call {
            job_id: c.next_job_id(),
            kind: CallKind::Chat,
            reply_to: ReplyTo::Http(ConnId { idx: 0, gen: 0 }),
            user_id: Some(user.into()),
            username: user.into(),
            room: "R".into(),
            message: "m".into(),
            crisis: false,
            resources: false,
            created: deadline,
            deadline,
            stream: None,
            system: None,
        }
    }

    #[test]
    fn one_in_flight_per_user_then_the_next_in_order() {
        let t = Instant::now() + Duration::from_secs(60);
        let mut c = Calls::default();
        let first = call(&mut c, "a", t);
        let (j1, second, third) = (first.job_id, call(&mut c, "a", t), call(&mut c, "a", t));
        let (j2, j3) = (second.job_id, third.job_id);
        c.start(first);
        assert!(c.is_busy("a"));
        c.enqueue(second);
        c.enqueue(third);
        assert_eq!(c.next_for("a").map(|x| x.job_id), None, "busy users wait");
        assert_eq!(c.finish(j1).map(|x| x.job_id), Some(j1));
        assert_eq!(c.finish(j1).map(|x| x.job_id), None, "answered once");
        assert_eq!(c.next_for("a").map(|x| x.job_id), Some(j2));
        assert_eq!(c.next_for("a").map(|x| x.job_id), Some(j3));
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn expiry_takes_late_calls_and_frees_the_user() {
        let now = Instant::now();
        let mut c = Calls::default();
        let late = call(&mut c, "a", now);
        let late_id = late.job_id;
        c.start(late);
        let ok = call(&mut c, "b", now + Duration::from_secs(5));
        c.start(ok);
        let queued_late = call(&mut c, "b", now);
        c.enqueue(queued_late);
        assert_eq!(c.next_deadline(), Some(now));
        let gone: Vec<u64> = c.expire(now).iter().map(|x| x.job_id).collect();
        assert_eq!(gone.len(), 2);
        assert!(gone.contains(&late_id));
        assert!(!c.is_busy("a") && c.is_busy("b"));
        assert_eq!(
            c.finish(late_id).map(|x| x.job_id),
            None,
            "a late reply finds nothing"
        );
    }
}
