//! The federation thread's work: talking to peers over HTTP, off the loop.
//!
//! One thread per peer, so a peer that accepts and never answers costs only its own
//! sync: every request has `federation.timeout_ms` in all (connect, send, answer). The
//! loop builds a [`Job`] per peer each `sync_interval_s` (the cursor to pull from and the
//! delta to push, made by the core), the peer's thread carries it out, and the
//! [`Outcome`] comes back on a channel, followed by a wake of the loop. A peer still busy
//! with the last job is skipped (its channel holds at most one job).
//!
//! Travel messages (`offer`, `commit`, `abort`) to a peer go through the same thread, as
//! `POST /bridge/travel` with the pair's token and a body with a `type` (a user's travel
//! request to the same route has none); each answer (or the error) comes back as a
//! [`TravelOutcome`]. They are queued apart from syncs (never skipped), and sent between
//! them.

use crate::federation::wire::{Cursor, Delta, SyncAnswer, TravelMsg, TravelReply};
use crate::federation::Peer;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body read from a peer (a page is at most 500 events of at most 16 KiB).
const BODY_MAX: u64 = 16 * 1024 * 1024;

/// One sync with one peer.
#[derive(Debug, Clone)]
pub struct Job {
    /// Pull from here; `None` asks for a snapshot (the trust map comes only in one).
    pub since: Option<Cursor>,
    /// The `POST /bridge/sync` body.
    pub push: Delta,
}

/// What a sync brought back.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub peer: String,
    /// The pages pulled, in order.
    pub pulled: Vec<Delta>,
    pub answer: Option<SyncAnswer>,
    /// What went wrong (pull and push each try; both errors are kept).
    pub errors: Vec<String>,
    /// The peer could not be reached at all (connection refused, no answer in time, no
    /// such host): travel there is refused at once until a sync gets through again.
    pub unreachable: bool,
}

/// A request to a peer that failed, and whether the peer was reached at all.
#[derive(Debug, Clone)]
struct Failure {
    text: String,
    unreachable: bool,
}

impl Failure {
    fn answered(text: String) -> Failure {
        Failure {
            text,
            unreachable: false,
        }
    }
}

/// Whether a request error means the peer was never reached (as opposed to a peer
/// that answered something wrong).
fn is_unreachable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Timeout(_)
            | ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
    )
}

/// What a travel message to a peer brought back.
#[derive(Debug, Clone)]
pub struct TravelOutcome {
    pub peer: String,
    pub travel_id: String,
    pub reply: Result<TravelReply, String>,
    /// The room the destination places the traveller in (its answer's `room`).
    pub room: Option<String>,
}

enum Msg {
    Job(Box<Job>),
    Stop,
}

struct Worker {
    tx: Sender<Msg>,
    travel: Sender<TravelMsg>,
}

/// The loop's side of the peers' threads.
pub struct PeerSync {
    workers: BTreeMap<String, Worker>,
    pub outcomes: Receiver<Outcome>,
    pub travels: Receiver<TravelOutcome>,
}

/// How the threads talk to peers, from Config.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    pub timeout: Duration,
    pub pages_max: usize,
}

impl PeerSync {
    /// Start one thread per peer. `wake` is called after each outcome is sent.
    pub fn start(
        peers: &[Peer],
        limits: SyncLimits,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<PeerSync, String> {
        let (otx, outcomes) = crossbeam_channel::unbounded();
        let (ttx, travels) = crossbeam_channel::unbounded();
        let mut workers = BTreeMap::new();
        for p in peers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let (travel, travel_rx) = crossbeam_channel::unbounded::<TravelMsg>();
            let link = PeerLink::new(p, limits);
            let (otx, ttx, wake) = (otx.clone(), ttx.clone(), wake.clone());
            std::thread::Builder::new()
                .name(format!("peer-{}", p.world))
                .spawn(move || loop {
                    // Travel messages first: a traveller waits for each answer.
                    if let Ok(msg) = travel_rx.try_recv() {
                        let out = link.travel(&msg);
                        if ttx.send(out).is_err() {
                            break;
                        }
                        wake();
                        continue;
                    }
                    crossbeam_channel::select! {
                        recv(travel_rx) -> msg => {
                            let Ok(msg) = msg else { break };
                            let out = link.travel(&msg);
                            if ttx.send(out).is_err() {
                                break;
                            }
                            wake();
                        }
                        recv(rx) -> msg => {
                            let Ok(Msg::Job(job)) = msg else { break };
                            let outcome = link.sync(*job);
                            if otx.send(outcome).is_err() {
                                break;
                            }
                            wake();
                        }
                    }
                })
                .map_err(|e| format!("cannot start the sync thread of peer {}: {e}", p.world))?;
            workers.insert(p.world.clone(), Worker { tx, travel });
        }
        Ok(PeerSync {
            workers,
            outcomes,
            travels,
        })
    }

    /// Give `peer` its job; `false` if it is still busy with the last one.
    pub fn submit(&self, peer: &str, job: Job) -> bool {
        match self.workers.get(peer) {
            Some(w) => match w.tx.try_send(Msg::Job(Box::new(job))) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        }
    }
}

impl PeerSync {
    /// Queue a travel message for `peer`; `false` if there is no such peer (or its
    /// thread is gone).
    pub fn send_travel(&self, peer: &str, msg: TravelMsg) -> bool {
        self.workers
            .get(peer)
            .is_some_and(|w| w.travel.send(msg).is_ok())
    }
}

impl Drop for PeerSync {
    /// Threads are told to stop and not waited for: one may be inside a request to a
    /// peer that never answers, and stopping the bridge must not wait for that. An idle
    /// thread ends at once; a busy one after its current request.
    fn drop(&mut self) {
        for w in self.workers.values() {
            let _ = w.tx.try_send(Msg::Stop);
        }
        self.workers.clear();
    }
}

/// One peer as its thread talks to it.
struct PeerLink {
    peer: String,
    url: String,
    auth: String,
    agent: ureq::Agent,
    limits: SyncLimits,
}

impl PeerLink {
    fn new(p: &Peer, limits: SyncLimits) -> PeerLink {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(limits.timeout))
            .user_agent(concat!("worldbridge/", env!("CARGO_PKG_VERSION")));
        if crate::config::is_loopback(&p.url) {
            // A peer on this machine is never reached through an HTTP(S)_PROXY.
            config = config.proxy(None);
        }
        PeerLink {
            peer: p.world.clone(),
            url: p.url.clone(),
            auth: format!("Bearer {}", p.token()),
            agent: config.build().new_agent(),
            limits,
        }
    }

    fn sync(&self, job: Job) -> Outcome {
        let mut out = Outcome {
            peer: self.peer.clone(),
            ..Outcome::default()
        };
        let mut since = job.since;
        for _ in 0..self.limits.pages_max {
            let path = match &since {
                None => "/bridge/state".to_string(),
                Some(c) => format!("/bridge/state?since={}", c.to_query()),
            };
            match self.get(&path) {
                Ok(doc) => {
                    let more = doc.more;
                    since = Some(doc.next.clone());
                    out.pulled.push(doc);
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    out.unreachable |= e.unreachable;
                    out.errors.push(format!("pull: {}", e.text));
                    break;
                }
            }
        }
        match self.post("/bridge/sync", &job.push) {
            Ok(a) => out.answer = Some(a),
            Err(e) => {
                out.unreachable |= e.unreachable;
                out.errors.push(format!("push: {}", e.text));
            }
        }
        out
    }

    fn travel(&self, msg: &TravelMsg) -> TravelOutcome {
        let url = format!("{}/bridge/travel", self.url);
        let sent = serde_json::to_vec(msg)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let resp = self
                    .agent
                    .post(&url)
                    .header("authorization", &self.auth)
                    .header("content-type", "application/json")
                    .send(&bytes[..]);
                self.read::<serde_json::Value>(&url, resp)
                    .map_err(|e| e.text)
            });
        let room = sent
            .as_ref()
            .ok()
            .and_then(|v| v.get("room"))
            .and_then(|r| r.as_str())
            .map(str::to_string);
        let reply = sent.and_then(|v| {
            serde_json::from_value::<TravelReply>(v)
                .map_err(|e| format!("{url} sent a bad travel reply: {e}"))
        });
        TravelOutcome {
            peer: self.peer.clone(),
            travel_id: msg.travel_id().to_string(),
            reply,
            room,
        }
    }

    fn get(&self, path: &str) -> Result<Delta, Failure> {
        let url = format!("{}{path}", self.url);
        let resp = self
            .agent
            .get(&url)
            .header("authorization", &self.auth)
            .header("accept", "application/json")
            .call();
        self.read(&url, resp)
    }

    fn post(&self, path: &str, body: &Delta) -> Result<SyncAnswer, Failure> {
        let url = format!("{}{path}", self.url);
        let bytes = serde_json::to_vec(body).map_err(|e| Failure::answered(e.to_string()))?;
        let resp = self
            .agent
            .post(&url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .send(&bytes[..]);
        self.read(&url, resp)
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, Failure> {
        // Errors name the route, not the cursor: the same failure reads the same each
        // interval, so it is logged once.
        let url = url.split('?').next().unwrap_or(url);
        let mut resp = resp.map_err(|e| Failure {
            unreachable: is_unreachable(&e),
            text: match e {
                ureq::Error::Timeout(_) => format!(
                    "{url}: no answer within {} ms",
                    self.limits.timeout.as_millis()
                ),
                e => format!("{url}: {e}"),
            },
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_MAX)
            .read_to_string()
            .map_err(|e| Failure::answered(format!("{url}: {e}")))?;
        if status != 200 {
            let mut excerpt: String = text.chars().take(200).collect();
            if excerpt.is_empty() {
                excerpt = "(empty body)".into();
            }
            return Err(Failure::answered(format!(
                "{url} answered HTTP {status}: {excerpt}"
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::answered(format!("{url} sent a bad document: {e}")))
    }
}
