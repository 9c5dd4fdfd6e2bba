//! The agent worker pool: `agent.workers` threads, each owning one [`Backend`], fed by one
//! bounded queue of `agent.queue` requests.
//!
//! The event loop calls [`AgentPool::try_submit`], which never blocks: a full queue hands
//! the request back (the loop answers 503). A worker answers one request at a time, sends
//! the [`AgentReply`] on the reply channel and then calls `wake` so the loop drains the
//! channel. A backend that panics costs one request (an [`AgentError::Backend`] reply),
//! not the worker: the worker catches the panic and builds a fresh backend.
//!
//! Shutdown: once [`AgentPool::shutdown`] starts, workers finish the request they hold,
//! answer every request still queued with "the agent is shutting down" without calling the
//! backend, and exit; the pool joins them for at most the grace period and leaves any
//! straggler to finish on its own.

use super::builtin::Builtin;
use super::command::CommandBackend;
use super::openai::OpenAi;
use super::{AgentError, AgentReply, AgentRequest, Backend};
use crate::config::AgentConfig;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Builds one backend; called once per worker at start and again after a backend panics.
type BackendFactory = Arc<dyn Fn() -> Result<Box<dyn Backend>, String> + Send + Sync>;

/// The running workers and the queue that feeds them.
pub struct AgentPool {
    queue: Sender<AgentRequest>,
    closing: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// Never carries a message: it disconnects when the last worker has exited.
    exited: Receiver<()>,
}

impl AgentPool {
    /// Start `cfg.workers` threads (named `agent-N`), each owning its own backend from
    /// [`make_backend`], fed by one bounded queue of capacity `cfg.queue`. After each answer
    /// a worker sends an [`AgentReply`] on `replies` and then calls `wake()`.
    ///
    /// Every backend is built before any thread starts, so a config error is returned here.
    pub fn start(
        cfg: &AgentConfig,
        persona: String,
        replies: Sender<AgentReply>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<AgentPool, String> {
        let cfg_for_workers = cfg.clone();
        let factory: BackendFactory = Arc::new(move || make_backend(&cfg_for_workers, &persona));
        AgentPool::spawn(cfg.workers, cfg.queue, factory, replies, wake)
    }

    fn spawn(
        workers: usize,
        queue: usize,
        factory: BackendFactory,
        replies: Sender<AgentReply>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<AgentPool, String> {
        if workers == 0 {
            return Err("agent.workers must be at least 1".into());
        }
        if queue == 0 {
            return Err("agent.queue must be at least 1".into());
        }
        let backends = (0..workers)
            .map(|_| factory())
            .collect::<Result<Vec<_>, String>>()?;
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(queue);
        let (exit_guard, exited) = crossbeam_channel::bounded::<()>(0);
        let closing = Arc::new(AtomicBool::new(false));
        let mut pool = AgentPool {
            queue: queue_tx,
            closing: Arc::clone(&closing),
            workers: Vec::with_capacity(workers),
            exited,
        };
        for (n, backend) in backends.into_iter().enumerate() {
            let worker = Worker {
                name: format!("agent-{n}"),
                backend,
                factory: Arc::clone(&factory),
                queue: queue_rx.clone(),
                replies: replies.clone(),
                wake: Arc::clone(&wake),
                closing: Arc::clone(&closing),
                _exit_guard: exit_guard.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(worker.name.clone())
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => pool.workers.push(handle),
                Err(e) => {
                    drop(exit_guard);
                    pool.shutdown(Duration::from_secs(1));
                    return Err(format!("cannot start agent worker {n}: {e}"));
                }
            }
        }
        log::info!("agent pool: {workers} worker(s), queue of {queue}");
        Ok(pool)
    }

    /// Queue a request without blocking. A full queue (or a pool shutting down) hands the
    /// request back.
    // The loop needs its request back to answer 503; boxing it would cost an allocation
    // on every submit to save stack on the rare refusal.
    #[allow(clippy::result_large_err)]
    pub fn try_submit(&self, req: AgentRequest) -> Result<(), AgentRequest> {
        if self.closing.load(Ordering::Acquire) {
            return Err(req);
        }
        match self.queue.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(req)) | Err(TrySendError::Disconnected(req)) => Err(req),
        }
    }

    /// Requests waiting for a worker (not counting those being answered).
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// How many worker threads the pool started.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// From now on, queued requests are answered "shutting down" instead of being run.
    fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Close the queue; workers finish what they hold, answer what is queued with an
    /// error, and exit. Joins them, waiting at most `grace`.
    pub fn shutdown(self, grace: Duration) {
        self.close();
        let AgentPool {
            queue,
            workers,
            exited,
            ..
        } = self;
        drop(queue);
        let deadline = Instant::now() + grace;
        let all_exited = matches!(
            exited.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        let mut stragglers = 0;
        for handle in workers {
            if all_exited || handle.is_finished() {
                let _ = handle.join();
            } else {
                stragglers += 1;
            }
        }
        if stragglers > 0 {
            log::warn!(
                "agent pool: {stragglers} worker(s) still busy after {} ms, left to finish alone",
                grace.as_millis()
            );
        } else {
            log::info!("agent pool: all workers stopped");
        }
    }
}

/// One worker thread's state.
struct Worker {
    name: String,
    backend: Box<dyn Backend>,
    factory: BackendFactory,
    queue: Receiver<AgentRequest>,
    replies: Sender<AgentReply>,
    wake: Arc<dyn Fn() + Send + Sync>,
    closing: Arc<AtomicBool>,
    /// Dropped when the thread ends, however it ends; see [`AgentPool::exited`].
    _exit_guard: Sender<()>,
}

impl Worker {
    fn run(mut self) {
        while let Ok(req) = self.queue.recv() {
            let started = Instant::now();
            let result = if self.closing.load(Ordering::Acquire) {
                Err(AgentError::Backend("the agent is shutting down".into()))
            } else {
                self.answer(&req)
            };
            let elapsed = started.elapsed();
            log::debug!(
                "{}: job={} {} in {} ms",
                self.name,
                req.job_id,
                if result.is_ok() { "answered" } else { "failed" },
                elapsed.as_millis()
            );
            let reply = AgentReply {
                job_id: req.job_id,
                result,
                elapsed,
                chunk: false,
            };
            if self.replies.send(reply).is_err() {
                // The loop is gone: nobody will read another reply.
                return;
            }
            (self.wake)();
        }
    }

    fn answer(&mut self, req: &AgentRequest) -> Result<String, AgentError> {
        let backend = &mut self.backend;
        let (replies, wake) = (&self.replies, &self.wake);
        // Each piece of a streamed answer goes to the loop at once.
        let mut sink = |piece: &str| {
            let chunk = AgentReply {
                job_id: req.job_id,
                result: Ok(piece.to_string()),
                elapsed: Duration::ZERO,
                chunk: true,
            };
            if replies.send(chunk).is_ok() {
                wake();
            }
        };
        let run = || {
            let sink: Option<&mut dyn FnMut(&str)> = match req.stream {
                true => Some(&mut sink),
                false => None,
            };
            backend.reply(req, sink)
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(payload) => {
                let what = panic_message(payload.as_ref());
                log::error!(
                    "{}: backend panicked on job={}: {what}",
                    self.name,
                    req.job_id
                );
                // The old backend may be half-way through something; start clean.
                match (self.factory)() {
                    Ok(fresh) => self.backend = fresh,
                    Err(e) => log::error!("{}: cannot rebuild the backend: {e}", self.name),
                }
                Err(AgentError::Backend(format!(
                    "the agent backend panicked: {what}"
                )))
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Build one backend from config: `builtin`, `openai` or `command`; a clear error for an
/// unknown backend, an `openai` backend without `agent.model`, or a `command` backend
/// without `agent.command`. No backend touches the network or starts a process here.
pub fn make_backend(cfg: &AgentConfig, persona: &str) -> Result<Box<dyn Backend>, String> {
    match cfg.backend.trim() {
        "builtin" => Ok(Box::new(Builtin::new())),
        "openai" => Ok(Box::new(OpenAi::new(cfg, persona)?)),
        "command" => Ok(Box::new(CommandBackend::new(&cfg.command, persona)?)),
        other => Err(format!(
            "unknown agent.backend {other:?}: expected \"builtin\", \"openai\" or \"command\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::WorldContext;
    use crossbeam_channel::RecvTimeoutError;
    use std::sync::atomic::AtomicUsize;

    /// Wait for `n` replies, failing the test if they take longer than `within`.
    fn collect(rx: &Receiver<AgentReply>, n: usize, within: Duration) -> Vec<AgentReply> {
        let deadline = Instant::now() + within;
        (0..n)
            .map(|i| match rx.recv_deadline(deadline) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => panic!("only {i} of {n} replies in {within:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("reply channel closed after {i}"),
            })
            .collect()
    }

    fn request(job_id: u64, username: &str, message: &str) -> AgentRequest {
        AgentRequest {
            job_id,
            user_id: username.to_lowercase(),
            username: username.into(),
            history: Vec::new(),
            message: message.into(),
            context: WorldContext {
                world: "local".into(),
                agent_name: "Timmy".into(),
                room: "The Threshold".into(),
                ..WorldContext::default()
            },
            crisis: false,
            timeout: Duration::from_secs(5),
            purpose: crate::agent::Purpose::Reply,
            system: None,
            stream: false,
        }
    }

    fn counting_wake() -> (Arc<AtomicUsize>, Arc<dyn Fn() + Send + Sync>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&wakes);
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        (wakes, wake)
    }

    /// A backend that reports each job it starts, then waits for the test to open a gate.
    struct Gated {
        started: Sender<u64>,
        gate: Receiver<()>,
        dropped: Sender<()>,
    }

    impl Backend for Gated {
        fn reply(
            &mut self,
            req: &AgentRequest,
            _sink: Option<&mut dyn FnMut(&str)>,
        ) -> Result<String, AgentError> {
            let _ = self.started.send(req.job_id);
            let _ = self.gate.recv_timeout(Duration::from_secs(10));
            Ok(format!("done {}", req.job_id))
        }
    }

    impl Drop for Gated {
        fn drop(&mut self) {
            let _ = self.dropped.send(());
        }
    }

    struct GatedPool {
        pool: AgentPool,
        replies: Receiver<AgentReply>,
        started: Receiver<u64>,
        gate: Sender<()>,
        dropped: Receiver<()>,
    }

    fn gated_pool(workers: usize, queue: usize) -> GatedPool {
        let (started_tx, started) = crossbeam_channel::unbounded();
        let (gate, gate_rx) = crossbeam_channel::unbounded();
        let (dropped_tx, dropped) = crossbeam_channel::unbounded();
        let factory: BackendFactory = Arc::new(move || {
            Ok(Box::new(Gated {
                started: started_tx.clone(),
                gate: gate_rx.clone(),
                dropped: dropped_tx.clone(),
            }) as Box<dyn Backend>)
        });
        let (tx, replies) = crossbeam_channel::unbounded();
        let (_, wake) = counting_wake();
        let pool = AgentPool::spawn(workers, queue, factory, tx, wake).unwrap();
        GatedPool {
            pool,
            replies,
            started,
            gate,
            dropped,
        }
    }

    #[test]
    fn builtin_pool_answers_concurrent_requests_and_wakes() {
        let cfg = AgentConfig {
            workers: 4,
            queue: 64,
            ..AgentConfig::default()
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wakes, wake) = counting_wake();
        let pool = AgentPool::start(&cfg, String::new(), tx, wake).unwrap();
        assert_eq!(pool.workers(), 4);
        let n = 32u64;
        for i in 0..n {
            let req = request(100 + i, &format!("user{i}"), "hello");
            assert!(pool.try_submit(req).is_ok(), "job {i} refused");
        }
        let replies = collect(&rx, n as usize, Duration::from_secs(5));
        let mut seen: Vec<u64> = replies.iter().map(|r| r.job_id).collect();
        seen.sort_unstable();
        assert_eq!(seen, (100..100 + n).collect::<Vec<_>>());
        for reply in &replies {
            let text = reply.result.as_ref().unwrap();
            let user = format!("user{}", reply.job_id - 100);
            assert!(
                text.contains(&format!("Hello, {user}.")),
                "job {} got {text}",
                reply.job_id
            );
        }
        pool.shutdown(Duration::from_secs(5));
        assert_eq!(wakes.load(Ordering::SeqCst), n as usize);
    }

    #[test]
    fn a_full_queue_hands_the_request_back() {
        let t = gated_pool(1, 2);
        t.pool.try_submit(request(1, "A", "x")).unwrap();
        assert_eq!(t.started.recv_timeout(Duration::from_secs(5)), Ok(1));
        t.pool.try_submit(request(2, "B", "x")).unwrap();
        t.pool.try_submit(request(3, "C", "x")).unwrap();
        assert_eq!(t.pool.queue_depth(), 2);
        let refused = t.pool.try_submit(request(4, "D", "x")).unwrap_err();
        assert_eq!(refused.job_id, 4);
        assert_eq!(refused.username, "D");
        for _ in 0..3 {
            t.gate.send(()).unwrap();
        }
        let replies = collect(&t.replies, 3, Duration::from_secs(5));
        let got: Vec<(u64, Result<String, AgentError>)> =
            replies.into_iter().map(|r| (r.job_id, r.result)).collect();
        assert_eq!(
            got,
            [
                (1, Ok("done 1".into())),
                (2, Ok("done 2".into())),
                (3, Ok("done 3".into()))
            ]
        );
        assert_eq!(t.pool.queue_depth(), 0);
        t.pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn shutdown_finishes_the_held_job_fails_the_queued_and_joins() {
        let t = gated_pool(1, 4);
        t.pool.try_submit(request(1, "A", "x")).unwrap();
        assert_eq!(t.started.recv_timeout(Duration::from_secs(5)), Ok(1));
        t.pool.try_submit(request(2, "B", "x")).unwrap();
        t.pool.try_submit(request(3, "C", "x")).unwrap();
        t.pool.close();
        assert!(
            t.pool.try_submit(request(4, "D", "x")).is_err(),
            "closed pool refuses"
        );
        t.gate.send(()).unwrap();
        let started = Instant::now();
        t.pool.shutdown(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Joined: the worker's backend has been dropped by the time shutdown returns.
        assert_eq!(t.dropped.try_recv(), Ok(()));
        let replies: Vec<AgentReply> = t.replies.try_iter().collect();
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0].job_id, 1);
        assert_eq!(replies[0].result, Ok("done 1".into()));
        for reply in &replies[1..] {
            assert_eq!(
                reply.result,
                Err(AgentError::Backend("the agent is shutting down".into()))
            );
        }
        assert_eq!(t.started.try_iter().count(), 0, "queued jobs never ran");
    }

    #[test]
    fn shutdown_waits_at_most_the_grace_period() {
        let t = gated_pool(2, 4);
        t.pool.try_submit(request(1, "A", "x")).unwrap();
        assert_eq!(t.started.recv_timeout(Duration::from_secs(5)), Ok(1));
        let grace = Duration::from_millis(200);
        let started = Instant::now();
        t.pool.shutdown(grace);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= grace && elapsed < grace + Duration::from_millis(500),
            "{elapsed:?}"
        );
        // The idle worker exited; the busy one finishes once its backend returns.
        assert_eq!(t.dropped.try_recv(), Ok(()));
        drop(t.gate);
        assert_eq!(t.dropped.recv_timeout(Duration::from_secs(5)), Ok(()));
        let reply = t.replies.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(reply.job_id, 1);
    }

    /// Panics on "boom"; counts how many times it was built.
    struct Fragile;

    impl Backend for Fragile {
        fn reply(
            &mut self,
            req: &AgentRequest,
            _sink: Option<&mut dyn FnMut(&str)>,
        ) -> Result<String, AgentError> {
            if req.message == "boom" {
                panic!("boom went the backend");
            }
            Ok(format!("fine {}", req.job_id))
        }
    }

    #[test]
    fn a_panicking_backend_costs_one_request_not_the_worker() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&built);
        let factory: BackendFactory = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Fragile) as Box<dyn Backend>)
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wakes, wake) = counting_wake();
        let pool = AgentPool::spawn(1, 4, factory, tx, wake).unwrap();
        pool.try_submit(request(1, "A", "boom")).unwrap();
        pool.try_submit(request(2, "A", "hello")).unwrap();
        let replies = collect(&rx, 2, Duration::from_secs(5));
        assert_eq!(replies[0].job_id, 1);
        assert!(
            matches!(&replies[0].result, Err(AgentError::Backend(w)) if w.contains("panicked") && w.contains("boom went the backend")),
            "{:?}",
            replies[0].result
        );
        assert_eq!(replies[1].result, Ok("fine 2".into()));
        assert_eq!(built.load(Ordering::SeqCst), 2, "rebuilt after the panic");
        pool.shutdown(Duration::from_secs(5));
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn elapsed_is_measured() {
        let t = gated_pool(1, 1);
        t.pool.try_submit(request(1, "A", "x")).unwrap();
        assert_eq!(t.started.recv_timeout(Duration::from_secs(5)), Ok(1));
        let held = Instant::now();
        // Hold the job open for a while before letting it finish.
        assert!(t.replies.recv_timeout(Duration::from_millis(100)).is_err());
        t.gate.send(()).unwrap();
        let reply = t.replies.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(reply.elapsed >= Duration::from_millis(100));
        assert!(reply.elapsed <= held.elapsed() + Duration::from_millis(50));
        t.pool.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn make_backend_checks_the_config() {
        let base = AgentConfig::default();
        assert!(make_backend(&base, "p").is_ok(), "builtin is the default");
        let err = make_backend(
            &AgentConfig {
                backend: "gpt".into(),
                ..base.clone()
            },
            "p",
        )
        .err()
        .unwrap();
        assert!(err.contains("\"gpt\"") && err.contains("builtin"), "{err}");
        let err = make_backend(
            &AgentConfig {
                backend: "openai".into(),
                ..base.clone()
            },
            "p",
        )
        .err()
        .unwrap();
        assert_eq!(err, "agent.model is required for backend openai");
        let err = make_backend(
            &AgentConfig {
                backend: "command".into(),
                ..base.clone()
            },
            "p",
        )
        .err()
        .unwrap();
        assert!(err.contains("agent.command"), "{err}");
        let cmd = AgentConfig {
            backend: "command".into(),
            command: vec!["/bin/cat".into()],
            ..base.clone()
        };
        assert!(make_backend(&cmd, "p").is_ok());
    }

    #[test]
    fn start_reports_config_errors() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let (_, wake) = counting_wake();
        let cfg = AgentConfig {
            backend: "openai".into(),
            ..AgentConfig::default()
        };
        let err = AgentPool::start(&cfg, String::new(), tx.clone(), Arc::clone(&wake))
            .err()
            .unwrap();
        assert_eq!(err, "agent.model is required for backend openai");
        let cfg = AgentConfig {
            workers: 0,
            ..AgentConfig::default()
        };
        let err = AgentPool::start(&cfg, String::new(), tx, wake)
            .err()
            .unwrap();
        assert!(err.contains("agent.workers"), "{err}");
    }

    #[test]
    fn command_pool_round_trip() {
        let cfg = AgentConfig {
            backend: "command".into(),
            workers: 2,
            queue: 8,
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                r#"while read -r l; do echo '{"text":"from the subprocess"}'; done"#.into(),
            ],
            ..AgentConfig::default()
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let (_, wake) = counting_wake();
        let pool = AgentPool::start(&cfg, String::new(), tx, wake).unwrap();
        for i in 0..4 {
            pool.try_submit(request(i, "A", "hi")).unwrap();
        }
        for reply in collect(&rx, 4, Duration::from_secs(10)) {
            assert_eq!(reply.result, Ok("from the subprocess".into()));
        }
        pool.shutdown(Duration::from_secs(5));
    }
}
