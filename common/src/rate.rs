//! A byte-rate limiter for background I/O (scrub reads, repair copies).
//!
//! A token bucket: credit accrues at `rate` bytes per second up to [`BURST`] worth. Each
//! transfer is charged when it is made and may overdraw the bucket; the debt is how long the
//! next transfer waits. Over any stretch of time the bytes moved are at most
//! `rate × time + burst + one transfer`. Shared by concurrent tasks (`&self`).
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused credit may accumulate.
pub const BURST: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second; 0: unlimited.
    rate: u64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (0: unlimited), starting with an empty bucket.
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Charges `bytes` (a transfer made or about to be made); returns how long to pause before
    /// the next one.
    pub fn charge(&self, bytes: u64) -> Duration {
        self.charge_at(bytes, Instant::now())
    }

    /// Charges `bytes` and waits out the debt.
    pub async fn take(&self, bytes: u64) {
        let wait = self.charge(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// [`RateLimiter::charge`] at time `now`.
    pub fn charge_at(&self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        let burst = rate * BURST.as_secs_f64();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let earned = now.saturating_duration_since(b.last).as_secs_f64() * rate;
        b.last = b.last.max(now);
        b.tokens = (b.tokens + earned).min(burst) - bytes as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// At 4 MiB/s, 8 MiB in 1 MiB pieces, each sent as soon as allowed, take 2 s.
    #[test]
    fn the_rate_is_held() {
        // The limiter's clock starts a few microseconds before `start`; that credit is noise.
        let close = |a: Duration, b: f64| (a.as_secs_f64() - b).abs() < 1e-3;
        let l = RateLimiter::new(4 * MIB);
        let start = Instant::now();
        let mut now = start;
        for _ in 0..8 {
            now += l.charge_at(MIB, now);
        }
        assert!(close(now - start, 2.0), "{:?}", now - start);

        // Small transfers spaced wider than their cost never wait.
        now += Duration::from_millis(250);
        for _ in 0..4 {
            now += Duration::from_millis(30);
            assert_eq!(l.charge_at(MIB / 10, now), Duration::ZERO);
        }

        // Idle credit is capped at BURST (100 ms) worth: after a minute idle, 4 MiB at 4 MiB/s
        // still waits 0.9 s.
        now += Duration::from_secs(60);
        assert!(close(l.charge_at(4 * MIB, now), 0.9));
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let l = RateLimiter::new(0);
        let t = Instant::now();
        l.take(1 << 40).await;
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
