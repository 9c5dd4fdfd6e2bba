//! The live state of one bridge and the flow of agent calls through it.
//!
//! [`App`] is everything the event loop owns besides sockets: the world, the agent pool,
//! calls in flight, rate limits and metrics. Transports call it with parsed requests;
//! answers that come later (the agent's) are queued in [`App::ready`] for the loop to
//! deliver to the connection that waits for them.

use crate::agent::builtin;
use crate::agent::crisis::{self, CrisisDetector};
use crate::agent::pool::AgentPool;
use crate::agent::{AgentError, AgentReply, AgentRequest};
use crate::calls::{Call, CallKind, Calls, ReplyTo};
use crate::codec::http::Response;
use crate::config::Config;
use crate::conn::ConnId;
use crate::links::Links;
use crate::metrics::{Gauges, Metrics};
use crate::world::ratelimit::RateLimit;
use crate::world::room::WorldFile;
use crate::world::session::SessionLimits;
use crate::world::{World, WorldLimits};
use serde_json::json;
use std::time::{Duration, Instant};

/// An answer now, or later through [`App::ready`].
pub enum Answer {
    Now(Response),
    Later,
}

pub struct App {
    pub cfg: Config,
    pub world: World,
    pub metrics: Metrics,
    pub rate: RateLimit,
    pub crisis: CrisisDetector,
    pub calls: Calls,
    pub pool: Option<AgentPool>,
    pub started: Instant,
    pub shutting_down: bool,
    /// Answers ready for waiting connections; the loop drains it.
    pub ready: Vec<(ReplyTo, Response)>,
    /// Open connections (kept by the loop, read by health and metrics).
    pub connections_open: usize,
    /// Game links, their rooms, dials and the requests waiting for games.
    pub links: Links,
    /// Lines for link connections (relayed events, requests); the loop writes them.
    pub line_out: Vec<(ConnId, Vec<u8>)>,
}

/// A chat or generate request after validation.
pub struct CallInput {
    pub kind: CallKind,
    pub user_id: Option<String>,
    pub username: String,
    pub room: String,
    pub message: String,
}

impl App {
    /// Build the state from config: the world file (or the built-in world) and limits.
    /// The agent pool (for the `openai` and `command` backends; `builtin` answers inline)
    /// is attached separately ([`App::attach_pool`]) so the core can be tested without
    /// threads.
    pub fn new(cfg: Config) -> Result<App, String> {
        let world_text = if cfg.rooms.world_file.is_empty() {
            crate::world::room::DEFAULT_WORLD.to_string()
        } else {
            std::fs::read_to_string(&cfg.rooms.world_file)
                .map_err(|e| format!("rooms.world_file {:?}: {e}", cfg.rooms.world_file))?
        };
        let wf = WorldFile::parse(&world_text)?;
        let limits = WorldLimits {
            sessions: SessionLimits {
                max: cfg.sessions.max,
                idle_timeout_ms: cfg.sessions.idle_timeout_s.saturating_mul(1000),
                history_max: cfg.sessions.history_max,
            },
            events_max: cfg.rooms.events_max,
            rooms_max: cfg.rooms.max,
            occupants_max: cfg.rooms.occupants_max,
        };
        let world = World::new(&cfg.world, &cfg.agent.name, wf, limits);
        Ok(App {
            rate: RateLimit::new(cfg.http.rate_limit_requests, cfg.http.rate_limit_window_s),
            world,
            metrics: Metrics::default(),
            crisis: CrisisDetector::builtin(),
            calls: Calls::default(),
            pool: None,
            started: Instant::now(),
            shutting_down: false,
            ready: Vec::new(),
            connections_open: 0,
            links: Links::new(&cfg.line.dial, Instant::now(), crate::time::now_ms()),
            line_out: Vec::new(),
            cfg,
        })
    }

    pub fn attach_pool(&mut self, pool: AgentPool) {
        self.pool = Some(pool);
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.agent.timeout_s)
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            connections_open: self.connections_open,
            sessions_active: self.world.sessions.len(),
            rooms: self.world.room_count(),
            agent_queue_depth: self.pool.as_ref().map_or(0, AgentPool::queue_depth),
            agent_in_flight: self.calls.in_flight(),
            events_seq: self.world.last_seq(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// Start an agent call: the user is put in the room, the session touched, the crisis
    /// detector run; then the call goes to a worker, or waits behind the user's call in
    /// flight.
    pub fn begin_call(
        &mut self,
        input: CallInput,
        reply_to: ReplyTo,
        now_ms: u64,
        now: Instant,
    ) -> Answer {
        let crisis = self.crisis.detect(&input.message).is_some();
        if crisis {
            self.metrics.crisis_detections += 1;
            log::warn!(
                "crisis signal detected user={} room={:?}: the protocol will lead the reply",
                input.user_id.as_deref().unwrap_or("-"),
                input.room
            );
        }
        if let Some(user) = &input.user_id {
            self.world.place(user, &input.username, &input.room, now_ms);
            let calls = &self.calls;
            let evicted =
                self.world
                    .sessions
                    .touch(user, &input.username, &input.room, now_ms, &|u| {
                        calls.is_busy(u)
                    });
            if let Some(gone) = evicted {
                log::info!("session evicted user={gone} (sessions.max reached)");
            }
            if crisis {
                if let Some(s) = self.world.sessions.get_mut(user) {
                    s.crisis = true;
                }
            }
        }
        let call = Call {
            job_id: self.calls.next_job_id(),
            kind: input.kind,
            reply_to,
            user_id: input.user_id,
            username: input.username,
            room: input.room,
            message: input.message,
            crisis,
            created: now,
            deadline: now + self.agent_timeout(),
        };
        if let Some(user) = call.user_id.clone() {
            if self.calls.is_busy(&user) {
                if self.calls.waiting_for(&user) >= self.cfg.agent.per_user_queue {
                    return Answer::Now(
                        Response::error(
                            429,
                            "too_many_waiting",
                            &format!(
                                "{} messages are already waiting for the agent's answer to you; wait for them first",
                                self.cfg.agent.per_user_queue
                            ),
                        )
                        .with_header("Retry-After", "1"),
                    );
                }
                self.calls.enqueue(call);
                return Answer::Later;
            }
        }
        match self.submit(call, now) {
            Some((_, resp)) => Answer::Now(resp),
            None => Answer::Later,
        }
    }

    /// Hand a call to the pool. If it cannot take it, the answer is returned at once.
    fn submit(&mut self, mut call: Call, now: Instant) -> Option<(ReplyTo, Response)> {
        // The builtin persona only asks whether there was an earlier exchange; the other
        // backends get the whole capped history.
        let keep = if self.pool.is_none() { 2 } else { usize::MAX };
        let (history, context) = match &call.user_id {
            Some(u) => (
                self.world
                    .sessions
                    .get(u)
                    .map(|s| {
                        let skip = s.history.len().saturating_sub(keep);
                        s.history.iter().skip(skip).cloned().collect()
                    })
                    .unwrap_or_default(),
                self.world
                    .context(u, &call.room, self.cfg.agent.context_events),
            ),
            None => (
                Vec::new(),
                self.world
                    .context("", &call.room, self.cfg.agent.context_events),
            ),
        };
        let mut context = context;
        context.game = self
            .links
            .perception_near(&call.room)
            .map(|(world, seen)| crate::protocol::summary(world, &seen.perception));
        let req = AgentRequest {
            job_id: call.job_id,
            user_id: call.user_id.clone().unwrap_or_default(),
            username: call.username.clone(),
            history,
            message: call.message.clone(),
            context,
            crisis: call.crisis,
            timeout: self.agent_timeout(),
        };
        call.deadline = now + self.agent_timeout();
        if self.cfg.agent.backend == "builtin" {
            // The builtin persona answers from memory in microseconds and cannot block,
            // so it runs here: a worker hop would cost more than the answer.
            let text = builtin::reply(&req);
            self.metrics.agent_latency.observe(now.elapsed());
            let resp = self.complete(&call, Ok(text));
            return Some((call.reply_to, resp));
        }
        let submitted = match &self.pool {
            Some(pool) => pool.try_submit(req).is_ok(),
            None => false,
        };
        if submitted {
            self.calls.start(call);
            return None;
        }
        self.metrics.count_agent("rejected");
        let resp = if call.crisis {
            self.finish_call(&call, crisis::crisis_reply(None))
        } else {
            Response::error(
                503,
                "agent_busy",
                "the agent's queue is full; try again in a moment",
            )
            .with_header("Retry-After", "1")
        };
        Some((call.reply_to, resp))
    }

    /// Record a finished exchange in the session and build the response.
    fn finish_call(&mut self, call: &Call, text: String) -> Response {
        let now_ms = crate::time::now_ms();
        match call.kind {
            CallKind::Generate => Response::json(200, &json!({"results": [{"text": text}]})),
            CallKind::Chat => {
                let user = call.user_id.as_deref().unwrap_or_default();
                self.world
                    .sessions
                    .record(user, &call.message, &text, now_ms);
                let (messages, flagged) = self
                    .world
                    .sessions
                    .get(user)
                    .map_or((0, call.crisis), |s| (s.messages, s.crisis));
                Response::json(
                    200,
                    &json!({
                        "response": text,
                        "user": call.username,
                        "room": call.room,
                        "session_messages": messages,
                        "crisis": flagged,
                    }),
                )
            }
        }
    }

    /// The text a user gets: the crisis protocol leads when the detector fired on this
    /// message, and a flagged session keeps the 988 line.
    fn shape_reply(&self, call: &Call, agent_text: Option<String>) -> Option<String> {
        let flagged = call
            .user_id
            .as_deref()
            .and_then(|u| self.world.sessions.get(u))
            .is_some_and(|s| s.crisis);
        match (call.crisis, agent_text) {
            (true, text) => Some(crisis::crisis_reply(text.as_deref())),
            (false, Some(t)) if flagged => Some(crisis::keep_lifeline(&t)),
            (false, t) => t,
        }
    }

    /// A worker answered.
    pub fn on_reply(&mut self, reply: AgentReply, now: Instant) {
        let Some(call) = self.calls.finish(reply.job_id) else {
            log::debug!(
                "agent reply for job {} came after its deadline; dropped",
                reply.job_id
            );
            return;
        };
        self.metrics
            .agent_latency
            .observe(now.duration_since(call.created));
        let resp = self.complete(&call, reply.result);
        self.start_next(call.user_id.as_deref(), now);
        self.ready.push((call.reply_to, resp));
    }

    /// The response for a call the agent answered (or failed).
    fn complete(&mut self, call: &Call, result: Result<String, AgentError>) -> Response {
        match result {
            Ok(text) => {
                self.metrics.count_agent("ok");
                let text = self.shape_reply(call, Some(text)).unwrap_or_default();
                self.finish_call(call, text)
            }
            Err(err) => {
                let timeout = err == AgentError::Timeout;
                self.metrics
                    .count_agent(if timeout { "timeout" } else { "error" });
                log::warn!(
                    "agent call failed job={} user={:?}: {err}",
                    call.job_id,
                    call.user_id
                );
                self.failed_call(call, timeout)
            }
        }
    }

    /// The answer for a call the agent failed (or that ran out of time).
    fn failed_call(&mut self, call: &Call, timeout: bool) -> Response {
        match self.shape_reply(call, None) {
            Some(text) => self.finish_call(call, text),
            None if timeout => Response::error(
                504,
                "agent_timeout",
                &format!(
                    "the agent did not answer within {} s",
                    self.cfg.agent.timeout_s
                ),
            ),
            None => Response::error(502, "agent_error", "the agent failed to answer; try again"),
        }
    }

    fn start_next(&mut self, user: Option<&str>, now: Instant) {
        if let Some(next) = user.and_then(|u| self.calls.next_for(u)) {
            if let Some(done) = self.submit(next, now) {
                self.ready.push(done);
            }
        }
    }

    /// Time passes: late calls get 504 (or the crisis text), idle sessions expire.
    pub fn tick(&mut self, now: Instant, now_ms: u64) {
        for call in self.calls.expire(now) {
            self.metrics.count_agent("timeout");
            log::warn!(
                "agent call timed out job={} user={:?}",
                call.job_id,
                call.user_id
            );
            let resp = self.failed_call(&call, true);
            self.start_next(call.user_id.as_deref(), now);
            self.ready.push((call.reply_to, resp));
        }
        let calls = &self.calls;
        let (gone, _leaves) = self
            .world
            .expire(now_ms, &|u| calls.is_busy(u) || calls.waiting_for(u) > 0);
        for u in gone {
            log::info!("session expired user={u} (idle past sessions.idle_timeout_s)");
        }
        self.rate.prune(now_ms);
        self.expire_game_requests(now);
        self.route_events(None);
    }
}
