//! The live state of one bridge and the flow of agent calls through it.
//!
//! [`App`] is everything the event loop owns besides sockets: the world, the agent pool,
//! calls in flight, rate limits and metrics. Transports call it with parsed requests;
//! answers that come later (the agent's) are queued in [`App::ready`] for the loop to
//! deliver to the connection that waits for them.

pub mod calls;
pub mod cluster;
pub mod cluster_fed;
pub mod cluster_links;
pub mod fan_out;
pub mod fed_rooms;
pub mod feeds;
pub mod forward;
pub mod games;
pub mod links;
pub mod metrics;
pub mod outbox;
pub mod outcome;
pub mod peer_sync;
pub mod peering;
pub mod reports;
pub mod room_expiry;
pub mod stream;
pub mod travel;

use crate::agent::builtin::{self, Reads};
use crate::agent::crisis::{self, CrisisDetector, Outcome as Assessment};
use crate::agent::pool::AgentPool;
use crate::agent::{AgentError, AgentReply, AgentRequest};
use crate::app::calls::{Call, CallKind, Calls, ReplyTo};
use crate::app::links::Links;
use crate::app::metrics::{Gauges, Metrics};
use crate::app::outbox::Outbox;
use crate::app::outcome::{ChatReply, Outcome, Refusal, Reply};
use crate::app::stream::{Part, Stream};
use crate::config::Config;
use crate::conn::ConnId;
use crate::federation::sign::WorldKey;
use crate::feeds::gateway::{Gateway, GatewayLimits};
use crate::feeds::workshop::inbox::Inbox;
use crate::feeds::workshop::{Workshop, WorkshopLimits};
use crate::store::{Batch, Row, Store, StoreEvent};
use crate::world::ratelimit::RateLimit;
use crate::world::room::WorldFile;
use crate::world::session::SessionLimits;
use crate::world::{World, WorldLimits};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why the hub could not be built from the config, or its world key not read.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("rooms.world_file {path:?}: {source}")]
    WorldFileRead {
        path: String,
        source: std::io::Error,
    },
    /// The world file is not a world (the parser's sentence, with where).
    #[error("{0}")]
    WorldFile(String),
    #[error("cannot read agent.crisis_file {path:?}: {source}")]
    CrisisFileRead {
        path: String,
        source: std::io::Error,
    },
    /// The crisis file's rules do not parse (the parser's sentence, with the line).
    #[error("agent.crisis_file: {0}")]
    CrisisFile(String),
    /// The federation config (peers, keys) is not usable.
    #[error("{0}")]
    Federation(String),
    #[error("world key: {0}")]
    WorldKey(crate::federation::sign::SignError),
}

/// An answer now, or later through [`App::ready`].
pub enum Answer {
    Now(Reply),
    Later,
}

pub struct App {
    pub cfg: Config,
    pub world: World,
    pub metrics: Metrics,
    rate: RateLimit,
    /// Room expiry's clock and the per-address room creation limit.
    room_sweep: crate::app::room_expiry::RoomSweep,
    crisis: CrisisDetector,
    /// Crisis classifications asked of the model (`agent.crisis_model_check`), by job id.
    crisis_checks: HashMap<u64, CrisisCheck>,
    calls: Calls,
    pool: Option<AgentPool>,
    started: Instant,
    pub shutting_down: bool,
    /// Everything the hub has to send; the loop drains it.
    pub out: Outbox,
    /// Open connections (kept by the loop, read by health and metrics).
    connections_open: usize,
    /// Upgraded WebSocket connections open (kept by the loop; `websocket.max_connections`).
    pub ws_connections: usize,
    /// Game links, their rooms, dials and the requests waiting for games.
    pub links: Links,
    /// The Matrix gateway hub (`/ws/matrix`).
    pub gateway: Gateway,
    /// The Workshop state feed (`/`, `/ws/workshop`).
    workshop: Workshop,
    /// The Workshop inbox writer (a thread; attached by the loop, absent in unit tests).
    inbox: Option<Inbox>,
    /// Why the inbox last failed and since when (epoch ms); cleared by the next write
    /// that succeeds. Shown in `/bridge/health`.
    inbox_trouble: Option<(String, u64)>,
    /// This world's Ed25519 key (`federation.key_file`, else `world.key` in the data
    /// directory): its public half is in `/bridge/health` for the peers' config.
    world_key: WorldKey,
    /// The durable store (`None` with `--memory`).
    pub store: Option<Store>,
    /// Answers waiting for their batch to be durable, oldest first.
    held: VecDeque<Held>,
    /// The id the next batch sent to the store will have; answers held in this loop
    /// iteration wait for it.
    next_batch: u64,
    /// The last commit failed (and why): state-changing requests get 503 until one works.
    store_error: Option<String>,
    /// Federation with the configured peers (`None` without `[[federation.peers]]`).
    pub fed: Option<crate::app::peering::Peering>,
    /// Cluster mode: the world's shared log in Redis (`None` without `[cluster]`).
    pub cluster: Option<cluster::Cluster>,
}

/// An answer that waits until the store has made its change durable.
pub struct Held {
    pub batch: u64,
    pub answer: HeldAnswer,
}

pub enum HeldAnswer {
    /// The hub's answer for [`ReplyTo`].
    Reply(ReplyTo, Reply),
    /// An HTTP answer the door rendered; the loop keeps it until this is released.
    Http(ConnId),
    /// Answer bytes for a line link, and the `id` they answer (for an error instead).
    Line(ConnId, Option<serde_json::Value>, Vec<u8>),
}

/// A chat or generate request after validation.
pub struct CallInput {
    pub kind: CallKind,
    pub user_id: Option<String>,
    pub username: String,
    pub room: String,
    pub message: String,
    /// Send the reply in parts as they are ready ([`App::parts`]).
    pub stream: bool,
    /// The caller's own instructions for the system prompt (the OpenAI door's `system`).
    pub system: Option<String>,
}

impl App {
    /// Build the state from config: the world file (or the built-in world) and limits.
    /// The agent pool (for the `openai` and `command` backends; `builtin` answers inline)
    /// is attached separately ([`App::attach_pool`]) so the core can be tested without
    /// threads.
    pub fn new(cfg: Config) -> Result<App, AppError> {
        let world_text = if cfg.rooms.world_file.is_empty() {
            crate::world::room::DEFAULT_WORLD.to_string()
        } else {
            std::fs::read_to_string(&cfg.rooms.world_file).map_err(|source| {
                AppError::WorldFileRead {
                    path: cfg.rooms.world_file.clone(),
                    source,
                }
            })?
        };
        let wf = WorldFile::parse(&world_text).map_err(AppError::WorldFile)?;
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
        let now_ms = crate::world::time::now_ms();
        let gateway = Gateway::new(
            GatewayLimits {
                agent_id: cfg.gateway.agent_id.clone(),
                heartbeat_ms: cfg.gateway.heartbeat_s.saturating_mul(1000),
                history_max: cfg.gateway.history_max,
                history_max_age_ms: cfg.gateway.history_max_age_s.saturating_mul(1000),
                max_messages_per_s: cfg.gateway.max_messages_per_s,
                bound: (cfg.gateway.agents.iter())
                    .map(|a| (a.id.clone(), a.role.clone()))
                    .collect(),
            },
            now_ms,
        );
        let workshop = Workshop::new(
            WorkshopLimits {
                diff: cfg.workshop.diff,
                heartbeat_ms: cfg.workshop.heartbeat_s.saturating_mul(1000),
                message_max_bytes: cfg.rooms.message_max_bytes,
                visitors_per_conn: cfg.workshop.visitors_per_connection,
                max_messages_per_s: cfg.gateway.max_messages_per_s,
            },
            now_ms,
        );
        let fed = crate::app::peering::Peering::new(&cfg.world, &cfg.federation, now_ms)
            .map_err(AppError::Federation)?;
        let crisis = load_crisis_detector(&cfg.agent.crisis_file)?;
        // A key for this run until `load_world_key` reads the world's own (after the store
        // has made and locked the data directory it lives in).
        let world_key = WorldKey::generate().map_err(AppError::WorldKey)?;
        let mut app = App {
            fed,
            gateway,
            workshop,
            inbox: None,
            inbox_trouble: None,
            world_key,
            rate: RateLimit::new(cfg.http.rate_limit_requests, cfg.http.rate_limit_window_s),
            room_sweep: crate::app::room_expiry::RoomSweep::new(
                cfg.http.rate_limit_requests,
                cfg.http.rate_limit_window_s,
            ),
            world,
            metrics: Metrics {
                agent_backend: cfg.agent.backend.clone(),
                ..Metrics::default()
            },
            crisis,
            crisis_checks: HashMap::new(),
            calls: Calls::default(),
            pool: None,
            started: Instant::now(),
            shutting_down: false,
            out: Outbox::default(),
            connections_open: 0,
            ws_connections: 0,
            links: Links::new(&cfg.line.dial, Instant::now(), crate::world::time::now_ms()),
            store: None,
            held: VecDeque::new(),
            next_batch: 1,
            store_error: None,
            cluster: None,
            cfg,
        };
        app.ensure_portal_rooms();
        Ok(app)
    }

    /// How long this bridge has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The agent's worker pool, taken to be shut down (the loop does, on stop).
    pub fn take_pool(&mut self) -> Option<AgentPool> {
        self.pool.take()
    }

    /// The Workshop inbox writer (a thread the loop starts).
    pub fn attach_inbox(&mut self, inbox: Inbox) {
        self.inbox = Some(inbox);
    }

    /// The Workshop inbox writer, taken to be shut down.
    pub fn take_inbox(&mut self) -> Option<Inbox> {
        self.inbox.take()
    }

    /// Whether answers still wait for the store.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// The loop's count of open connections (for health and metrics).
    pub fn set_connections_open(&mut self, n: usize) {
        self.connections_open = n;
    }

    /// When the next agent call's deadline falls, if any.
    pub fn next_call_deadline(&self) -> Option<Instant> {
        self.calls.next_deadline()
    }

    /// A fresh job id (the OpenAI door names its completions with it).
    pub fn next_job_id(&mut self) -> u64 {
        self.calls.next_job_id()
    }

    /// A user's request against `http.rate_limit_requests`: `Err` is the seconds to wait.
    pub fn rate_check(&mut self, user: &str, now_ms: u64) -> Result<(), u64> {
        self.rate.check(user, now_ms)
    }

    pub fn attach_pool(&mut self, pool: AgentPool) {
        self.pool = Some(pool);
    }

    /// Persist this world from now on: what the store loaded is put back first.
    /// What the store keeps, from Config.
    pub fn retention(&self) -> crate::store::Retention {
        crate::store::Retention {
            events_max: self.cfg.rooms.events_max,
            gateway_max: self.cfg.gateway.history_max,
        }
    }

    pub fn attach_store(&mut self, store: Store, loaded: Option<crate::store::Stored>) {
        if let Some(stored) = loaded {
            let now_ms = crate::world::time::now_ms();
            self.gateway
                .restore(stored.gateway_seq, stored.gateway, now_ms);
            let snap = stored.snapshot;
            log::info!(
                "store: loaded {} rooms, {} events, {} sessions, {} present",
                snap.rooms.len(),
                snap.events.len(),
                snap.sessions.len(),
                snap.presence.len()
            );
            if let Some(f) = &mut self.fed {
                f.restore(
                    stored.fed_pruned,
                    stored.fed_events,
                    stored.fed_trust,
                    stored.fed_departures,
                    stored.fed_arrivals,
                );
            }
            self.world.restore(snap);
        }
        self.world.track_changes();
        self.gateway.track_changes();
        self.store = Some(store);
        // The world file's rooms are written once so an export holds them too.
        for room in self.world.snapshot().rooms {
            self.world.set_room(room.spec).ok();
        }
    }

    /// The id the next store batch will have (what is queued now goes into it).
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Send an answer, or hold it until the changes made so far are durable.
    pub fn answer(&mut self, to: ReplyTo, reply: Reply) {
        if self.must_hold() {
            let batch = self.next_batch;
            self.held.push_back(Held {
                batch,
                answer: HeldAnswer::Reply(to, reply),
            });
        } else {
            self.out.answers.push((to, reply));
        }
    }

    /// Whether an answer given now must wait for the store (the changes made so far are
    /// not durable yet).
    pub fn must_hold(&self) -> bool {
        match &self.cluster {
            Some(_) => self.world.has_unsequenced() || self.cluster_unsaved(),
            None => self.store.is_some() && self.has_unsaved(),
        }
    }

    /// Hold an HTTP answer the door rendered (the loop keeps it) until the changes made
    /// so far are durable; [`App::released`] says when.
    pub fn hold_http(&mut self, conn: ConnId) {
        let batch = self.next_batch;
        self.held.push_back(Held {
            batch,
            answer: HeldAnswer::Http(conn),
        });
    }

    /// Hold answer bytes for a line link until the changes made so far are durable.
    pub fn hold_line(&mut self, conn: ConnId, id: Option<serde_json::Value>, bytes: Vec<u8>) {
        let batch = self.next_batch;
        self.held.push_back(Held {
            batch,
            answer: HeldAnswer::Line(conn, id, bytes),
        });
    }

    /// Send the world's changes to the store as one batch (once per loop iteration).
    pub fn flush_store(&mut self) {
        if self.cluster.is_some() {
            return self.propose_events();
        }
        let Some(store) = &self.store else {
            return;
        };
        let fed_rows = self.fed.as_ref().is_some_and(|f| f.has_rows());
        if !self.world.has_changes() && !self.gateway.has_unsaved() && !fed_rows {
            return;
        }
        let changes = self.world.take_changes();
        let mut rows = Vec::with_capacity(changes.events.len() + 4);
        // Removed rooms first: a room of the same name made since is written after.
        rows.extend(changes.rooms_gone.iter().cloned().map(Row::RoomGone));
        for name in &changes.rooms {
            if let Some(r) = self.world.room_state(name) {
                rows.push(Row::Room(r));
            }
        }
        for u in &changes.presence {
            rows.push(match self.world.presence_row(u) {
                Some(o) => Row::Presence(o.clone()),
                None => Row::PresenceGone(u.clone()),
            });
        }
        for u in &changes.sessions {
            rows.push(match self.world.sessions.get(u) {
                Some(s) => Row::Session(s.clone()),
                None => Row::SessionGone(u.clone()),
            });
        }
        let any_events = !changes.events.is_empty();
        rows.extend(changes.events.into_iter().map(Row::Event));
        if any_events {
            rows.push(Row::Seq(self.world.last_seq()));
        }
        rows.extend(self.gateway.take_unsaved().into_iter().map(Row::Gateway));
        let id = self.next_batch;
        if let Some(f) = &mut self.fed {
            rows.extend(f.take_rows(id));
        }
        self.next_batch += 1;
        store.send(Batch { id, rows });
    }

    /// The store reported: release what is durable, or fail what could not be written.
    pub fn on_store(&mut self, ev: StoreEvent) {
        match ev {
            StoreEvent::Durable { upto } => {
                self.store_error = None;
                if let Some(f) = &mut self.fed {
                    f.durable(upto);
                }
                self.travel_durable(upto);
                while self.held.front().is_some_and(|h| h.batch <= upto) {
                    if let Some(h) = self.held.pop_front() {
                        self.release(h.answer, None);
                    }
                }
            }
            StoreEvent::Failed { ids, error } => {
                self.store_error = Some(error.clone());
                self.travel_failed(&ids);
                let why = format!("the change could not be stored ({error}); try again");
                self.fail_held(&ids, &why);
            }
        }
    }

    /// The answers held for these batches become 503 `store_unavailable`.
    fn fail_held(&mut self, batches: &[u64], why: &str) {
        self.fail_held_as(batches, "store_unavailable", why);
    }

    /// The answers held for these batches become refusals with `code`.
    fn fail_held_as(&mut self, batches: &[u64], code: &'static str, why: &str) {
        let (failed, kept): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| batches.contains(&h.batch));
        self.held = kept;
        for h in failed {
            self.release(h.answer, Some((code, why)));
        }
    }

    fn release(&mut self, answer: HeldAnswer, failed: Option<(&'static str, &str)>) {
        match failed {
            None => self.release_renumbered(answer, Vec::new()),
            Some((code, why)) => {
                let refusal = Refusal::new(code, why);
                match answer {
                    HeldAnswer::Reply(to, _) => self.out.answers.push((to, Err(refusal))),
                    HeldAnswer::Http(conn) => self.out.released.push((conn, Err(refusal))),
                    HeldAnswer::Line(conn, id, _) => self
                        .out
                        .answers
                        .push((ReplyTo::LineRequest { conn, id }, Err(refusal))),
                }
            }
        }
    }

    /// Send a held answer, its provisional event numbers replaced by `fix`.
    fn release_renumbered(&mut self, answer: HeldAnswer, fix: outbox::Renumber) {
        match answer {
            HeldAnswer::Reply(to, mut reply) => {
                if let Ok(Outcome::Ok(v)) = &mut reply {
                    cluster::renumber_value(v, &fix);
                }
                self.out.answers.push((to, reply));
            }
            HeldAnswer::Http(conn) => self.out.released.push((conn, Ok(fix))),
            HeldAnswer::Line(conn, _, mut bytes) => {
                cluster::renumber(&mut bytes, &fix);
                self.out.lines.push((conn, bytes));
            }
        }
    }

    /// A state-changing request is refused while the store cannot write.
    pub fn store_refusal(&self) -> Option<Refusal> {
        if let Some(why) = self.cluster_refusal() {
            return Some(
                Refusal::new(
                    "store_unavailable",
                    format!("the bridge cannot store changes right now ({why}); reads still work"),
                )
                .retry_after(1),
            );
        }
        self.store_error.as_ref().map(|e| {
            Refusal::new(
                "store_unavailable",
                format!("the bridge cannot store changes right now ({e}); reads still work"),
            )
            .retry_after(1)
        })
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

    /// `user` acted over HTTP or a feed: their session is touched (made if new). A session
    /// pushed out by `sessions.max` (the least recently active, those without a
    /// conversation first) ends.
    pub fn touch_session(&mut self, user: &str, username: &str, room: &str, now_ms: u64) {
        let calls = &self.calls;
        let evicted = self
            .world
            .sessions
            .touch(user, username, room, now_ms, &|u| calls.is_busy(u));
        if let Some(gone) = evicted {
            log::debug!("session evicted user={gone} (sessions.max reached)");
            self.session_ended(&gone, now_ms);
        }
    }

    /// A session ended (evicted or idle): its user leaves their room, unless a game link
    /// reports them present or a Workshop browser holds them (those say when they leave).
    /// So the people in a room are bounded by real users, not by every user id ever seen.
    pub fn session_ended(&mut self, user: &str, now_ms: u64) {
        let held = self.links.has_player(user) || user.starts_with("workshop:");
        if !held {
            self.world.leave(user, now_ms);
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
        let (crisis, resources) = match self.crisis.assess(&input.message) {
            Assessment::Crisis(signal) => {
                self.metrics.count_crisis(signal.category.as_str());
                log::warn!(
                    "crisis signal detected user={} room={:?} category={} features={}: \
                     the protocol will lead the reply",
                    input.user_id.as_deref().unwrap_or("-"),
                    input.room,
                    signal.category.as_str(),
                    signal.features.join(",")
                );
                (true, false)
            }
            Assessment::Resources(features) => {
                self.metrics.crisis_resources += 1;
                log::info!(
                    "hotline question user={} features={}: the numbers will lead the reply",
                    input.user_id.as_deref().unwrap_or("-"),
                    features.join(",")
                );
                (false, true)
            }
            Assessment::Nothing => (false, false),
        };
        if let Some(user) = &input.user_id {
            self.world.enter(user, &input.username, &input.room, now_ms);
        }
        self.start_call(input, reply_to, (crisis, resources), now_ms, now)
    }

    /// A call whose message was read (`crisis`, `resources`): the user's session is
    /// touched (and flagged), and the call dispatched. Also a chat another node forwarded
    /// here, which that node has read.
    pub(crate) fn start_call(
        &mut self,
        input: CallInput,
        reply_to: ReplyTo,
        (crisis, resources): (bool, bool),
        now_ms: u64,
        now: Instant,
    ) -> Answer {
        if let Some(user) = &input.user_id {
            self.touch_session(user, &input.username, &input.room, now_ms);
            if crisis {
                if let Some(s) = self.world.sessions.get_mut(user) {
                    s.crisis = true;
                }
            }
        }
        let stream = input.stream;
        let call = Call {
            job_id: self.calls.next_job_id(),
            kind: input.kind,
            reply_to,
            user_id: input.user_id,
            username: input.username,
            room: input.room,
            message: input.message,
            crisis,
            resources,
            created: now,
            deadline: now + self.agent_timeout(),
            stream: None,
            system: input.system,
        };
        self.dispatch(call, stream, now)
    }

    /// A call goes to a worker (or the builtin persona), or waits behind the user's
    /// call in flight, or for the user's session lease (cluster mode); with `stream`,
    /// its parts go out as they are ready.
    pub(crate) fn dispatch(&mut self, mut call: Call, stream: bool, now: Instant) -> Answer {
        if let Some(user) = call.user_id.as_deref() {
            if self.calls.is_busy(user)
                && self.calls.waiting_for(user) >= self.cfg.agent.per_user_queue
            {
                return Answer::Now(Err(Refusal::new(
                    "too_many_waiting",
                    format!(
                        "{} messages are already waiting for the agent's answer to you; wait for them first",
                        self.cfg.agent.per_user_queue
                    ),
                )
                .retry_after(1)));
            }
        }
        if stream {
            self.open_stream(&mut call, now);
        }
        let check = self.wants_crisis_check(&call).then(|| {
            (
                call.job_id,
                call.user_id.clone(),
                call.username.clone(),
                call.message.clone(),
            )
        });
        let answer = if call
            .user_id
            .as_deref()
            .is_some_and(|u| self.calls.is_busy(u))
        {
            self.calls.enqueue(call);
            Answer::Later
        } else if self.needs_lease(&call) {
            self.await_lease(call);
            Answer::Later
        } else {
            match self.submit(call, now) {
                // A streamed answer goes after its parts, through `ready`.
                Some((to, Ok(outcome))) if stream => {
                    self.answer(to, Ok(outcome));
                    Answer::Later
                }
                Some((_, resp)) => Answer::Now(resp),
                None => Answer::Later,
            }
        };
        // After the reply was submitted, so the classification never delays it.
        if let Some((call_job, user_id, username, message)) = check {
            self.start_crisis_check(call_job, user_id, username, message, now);
        }
        answer
    }

    /// Whether to ask the model to classify this call's message: the option is on, the
    /// backend is a model, it is a chat, and the local detector did not fire already.
    fn wants_crisis_check(&self, call: &Call) -> bool {
        self.cfg.agent.crisis_model_check
            && self.cfg.agent.backend != "builtin"
            && self.pool.is_some()
            && call.kind == CallKind::Chat
            && !call.crisis
    }

    /// Submit the classification request; a full queue skips it (the reply matters more).
    fn start_crisis_check(
        &mut self,
        call_job: u64,
        user_id: Option<String>,
        username: String,
        message: String,
        now: Instant,
    ) {
        let Some(pool) = &self.pool else { return };
        let limit = Duration::from_millis(self.cfg.agent.crisis_model_check_ms);
        let job_id = self.calls.next_job_id();
        let req = AgentRequest {
            job_id,
            user_id: user_id.clone().unwrap_or_default(),
            username,
            history: Vec::new(),
            message,
            context: Default::default(),
            crisis: false,
            timeout: limit,
            purpose: crate::agent::Purpose::CrisisCheck,
            system: None,
            stream: false,
        };
        if pool.try_submit(req).is_err() {
            log::debug!("crisis model check skipped for job {call_job}: the agent queue is full");
            return;
        }
        self.crisis_checks.insert(
            job_id,
            CrisisCheck {
                call_job,
                user_id,
                deadline: now + limit,
            },
        );
    }

    /// The model answered a crisis classification: a yes marks the call (if its reply is
    /// not sent yet, it carries the protocol) and flags the session; a no changes nothing.
    fn on_crisis_check(&mut self, check: CrisisCheck, result: Result<String, AgentError>) {
        let user = check.user_id.as_deref().unwrap_or("-");
        let verdict = match &result {
            Ok(text) => crisis::parse_classification(text),
            Err(e) => {
                log::debug!("crisis model check failed user={user}: {e}");
                return;
            }
        };
        match verdict {
            Some(true) => {}
            Some(false) => return,
            None => {
                log::debug!("crisis model check user={user}: the answer was neither yes nor no");
                return;
            }
        }
        // A call another node runs now is that node's to shape (it checks the message
        // with its own model too): this node's reading must not cut into its parts.
        if (self.cluster.as_ref()).is_some_and(|c| c.forwarded.contains_key(&check.call_job)) {
            log::debug!(
                "crisis model check user={user}: the call went to its owner node, which checks it"
            );
            return;
        }
        self.metrics.count_crisis("model_check");
        let now = Instant::now();
        let pending = match self.calls.get_mut(check.call_job) {
            Some(call) => {
                call.crisis = true;
                // A streamed reply with nothing sent yet gets the protocol as part 0 now;
                // one already under way gets it after the model's parts.
                let lead = (call.stream.as_mut())
                    .filter(|s| !s.started())
                    .map(|s| s.lead(&crisis::crisis_reply(None), true, now));
                if let Some(part) = lead {
                    self.out.parts.push((call.reply_to.clone(), part));
                }
                true
            }
            None => false,
        };
        if let Some(s) = check
            .user_id
            .as_deref()
            .and_then(|u| self.world.sessions.get_mut(u))
        {
            s.crisis = true;
        }
        log::warn!(
            "crisis signal detected user={user} category=model_check features=model_check: \
             {}",
            if pending {
                "the protocol will lead the reply"
            } else {
                "the reply was already sent; later replies keep the 988 line"
            }
        );
    }

    /// Hand a call to the pool. If it cannot take it, the answer is returned at once.
    fn submit(&mut self, mut call: Call, now: Instant) -> Option<(ReplyTo, Reply)> {
        // The builtin persona only asks whether there was an earlier exchange; the other
        // backends get the whole capped history.
        let keep = if self.pool.is_none() { 2 } else { usize::MAX };
        // Nor does it recount more than its last few events.
        let recent = match self.pool {
            None => self.cfg.agent.context_events.min(builtin::NEWS_MAX),
            Some(_) => self.cfg.agent.context_events,
        };
        let history: Vec<_> = (call.user_id.as_deref())
            .and_then(|u| self.world.sessions.get(u))
            .map(|s| {
                let skip = s.history.len().saturating_sub(keep);
                s.history.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default();
        // The builtin persona reads the message first: a greeting with nothing asked (a
        // newcomer's first words) and the crisis reply need no more of the world than the
        // room's name.
        let is_builtin = self.cfg.agent.backend == "builtin";
        let plan = is_builtin.then(|| builtin::plan(&call.message, history.is_empty()));
        let reads = match &plan {
            Some(_) if call.crisis => Reads::Room,
            Some(p) => p.reads(),
            None => Reads::All,
        };
        let user = call.user_id.as_deref().unwrap_or_default();
        let context = match reads {
            Reads::Room => crate::agent::WorldContext {
                room: call.room.clone(),
                ..Default::default()
            },
            Reads::Look => self.world.context_seen(&call.room),
            Reads::All => {
                let mut context = self.world.context(user, &call.room, recent);
                context.game = (self.links.perception_near(&call.room))
                    .map(|(world, seen)| crate::world::protocol::summary(world, &seen.perception));
                context
            }
        };
        let req = AgentRequest {
            job_id: call.job_id,
            user_id: call.user_id.clone().unwrap_or_default(),
            username: call.username.clone(),
            history,
            message: call.message.clone(),
            context,
            crisis: call.crisis,
            timeout: self.agent_timeout(),
            purpose: crate::agent::Purpose::Reply,
            system: call.system.clone(),
            stream: call.stream.is_some(),
        };
        call.deadline = now + self.agent_timeout();
        if let Some(plan) = &plan {
            // The builtin persona answers from memory in microseconds and cannot block,
            // so it runs here: a worker hop would cost more than the answer.
            let text = builtin::reply_planned(&req, plan);
            self.metrics.agent_latency.observe(now.elapsed());
            let resp = self.complete(&mut call, Ok(text));
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
        let resp = if let Some(text) = self.shaped(&mut call, None) {
            self.finish_call(&call, text)
        } else {
            Err(Refusal::new(
                "agent_busy",
                "the agent's queue is full; try again in a moment",
            )
            .retry_after(1))
        };
        Some((call.reply_to, resp))
    }

    /// Record a finished exchange in the session and build the response.
    fn finish_call(&mut self, call: &Call, text: String) -> Reply {
        let now_ms = crate::world::time::now_ms();
        match call.kind {
            CallKind::Generate => Ok(Outcome::Generate { text }),
            CallKind::Chat => {
                let user = call.user_id.as_deref().unwrap_or_default();
                self.world
                    .sessions
                    .record(user, &call.message, &text, now_ms);
                self.session_changed(user);
                let (messages, flagged) = self
                    .world
                    .sessions
                    .get(user)
                    .map_or((0, call.crisis), |s| (s.messages, s.crisis));
                Ok(Outcome::Chat(ChatReply {
                    text,
                    user: call.username.clone(),
                    room: call.room.clone(),
                    session_messages: messages,
                    crisis: flagged,
                }))
            }
        }
    }

    /// The text a user gets: the crisis protocol leads when the detector fired on this
    /// message, and a flagged session keeps the 988 line.
    fn shape_reply(&self, call: &Call, agent_text: Option<String>) -> Option<String> {
        let flagged = self.flagged(call);
        match (call.crisis, agent_text) {
            (true, text) => Some(crisis::crisis_reply(text.as_deref())),
            (false, text) if call.resources => Some(crisis::resources_reply(text.as_deref())),
            (false, Some(t)) if flagged => Some(crisis::keep_lifeline(&t)),
            (false, t) => t,
        }
    }

    /// A piece of a streamed answer: the parts it completed go out, and the call's
    /// deadline becomes the next chunk's (`agent.chunk_timeout_s`), within the whole
    /// reply's (`agent.timeout_s` from the submit).
    fn on_chunk(&mut self, reply: AgentReply, now: Instant) {
        let Ok(piece) = reply.result else { return };
        let gap = Duration::from_secs(self.cfg.agent.chunk_timeout_s);
        let Some(call) = self.calls.get_mut(reply.job_id) else {
            return;
        };
        let Some(s) = call.stream.as_mut() else {
            return;
        };
        s.upstream = true;
        let whole_by = *s.whole_by.get_or_insert(call.deadline);
        call.deadline = whole_by.min(now + gap);
        let parts = s.model(&piece, now);
        let to = call.reply_to.clone();
        self.out
            .parts
            .extend(parts.into_iter().map(|p| (to.clone(), p)));
    }

    /// Whether the call's session is flagged by the crisis protocol.
    fn flagged(&self, call: &Call) -> bool {
        call.user_id
            .as_deref()
            .and_then(|u| self.world.sessions.get(u))
            .is_some_and(|s| s.crisis)
    }

    /// The text a user gets, whole ([`App::shape_reply`]) or, for a streamed call, as
    /// its last parts: `None` when the agent gave nothing and no protocol text leads.
    fn shaped(&mut self, call: &mut Call, agent_text: Option<String>) -> Option<String> {
        if call.stream.is_none() {
            return self.shape_reply(call, agent_text);
        }
        let flagged = self.flagged(call);
        let s = call.stream.as_mut()?;
        let now = Instant::now();
        let ok = agent_text.is_some();
        let mut parts = Vec::new();
        if let Some(text) = agent_text.filter(|_| !s.upstream) {
            parts.extend(s.model(&text, now));
        }
        if ok || s.lead || call.crisis {
            parts.extend(s.flush(now));
        }
        if call.crisis && !s.crisis_sent {
            parts.extend(s.late_crisis(&crisis::crisis_reply(None), now));
        } else if ok && flagged && !s.lead {
            let whole = crisis::keep_lifeline(&s.text);
            let tail = whole.strip_prefix(s.text.as_str()).unwrap_or_default();
            parts.extend(s.tail(tail.to_string(), now));
        }
        let text = (ok || s.lead || s.crisis_sent).then(|| s.text.clone());
        if let Some(first) = s.first_part {
            let m = &mut self.metrics;
            m.agent_first_part
                .observe(first.duration_since(call.created));
            m.agent_reply.observe(now.duration_since(call.created));
        }
        let to = call.reply_to.clone();
        self.out
            .parts
            .extend(parts.into_iter().map(|p| (to.clone(), p)));
        text
    }

    /// A streamed call begins: the protocol text (or the hotline numbers) goes out as
    /// part 0 at once, before the model is asked.
    fn open_stream(&mut self, call: &mut Call, now: Instant) {
        let thinking = now + Duration::from_millis(self.cfg.agent.thinking_after_ms);
        let mut s = Stream::new(self.cfg.agent.stream_min_chars, thinking);
        let lead = match (call.crisis, call.resources) {
            (true, _) => Some(s.lead(&crisis::crisis_reply(None), true, now)),
            (false, true) => Some(s.lead(&crisis::resources_reply(None), false, now)),
            _ => None,
        };
        if let ReplyTo::Bark { reply_id, .. } = &mut call.reply_to {
            *reply_id = Some(call.job_id);
        }
        if let Some(part) = lead {
            self.out.parts.push((call.reply_to.clone(), part));
        }
        call.stream = Some(Box::new(s));
    }

    /// `thinking`, once, for each streamed call with no part after
    /// `agent.thinking_after_ms`.
    fn send_thinking(&mut self, now: Instant) {
        for call in self.calls.each_mut() {
            if call.stream.as_mut().is_some_and(|s| s.thinking_due(now)) {
                self.out.parts.push((call.reply_to.clone(), Part::Thinking));
            }
        }
    }

    /// A worker answered.
    pub fn on_reply(&mut self, reply: AgentReply, now: Instant) {
        if reply.chunk {
            return self.on_chunk(reply, now);
        }
        if let Some(check) = self.crisis_checks.remove(&reply.job_id) {
            self.on_crisis_check(check, reply.result);
            return;
        }
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
        let mut call = call;
        let resp = self.complete(&mut call, reply.result);
        self.start_next(call.user_id.as_deref(), now);
        self.answer(call.reply_to, resp);
    }

    /// The response for a call the agent answered (or failed).
    fn complete(&mut self, call: &mut Call, result: Result<String, AgentError>) -> Reply {
        match result {
            Ok(text) => {
                self.metrics.count_agent("ok");
                let text = self.shaped(call, Some(text)).unwrap_or_default();
                self.finish_call(call, text)
            }
            Err(err) => {
                let timeout = err == AgentError::Timeout;
                self.metrics
                    .count_agent(if timeout { "timeout" } else { "error" });
                log::warn!(
                    "agent call failed job={} user={}: {err}",
                    call.job_id,
                    call.user_id.as_deref().unwrap_or("-")
                );
                self.failed_call(call, timeout)
            }
        }
    }

    /// The answer for a call the agent failed (or that ran out of time).
    fn failed_call(&mut self, call: &mut Call, timeout: bool) -> Reply {
        match self.shaped(call, None) {
            Some(text) => self.finish_call(call, text),
            None if timeout => Err(Refusal::new(
                "agent_timeout",
                format!(
                    "the agent did not answer within {} s",
                    self.cfg.agent.timeout_s
                ),
            )),
            None => Err(Refusal::new(
                "agent_error",
                "the agent failed to answer; try again",
            )),
        }
    }

    fn start_next(&mut self, user: Option<&str>, now: Instant) {
        if let Some(next) = user.and_then(|u| self.calls.next_for(u)) {
            // After a call another node ran, this node does not hold the lease.
            if self.needs_lease(&next) {
                return self.await_lease(next);
            }
            if let Some((to, resp)) = self.submit(next, now) {
                self.answer(to, resp);
            }
        } else if let Some(u) = user.filter(|u| !self.calls.is_busy(u)) {
            self.release_lease(u);
        }
    }

    /// Time passes: late calls get 504 (or the crisis text), idle sessions expire.
    pub fn tick(&mut self, now: Instant, now_ms: u64) {
        self.crisis_checks.retain(|job, c| {
            let live = c.deadline > now;
            if !live {
                log::debug!(
                    "crisis model check job={job} for call {} ran past agent.crisis_model_check_ms; its answer will be ignored",
                    c.call_job
                );
            }
            live
        });
        self.send_thinking(now);
        for mut call in self.calls.expire(now) {
            self.metrics.count_agent("timeout");
            log::warn!(
                "agent call timed out job={} user={}",
                call.job_id,
                call.user_id.as_deref().unwrap_or("-")
            );
            let resp = self.failed_call(&mut call, true);
            self.start_next(call.user_id.as_deref(), now);
            self.answer(call.reply_to, resp);
        }
        let calls = &self.calls;
        let (gone, _leaves) = self
            .world
            .expire(now_ms, &|u| calls.is_busy(u) || calls.waiting_for(u) > 0);
        for u in gone {
            log::info!("session expired user={u} (idle past sessions.idle_timeout_s)");
            self.session_ended(&u, now_ms);
        }
        self.rate.prune(now_ms);
        self.expire_rooms(now_ms);
        self.expire_game_requests(now);
        self.expire_remote_games(now);
        self.route_events(None);
        self.fed_tick(now);
    }
}

/// A crisis classification in flight.
#[derive(Debug, Clone)]
struct CrisisCheck {
    /// The job of the chat call it is about.
    call_job: u64,
    user_id: Option<String>,
    /// Past this, its answer is ignored.
    deadline: Instant,
}

impl App {
    /// This world's key: read from its file, or created there (mode 0600); with
    /// `--memory` and no `federation.key_file`, the one made for this run. Called at start
    /// once the store holds the data directory the key lives in.
    pub fn load_world_key(&mut self) -> Result<(), AppError> {
        if let Some(f) = &mut self.fed {
            f.core.set_key(self.world_key.clone());
        }
        let Some(path) = self.cfg.key_path() else {
            log::info!(
                "world key: none kept (--memory); this run's public key is {}",
                self.world_key.public()
            );
            return Ok(());
        };
        let (key, created) = WorldKey::load_or_create(&path).map_err(AppError::WorldKey)?;
        log::info!(
            "world key: {} ({}); public key {}",
            path.display(),
            if created { "created" } else { "loaded" },
            key.public()
        );
        self.world_key = key;
        if let Some(f) = &mut self.fed {
            f.core.set_key(self.world_key.clone());
        }
        Ok(())
    }
}

/// The built-in crisis rules, extended by `agent.crisis_file` when it names a file.
fn load_crisis_detector(file: &str) -> Result<CrisisDetector, AppError> {
    if file.is_empty() {
        return Ok(CrisisDetector::builtin());
    }
    let path = crate::config::expand_home(file);
    let text = std::fs::read_to_string(&path).map_err(|source| AppError::CrisisFileRead {
        path: file.to_string(),
        source,
    })?;
    let detector = CrisisDetector::with_extra(file, &text).map_err(AppError::CrisisFile)?;
    log::info!("crisis rules: the built-in rules extended by {file}");
    Ok(detector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let mut cfg = Config::default();
        cfg.store.memory = true;
        App::new(cfg).expect("app")
    }

    fn conn(i: u32) -> ConnId {
        ConnId { idx: i, gen: 0 }
    }

    #[test]
    fn agent_crisis_file_extends_the_rules_and_a_bad_one_stops_the_start() {
        let dir =
            std::env::temp_dir().join(format!("worldbridge-crisis-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(
            &good,
            "rule suicide 2 lighthouse: the purple lighthouse hums\n",
        )
        .unwrap();
        let mut cfg = Config::default();
        cfg.store.memory = true;
        cfg.agent.crisis_file = good.display().to_string();
        let a = App::new(cfg.clone()).expect("app");
        assert!(a.crisis.detect("the purple lighthouse hums").is_some());
        assert!(
            a.crisis.detect("i want to kill myself").is_some(),
            "built-ins stay"
        );

        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "# fine\nrule suicide 2 x: NOPE die\n").unwrap();
        cfg.agent.crisis_file = bad.display().to_string();
        let err = App::new(cfg.clone())
            .err()
            .expect("a bad file stops the start");
        assert!(matches!(err, AppError::CrisisFile(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with("agent.crisis_file: "), "{err}");
        assert!(
            err.contains("bad.txt line 2") && err.contains("NOPE"),
            "{err}"
        );

        cfg.agent.crisis_file = dir.join("missing.txt").display().to_string();
        let err = App::new(cfg).err().expect("a missing file stops the start");
        assert!(matches!(err, AppError::CrisisFileRead { .. }), "{err:?}");
        assert!(
            err.to_string().contains("cannot read agent.crisis_file"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn held_answers_go_out_when_durable_and_become_503_when_the_commit_fails() {
        let mut a = app();
        let ok = || Ok(Outcome::Ok(serde_json::json!({"ok": true})));
        a.held.push_back(Held {
            batch: 1,
            answer: HeldAnswer::Reply(ReplyTo::Http(conn(1)), ok()),
        });
        a.hold_line(
            conn(2),
            Some(serde_json::json!(7)),
            b"{\"type\":\"ok\",\"id\":7}\n".to_vec(),
        );
        a.hold_http(conn(4));
        a.held.push_back(Held {
            batch: 2,
            answer: HeldAnswer::Reply(ReplyTo::Http(conn(3)), ok()),
        });
        a.on_store(StoreEvent::Failed {
            ids: vec![1],
            error: "disk I/O error".into(),
        });
        // The chat answer and the line's `ok` become refusals; the door renders them.
        assert_eq!(a.out.answers.len(), 2);
        let refusal = a.out.answers[0].1.as_ref().expect_err("refused");
        assert_eq!(refusal.code, "store_unavailable");
        assert!(refusal.message.contains("disk I/O error"));
        assert!(
            matches!(&a.out.answers[1], (ReplyTo::LineRequest { conn: c, id: Some(id) }, Err(r))
                if *c == conn(2) && *id == serde_json::json!(7) && r.code == "store_unavailable"),
            "the line gets an error for its id"
        );
        assert!(a.out.lines.is_empty(), "the held ok line is not sent");
        // The HTTP answer the loop holds is released as a refusal too.
        assert!(
            matches!(&a.out.released[..], [(c, Err(r))] if *c == conn(4) && r.code == "store_unavailable")
        );
        let refused = a.store_refusal().expect("writes are refused");
        assert_eq!(
            (refused.code, refused.retry_after),
            ("store_unavailable", Some(1))
        );
        a.out.answers.clear();
        a.out.released.clear();
        a.on_store(StoreEvent::Durable { upto: 2 });
        assert_eq!(a.out.answers.len(), 1, "the later batch went through");
        assert!(a.out.answers[0].1.is_ok());
        assert!(
            a.store_refusal().is_none(),
            "a good commit clears the error"
        );
        assert!(a.held.is_empty());
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::agent::Role;

    fn chat(a: &mut App, user: &str, message: &str, stream: bool) -> (ChatReply, Vec<Part>) {
        let input = CallInput {
            kind: CallKind::Chat,
            user_id: Some(user.into()),
            username: user.into(),
            room: "The Threshold".into(),
            message: message.into(),
            stream,
            system: None,
        };
        let to = ReplyTo::Http(ConnId { idx: 1, gen: 0 });
        let answer = a.begin_call(input, to, crate::world::time::now_ms(), Instant::now());
        // Streamed, the answer waits in `ready` behind its parts.
        let answer = match answer {
            Answer::Later if stream => a.out.answers.pop().map(|(_, r)| r),
            Answer::Now(r) if !stream => Some(r),
            _ => None,
        };
        let Some(Ok(Outcome::Chat(reply))) = answer else {
            panic!("the builtin agent answers at once");
        };
        let parts = a.out.parts.drain(..).map(|(_, p)| p).collect();
        (reply, parts)
    }

    fn app(min_chars: usize) -> App {
        let mut cfg = Config::default();
        cfg.store.memory = true;
        cfg.agent.stream_min_chars = min_chars;
        App::new(cfg).expect("app")
    }

    fn texts(parts: &[Part]) -> Vec<(u32, String, bool)> {
        parts
            .iter()
            .map(|p| match p {
                Part::Text {
                    index,
                    text,
                    crisis,
                } => (*index, text.clone(), *crisis),
                Part::Thinking => panic!("no thinking from the builtin agent"),
            })
            .collect()
    }

    fn last_assistant(a: &App, user: &str) -> String {
        let s = a.world.sessions.get(user).expect("session");
        let t = s.history.iter().rev().find(|t| t.role == Role::Assistant);
        t.expect("a reply").content.clone()
    }

    #[test]
    fn a_streamed_builtin_chat_is_its_sentences_and_the_stored_reply_their_concatenation() {
        let (mut streamed, mut whole) = (app(1), app(1));
        for message in ["hello there", "tell me about this place"] {
            let (reply, parts) = chat(&mut streamed, "u1", message, true);
            let (plain, none) = chat(&mut whole, "u1", message, false);
            assert!(none.is_empty(), "no parts without stream");
            let parts = texts(&parts);
            assert!(
                parts.len() >= 2,
                "the builtin agent streams sentences: {parts:?}"
            );
            let indices: Vec<u32> = parts.iter().map(|p| p.0).collect();
            assert_eq!(indices, (0..parts.len() as u32).collect::<Vec<_>>());
            assert!(parts.iter().all(|p| !p.2), "no crisis");
            let joined: String = parts.iter().map(|p| p.1.as_str()).collect();
            assert_eq!(reply.text, joined);
            assert_eq!(
                last_assistant(&streamed, "u1"),
                joined,
                "stored = concatenation"
            );
            assert_eq!(plain.text, reply.text, "the same words as unstreamed");
        }
    }

    #[test]
    fn a_crisis_streams_the_protocol_as_part_0_and_a_flagged_session_keeps_988() {
        let mut a = app(60);
        let (reply, parts) = chat(&mut a, "u2", "i want to kill myself", true);
        let parts = texts(&parts);
        let protocol = crisis::crisis_reply(None);
        assert_eq!(parts[0], (0, protocol.clone(), true));
        assert!(parts[1..]
            .iter()
            .all(|p| !p.2 && p.1.starts_with(char::is_whitespace)));
        let joined: String = parts.iter().map(|p| p.1.as_str()).collect();
        assert_eq!(reply.text, joined);
        assert!(reply.crisis);
        let mut plain = app(60);
        let (whole, _) = chat(&mut plain, "u2", "i want to kill myself", false);
        assert_eq!(whole.text, reply.text, "the same text as unstreamed");

        // The next message of the flagged session: the 988 line follows the reply.
        let (next, parts) = chat(&mut a, "u2", "ok. tell me about the garden", true);
        let (plain_next, _) = chat(&mut plain, "u2", "ok. tell me about the garden", false);
        let joined: String = texts(&parts).iter().map(|p| p.1.as_str()).collect();
        assert_eq!(next.text, joined);
        assert_eq!(plain_next.text, next.text);
        assert!(next.text.contains("988"));
        assert_eq!(last_assistant(&a, "u2"), joined);
    }
}
