//! End to end: files of every size. A file with more slots than one request may carry, written
//! in one open/close, committed atomically and read back whole: at every slot, from the
//! writing mount, from a second mount and with `cairn get`.
//!
//! Identical chunk contents deduplicate, so a sparse file whose thousands of slots each hold a
//! few bytes costs metadata only: the cluster stores a handful of distinct chunks.
//!
//! At the other end, a file of at most `--inline-max` bytes (64 KiB by default) written through
//! a mount keeps its content in the metadata, replicated by Raft: no chunk server holds a chunk
//! of it. Grown past that, its next commit stores it in chunks like any other file.
mod e2e_harness;

use e2e_harness::{init_tracing, random_bytes, wait_until, Cluster, Opts};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};
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

/// The default `--inline-max` of a mount: files of at most this many bytes live in the metadata.
const INLINE_MAX: usize = 64 << 10;

/// Sizes of the small files of t20: 1 byte up to exactly [`INLINE_MAX`].
const SMALL_SIZES: [usize; 20] = [
    1, 2, 3, 7, 100, 511, 512, 1000, 4095, 4096, 4097, 5000, 8192, 12345, 16384, 30000, 32768,
    50000, 65535, 65536,
];

/// Creates (or truncates) `path` and writes `data` in one write; fails the test if the close
/// (the commit) fails.
fn write_whole(path: &Path, data: &[u8]) {
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data)
        .unwrap_or_else(|e| panic!("write {} bytes to {}: {e}", data.len(), path.display()));
    close(f, &format!("{} of {} bytes", path.display(), data.len()));
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Reads `path` whole: exactly `want`.
fn check_bytes(path: &Path, want: &[u8], what: &str) {
    let got =
        std::fs::read(path).unwrap_or_else(|e| panic!("{what}: read {}: {e}", path.display()));
    assert!(
        got == want,
        "{what}: {} reads {} bytes, want {}; first difference at byte {:?}",
        path.display(),
        got.len(),
        want.len(),
        first_diff(&got, want)
    );
}

/// Every (name, content) of `files` reads back exactly from `dir`.
fn check_all(dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (name, data) in files {
        check_bytes(&dir.join(name), data, what);
    }
}

/// Every chunk file on any of the cluster's three chunk servers.
fn all_chunks(c: &Cluster) -> BTreeSet<String> {
    (1..=3).flat_map(|n| c.chunk_files(n)).collect()
}

/// Small files live in the metadata: 20 files of 1 byte to exactly 64 KiB, written through a
/// mount with the default `--inline-max`, leave no chunk file on any chunk server, read back
/// exactly on the writing mount, on another one, with `cairn get`, and after kill -9 of the meta
/// leader. One grown past 64 KiB moves to chunks and reads back exactly, also once truncated to
/// 100 bytes; overwrites in the middle of an inline file and past its end store no chunk and
/// read back exactly; fsck finds nothing missing; unlinking them all leaves an empty directory.
/// A mount with `--inline-max 0` stores even a 4 KiB file in chunks.
#[test]
fn t20_small_files_live_in_the_metadata_and_move_to_chunks_when_they_grow() {
    init_tracing();
    // Repair every second: a chunk written right after the election may first be placed on
    // fewer than 3 servers (the new leader has not heard from all of them yet; see e2e_faults
    // t50), and fsck waits for repair to complete it.
    let mut c = Cluster::start_with(3, 3, Opts::new(&["--repair-interval", "1000ms"], &[]));
    let a = c.mount();
    let b = c.mount();
    std::fs::create_dir(a.join("small")).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = SMALL_SIZES
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("f{len:05}"), random_bytes(len, 100 + i as u64)))
        .collect();
    let index_of = |files: &[(String, Vec<u8>)], len: usize| {
        files
            .iter()
            .position(|(_, d)| d.len() == len)
            .unwrap_or_else(|| panic!("no file of {len} bytes"))
    };

    info!("--- 20 files of 1 byte to 64 KiB, each written and closed on mount A");
    for (name, data) in &files {
        write_whole(&a.join("small").join(name), data);
    }
    let stored: Vec<usize> = (1..=3).map(|n| c.chunk_files(n).len()).collect();
    info!(?stored, "chunk files per chunk server");
    assert!(
        stored.iter().all(|&k| k == 0),
        "the chunk servers hold {stored:?} chunk files, yet every file has at most {INLINE_MAX} \
         bytes: its content belongs in the metadata"
    );

    info!("--- read back byte for byte: on A, on a second mount B, with cairn get");
    check_all(&a.join("small"), &files, "mount A");
    check_all(&b.join("small"), &files, "mount B");
    for (name, data) in files
        .iter()
        .filter(|(_, d)| d.len() == 1 || d.len() == INLINE_MAX)
    {
        let local = c.path(&format!("{name}.get"));
        let (code, out, err) =
            c.cairn(&["get", &format!("/small/{name}"), local.to_str().unwrap()]);
        assert_eq!(code, 0, "cairn get /small/{name}:\n{out}\n{err}");
        check_bytes(&local, data, "cairn get");
    }

    info!("--- kill -9 of the meta leader: the new leader serves the same bytes");
    let leader = c.wait_for_leader(Duration::from_secs(10));
    c.meta[(leader - 1) as usize].kill9();
    let took = wait_until("a new leader", Duration::from_secs(15), || {
        c.leader_id().is_some_and(|l| l != leader)
    });
    info!(?took, old = leader, "--- new leader elected");
    let after_kill = c.mount();
    check_all(
        &after_kill.join("small"),
        &files,
        "a mount made after the leader was killed",
    );
    check_all(
        &b.join("small"),
        &files,
        "mount B after the leader was killed",
    );
    check_all(
        &a.join("small"),
        &files,
        "mount A after the leader was killed",
    );
    let stored = all_chunks(&c);
    assert!(
        stored.is_empty(),
        "{} chunk file(s) appeared on the chunk servers though only inline files exist",
        stored.len()
    );

    info!("--- the 64 KiB file grows to 65 537 bytes (append on A): its data moves to chunks");
    let big = index_of(&files, INLINE_MAX);
    let big_on = |m: &Path| m.join("small").join(&files[big].0);
    let (big_a, big_b, big_k) = (big_on(&a), big_on(&b), big_on(&after_kill));
    let mut f = OpenOptions::new().append(true).open(&big_a).unwrap();
    f.write_all(b"+").unwrap();
    close(f, "the append past --inline-max");
    files[big].1.push(b'+');
    let stored: Vec<usize> = (1..=3).map(|n| c.chunk_files(n).len()).collect();
    info!(?stored, "chunk files per chunk server after the growth");
    assert!(
        stored.iter().any(|&k| k > 0),
        "a file of {} bytes (over --inline-max) has no chunk file on any chunk server",
        INLINE_MAX + 1
    );
    let grown = c.mount();
    check_bytes(
        &grown.join("small").join(&files[big].0),
        &files[big].1,
        "a fresh mount after the growth",
    );
    check_bytes(&big_b, &files[big].1, "mount B after the growth");

    info!("--- truncated to 100 bytes (set_len, close) on A: other mounts read the 100 bytes");
    let f = OpenOptions::new().write(true).open(&big_a).unwrap();
    f.set_len(100).unwrap();
    close(f, "the truncation to 100 bytes");
    files[big].1.truncate(100);
    check_bytes(&big_b, &files[big].1, "mount B after the truncation");
    check_bytes(&big_k, &files[big].1, "a third mount after the truncation");
    check_bytes(&big_a, &files[big].1, "mount A after the truncation");

    info!("--- on B: pwrite in the middle of an inline file, and past the end of another");
    let before = all_chunks(&c);
    let mid = index_of(&files, 5000);
    let patch = random_bytes(777, 7);
    let f = OpenOptions::new()
        .write(true)
        .open(b.join("small").join(&files[mid].0))
        .unwrap();
    f.write_all_at(&patch, 1000).unwrap();
    close(f, "the pwrite in the middle of an inline file");
    files[mid].1[1000..1000 + patch.len()].copy_from_slice(&patch);
    let tiny = index_of(&files, 3);
    let f = OpenOptions::new()
        .write(true)
        .open(b.join("small").join(&files[tiny].0))
        .unwrap();
    f.write_all_at(b"tail", 40_000).unwrap();
    close(f, "the pwrite past the end of an inline file");
    files[tiny].1.resize(40_000, 0);
    files[tiny].1.extend_from_slice(b"tail");
    let new: Vec<String> = all_chunks(&c).difference(&before).cloned().collect();
    assert!(
        new.is_empty(),
        "rewriting files that stay within --inline-max stored new chunk files: {new:?}"
    );
    let rewritten = c.mount();
    check_all(
        &rewritten.join("small"),
        &files,
        "a fresh mount after the pwrites",
    );
    check_all(&a.join("small"), &files, "mount A after the pwrites");

    info!("--- the killed meta node comes back; fsck: nothing missing, healthy once repair ran");
    c.meta[(leader - 1) as usize].start();
    let mut report = serde_json::Value::Null;
    let took = wait_until("fsck to report healthy", Duration::from_secs(90), || {
        let (code, out, err) = c.cairn(&["fsck", "--json"]);
        assert_ne!(
            code, 2,
            "fsck reports lost data or diverged metadata:\n{out}\n{err}"
        );
        if code != 0 {
            return false;
        }
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("fsck --json output {out:?}: {e}"));
        assert_eq!(v["missing"], 0, "fsck: {v}");
        let healthy = v["under_replicated"] == 0 && v["suspect"] == 0;
        report = v;
        healthy
    });
    info!(?took, %report, "--- fsck healthy");
    assert_eq!(report["files"], 20, "fsck counts every file: {report}");
    assert_eq!(report["meta_diverged"], false, "{report}");

    info!("--- unlink every file on A: the directory is empty on every mount");
    for (name, _) in &files {
        std::fs::remove_file(a.join("small").join(name)).unwrap();
    }
    let listed = |m: &Path| std::fs::read_dir(m.join("small")).unwrap().count();
    assert_eq!(listed(&a), 0, "mount A lists files it unlinked");
    for m in [&b, &after_kill, &grown, &rewritten] {
        wait_until(
            "another mount to list the directory empty",
            Duration::from_secs(5),
            || listed(m) == 0,
        );
    }
    std::fs::remove_dir(a.join("small")).unwrap();

    info!("--- a mount with --inline-max 0 stores a 4 KiB file in chunks");
    let no_inline = c.mount_with(&["--inline-max", "0"]);
    let before = all_chunks(&c);
    let data = random_bytes(4096, 4096);
    write_whole(&no_inline.join("not-inline"), &data);
    let new: Vec<String> = all_chunks(&c).difference(&before).cloned().collect();
    info!(?new, "new chunk files");
    assert!(
        !new.is_empty(),
        "a 4 KiB file written with --inline-max 0 has no chunk file on any chunk server"
    );
    check_bytes(&a.join("not-inline"), &data, "mount A (inline on)");
    check_bytes(
        &no_inline.join("not-inline"),
        &data,
        "the --inline-max 0 mount",
    );
}
