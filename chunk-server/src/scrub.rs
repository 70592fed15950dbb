//! The scrub: a background worker that reads every stored chunk back and verifies it, so rot
//! is found — and repaired from another replica — before a reader needs the chunk.
//!
//! # A pass
//!
//! A pass walks the store one fan-out directory (shard, [`ChunkStore::list_shard`]) at a time
//! and calls [`ChunkStore::verify`] on each chunk: header checksum, every block hash, and the
//! whole data against its id. A corrupt copy is quarantined and reported by the store itself
//! (through the queue of [`crate::heartbeat::BadReplicaReporter`]), exactly as a failed read
//! is; the scrub counts it. A chunk deleted or replaced while the pass walks is skipped, not an
//! error. Verifying takes no lock a put or get waits on (only the quarantine of a corrupt copy
//! takes the id's stripe lock, for a rename). One chunk is verified at a time.
//!
//! # Bandwidth
//!
//! Every chunk read is charged to a token bucket ([`RateLimiter`], the one limiter of background
//! I/O) filled at `--scrub-rate`; the worker sleeps off any debt before it reads the next
//! chunk. Over a pass the scrub so reads at most the configured rate (plus a burst of
//! [`cairn_common::rate::BURST`] worth), in reads of one chunk file (at most 4 MiB) at a time,
//! and foreground I/O keeps the rest of the disk.
//!
//! # Schedule
//!
//! The first pass starts `--scrub-start-delay` after start-up, each next one
//! `--scrub-interval` after the previous one ended. `ScrubNow` ([`Scrub::request_pass`])
//! starts one at once unless one is running.
//!
//! # Shutdown
//!
//! [`ScrubWorker`] is a [`Worker`] whose round is one pass; by the [`cairn_common::worker`]
//! rule a pass is dropped at its next await on shutdown — while it waits for a listing, for a
//! verification or out a rate-limit pause. What a dropped pass leaves is consistent:
//!
//! - the figures change only between awaits, one chunk at a time (`Scrub::record`), so they
//!   hold every chunk whose verification was seen to end and nothing else;
//! - `running` is cleared by the pass's guard when it is dropped, and the pass is not counted
//!   (no `passes`, no `last_full_pass_unix_ms`, no pruning of the verification times);
//! - a verification under way on a blocking thread cannot be cancelled: it finishes on its own.
//!   If it finds the copy corrupt it quarantines it — one rename into `quarantine/` and two
//!   directory fsyncs, complete on their own — and queues the report (lost if the reporter has
//!   stopped, which is harmless); its result is simply not counted.
//!
//! # Figures
//!
//! [`Scrub::stats`] (sent in every heartbeat and in `Info`) counts what the scrub did since
//! start-up. For each chunk it has seen, the time the scrub last read it back intact and the
//! time it arrived are kept in memory (a hash map entry of about 90 bytes per chunk).
//! `oldest_verified_unix_ms` is the least recent of those read-backs. A chunk written by a put
//! (or replaced by one) counts as **unverified** until a pass reads it back — its bytes were
//! checked on the way in, but rot after the write is what the scrub is for — and so does every
//! chunk on disk not read back since start-up (the store's chunk count minus the chunks read
//! back; they arrived at start-up at the latest). `unverified_chunks` and
//! `oldest_unverified_unix_ms` report them, so a server whose chunks were all written after its
//! last pass does not look checked. Entries of chunks a full pass did not find are dropped at
//! its end.
use crate::store::{ChunkStore, Verification};
use cairn_common::rate::RateLimiter;
use cairn_common::time::unix_ms;
use cairn_common::worker::{Worker, WorkerState};
use cairn_common::ChunkId;
use cairn_proto::ScrubStats;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Settings of the scrub (from `--scrub-*`, see [`crate::Config::scrub`]).
#[derive(Debug, Clone)]
pub struct ScrubConfig {
    /// Disk bandwidth, bytes per second; 0: unlimited.
    pub rate_bytes: u64,
    /// Pause between the end of a pass and the start of the next.
    pub interval: Duration,
    /// Pause between start-up and the first pass.
    pub start_delay: Duration,
}

/// The scrub's shared state: its figures, and the handle that requests a pass. The worker
/// ([`ScrubWorker`]), the service (`ScrubNow`, `Info`, puts, deletes) and the heartbeat share it.
pub struct Scrub {
    config: ScrubConfig,
    /// A std mutex: it is never held across an `.await`, only for map updates and the min.
    state: Mutex<State>,
    /// Wakes the worker when a pass is requested.
    wake: Notify,
}

#[derive(Default)]
struct State {
    running: bool,
    /// A pass was requested and has not started yet.
    requested: bool,
    /// Passes started: the number of the running (or last) pass.
    started: u64,
    chunks_verified: u64,
    bytes_verified: u64,
    corruptions: u64,
    /// Completed full passes.
    passes: u64,
    last_full_pass_unix_ms: u64,
    /// Unix ms of start-up: chunks on disk not seen since arrived by then.
    started_ms: u64,
    /// When each chunk was last verified, and in which pass it was last seen.
    verified: HashMap<ChunkId, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Unix ms of the last successful verification by the scrub (0: none since it arrived or
    /// since start-up).
    at_ms: u64,
    /// Unix ms of its arrival (its put), or of start-up for a chunk found on disk.
    since_ms: u64,
    /// The pass during which this entry was last touched.
    pass: u64,
}

/// `now + d`, or a time decades away when that does not fit.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

impl Scrub {
    pub fn new(config: ScrubConfig) -> Arc<Scrub> {
        Arc::new(Scrub {
            config,
            state: Mutex::new(State {
                started_ms: unix_ms(),
                ..State::default()
            }),
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &ScrubConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the scrub has done since start-up, for a store holding `held_chunks` chunks.
    pub fn stats(&self, held_chunks: u64) -> ScrubStats {
        let st = self.lock();
        // One pass over the map (it has an entry per chunk): the chunks read back and the
        // oldest read-back, and the oldest arrival among those not read back.
        let (mut read_back, mut oldest_verified, mut oldest_written) = (0u64, None, None);
        for s in st.verified.values() {
            if s.at_ms > 0 {
                read_back += 1;
                oldest_verified = Some(oldest_verified.map_or(s.at_ms, |m: u64| m.min(s.at_ms)));
            } else {
                oldest_written =
                    Some(oldest_written.map_or(s.since_ms, |m: u64| m.min(s.since_ms)));
            }
        }
        let oldest_verified_unix_ms = oldest_verified.unwrap_or(0);
        // Chunks on disk the scrub has not met since start-up (no entry at all).
        let unseen = held_chunks.saturating_sub(st.verified.len() as u64);
        let unverified_chunks = held_chunks.saturating_sub(read_back);
        let oldest_unverified_unix_ms = if unverified_chunks == 0 {
            0
        } else if unseen > 0 {
            st.started_ms
        } else {
            oldest_written.unwrap_or(st.started_ms)
        };
        ScrubStats {
            unverified_chunks,
            oldest_unverified_unix_ms,
            interval_secs: self.config.interval.as_secs(),
            start_delay_secs: self.config.start_delay.as_secs(),
            chunks_verified: st.chunks_verified,
            bytes_verified: st.bytes_verified,
            corruptions: st.corruptions,
            passes: st.passes,
            last_full_pass_unix_ms: st.last_full_pass_unix_ms,
            oldest_verified_unix_ms,
            running: st.running,
            rate_limit_bytes: self.config.rate_bytes,
        }
    }

    /// Starts a pass at once (`ScrubNow`). False if one is running (it continues) or was
    /// already requested and is about to start.
    pub fn request_pass(&self) -> bool {
        let mut st = self.lock();
        if st.running || st.requested {
            return false;
        }
        st.requested = true;
        drop(st);
        // Stores a permit if the worker is not waiting yet, so the request is never lost.
        self.wake.notify_one();
        true
    }

    /// Records that a put just wrote `id` (or found a copy it re-checked): unverified until a
    /// pass reads it back.
    pub fn note_written(&self, id: ChunkId) {
        let since_ms = unix_ms();
        let mut st = self.lock();
        let pass = st.started;
        st.verified.insert(
            id,
            Seen {
                at_ms: 0,
                since_ms,
                pass,
            },
        );
    }

    /// Forgets a chunk that was deleted.
    pub fn forget(&self, id: ChunkId) {
        self.lock().verified.remove(&id);
    }

    /// The worker that runs the passes over `store`: the first one
    /// [`ScrubConfig::start_delay`] from now.
    pub fn worker(self: &Arc<Self>, store: Arc<dyn ChunkStore>) -> ScrubWorker {
        ScrubWorker {
            scrub: self.clone(),
            store,
            limiter: RateLimiter::new(self.config.rate_bytes),
            next: deadline_after(self.config.start_delay),
            due: false,
        }
    }

    /// Marks a pass as running; returns its number.
    fn begin_pass(&self) -> u64 {
        let mut st = self.lock();
        st.running = true;
        st.requested = false;
        st.started += 1;
        st.started
    }

    fn take_request(&self) -> bool {
        std::mem::take(&mut self.lock().requested)
    }

    /// Records what verifying `id` in `pass` found (`None`: it could not be read).
    fn record(&self, pass: u64, id: ChunkId, found: Option<&Verification>) {
        let at_ms = unix_ms();
        let mut st = self.lock();
        match found {
            Some(Verification::Intact { len }) => {
                st.chunks_verified += 1;
                st.bytes_verified += len;
                let since_ms = st.verified.get(&id).map_or(st.started_ms, |s| s.since_ms);
                st.verified.insert(
                    id,
                    Seen {
                        at_ms,
                        since_ms,
                        pass,
                    },
                );
            }
            Some(Verification::Corrupt { .. }) => {
                st.corruptions += 1;
                st.verified.remove(&id);
            }
            // Deleted or replaced meanwhile: a replacement was noted by its put.
            Some(Verification::Absent) => {}
            // Present but unreadable: it stays in the figures with its old time (0 if never
            // verified), so the oldest verification time does not pretend it was checked.
            None => {
                let since_ms = st.started_ms;
                let e = st.verified.entry(id).or_insert(Seen {
                    at_ms: 0,
                    since_ms,
                    pass,
                });
                e.pass = pass;
            }
        }
    }

    /// Ends `pass`. A complete pass is counted, and drops the entries of chunks it did not
    /// find (deleted or quarantined since they were last seen). `running` is cleared in the
    /// same step, so no one sees the pass both counted and running.
    fn end_pass(&self, pass: u64, complete: bool) {
        let mut st = self.lock();
        st.running = false;
        if complete {
            st.passes += 1;
            st.last_full_pass_unix_ms = unix_ms();
            st.verified.retain(|_, s| s.pass == pass);
        }
    }

    /// Clears `running`; returns whether it was set.
    fn set_stopped(&self) -> bool {
        std::mem::take(&mut self.lock().running)
    }
}

/// Clears `running` when a pass ends without [`Scrub::end_pass`] (dropped at shutdown, or a
/// panic).
struct RunningGuard {
    scrub: Arc<Scrub>,
    pass: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.scrub.set_stopped() {
            tracing::info!(pass = self.pass, "scrub pass interrupted");
        }
    }
}

/// What one pass found, for its log line.
#[derive(Debug, Default)]
struct Tally {
    chunks: u64,
    bytes: u64,
    corrupt: u64,
    unreadable: u64,
}

/// The background worker; see the module docs. One round ([`Worker::work`]) is one pass, run
/// once [`Worker::wait_for_work`] found one due.
pub struct ScrubWorker {
    scrub: Arc<Scrub>,
    store: Arc<dyn ChunkStore>,
    limiter: RateLimiter,
    /// When the next pass is due unless one is requested first.
    next: Instant,
    /// The wait is over: the next round runs a pass.
    due: bool,
}

impl Worker for ScrubWorker {
    type Error = Infallible;

    fn name(&self) -> String {
        "scrub".into()
    }

    async fn work(&mut self) -> Result<WorkerState, Infallible> {
        if std::mem::take(&mut self.due) {
            self.pass().await;
            self.next = deadline_after(self.scrub.config.interval);
        }
        Ok(WorkerState::Idle)
    }

    /// Waits until the next pass is due or one is requested.
    async fn wait_for_work(&mut self) {
        loop {
            if self.scrub.take_request() {
                break;
            }
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(self.next) => break,
                // A stale permit (its request already served) just loops back to waiting.
                _ = self.scrub.wake.notified() => {}
            }
        }
        self.due = true;
    }
}

impl ScrubWorker {
    /// One pass over every stored chunk.
    async fn pass(&mut self) {
        let pass = self.scrub.begin_pass();
        let _running = RunningGuard {
            scrub: self.scrub.clone(),
            pass,
        };
        let started = Instant::now();
        tracing::info!(
            pass,
            rate_limit_bytes = self.scrub.config.rate_bytes,
            "scrub pass started"
        );
        let mut tally = Tally::default();
        let mut complete = true;
        for shard in 0..=255u8 {
            let store = self.store.clone();
            let ids = match tokio::task::spawn_blocking(move || store.list_shard(shard)).await {
                Ok(Ok(ids)) => ids,
                Ok(Err(e)) => {
                    tracing::error!(pass, shard, error = %e, "scrub cannot list a chunk directory; this pass will not count as full");
                    complete = false;
                    continue;
                }
                Err(e) => {
                    tracing::error!(pass, shard, error = %e, "scrub listing task failed; this pass will not count as full");
                    complete = false;
                    continue;
                }
            };
            for id in ids {
                let bytes_read = self.verify_one(pass, id, &mut tally).await;
                // Charged after the read; the debt is slept off before the next one.
                self.limiter.take(bytes_read).await;
            }
        }
        self.scrub.end_pass(pass, complete);
        tracing::info!(
            pass,
            complete,
            chunks = tally.chunks,
            bytes = tally.bytes,
            corrupt = tally.corrupt,
            unreadable = tally.unreadable,
            elapsed = ?started.elapsed(),
            "scrub pass finished"
        );
    }

    /// Verifies one chunk on a blocking thread and records what it found; returns the bytes
    /// read. If the pass is dropped meanwhile, the verification finishes unrecorded (see the
    /// module docs).
    async fn verify_one(&self, pass: u64, id: ChunkId, tally: &mut Tally) -> u64 {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.verify(id)).await {
            Ok(Ok(report)) => {
                match &report.outcome {
                    Verification::Intact { len } => {
                        tally.chunks += 1;
                        tally.bytes += len;
                    }
                    // The store logged and reported it when it quarantined it.
                    Verification::Corrupt { .. } => tally.corrupt += 1,
                    Verification::Absent => {
                        tracing::debug!(pass, chunk = %id, "chunk gone before the scrub reached it")
                    }
                }
                self.scrub.record(pass, id, Some(&report.outcome));
                report.bytes_read
            }
            Ok(Err(e)) => {
                tracing::warn!(pass, chunk = %id, error = %e, "scrub could not read a chunk; it stays unverified");
                tally.unreadable += 1;
                self.scrub.record(pass, id, None);
                0
            }
            Err(e) => {
                tracing::error!(pass, chunk = %id, error = %e, "scrub verification task failed");
                tally.unreadable += 1;
                self.scrub.record(pass, id, None);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_wait_for_an_idle_scrub_and_figures_start_at_zero() {
        let scrub = Scrub::new(ScrubConfig {
            rate_bytes: 7,
            interval: Duration::from_secs(1),
            start_delay: Duration::from_secs(1),
        });
        assert_eq!(
            scrub.stats(0),
            ScrubStats {
                rate_limit_bytes: 7,
                interval_secs: 1,
                start_delay_secs: 1,
                ..ScrubStats::default()
            }
        );
        let st = scrub.stats(3);
        assert_eq!(
            st.unverified_chunks, 3,
            "chunks on disk at start-up are not verified"
        );
        assert_eq!(st.oldest_unverified_unix_ms, scrub.lock().started_ms);
        assert!(scrub.request_pass());
        assert!(!scrub.request_pass(), "a pass is already requested");
        let pass = scrub.begin_pass();
        assert!(
            !scrub.take_request(),
            "starting the pass served the request"
        );
        assert!(!scrub.request_pass(), "a pass is running");
        assert!(scrub.stats(0).running);

        // Verified in the pass, written during it, unreadable: all kept at the end; an entry
        // of a chunk the pass did not find is dropped.
        let (a, b, c, gone) = (
            ChunkId::of(b"a"),
            ChunkId::of(b"b"),
            ChunkId::of(b"c"),
            ChunkId::of(b"gone"),
        );
        scrub.lock().verified.insert(
            gone,
            Seen {
                at_ms: 5,
                since_ms: 1,
                pass: 0,
            },
        );
        scrub.record(pass, a, Some(&Verification::Intact { len: 10 }));
        std::thread::sleep(Duration::from_millis(5));
        scrub.note_written(b);
        scrub.record(pass, c, None);
        scrub.end_pass(pass, true);
        let st = scrub.stats(3);
        assert_eq!(
            (st.passes, st.chunks_verified, st.bytes_verified),
            (1, 1, 10)
        );
        assert!(!st.running && st.last_full_pass_unix_ms > 0);
        assert!(!scrub.lock().verified.contains_key(&gone));
        // a was read back; b was only written, c could not be read: 2 unverified, the oldest
        // since start-up (c).
        assert!(st.oldest_verified_unix_ms > 0);
        assert_eq!(st.unverified_chunks, 2, "{st:?}");
        assert_eq!(st.oldest_unverified_unix_ms, scrub.lock().started_ms);
        // A chunk re-written after its read-back is unverified again.
        scrub.note_written(a);
        assert_eq!(scrub.stats(3).unverified_chunks, 3);

        // Once c is verified the oldest time is a real one.
        let pass = scrub.begin_pass();
        for id in [a, b, c] {
            scrub.record(pass, id, Some(&Verification::Intact { len: 1 }));
        }
        scrub.end_pass(pass, true);
        let st = scrub.stats(3);
        assert!(st.oldest_verified_unix_ms > 0);
        assert!(st.oldest_verified_unix_ms <= st.last_full_pass_unix_ms);
        assert_eq!((st.unverified_chunks, st.oldest_unverified_unix_ms), (0, 0));
    }
}
