//! End to end: files of every size. A file with more slots than one request may carry, written
//! in one open/close, committed atomically and read back whole: at every slot, from the
//! writing mount, from a second mount and with `cairn get`.
//!
//! Identical chunk contents deduplicate, so a sparse file whose thousands of slots each hold a
//! few bytes costs metadata only: the cluster stores a handful of distinct chunks.
mod e2e_harness;

use e2e_harness::{init_tracing, Cluster};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Instant;
use tracing::info;

const SLOT: u64 = 4 << 20;

/// The byte written at the start of slot `i` (16 distinct chunks over the whole file).
fn byte_of(i: u64) -> u8 {
    b'a' + (i % 16) as u8
}

/// Writes one byte at the start of each of `slots` slots (in one open/close) and returns how
/// long the close (the commit) took.
fn write_sparse(path: &Path, slots: u64) -> std::time::Duration {
    let f = std::fs::File::create(path).unwrap();
    for i in 0..slots {
        f.write_all_at(&[byte_of(i)], i * SLOT)
            .unwrap_or_else(|e| panic!("write of slot {i}: {e}"));
    }
    let t = Instant::now();
    close(f, &format!("the commit of {slots} slots"));
    t.elapsed()
}

/// Closes `f`, failing the test if close(2) (the commit) fails: File's drop would hide it.
fn close(f: std::fs::File, what: &str) {
    let fd = std::os::unix::io::IntoRawFd::into_raw_fd(f);
    let rc = unsafe { libc::close(fd) };
    assert_eq!(
        rc,
        0,
        "close ({what}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads the file back at every slot: the slot's byte, then zeros up to the next slot.
fn check_sparse(path: &Path, slots: u64, what: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let len = f.metadata().unwrap().len();
    assert_eq!(len, (slots - 1) * SLOT + 1, "{what}: size");
    let mut buf = [0u8; 2];
    for i in 0..slots {
        let want = if i + 1 < slots { 2 } else { 1 };
        let n = f
            .read_at(&mut buf[..want], i * SLOT)
            .unwrap_or_else(|e| panic!("{what}: read of slot {i}: {e}"));
        assert_eq!(n, want, "{what}: short read at slot {i}");
        assert_eq!(buf[0], byte_of(i), "{what}: wrong byte at slot {i}");
        if want == 2 {
            assert_eq!(buf[1], 0, "{what}: slot {i} holds more than one byte");
        }
    }
}

#[test]
fn t10_a_sparse_file_of_4200_slots_is_written_in_one_close_and_read_back_everywhere() {
    init_tracing();
    const SLOTS: u64 = 4200;
    let mut c = Cluster::start(3, 3);
    let a = c.mount();
    let b = c.mount();

    info!("--- one byte in each of {SLOTS} slots, one open/close (more slots than one commit carries)");
    let t = Instant::now();
    let commit = write_sparse(&a.join("sparse"), SLOTS);
    info!(
        secs = t.elapsed().as_secs_f64(),
        close_secs = commit.as_secs_f64(),
        "written and committed"
    );

    info!("--- read back at every slot: on the writing mount, on another mount");
    check_sparse(&a.join("sparse"), SLOTS, "mount A");
    let t = Instant::now();
    check_sparse(&b.join("sparse"), SLOTS, "mount B");
    info!(secs = t.elapsed().as_secs_f64(), "read every slot on B");
    let md = std::fs::metadata(b.join("sparse")).unwrap();
    assert!(
        md.blocks() * 512 < 64 << 20,
        "st_blocks counts {} blocks for {SLOTS} bytes of data",
        md.blocks()
    );

    info!("--- cairn get copies it out whole, holes stay holes");
    let local = c.path("sparse.copy");
    let t = Instant::now();
    let (code, out, err) = c.cairn(&["get", "/sparse", local.to_str().unwrap()]);
    assert_eq!(code, 0, "cairn get failed:\n{out}\n{err}");
    info!(secs = t.elapsed().as_secs_f64(), "cairn get");
    check_sparse(&local, SLOTS, "cairn get");
    let md = std::fs::metadata(&local).unwrap();
    assert!(
        md.blocks() * 512 < 1 << 30,
        "cairn get wrote {} bytes of zeros for the holes",
        md.blocks() * 512
    );

    info!("--- an O_TRUNC overwrite with two slots: the other {SLOTS} old slots become holes in one commit");
    let f = std::fs::File::create(b.join("sparse")).unwrap();
    f.write_all_at(b"new", 0).unwrap();
    f.write_all_at(b"end", SLOT).unwrap();
    close(f, "the O_TRUNC overwrite");
    for (m, what) in [(&a, "mount A"), (&b, "mount B")] {
        let got = std::fs::read(m.join("sparse")).unwrap();
        assert_eq!(got.len() as u64, SLOT + 3, "{what}: size");
        assert_eq!(
            (&got[..3], &got[SLOT as usize..]),
            (&b"new"[..], &b"end"[..]),
            "{what}"
        );
        assert!(
            got[3..SLOT as usize].iter().all(|b| *b == 0),
            "{what}: a hole"
        );
    }
}
