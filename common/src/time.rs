//! Time as Cairn stores and sends it, and its one conversion to and from `SystemTime` and the
//! wire [`Timestamp`].
//!
//! A [`Time`] is seconds since the Unix epoch (negative before 1970) plus nanoseconds in
//! `0..1_000_000_000`, always counted forward from `secs`: 1969-12-31 23:59:59.25 is
//! `{ secs: -1, nanos: 250_000_000 }`. The wire `Timestamp` has the same two fields, so both
//! directions are exact; the derived order is the order in time.
use cairn_proto::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// TEST HOOK: a file holding a signed number of seconds added to this process's wall clock
/// (absent or empty: 0), read at every [`Time::now`]. Tests step a meta node's clock with it
/// while the node runs. Set once at start ([`set_test_clock_offset_file`]); never in production.
static TEST_CLOCK_OFFSET_FILE: OnceLock<PathBuf> = OnceLock::new();

/// TEST HOOK: from now on this process's wall clock is offset by the seconds in `path`.
/// Milliseconds since the Unix epoch by this machine's clock (0 if it reads before 1970): the
/// unit of the wall-clock figures in status reports and metrics (scrub times, repair scans).
/// Not offset by the test clock hook (see [`Time::now`]).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn set_test_clock_offset_file(path: PathBuf) {
    let _ = TEST_CLOCK_OFFSET_FILE.set(path);
}

/// The wall clock, with the test offset when one is set.
fn system_now() -> SystemTime {
    let now = SystemTime::now();
    let Some(path) = TEST_CLOCK_OFFSET_FILE.get() else {
        return now;
    };
    let secs: i64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let step = Duration::from_secs(secs.unsigned_abs());
    let stepped = if secs >= 0 {
        now.checked_add(step)
    } else {
        now.checked_sub(step)
    };
    stepped.unwrap_or(now)
}

/// A point in wall-clock time (see the module docs).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash,
)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// The wall clock now.
    pub fn now() -> Time {
        Time::from_system(system_now())
    }

    /// The wall clock `d` ago.
    pub fn ago(d: Duration) -> Time {
        let now = system_now();
        Time::from_system(now.checked_sub(d).unwrap_or(UNIX_EPOCH))
    }

    /// `t` as a `Time`, before 1970 included.
    pub fn from_system(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                // Before 1970: whole seconds rounded down, nanoseconds counted forward.
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Time { secs, nanos }
            }
        }
    }

    /// This time as a `SystemTime` (nanoseconds past the range are clamped).
    pub fn to_system(self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.nanos.min(999_999_999)));
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
    }

    /// Whether `nanos` is in range (a wire timestamp must be checked before it is stored).
    pub fn is_valid(self) -> bool {
        self.nanos < 1_000_000_000
    }
}

impl From<Timestamp> for Time {
    fn from(t: Timestamp) -> Time {
        Time {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

impl From<Time> for Timestamp {
    fn from(t: Time) -> Timestamp {
        Timestamp {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

/// `t` on the wire.
pub fn to_wire(t: SystemTime) -> Timestamp {
    Time::from_system(t).into()
}

/// A wire timestamp as a `SystemTime`.
pub fn from_wire(t: &Timestamp) -> SystemTime {
    Time::from(*t).to_system()
}

/// The wall clock now, on the wire.
pub fn now() -> Timestamp {
    Time::now().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_before_and_after_1970() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 500),
            UNIX_EPOCH - Duration::new(0, 1),
        ] {
            assert_eq!(from_wire(&to_wire(t)), t);
            assert_eq!(Time::from_system(t).to_system(), t);
        }
        let t = Time::from_system(UNIX_EPOCH - Duration::from_millis(750));
        assert_eq!((t.secs, t.nanos), (-1, 250_000_000));
        assert!(t < Time::default(), "before 1970 sorts first");
        assert!(Time::ago(Duration::from_secs(10)) < Time::now());
    }
}
