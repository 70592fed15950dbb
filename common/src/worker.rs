//! Background work and process lifecycle: one worker shape, one task set.
//!
//! Every loop that runs beside a server — the meta leader's repair, garbage collector and
//! reaper, a chunk server's scrub, heartbeat and bad-replica reporter, a mount's session
//! renewal — is a [`Worker`]: `work()` does one unit of work and says whether more is ready,
//! `wait_for_work()` sleeps until there may be some (a timer, a notification). [`run`] drives
//! it until shutdown.
//!
//! **Where a worker may be interrupted.** On shutdown `run` stops waiting at once, and drops a
//! `work()` in progress at its next `.await`. So a worker must keep every durable effect
//! atomic on its own: one Raft entry, one durable file operation, one idempotent RPC. Nothing
//! a worker does between two awaits may leave state that a dropped `work()` would have had to
//! finish. (All of Cairn's workers are written that way: their state is a work list re-read on
//! the next round, and their effects are single commands.)
//!
//! A process starts its workers and other long-running tasks in a [`TaskSet`], which names
//! them, cancels them together, and on shutdown joins them with a hard deadline, naming any
//! task that did not stop in time (it is then aborted).
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a worker reports after one unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is ready: `work()` is called again at once.
    Busy,
    /// Nothing left for now: `wait_for_work()` is awaited before the next `work()`.
    Idle,
    /// The worker has finished for good.
    Done,
}

/// One background job; see the module docs for the interruption rule.
pub trait Worker: Send + 'static {
    /// The error of one unit of work: logged by [`run`], which then waits for the next round.
    type Error: Display + Send;

    /// The worker's name in logs.
    fn name(&self) -> String;

    /// Does one unit of work.
    fn work(&mut self) -> impl Future<Output = Result<WorkerState, Self::Error>> + Send;

    /// Waits until there may be work again.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `worker` until `shutdown` is cancelled (or it reports [`WorkerState::Done`]).
pub async fn run<W: Worker>(mut worker: W, shutdown: CancellationToken) {
    let name = worker.name();
    tracing::debug!(worker = %name, "worker started");
    loop {
        let state = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = worker.work() => r,
        };
        match state {
            Ok(WorkerState::Busy) => {
                // Let the rest of the runtime in between two units of a long job.
                tokio::task::yield_now().await;
                continue;
            }
            Ok(WorkerState::Idle) => {}
            Ok(WorkerState::Done) => break,
            Err(e) => tracing::warn!(worker = %name, error = %e, "worker round failed; retrying"),
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = worker.wait_for_work() => {}
        }
    }
    tracing::debug!(worker = %name, "worker stopped");
}

/// Named tasks that stop together: one cancellation token, joined with a deadline.
pub struct TaskSet {
    shutdown: CancellationToken,
    tasks: Vec<(String, JoinHandle<()>)>,
    /// The span every task runs in (a node's span, when several run in one process).
    span: tracing::Span,
}

impl Default for TaskSet {
    fn default() -> Self {
        TaskSet::new()
    }
}

impl TaskSet {
    pub fn new() -> TaskSet {
        TaskSet::in_span(tracing::Span::none())
    }

    /// A set whose tasks all run in `span`.
    pub fn in_span(span: tracing::Span) -> TaskSet {
        TaskSet {
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            span,
        }
    }

    /// The token every task of the set selects on; cancelled by [`TaskSet::shutdown`].
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns `task` under `name` (it should end soon after [`TaskSet::token`] is cancelled).
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(tracing::Instrument::instrument(task, self.span.clone()));
        self.tasks.push((name.into(), handle));
    }

    /// Spawns `worker`, run by [`run`] until the set shuts down.
    pub fn spawn_worker<W: Worker>(&mut self, worker: W) {
        let name = worker.name();
        let token = self.token();
        self.spawn(name, run(worker, token));
    }

    /// Cancels every task and waits for them in turn, all within `deadline`. A task still
    /// running at the deadline is named in the log and aborted; a task that panicked is
    /// logged. Returns the names of the tasks that did not stop cleanly.
    pub async fn shutdown(self, deadline: Duration) -> Vec<String> {
        self.shutdown.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut unclean = Vec::new();
        for (name, mut handle) in self.tasks {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(task = %name, error = %e, "task panicked");
                    unclean.push(name);
                }
                Err(_) => {
                    tracing::warn!(task = %name, ?deadline, "task did not stop in time; aborting it");
                    handle.abort();
                    unclean.push(name);
                }
            }
        }
        unclean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Counter {
        rounds: Arc<AtomicU32>,
        busy_for: u32,
    }

    impl Worker for Counter {
        type Error = String;
        fn name(&self) -> String {
            "counter".into()
        }
        async fn work(&mut self) -> Result<WorkerState, String> {
            let n = self.rounds.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 2 {
                return Err("second round fails".into());
            }
            Ok(if n < self.busy_for {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            })
        }
        async fn wait_for_work(&mut self) {
            tokio::time::sleep(Duration::from_secs(3600)).await
        }
    }

    #[tokio::test]
    async fn busy_work_runs_at_once_idle_work_waits_and_shutdown_interrupts_the_wait() {
        let rounds = Arc::new(AtomicU32::new(0));
        let mut set = TaskSet::new();
        set.spawn_worker(Counter {
            rounds: rounds.clone(),
            busy_for: 1,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Round 1 is idle: the worker now waits an hour.
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        let unclean = set.shutdown(Duration::from_secs(1)).await;
        assert!(unclean.is_empty(), "{unclean:?}");

        let rounds = Arc::new(AtomicU32::new(0));
        let mut set = TaskSet::new();
        set.spawn_worker(Counter {
            rounds: rounds.clone(),
            busy_for: 5,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Rounds 1 busy, 2 failed (then waits).
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        set.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_task_that_ignores_shutdown_is_named_and_aborted() {
        let mut set = TaskSet::new();
        set.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let t0 = std::time::Instant::now();
        let unclean = set.shutdown(Duration::from_millis(100)).await;
        assert_eq!(unclean, vec!["stubborn".to_string()]);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
