//! Cluster mode in the hub: this node's events go to the world's shared log, and every
//! event of the log, this node's own included, comes back to be applied in log order.
//!
//! The flow of one `say` on node A: the world records it with a provisional number and
//! the answer waits ([`App::must_hold`]); at the end of the loop iteration the new events
//! go to Redis as one proposal (`store::cluster`); Redis numbers them; the reader thread
//! of every node (A's too) hands the entries to its loop, which applies them
//! ([`World::apply_logged`]) and fans them out to its own links, feeds and watchers. A's
//! answer is released once A has applied its own events, so a read that follows it on
//! A shows them, with the numbers they have everywhere (the answer's provisional numbers
//! are replaced by the real ones, [`renumber`]).
//!
//! When Redis does not answer, changes are refused with 503 `store_unavailable` and
//! health says `degraded`; reads keep serving what this node has. When Redis lost its
//! data (a new epoch), this node forgets the old log's events and reads the new one.
//!
//! [`World::apply_logged`]: crate::world::World::apply_logged

use crate::app::calls::{Call, CallKind};
use crate::app::cluster_fed::{parse_all, FedRole};
use crate::app::App;
use crate::conn::ConnId;
use crate::feeds::gateway::logged::LogFrame;
use crate::store::cluster::{
    ClusterStore, Dump, Entry, News, Proposal, Record, KIND_EVENT, KIND_FED_EVENT, KIND_GATEWAY,
    KIND_LINK, KIND_ROOM,
};
use crate::world::logged::is_provisional;
use crate::world::room::Event;
use crate::world::session::Session;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::app::outbox::Renumber;

/// The hub's side of cluster mode.
pub struct Cluster {
    pub store: ClusterStore,
    /// This node's id (`cluster.node_id`, or host name + pid).
    pub node: String,
    /// The last log entry applied here.
    pub applied: u64,
    /// The epoch of the log this node follows (`None` before the first entry).
    pub epoch: Option<String>,
    /// Why Redis does not answer, and since when (epoch ms); `None` while it does.
    pub down: Option<(String, u64)>,
    /// Whether Redis has answered since this node started.
    pub seen_up: bool,
    /// Batches proposed and not yet appended: their provisional numbers, in order.
    proposed: BTreeMap<u64, Vec<u64>>,
    /// Batches appended: the highest number they got and the renumbering of their events.
    appended: BTreeMap<u64, (u64, Renumber)>,
    /// Events a game link reported (by provisional, then real number): the log does not
    /// echo them back to that link.
    from_link: HashMap<u64, ConnId>,
    /// Counters for `/metrics`.
    pub appended_events: u64,
    pub applied_events: u64,
    pub resets: u64,
    /// From the last applied entry's event to its application here, in ms.
    pub lag_ms: u64,
    /// The nodes alive, as Redis last said (this one included).
    pub nodes: Vec<String>,
    /// Dead nodes cleaned up after in this iteration (they leave the set once logged).
    forget: Vec<String>,
    /// Users whose session lease this node holds (it talks to the agent for them).
    leases: HashSet<String>,
    /// Users whose lease this node waits for, and the call that waits for it.
    pub(crate) awaiting: HashMap<String, u64>,
    /// Calls of this node that the node owning their user's session runs, by job.
    pub(crate) forwarded: HashMap<u64, crate::app::forward::Forwarded>,
    /// Chats this node forwarded to the owner node, and chats it ran for another node.
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// Which node holds each world's game link, and requests sent to them.
    pub(crate) links: crate::app::cluster_links::LinkMap,
    /// Sessions to store with the next proposal (their calls finished here).
    session_writes: BTreeSet<String>,
    /// Sessions to delete with the next proposal (their users travelled away).
    session_deletes: Vec<String>,
    /// Travels waiting for their user's lease (the stored conversation travels along).
    pub(crate) travels_waiting: HashMap<String, (String, crate::app::calls::ReplyTo)>,
    /// Leases to give back with the next proposal.
    releases: Vec<String>,
    /// Rooms a game link described here, for the other nodes (their specs' JSON).
    rooms: Vec<String>,
    pub nodes_reaped: u64,
    /// The lock of this node's data directory.
    data_lock: Option<std::fs::File>,
    /// Whether this node runs federation, and what it keeps for when it does.
    pub fed: FedRole,
    /// `GET /bridge/sessions` requests waiting for Redis's list, by ticket.
    session_asks: HashMap<u64, crate::app::calls::ReplyTo>,
    next_ticket: u64,
}

impl Cluster {
    pub fn new(store: ClusterStore) -> Cluster {
        Cluster {
            node: store.settings.node.clone(),
            store,
            applied: 0,
            epoch: None,
            down: None,
            seen_up: false,
            proposed: BTreeMap::new(),
            appended: BTreeMap::new(),
            from_link: HashMap::new(),
            appended_events: 0,
            applied_events: 0,
            resets: 0,
            lag_ms: 0,
            nodes: Vec::new(),
            forget: Vec::new(),
            nodes_reaped: 0,
            data_lock: None,
            leases: HashSet::new(),
            awaiting: HashMap::new(),
            forwarded: HashMap::new(),
            forwarded_out: 0,
            forwarded_in: 0,
            links: Default::default(),
            session_writes: BTreeSet::new(),
            session_deletes: Vec::new(),
            travels_waiting: HashMap::new(),
            releases: Vec::new(),
            rooms: Vec::new(),
            fed: FedRole::default(),
            session_asks: HashMap::new(),
            next_ticket: 0,
        }
    }

    /// Answers waiting for the log.
    pub fn waiting(&self) -> usize {
        self.proposed.len() + self.appended.len()
    }
}

impl App {
    /// Serve this world as one node of a cluster: events are numbered by the shared log.
    /// `lock`: the node's data directory, held while it runs (`None` with `--memory`).
    pub fn attach_cluster(&mut self, store: ClusterStore, lock: Option<std::fs::File>) {
        self.world.log_events(&store.settings.node);
        self.gateway.log_frames(&store.settings.node);
        let mut c = Cluster::new(store);
        c.data_lock = lock;
        self.cluster = Some(c);
    }

    /// The events a game link just reported are its own: the log does not send them
    /// back to it.
    pub(crate) fn note_link_events(&mut self, link: ConnId) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        for seq in self.world.unsequenced_seqs() {
            c.from_link.entry(seq).or_insert(link);
        }
    }

    /// This iteration's new events and gateway frames go to the log as one proposal.
    pub(crate) fn propose_events(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        let events = self.world.take_unsequenced();
        let frames = self.gateway.take_proposals();
        let links = self.link_records();
        let Some(c) = &mut self.cluster else {
            return;
        };
        let quiet = links.is_empty()
            && c.session_writes.is_empty()
            && c.session_deletes.is_empty()
            && c.releases.is_empty()
            && c.forget.is_empty()
            && c.rooms.is_empty()
            && !self.fed.as_ref().is_some_and(|f| f.has_rows());
        if events.is_empty() && frames.is_empty() && quiet {
            return;
        }
        let sessions: Vec<(String, String)> = (std::mem::take(&mut c.session_writes).into_iter())
            .filter_map(|u| {
                let json = serde_json::to_string(self.world.sessions.get(&u)?).ok()?;
                Some((u, json))
            })
            .collect();
        let release = std::mem::take(&mut c.releases);
        let forget_sessions = std::mem::take(&mut c.session_deletes);
        let batch = self.next_batch;
        self.next_batch += 1;
        let fed = self.take_fed_ops(batch);
        let Some(c) = &mut self.cluster else {
            return;
        };
        let mut records = Vec::with_capacity(events.len());
        let mut provisional = Vec::with_capacity(events.len());
        for mut ev in events {
            // The entry's id is its number; the body's `seq` is left 0.
            let seq = std::mem::take(&mut ev.seq);
            let scoped = self.fed.as_mut().is_some_and(|f| f.take_scope(seq));
            provisional.push(seq);
            records.push(Record {
                kind: if scoped { KIND_FED_EVENT } else { KIND_EVENT },
                ts_ms: ev.ts_ms,
                body: serde_json::to_string(&ev).unwrap_or_default(),
            });
        }
        let now = crate::world::time::now_ms();
        for spec in std::mem::take(&mut c.rooms) {
            provisional.push(0);
            records.push(Record {
                kind: KIND_ROOM,
                ts_ms: now,
                body: spec,
            });
        }
        for r in links {
            provisional.push(0);
            records.push(r);
        }
        for f in frames {
            // Frames have no answer waiting on their numbers.
            provisional.push(0);
            records.push(Record {
                kind: KIND_GATEWAY,
                ts_ms: now,
                body: serde_json::to_string(&f).unwrap_or_default(),
            });
        }
        c.proposed.insert(batch, provisional);
        let forget = std::mem::take(&mut c.forget);
        c.store.propose(Proposal {
            batch,
            records,
            forget,
            sessions,
            forget_sessions,
            release,
            fed,
        });
    }

    /// What the Redis threads reported.
    pub fn on_cluster(&mut self, news: News) {
        let now = crate::world::time::now_ms();
        let Some(c) = &mut self.cluster else {
            return;
        };
        match news {
            News::Up => {
                c.down = None;
                c.seen_up = true;
            }
            News::NodeDead { node } => {
                c.nodes_reaped += 1;
                c.forget.push(node.clone());
                // Its users leave and its agents are gone: for every node, through the log.
                let users = self.world.held_by(&node);
                log::info!(
                    "cluster: node {node} is gone: {} present users leave, its agents too",
                    users.len()
                );
                for u in users {
                    self.world.remove(&u, now);
                }
                self.gateway.node_gone(&node, now);
                self.links_gone_with(&node);
            }
            News::Leased { user, session } => self.leased(user, session),
            News::Owned { user, node } => self.forward_to(user, node),
            News::Inbox(messages) => self.on_inbox(messages),
            News::Sessions { ticket, sessions } => self.sessions_read(ticket, sessions),
            News::Nodes(nodes) => {
                self.forwards_lost(&nodes);
                self.link_nodes(&nodes);
                if let Some(c) = &mut self.cluster {
                    c.nodes = nodes;
                }
            }
            News::Federation { leader, state } => self.on_fed_news(leader, state),
            News::Down { error } => {
                if c.down.is_none() {
                    c.down = Some((error, now));
                }
            }
            News::Appended { batch, epoch, seqs } => {
                let provisional = c.proposed.remove(&batch).unwrap_or_default();
                let top = seqs.iter().copied().max().unwrap_or(0);
                c.appended_events += seqs.len() as u64;
                let renumber: Renumber = provisional.into_iter().zip(seqs).collect();
                for (p, real) in &renumber {
                    if let Some(link) = c.from_link.remove(p) {
                        c.from_link.insert(*real, link);
                    }
                }
                if c.epoch.as_ref().is_some_and(|e| *e != epoch) {
                    log::info!("cluster: appended into epoch {epoch}; reading it follows");
                }
                c.appended.insert(batch, (top, renumber));
                self.fed_appended(batch);
            }
            News::Failed {
                batches,
                error,
                unknown,
            } => {
                for b in &batches {
                    if let Some(p) = c.proposed.remove(b) {
                        for seq in p {
                            c.from_link.remove(&seq);
                        }
                    }
                }
                self.fed_failed(&batches);
                if unknown {
                    let why = format!(
                        "{error}: the change may or may not have been stored; \
                         look before trying again"
                    );
                    self.fail_held_as(&batches, "store_unknown", &why);
                } else {
                    let why = format!("the change could not be stored ({error}); try again");
                    self.fail_held(&batches, &why);
                }
            }
            News::Entries(entries) => self.apply_entries(entries),
            News::Reset { epoch } => {
                c.resets += 1;
                c.applied = 0;
                c.epoch = epoch;
                c.from_link.clear();
                // Changes Redis accepted and then lost with its data are answered now:
                // they were acknowledged by Redis; the new log starts without them.
                for (top, _) in c.appended.values_mut() {
                    *top = 0;
                }
                let epoch = c.epoch.clone();
                self.world.forget_logged_events();
                let mut out = Vec::new();
                self.gateway.log_reset(epoch.as_deref(), &mut out);
                self.apply_gateway(out, now);
            }
        }
        self.release_logged();
    }

    /// Whether this call must wait for its user's session lease before the agent is
    /// asked (cluster mode: another node may be talking to the agent for them, or have
    /// been last; the lease brings the stored conversation).
    pub(crate) fn needs_lease(&self, call: &Call) -> bool {
        let Some(c) = &self.cluster else {
            return false;
        };
        call.kind == CallKind::Chat
            && (call.user_id.as_deref()).is_some_and(|u| !c.leases.contains(u))
    }

    /// The call waits (in flight, so the user's next messages queue behind it) until
    /// this node holds the user's lease, or, when a live node holds it, goes to that
    /// node ([`App::forward_to`]; not a call another node forwarded here).
    pub(crate) fn await_lease(&mut self, mut call: Call) {
        let forward = !matches!(call.reply_to, crate::app::calls::ReplyTo::Remote { .. });
        let (Some(c), Some(user)) = (&mut self.cluster, call.user_id.clone()) else {
            return;
        };
        // It may wait for the call another node has under way (`agent.timeout_s`), or
        // for a dead holder's lease to run out (`node_ttl_s`); the agent's own time
        // starts when the lease comes.
        let node_ttl = c.store.settings.node_ttl;
        call.deadline = call.created + node_ttl + Duration::from_secs(self.cfg.agent.timeout_s);
        c.awaiting.insert(user.clone(), call.job_id);
        c.store.lease(&user, forward);
        self.calls.start(call);
    }

    /// The lease came: the stored conversation is taken up, and the call goes on.
    fn leased(&mut self, user: String, stored: Option<String>) {
        let now = Instant::now();
        let Some(c) = &mut self.cluster else {
            return;
        };
        let waiting = c.awaiting.remove(&user);
        c.leases.insert(user.clone());
        let stored = stored.and_then(|json| match serde_json::from_str(&json) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cluster: the stored session of {user:?} does not read: {e}");
                None
            }
        });
        match stored {
            Some(s) => self.world.sessions.take_stored(s),
            None => self.world.sessions.forget_history(&user),
        }
        // A travel that waited for the conversation goes now (and gives the lease back
        // below when no chat waits for it).
        let travel = (self.cluster.as_mut()).and_then(|c| c.travels_waiting.remove(&user));
        if let Some((to_world, reply_to)) = travel {
            let now_ms = crate::world::time::now_ms();
            if let Err(r) = self.travel_request(&user, &to_world, reply_to.clone(), now_ms) {
                self.answer(reply_to, Err(r));
            }
        }
        match waiting.and_then(|job| self.calls.finish(job)) {
            Some(call) => {
                if let Some((to, resp)) = self.submit(call, now) {
                    self.start_next(Some(&user), now);
                    self.answer(to, resp);
                }
            }
            // The call timed out meanwhile: the next one goes, or the lease goes back.
            None => self.start_next(Some(&user), now),
        }
    }

    /// `GET /bridge/sessions` in cluster mode: every node's sessions are in Redis, so the
    /// answer comes once the writer has read them (`false`: not in cluster mode, answer
    /// from this process).
    pub fn ask_sessions(&mut self, to: crate::app::calls::ReplyTo) -> bool {
        let Some(c) = &mut self.cluster else {
            return false;
        };
        c.next_ticket += 1;
        c.session_asks.insert(c.next_ticket, to);
        c.store.sessions(c.next_ticket);
        true
    }

    /// Redis's sessions, merged with this node's own (the more recently active copy of
    /// each user's wins: a call under way here is not stored yet).
    fn sessions_read(&mut self, ticket: u64, read: Result<Vec<String>, String>) {
        let Some(to) = self
            .cluster
            .as_mut()
            .and_then(|c| c.session_asks.remove(&ticket))
        else {
            return;
        };
        let stored: Vec<Session> = match read {
            Ok(list) => list
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect(),
            Err(e) => {
                let why = format!("the sessions cannot be read from Redis ({e})");
                let refusal = crate::app::outcome::Refusal::new("store_unavailable", why);
                return self.answer(to, Err(refusal.retry_after(1)));
            }
        };
        // This node's own copies count only for the calls under way here (the others may
        // be stale: the user went on elsewhere, or travelled away).
        let leases = self.cluster.as_ref().map(|c| &c.leases);
        let here = (self.world.sessions.list().into_iter())
            .filter(|s| leases.is_some_and(|l| l.contains(&s.user_id)));
        let mut by_user: HashMap<&str, &Session> = HashMap::new();
        for s in stored.iter().chain(here) {
            let newer = by_user
                .get(s.user_id.as_str())
                .is_none_or(|held| held.last_active_ms < s.last_active_ms);
            if newer {
                by_user.insert(&s.user_id, s);
            }
        }
        let mut list: Vec<&Session> = by_user.into_values().collect();
        list.sort_by(|a, b| (b.last_active_ms, &a.user_id).cmp(&(a.last_active_ms, &b.user_id)));
        let answer = crate::app::reports::sessions_json(list);
        self.answer(to, Ok(crate::app::outcome::Outcome::Ok(answer)));
    }

    /// A call of `user` finished here: their session is stored with the next proposal.
    pub(crate) fn session_changed(&mut self, user: &str) {
        if let Some(c) = &mut self.cluster {
            c.session_writes.insert(user.to_string());
        }
    }

    /// `user` left this world for another: their stored session goes with the next
    /// proposal.
    pub(crate) fn session_gone(&mut self, user: &str) {
        if let Some(c) = &mut self.cluster {
            c.session_writes.remove(user);
            c.session_deletes.push(user.to_string());
        }
    }

    /// Cluster mode: a travel needs the user's stored conversation, which comes with the
    /// user's lease. `false`: this node holds it (or there is no cluster); `true`: the
    /// travel waits for it ([`App::leased`] carries it on).
    pub(crate) fn travel_needs_lease(
        &mut self,
        user: &str,
        to_world: &str,
        reply_to: &crate::app::calls::ReplyTo,
    ) -> bool {
        let Some(c) = &mut self.cluster else {
            return false;
        };
        if c.leases.contains(user) {
            return false;
        }
        c.travels_waiting
            .insert(user.to_string(), (to_world.to_string(), reply_to.clone()));
        c.store.lease(user, false);
        true
    }

    /// `user` has no call left here: the lease goes back (with the session stored).
    pub(crate) fn release_lease(&mut self, user: &str) {
        if let Some(c) = &mut self.cluster {
            if c.leases.remove(user) {
                c.releases.push(user.to_string());
            }
        }
    }

    /// Whether a session or a room waits to be stored (an answer given now waits with
    /// it).
    pub(crate) fn cluster_unsaved(&self) -> bool {
        (self.cluster.as_ref()).is_some_and(|c| !c.session_writes.is_empty() || !c.rooms.is_empty())
            || self.fed.as_ref().is_some_and(|f| f.has_rows())
    }

    /// A game link described the room `name` here: the other nodes get its description
    /// through the log.
    pub(crate) fn room_described(&mut self, name: &str) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let spec = self
            .world
            .room(name)
            .map(|r| serde_json::to_string(&r.spec));
        if let Some(Ok(json)) = spec {
            c.rooms.push(json);
        }
    }

    /// Apply log entries in order (an entry seen before is skipped), fanning each out.
    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let Some(c) = &mut self.cluster else {
                return;
            };
            if entry.seq <= c.applied && c.epoch.as_deref() == Some(entry.epoch.as_str()) {
                continue;
            }
            if c.epoch.as_deref() != Some(entry.epoch.as_str()) {
                c.epoch = Some(entry.epoch.clone());
                self.gateway.set_log_epoch(Some(&entry.epoch));
            }
            let Some(c) = &mut self.cluster else {
                return;
            };
            c.applied = entry.seq;
            c.applied_events += 1;
            c.lag_ms = crate::world::time::now_ms().saturating_sub(entry.ts_ms);
            let source = c.from_link.remove(&entry.seq);
            // A room this node described, it has already.
            let mine = entry.node == c.node;
            self.apply_entry(entry, source, mine);
        }
        self.fan_out(None);
    }

    /// One log entry into the world or the gateway, fanned out in log order (`source`:
    /// the link it came from, which does not hear it again).
    fn apply_entry(&mut self, entry: Entry, source: Option<ConnId>, mine: bool) {
        if entry.kind == KIND_ROOM {
            if !mine {
                match serde_json::from_str(&entry.body) {
                    Ok(spec) => {
                        if let Err(e) = self.world.set_room(spec) {
                            log::warn!("cluster: room of log entry {} not kept: {e}", entry.seq);
                        }
                    }
                    Err(e) => log::warn!("cluster: log entry {} is not a room: {e}", entry.seq),
                }
            }
            return;
        }
        if entry.kind == KIND_LINK {
            return self.apply_link(entry.seq, &entry.body);
        }
        if entry.kind == KIND_GATEWAY {
            // The world's events before it go out first: frames keep log order.
            self.fan_out(None);
            match serde_json::from_str::<LogFrame>(&entry.body) {
                Ok(frame) => {
                    let now = crate::world::time::now_ms();
                    let mut out = Vec::new();
                    (self.gateway).apply_logged(frame, entry.seq, &entry.node, now, &mut out);
                    self.apply_gateway(out, now);
                }
                Err(e) => log::warn!("cluster: log entry {} is not a frame: {e}", entry.seq),
            }
            return;
        }
        let mut ev: Event = match serde_json::from_str(&entry.body) {
            Ok(ev) => ev,
            Err(e) => {
                log::warn!("cluster: log entry {} is not an event: {e}", entry.seq);
                return;
            }
        };
        ev.seq = entry.seq;
        ev.ts_ms = entry.ts_ms;
        if entry.kind == KIND_FED_EVENT {
            if let Some(f) = &mut self.fed {
                f.mark_scoped(entry.seq);
            }
        }
        if source.is_some() {
            // What came before goes to every link; this one not back to its own.
            self.fan_out(None);
        }
        self.world.apply_logged(ev, &entry.node);
        if source.is_some() {
            self.fan_out(source);
        }
    }

    /// The world as a cluster's Redis holds it (`worldbridge export` with a cluster
    /// config): the log replayed into this fresh hub, the stored sessions taken up, and
    /// the whole as the export document's state. Presence is what the log says last.
    pub fn exported(mut self, dump: Dump) -> crate::store::Stored {
        self.world.log_events("export");
        self.gateway.log_frames("export");
        self.gateway.track_changes();
        let fed = dump.fed;
        for entry in dump.entries {
            self.gateway.set_log_epoch(Some(&entry.epoch));
            self.apply_entry(entry, None, false);
        }
        self.fan_out(None);
        for json in dump.sessions {
            match serde_json::from_str(&json) {
                Ok(s) => self.world.sessions.take_stored(s),
                Err(e) => log::warn!("export: a stored session does not read: {e}"),
            }
        }
        let mut gateway = self.gateway.take_unsaved();
        let keep = gateway.len().saturating_sub(self.cfg.gateway.history_max);
        gateway.drain(..keep);
        crate::store::Stored {
            snapshot: self.world.snapshot(),
            gateway_seq: self.gateway.seq(),
            gateway,
            fed_events: parse_all("event", &fed.events),
            fed_pruned: (fed.pruned.into_iter())
                .map(|(origin, upto)| crate::federation::merge::Pruned { origin, upto })
                .collect(),
            fed_trust: parse_all("trust entry", &fed.trust),
            fed_departures: parse_all("departure", &fed.departures),
            fed_arrivals: parse_all("arrival", &fed.arrivals),
        }
    }

    /// Release held answers whose events this node has applied, in order.
    fn release_logged(&mut self) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let mut ready = Vec::new();
        while let Some(h) = self.held.front() {
            let done = match c.appended.get(&h.batch) {
                _ if h.batch >= self.next_batch => false, // not proposed yet
                Some((top, _)) => *top <= c.applied,
                None => !c.proposed.contains_key(&h.batch),
            };
            if !done {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                let fix = (c.appended.get(&h.batch))
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                ready.push((h, fix));
            }
        }
        // Batches before the first answer still held, and applied here, are done.
        let first_held = self.held.front().map(|h| h.batch);
        let applied = c.applied;
        c.appended
            .retain(|b, (top, _)| *top > applied || first_held.is_some_and(|f| *b >= f));
        for (h, fix) in ready {
            self.release_renumbered(h.answer, fix);
        }
    }

    /// `cluster` in `/bridge/health`, and the reason health is `degraded`.
    pub fn cluster_health(&self) -> Option<(serde_json::Value, Option<String>)> {
        let c = self.cluster.as_ref()?;
        let redis = match (&c.down, c.seen_up) {
            (Some(_), _) => "down",
            (None, true) => "up",
            (None, false) => "connecting",
        };
        let mut v = serde_json::json!({
            "node_id": c.node,
            "redis": redis,
            "epoch": c.epoch,
            "seq": c.applied,
            "lag_ms": c.lag_ms,
            "nodes": c.nodes,
        });
        if self.fed.is_some() {
            v["federation"] = serde_json::json!({"leader": c.fed.leader, "here": c.fed.running});
        }
        let reason = c.down.as_ref().map(|(why, since)| {
            v["since"] = serde_json::json!(crate::world::time::rfc3339(*since));
            why.clone()
        });
        Some((v, reason))
    }

    /// A change is refused while Redis does not answer.
    pub(crate) fn cluster_refusal(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        match (&c.down, c.seen_up) {
            (Some((why, _)), _) => Some(why.clone()),
            (None, false) => Some("this node has not reached Redis yet".into()),
            (None, true) => None,
        }
    }

    /// Cluster counters for `/metrics`, labelled with this node.
    pub(crate) fn render_cluster_metrics(&self, o: &mut String) {
        use std::fmt::Write as _;
        let Some(c) = &self.cluster else {
            return;
        };
        // Node ids are letters, digits, '_', '.' and '-' (`ClusterConfig::node_name`).
        let node = &c.node;
        let series: [(&str, &str, &str, u64); 11] = [
            (
                "chats_forwarded_total",
                "counter",
                "Chats that arrived here and went to the node owning the user's session.",
                c.forwarded_out,
            ),
            (
                "chats_served_total",
                "counter",
                "Chats another node forwarded here (this node owned the user's session).",
                c.forwarded_in,
            ),
            (
                "redis_up",
                "gauge",
                "Whether this node reaches Redis.",
                u64::from(c.down.is_none() && c.seen_up),
            ),
            (
                "log_seq",
                "gauge",
                "The last log entry this node applied.",
                c.applied,
            ),
            (
                "appended_events_total",
                "counter",
                "Events this node appended to the log.",
                c.appended_events,
            ),
            (
                "applied_events_total",
                "counter",
                "Log entries this node applied.",
                c.applied_events,
            ),
            (
                "log_lag_ms",
                "gauge",
                "How long the last applied entry took from its event to this node.",
                c.lag_ms,
            ),
            (
                "log_resets_total",
                "counter",
                "Times the log was lost (a new epoch).",
                c.resets,
            ),
            (
                "nodes_reaped_total",
                "counter",
                "Dead nodes this node cleaned up after.",
                c.nodes_reaped,
            ),
            (
                "waiting_answers",
                "gauge",
                "Answers waiting for the log.",
                c.waiting() as u64,
            ),
            (
                "federation_here",
                "gauge",
                "Whether this node runs the world's federation (it holds the lease).",
                u64::from(c.fed.running),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = write!(
                o,
                "# HELP worldbridge_cluster_{name} {help}\n\
                 # TYPE worldbridge_cluster_{name} {kind}\n\
                 worldbridge_cluster_{name}{{node=\"{node}\"}} {value}\n"
            );
        }
    }
}

/// Replace the provisional event numbers in an answer's JSON text by the log's. Only a
/// `"seq":` key followed by a provisional number is touched: a provisional number is
/// never a real one, and a key's quotes are never inside a JSON string unescaped.
pub fn renumber(json: &mut Vec<u8>, fix: &Renumber) {
    if fix.is_empty() {
        return;
    }
    const KEY: &[u8] = b"\"seq\":";
    let mut out = Vec::with_capacity(json.len());
    let mut i = 0;
    while i < json.len() {
        if json[i..].starts_with(KEY) {
            out.extend_from_slice(KEY);
            i += KEY.len();
            let start = i;
            while i < json.len() && json[i].is_ascii_digit() {
                i += 1;
            }
            let number = std::str::from_utf8(&json[start..i])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            match number
                .filter(|n| is_provisional(*n))
                .and_then(|n| fix.iter().find(|(p, _)| *p == n))
            {
                Some((_, real)) => out.extend_from_slice(real.to_string().as_bytes()),
                None => out.extend_from_slice(&json[start..i]),
            }
        } else {
            out.push(json[i]);
            i += 1;
        }
    }
    *json = out;
}

/// [`renumber`] for an answer still held as a JSON value.
pub fn renumber_value(v: &mut serde_json::Value, fix: &Renumber) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let provisional = item.as_u64().filter(|n| k == "seq" && is_provisional(*n));
                match provisional.and_then(|n| fix.iter().find(|(p, _)| *p == n)) {
                    Some((_, real)) => *item = serde_json::json!(real),
                    None => renumber_value(item, fix),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| renumber_value(i, fix)),
        _ => {}
    }
}

/// An export document as log records, stored sessions and federation's rows
/// (`worldbridge import` with a cluster config): every room's description, then the events in their order (numbered
/// anew by the log), and the sessions. Presence is not carried: it is what the log says,
/// and people enter again with their next request. The gateway's resume history is not
/// either: the import starts a new epoch, so resuming clients get `resync_required`.
pub fn import_records(state: &crate::store::Stored) -> Imported {
    let now = crate::world::time::now_ms();
    let snap = &state.snapshot;
    let mut records = Vec::with_capacity(snap.rooms.len() + snap.events.len());
    for room in &snap.rooms {
        if let Ok(body) = serde_json::to_string(&room.spec) {
            records.push(Record {
                kind: KIND_ROOM,
                ts_ms: now,
                body,
            });
        }
    }
    let mut events = snap.events.clone();
    events.sort_by_key(|e| e.seq);
    for mut ev in events {
        ev.seq = 0;
        let ts_ms = crate::world::time::parse_rfc3339(&ev.timestamp).unwrap_or(now);
        if let Ok(body) = serde_json::to_string(&ev) {
            records.push(Record {
                kind: KIND_EVENT,
                ts_ms,
                body,
            });
        }
    }
    let sessions = (snap.sessions.iter())
        .filter_map(|s| Some((s.user_id.clone(), serde_json::to_string(s).ok()?)))
        .collect();
    (
        records,
        sessions,
        crate::app::cluster_fed::fed_ops_of(state),
    )
}

/// What an export document becomes in a cluster's Redis: log records, stored sessions
/// (user, JSON) and federation's rows.
pub type Imported = (
    Vec<Record>,
    Vec<(String, String)>,
    Vec<crate::store::cluster::fed::FedOp>,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cluster::ClusterSettings;
    use crate::world::logged::PROVISIONAL_BASE;

    /// A hub in cluster mode whose Redis threads reach nothing: the test plays their part,
    /// handing it news by hand.
    fn node(name: &str) -> App {
        let mut cfg = crate::config::Config::default();
        cfg.store.memory = true;
        cfg.world = "w".into();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        cfg.cluster = Some(crate::config::ClusterConfig {
            redis_url: format!("redis://127.0.0.1:{port}"),
            node_id: name.into(),
            ..Default::default()
        });
        let settings = ClusterSettings::from_config(&cfg).unwrap();
        let mut app = App::new(cfg).unwrap();
        let store = ClusterStore::start(settings, std::sync::Arc::new(|| {})).unwrap();
        app.attach_cluster(store, None);
        app.on_cluster(News::Up);
        app
    }

    /// What the log holds for these proposed events, numbered from `first`, by `node`.
    fn entries(events: &[Event], first: u64, node: &str) -> Vec<Entry> {
        (events.iter().zip(first..))
            .map(|(ev, seq)| Entry {
                seq,
                epoch: "1".into(),
                node: node.into(),
                kind: KIND_EVENT.into(),
                ts_ms: ev.ts_ms,
                body: serde_json::to_string(ev).unwrap(),
            })
            .collect()
    }

    #[test]
    fn an_answer_waits_until_its_events_are_appended_and_applied_here() {
        let mut a = node("a");
        let conn = ConnId { idx: 7, gen: 0 };
        let said = a.world.say("una", "Una", "The Garden", "hi", 10).unwrap();
        assert!(a.must_hold(), "a change in cluster mode waits for the log");
        a.hold_http(conn);
        let proposed = [said.moved.clone(), vec![said.event.clone()]].concat();
        a.flush_store();
        // Appended, not yet read back: still held.
        a.on_cluster(News::Appended {
            batch: 1,
            epoch: "1".into(),
            seqs: vec![41, 42],
        });
        assert!(a.out.released.is_empty());
        // Read back: released, with the log's numbers for the provisional ones.
        a.on_cluster(News::Entries(entries(&proposed, 41, "a")));
        let fix = match a.out.released.as_slice() {
            [(c, Ok(fix))] if *c == conn => fix.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(fix, vec![(proposed[0].seq, 41), (proposed[1].seq, 42)]);
        let seqs: Vec<u64> = (a.world.events("The Garden", None, None).unwrap().iter())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [41, 42]);
        // An entry seen again (a reader that reconnected) is not applied twice.
        a.on_cluster(News::Entries(entries(&proposed, 41, "a")));
        assert_eq!(a.world.events("The Garden", None, None).unwrap().len(), 2);
    }

    #[test]
    fn a_failed_append_is_refused_and_an_unknown_one_says_so() {
        let mut a = node("a");
        for (batch, unknown, code) in [(1, false, "store_unavailable"), (2, true, "store_unknown")]
        {
            a.world.say("una", "Una", "The Garden", "hi", 10).unwrap();
            a.hold_http(ConnId { idx: 1, gen: 0 });
            a.flush_store();
            a.on_cluster(News::Failed {
                batches: vec![batch],
                error: "Redis is unreachable".into(),
                unknown,
            });
            match a.out.released.pop() {
                Some((_, Err(r))) => assert_eq!(r.code, code),
                other => panic!("{other:?}"),
            }
        }
        // Redis down: changes are refused up front, health says why.
        a.on_cluster(News::Down {
            error: "Redis is unreachable (connection refused)".into(),
        });
        assert_eq!(a.store_refusal().map(|r| r.code), Some("store_unavailable"));
        let (health, reason) = a.cluster_health().unwrap();
        assert_eq!(health["redis"], "down");
        assert!(reason.unwrap().contains("unreachable"));
    }

    #[test]
    fn renumbering_touches_only_provisional_seq_keys() {
        let p = PROVISIONAL_BASE + 1;
        let text = format!(
            r#"{{"ok":true,"event":{{"message":"\"seq\":{p}","seq":{p}}},"n":{p},"old":{{"seq":3}}}}"#
        );
        let mut bytes = text.into_bytes();
        renumber(&mut bytes, &vec![(p, 42)]);
        let out = String::from_utf8(bytes).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"ok":true,"event":{{"message":"\"seq\":{p}","seq":42}},"n":{p},"old":{{"seq":3}}}}"#
            )
        );
        let mut v: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"events":[{{"seq":{p}}},{{"seq":5}}],"seq_count":{p}}}"#
        ))
        .unwrap();
        renumber_value(&mut v, &vec![(p, 9)]);
        assert_eq!(v["events"][0]["seq"], 9);
        assert_eq!(v["events"][1]["seq"], 5);
        assert_eq!(v["seq_count"], p);
    }
}
