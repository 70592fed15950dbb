//! The log clock: which log index this node had applied at each moment of its own monotonic
//! clock — how expiries are timed without comparing wall clocks.
//!
//! Four things expire by age: a mount session nobody renewed for its TTL (its locks and
//! open-unlinked files go, see [`crate::reaper`]), an upload nobody recorded a chunk into, an
//! unreferenced chunk past its GC grace ([`crate::gc`]) and a request id no client will retry
//! any more ([`crate::fsm`]'s `requests`). Wall-clock times are taken on different machines
//! and jump when a clock is stepped: compared, a forward step of a minute on the leader expired
//! every live mount's session, and a leader whose clock ran behind the one that stamped a
//! renewal never expired a dead mount.
//!
//! So each such record keeps the **log index** of the entry that last touched it (renewed the
//! session, recorded the chunk, unreferenced the chunk, applied the request), and "at least
//! `age` ago" becomes "at or below the index this node had applied `age` ago", read from
//! samples of (monotonic instant, last applied index) taken as entries are applied. The answer
//! is never too young: an entry this node had applied by instant `t` was committed by `t`. A
//! wall-clock step cannot move it, and nodes never compare their clocks; the only cost is that
//! a node knows nothing before it started, so after a restart it waits `age` before such an
//! expiry (a new leader of an old node needs no wait: it sampled while it followed).
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most samples kept: the spacing grows for long horizons instead of the memory.
const MAX_SAMPLES: u32 = 100_000;

pub struct LogClock {
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// The longest age anyone asks about: older samples than the newest one past it go.
    keep: Duration,
    /// The least time between two samples.
    spacing: Duration,
}

impl LogClock {
    /// A clock answering ages up to `keep` (the longest TTL or grace of this node).
    pub fn new(keep: Duration) -> LogClock {
        LogClock {
            samples: Mutex::default(),
            keep,
            spacing: (keep / MAX_SAMPLES).max(Duration::from_secs(1)),
        }
    }

    /// Notes that this node has applied everything up to `applied`.
    pub fn applied(&self, applied: u64) {
        self.applied_at(applied, Instant::now())
    }

    /// [`LogClock::applied`] at `now` (tests drive the clock).
    pub fn applied_at(&self, applied: u64, now: Instant) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(t, i)) = s.back() {
            // Within the spacing the older sample stands: it only makes answers older.
            if i >= applied || now.saturating_duration_since(t) < self.spacing {
                return;
            }
        }
        s.push_back((now, applied));
        // One sample older than `keep` answers every age up to `keep`.
        while s.len() >= 2 && now.saturating_duration_since(s[1].0) >= self.keep {
            s.pop_front();
        }
    }

    /// The last index this node had applied `age` ago, if it was running then: every entry at
    /// or below it was committed at least `age` ago.
    pub fn applied_before(&self, age: Duration) -> Option<u64> {
        self.applied_before_at(age, Instant::now())
    }

    /// [`LogClock::applied_before`] as of `now`.
    pub fn applied_before_at(&self, age: Duration, now: Instant) -> Option<u64> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // Samples are in time order: those old enough are a prefix.
        let old_enough = s.partition_point(|(t, _)| now.saturating_duration_since(*t) >= age);
        old_enough.checked_sub(1).map(|n| s[n].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_answered_by_the_index_applied_that_long_ago() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let c = LogClock::new(Duration::from_secs(600));
        c.applied_at(10, at(0));
        c.applied_at(20, at(300));
        assert_eq!(
            c.applied_before_at(Duration::from_secs(600), at(599)),
            None,
            "nothing is known from before the node started"
        );
        assert_eq!(
            c.applied_before_at(Duration::from_secs(600), at(600)),
            Some(10)
        );
        assert_eq!(
            c.applied_before_at(Duration::from_secs(60), at(360)),
            Some(20)
        );
        assert_eq!(
            c.applied_before_at(Duration::from_secs(60), at(359)),
            Some(10)
        );
    }

    #[test]
    fn samples_are_spaced_and_trimmed_to_the_horizon() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let c = LogClock::new(Duration::from_secs(10));
        c.applied_at(1, at(0));
        c.applied_at(2, at(500));
        assert_eq!(
            c.applied_before_at(Duration::from_secs(1), at(1600)),
            Some(1),
            "a sample within the spacing of the last is not kept (answers only get older)"
        );
        for s in 1..=30 {
            c.applied_at(100 + s, at(s * 1000));
        }
        let n = c.samples.lock().unwrap().len();
        assert!(
            n <= 12,
            "kept {n} samples for a 10 s horizon at 1 s spacing"
        );
        assert_eq!(
            c.applied_before_at(Duration::from_secs(10), at(30_000)),
            Some(120),
            "ages up to the horizon are still answered"
        );
    }

    #[test]
    fn an_index_that_did_not_move_adds_no_sample() {
        let t0 = Instant::now();
        let c = LogClock::new(Duration::from_secs(60));
        c.applied_at(5, t0);
        c.applied_at(5, t0 + Duration::from_secs(30));
        assert_eq!(
            c.applied_before_at(Duration::from_secs(40), t0 + Duration::from_secs(45)),
            Some(5),
            "index 5 was applied by t0, 45 s ago"
        );
    }
}
