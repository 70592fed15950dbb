//! Conversions between `SystemTime` and the wire [`Timestamp`].
use cairn_proto::Timestamp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn to_wire(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            // Before 1970: represent as negative seconds with positive nanos.
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

pub fn from_wire(t: &Timestamp) -> SystemTime {
    let nanos = t.nanos.min(999_999_999);
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

pub fn now() -> Timestamp {
    to_wire(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 500),
        ] {
            assert_eq!(from_wire(&to_wire(t)), t);
        }
    }
}
