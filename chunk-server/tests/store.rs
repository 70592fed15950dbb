//! The chunk store: a conformance suite every `ChunkStore` backend must pass, and fault
//! scenarios against the file store (crash before rename, flipped bytes, full disk).
mod support;

use bytes::Bytes;
use cairn_chunk_server::store::{
    data_offset, ChunkStore, FileStore, PutOutcome, StoreError, StoreOptions, Verification,
    VerifyReport,
};
use cairn_common::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::{chunk, data, flip_byte};

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

fn open(dir: &Path) -> FileStore {
    FileStore::open(
        dir,
        StoreOptions {
            reserve_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

/// The behaviour every backend must have.
fn store_suite(store: &dyn ChunkStore) {
    // --- round trip of a full-size chunk and of a short one
    let (big_id, big) = chunk("big", CHUNK_SIZE);
    assert_eq!(store.put(big_id, big.clone()).unwrap(), PutOutcome::Stored);
    let (got, stored_len) = store.get(big_id, 0, 0).unwrap();
    assert_eq!(stored_len, CHUNK_SIZE as u64);
    assert_eq!(got, big);
    let (small_id, small) = chunk("small", 1000);
    assert_eq!(
        store.put(small_id, small.clone()).unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(store.get(small_id, 0, 0).unwrap().0, small);

    // --- partial reads at odd offsets, within and across block boundaries
    let bs = BLOCK_SIZE as u64;
    for (off, len) in [
        (0u64, 1u64),
        (1, 7),
        (bs - 3, 6),
        (bs, bs),
        (3 * bs - 1, 2 * bs + 2),
        (CHUNK_SIZE as u64 - 5, 5),
        (12345, 1_000_001),
    ] {
        let (got, _) = store.get(big_id, off, len).unwrap();
        assert_eq!(
            got,
            big.slice(off as usize..(off + len) as usize),
            "range {off}+{len}"
        );
    }
    // len 0 from an offset reads to the end; an empty read at the very end is fine.
    assert_eq!(store.get(small_id, 990, 0).unwrap().0, small.slice(990..));
    assert!(store.get(small_id, 1000, 0).unwrap().0.is_empty());

    // --- ranges past the end are refused
    assert!(matches!(
        store.get(small_id, 999, 2),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.get(small_id, 1001, 0),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.get(small_id, u64::MAX, u64::MAX),
        Err(StoreError::InvalidArgument(_))
    ));

    // --- a put whose data does not hash to the id is refused and stores nothing
    let (other_id, _) = chunk("other", 10);
    assert!(matches!(
        store.put(other_id, small.clone()),
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(store.has(other_id).unwrap(), None);
    // ... and so is an oversized one.
    let huge = data("huge", CHUNK_SIZE + 1);
    assert!(matches!(
        store.put(ChunkId::of(&huge), huge),
        Err(StoreError::InvalidArgument(_))
    ));

    // --- idempotent put
    assert_eq!(
        store.put(small_id, small.clone()).unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(store.has(small_id).unwrap(), Some(1000));
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunk_count, 2);
    assert!(stats.capacity_bytes > 0 && stats.free_bytes <= stats.capacity_bytes);

    // --- the empty chunk is a chunk too
    let (empty_id, empty) = chunk("", 0);
    assert_eq!(store.put(empty_id, empty).unwrap(), PutOutcome::Stored);
    assert_eq!(store.get(empty_id, 0, 0).unwrap(), (Bytes::new(), 0));

    // --- verify reads a whole chunk back; an absent one is Absent, not an error
    let full = store.verify(big_id).unwrap();
    assert_eq!(
        full.outcome,
        Verification::Intact {
            len: CHUNK_SIZE as u64
        }
    );
    assert_eq!(full.bytes_read, data_offset(CHUNK_SIZE) + CHUNK_SIZE as u64);
    assert_eq!(
        store.verify(empty_id).unwrap().outcome,
        Verification::Intact { len: 0 }
    );
    assert_eq!(
        store.verify(other_id).unwrap(),
        VerifyReport {
            outcome: Verification::Absent,
            bytes_read: 0
        }
    );

    // --- list_shard lists one fan-out directory
    for id in [big_id, small_id, empty_id] {
        assert!(store.list_shard(id.0[0]).unwrap().contains(&id));
    }
    let elsewhere = (0..=255u8)
        .find(|b| ![big_id.0[0], small_id.0[0], empty_id.0[0]].contains(b))
        .unwrap();
    assert!(store.list_shard(elsewhere).unwrap().is_empty());

    // --- list and delete
    let mut listed: Vec<ChunkId> = store.list().unwrap().map(|r| r.unwrap()).collect();
    listed.sort();
    let mut expected = vec![big_id, small_id, empty_id];
    expected.sort();
    assert_eq!(listed, expected);
    store.delete(small_id).unwrap();
    assert_eq!(store.has(small_id).unwrap(), None);
    assert!(matches!(
        store.get(small_id, 0, 0),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(small_id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.stats().unwrap().chunk_count, 2);
    // A deleted chunk can be stored again.
    assert_eq!(store.put(small_id, small).unwrap(), PutOutcome::Stored);
}

#[test]
fn file_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store_suite(&store);
    // Counters survive a restart (recounted from disk).
    let stats = store.stats().unwrap();
    drop(store);
    let reopened = open(dir.path());
    assert_eq!(reopened.stats().unwrap().chunk_count, stats.chunk_count);
    assert_eq!(reopened.stats().unwrap().stored_bytes, stats.stored_bytes);
}

#[test]
fn identity_is_created_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = open(dir.path()).uuid().to_owned();
    assert_eq!(uuid.len(), 36);
    assert_eq!(open(dir.path()).uuid(), uuid);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(open(other.path()).uuid(), uuid);
}

#[test]
fn concurrent_puts_of_one_chunk_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let (id, d) = chunk("concurrent", 300_000);
    let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (store, d) = (store.clone(), d.clone());
                s.spawn(move || store.put(id, d).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == PutOutcome::Stored)
            .count(),
        1
    );
    assert_eq!(store.stats().unwrap().chunk_count, 1);
    assert_eq!(store.get(id, 0, 0).unwrap().0, d);
    assert_eq!(count_files(store.tmp_dir()), 0);
}

#[test]
fn crash_before_rename_leaves_no_visible_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (id, d) = chunk("crashed", 200_000);
    let tmp_file: PathBuf;
    {
        let store = open(dir.path());
        // A put that crashed after writing (even fsyncing) its temp file but before the rename
        // leaves exactly this: a complete-looking file in tmp/ and nothing under chunks/.
        tmp_file = store
            .tmp_dir()
            .join(format!("{}.00000000deadbeef.tmp", id.to_hex()));
        let mut f = fs::File::create(&tmp_file).unwrap();
        f.write_all(&d).unwrap();
        f.sync_all().unwrap();
        assert!(!store.chunk_path(id).exists());
    }
    let store = open(dir.path());
    assert!(
        !tmp_file.exists(),
        "leftover temp file must be removed at startup"
    );
    assert_eq!(count_files(store.tmp_dir()), 0);
    assert_eq!(store.has(id).unwrap(), None);
    assert!(matches!(
        store.get(id, 0, 0),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.stats().unwrap().chunk_count, 0);
    // The client retries the put: it succeeds normally.
    assert_eq!(store.put(id, d.clone()).unwrap(), PutOutcome::Stored);
    assert_eq!(store.get(id, 0, 0).unwrap().0, d);
}

#[test]
fn flipped_data_byte_is_detected_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let len = 3 * BLOCK_SIZE + 100;
    let (id, d) = chunk("flip-data", len);
    store.put(id, d.clone()).unwrap();
    let path = store.chunk_path(id);
    // Corrupt block 1 only.
    flip_byte(&path, data_offset(len) + BLOCK_SIZE as u64 + 4242);

    // A read of intact block 0 only verifies block 0: correct bytes.
    assert_eq!(store.get(id, 10, 100).unwrap().0, d.slice(10..110));
    // A read touching block 1 fails as Corrupt — never wrong bytes.
    let err = store
        .get(id, BLOCK_SIZE as u64 - 10, 20)
        .expect_err("corrupt block must not be served");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // The whole chunk is moved to quarantine/, not deleted.
    assert!(!path.exists());
    let quarantined: Vec<_> = fs::read_dir(store.quarantine_dir()).unwrap().collect();
    assert_eq!(quarantined.len(), 1);
    let q = quarantined[0].as_ref().unwrap().path();
    assert!(q
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(&id.to_hex()));
    assert_eq!(
        fs::metadata(&q).unwrap().len(),
        data_offset(len) + len as u64
    );
    // The chunk is gone for every reader now.
    assert_eq!(store.has(id).unwrap(), None);
    assert!(matches!(
        store.get(id, 0, 10),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.stats().unwrap().chunk_count, 0);
    // Re-replication puts a good copy back.
    assert_eq!(store.put(id, d.clone()).unwrap(), PutOutcome::Stored);
    assert_eq!(store.get(id, 0, 0).unwrap().0, d);
}

#[test]
fn flipped_header_byte_is_detected_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let len = 2 * BLOCK_SIZE;
    for (seed, at) in [
        ("magic", 0u64),
        ("length", 13),
        ("block-hash", 60),
        ("self-hash", data_offset(len) - 1),
    ] {
        let (id, d) = chunk(seed, len);
        store.put(id, d).unwrap();
        flip_byte(&store.chunk_path(id), at);
        let err = store
            .get(id, 0, 1)
            .expect_err("corrupt header must be refused");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{seed}: {err}");
        assert!(
            !store.chunk_path(id).exists(),
            "{seed}: must be quarantined"
        );
    }
    assert_eq!(count_files(store.quarantine_dir()), 4);
    assert_eq!(store.stats().unwrap().chunk_count, 0);
}

#[test]
fn put_over_a_corrupt_copy_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, d) = chunk("rot", 100_000);
    store.put(id, d.clone()).unwrap();
    flip_byte(&store.chunk_path(id), data_offset(100_000) + 99_999);
    // The existing copy is verified, found rotten, quarantined and rewritten.
    assert_eq!(store.put(id, d.clone()).unwrap(), PutOutcome::Stored);
    assert_eq!(store.get(id, 0, 0).unwrap().0, d);
    assert_eq!(count_files(store.quarantine_dir()), 1);
    assert_eq!(store.stats().unwrap().chunk_count, 1);
}

#[test]
fn verify_finds_rot_anywhere_and_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let len = 5 * BLOCK_SIZE + 7;
    // A flip in the last (short) block, which a read of the first blocks would never see.
    let (id, d) = chunk("verify-tail", len);
    store.put(id, d.clone()).unwrap();
    flip_byte(&store.chunk_path(id), data_offset(len) + len as u64 - 1);
    assert_eq!(store.get(id, 0, 100).unwrap().0, d.slice(0..100));
    let r = store.verify(id).unwrap();
    assert!(
        matches!(&r.outcome, Verification::Corrupt { reason } if reason.contains("block 5")),
        "{r:?}"
    );
    assert!(!store.chunk_path(id).exists());
    assert_eq!(count_files(store.quarantine_dir()), 1);
    // Verifying again finds nothing to verify (and reports nothing twice).
    assert_eq!(store.verify(id).unwrap().outcome, Verification::Absent);
    assert_eq!(store.stats().unwrap().chunk_count, 0);
}

#[test]
fn truncated_chunk_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, d) = chunk("short", 100_000);
    store.put(id, d).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(store.chunk_path(id))
        .unwrap();
    f.set_len(data_offset(100_000) + 50_000).unwrap();
    assert!(matches!(
        store.get(id, 0, 10),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(count_files(store.quarantine_dir()), 1);
}

/// A small tmpfs mounted on a temp dir, unmounted on drop (even when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount tmpfs (the tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("unmount {}: {e}", self.dir.path().display());
        }
    }
}

#[test]
fn full_disk_refuses_puts_cleanly_and_keeps_serving_reads() {
    let fs = Tmpfs::mount("2m");
    let root = fs.path().join("data");

    // Phase 1: with the early free-space check off, the OS's ENOSPC is what stops a put.
    let store = FileStore::open(
        &root,
        StoreOptions {
            reserve_bytes: 0,
            check_free_space: false,
        },
    )
    .unwrap();
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..10 {
        let (id, d) = chunk(&format!("fill-{i}"), 512 * 1024);
        match store.put(id, d.clone()) {
            Ok(PutOutcome::Stored) => stored.push((id, d)),
            Err(StoreError::NoSpace { reason }) => {
                refused = Some((id, reason));
                break;
            }
            other => panic!("unexpected put result {other:?}"),
        }
    }
    let (full_id, reason) = refused.expect("a 2 MiB file system must fill up");
    assert!(
        reason.contains("No space") || reason.contains("space"),
        "{reason}"
    );
    assert!(!stored.is_empty());
    // Nothing of the failed put is left or visible.
    assert_eq!(count_files(store.tmp_dir()), 0, "temp file must be removed");
    assert!(!store.chunk_path(full_id).exists());
    assert_eq!(store.has(full_id).unwrap(), None);
    assert!(matches!(
        store.get(full_id, 0, 0),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.stats().unwrap().chunk_count, stored.len() as u64);
    // Reads of what was stored still work.
    for (id, d) in &stored {
        assert_eq!(&store.get(*id, 0, 0).unwrap().0, d);
    }
    // Freeing space makes puts work again.
    store.delete(stored[0].0).unwrap();
    let (id, d) = chunk("after-delete", 100_000);
    assert_eq!(store.put(id, d).unwrap(), PutOutcome::Stored);
    drop(store);

    // Phase 2: the reserve refuses a put before anything is written.
    let store = FileStore::open(
        &root,
        StoreOptions {
            reserve_bytes: 1024 * 1024 * 1024,
            check_free_space: true,
        },
    )
    .unwrap();
    let (id, d) = chunk("reserved", 1000);
    assert!(matches!(store.put(id, d), Err(StoreError::NoSpace { .. })));
    assert_eq!(count_files(store.tmp_dir()), 0);
    assert_eq!(store.has(id).unwrap(), None);
    let (id0, d0) = &stored[1];
    assert_eq!(&store.get(*id0, 0, 0).unwrap().0, d0);
}

/// GC marks: a marked delete removes only copies not stored again since the mark, so a put
/// racing a collection keeps its copy.
#[test]
fn a_marked_delete_spares_copies_put_after_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (x, xd) = chunk("gc-x", 70_000);
    let (y, yd) = chunk("gc-y", 70_000);
    let (absent, _) = chunk("gc-absent", 10);
    s.put(x, xd.clone()).unwrap();
    s.put(y, yd).unwrap();

    assert_eq!(
        s.mark_for_gc(&[x, y, absent]).unwrap(),
        2,
        "only stored chunks are marked"
    );
    assert_eq!(s.put(x, xd).unwrap(), PutOutcome::AlreadyPresent);
    assert!(
        !s.delete_if_marked(x).unwrap(),
        "x was put again after the mark"
    );
    assert!(s.has(x).unwrap().is_some());
    assert!(s.delete_if_marked(y).unwrap());
    assert_eq!(s.has(y).unwrap(), None);
    assert!(!s.delete_if_marked(y).unwrap(), "a mark is used once");
    assert!(!s.delete_if_marked(absent).unwrap());

    // Without a mark nothing is deleted; the deletion survives a reopen.
    assert!(!s.delete_if_marked(x).unwrap());
    drop(s);
    let s = open(dir.path());
    assert!(s.has(x).unwrap().is_some());
    assert_eq!(s.has(y).unwrap(), None);
    assert_eq!(s.stats().unwrap().chunk_count, 1);
}
