//! End to end: replacing a file by rename is atomic for every reader.
//!
//! The way editors, package managers and config tools update a file — write a temp file, fsync
//! it, rename it over the target — must never show a reader a missing target or a partial one,
//! whether the reader is on the writer's mount or on another one.
mod e2e_harness;

use e2e_harness::{init_tracing, wait_until, Cluster};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Bytes of every version of the target.
const LEN: usize = 64 << 10;
/// Versions the writer publishes.
const VERSIONS: u64 = 500;
/// Each version starts with this header and its number (fixed width), then every byte is the
/// version modulo 251: a read identifies its version and shows whether it is whole.
const HEADER: &[u8] = b"cairn-version ";
const NUM_DIGITS: usize = 12;

fn version_bytes(v: u64) -> Vec<u8> {
    let mut data = vec![(v % 251) as u8; LEN];
    let head = format!(
        "{}{v:0width$}\n",
        String::from_utf8_lossy(HEADER),
        width = NUM_DIGITS
    );
    data[..head.len()].copy_from_slice(head.as_bytes());
    data
}

/// The version `data` is, if it is one whole version.
fn whole_version(data: &[u8]) -> Result<u64, String> {
    let head = HEADER.len() + NUM_DIGITS + 1;
    if data.len() != LEN {
        return Err(format!("{} bytes, not {LEN}", data.len()));
    }
    let num = std::str::from_utf8(&data[HEADER.len()..head - 1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|_| data.starts_with(HEADER))
        .ok_or_else(|| format!("no version header: {:?}", &data[..head]))?;
    match data[head..].iter().position(|&b| b != (num % 251) as u8) {
        Some(at) => Err(format!("version {num} has a foreign byte at {}", head + at)),
        None => Ok(num),
    }
}

/// What one reader saw.
#[derive(Debug, Default)]
struct Seen {
    reads: u64,
    /// Errors by errno.
    errors: BTreeMap<i32, u64>,
    /// Reads that were not one whole version.
    torn: Vec<String>,
    /// Versions seen, lowest and highest.
    first: Option<u64>,
    last: Option<u64>,
    /// A version older than one read before it on the same reader.
    went_back: u64,
}

/// Opens and reads `target` in a loop until `stop`, checking every read.
fn reader(target: PathBuf, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        match std::fs::read(&target) {
            Ok(data) => match whole_version(&data) {
                Ok(v) => {
                    seen.reads += 1;
                    seen.first.get_or_insert(v);
                    if seen.last.is_some_and(|l| v < l) {
                        seen.went_back += 1;
                    }
                    seen.last = Some(seen.last.map_or(v, |l| l.max(v)));
                }
                Err(e) => seen.torn.push(e),
            },
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                if seen.errors.values().sum::<u64>() < 5 {
                    info!(errno, error = %e, "read of the target failed");
                }
                *seen.errors.entry(errno).or_default() += 1;
            }
        }
    }
    seen
}

/// Writes `VERSIONS` versions to `dir/target` the way an editor does: temp file, fsync,
/// rename over the target.
fn writer(dir: &Path) {
    let (tmp, target) = (dir.join(".target.tmp"), dir.join("target"));
    for v in 1..=VERSIONS {
        let mut f = std::fs::File::create(&tmp).expect("create the temp file");
        f.write_all(&version_bytes(v)).expect("write the temp file");
        f.sync_all().expect("fsync the temp file");
        drop(f);
        std::fs::rename(&tmp, &target).expect("rename over the target");
    }
}

#[test]
fn t10_replacing_a_file_by_rename_never_shows_a_missing_or_partial_target() {
    init_tracing();
    info!("--- a 3 + 3 cluster, two mounts; the target exists at version 0");
    let mut c = Cluster::start(3, 3);
    let writer_mnt = c.mount();
    let other_mnt = c.mount();
    std::fs::write(writer_mnt.join("target"), version_bytes(0)).expect("write version 0");

    info!("--- one process replaces the target {VERSIONS} times; readers on both mounts loop");
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = [("same mount", &writer_mnt), ("second mount", &other_mnt)]
        .into_iter()
        .map(|(name, mnt)| {
            let (target, stop) = (mnt.join("target"), stop.clone());
            (name, std::thread::spawn(move || reader(target, stop)))
        })
        .collect();
    writer(&writer_mnt);
    stop.store(true, Ordering::Relaxed);

    info!("--- every open found the target and every read was one whole version");
    for (name, r) in readers {
        let seen = r.join().expect("reader thread");
        info!(reader = name, ?seen, "reader done");
        assert!(
            seen.torn.is_empty(),
            "{name}: {} reads were not one whole version, e.g. {}",
            seen.torn.len(),
            seen.torn[0]
        );
        assert_eq!(
            seen.errors.get(&libc::ENOENT),
            None,
            "{name}: opens of the target failed with ENOENT ({} reads ok; all errors by errno: {:?})",
            seen.reads,
            seen.errors
        );
        assert!(
            seen.errors.is_empty(),
            "{name}: reads of the target failed ({} reads ok; errors by errno: {:?})",
            seen.reads,
            seen.errors
        );
        assert_eq!(
            seen.went_back, 0,
            "{name}: a read saw an older version than before"
        );
        assert!(seen.reads > 0, "{name}: no read finished");
        assert!(
            seen.last > seen.first,
            "{name}: the reader never saw the target change: {seen:?}"
        );
    }

    info!("--- the last version is what both mounts read now");
    let last = |mnt: &Path| std::fs::read(mnt.join("target")).map(|d| whole_version(&d));
    assert_eq!(
        last(&writer_mnt).expect("read the last version"),
        Ok(VERSIONS)
    );
    // The other mount's kernel may resolve the name to the previous file for up to the entry
    // TTL (close-to-open covers contents, not names: see docs/ARCHITECTURE.md).
    wait_until(
        "the second mount to read the last version",
        Duration::from_secs(10),
        || matches!(last(&other_mnt), Ok(Ok(v)) if v == VERSIONS),
    );
}
