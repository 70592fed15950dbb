//! End to end, the self-healing loop with real processes and a real FUSE mount: scrub finds rot,
//! repair restores lost replicas server to server, a returning server's surplus copies are
//! trimmed, a drained server is emptied, and `cairn fsck` tells the state of the data.
mod e2e_harness;

use e2e_harness::{init_tracing, sh, wait_until, write_random_file, Cluster, Opts};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::info;

/// Fast failure detection and repair, and no scrub until asked (so the test decides when).
fn opts() -> Opts {
    Opts::new(
        &[
            "--heartbeat-timeout",
            "2000ms",
            "--repair-interval",
            "300ms",
            "--repair-rate",
            "0",
        ],
        &[
            "--scrub-interval",
            "100000s",
            "--scrub-start-delay",
            "100000s",
        ],
    )
}

/// Flags of a mount that keeps no file inline in the metadata: every file it writes, however
/// small (`write_files` writes 1-byte ones), has its data in chunks on the chunk servers — what
/// scrub, repair, drain and fsck's chunk counts are about.
const NO_INLINE: &[&str] = &["--inline-max", "0"];

/// Writes `n` files of different sizes (1 byte to 9 MiB) into `dir` on the mount; returns the
/// (source, name) pairs. Mount with [`NO_INLINE`] when every file must have chunks.
fn write_files(c: &Cluster, mnt: &Path, n: usize) -> Vec<(PathBuf, String)> {
    let sizes = [9 << 20, 1, 5 << 20, 4 << 20, 300_000, 8 << 20];
    (0..n)
        .map(|i| {
            let name = format!("f{i}");
            let src = c.path(&format!("{name}.src"));
            write_random_file(&src, sizes[i % sizes.len()], 77 + i as u64);
            sh(&format!("cp {} {}/{name}", src.display(), mnt.display()));
            (src, name)
        })
        .collect()
}

fn cmp_all(files: &[(PathBuf, String)], mnt: &Path) {
    for (src, name) in files {
        sh(&format!("cmp {} {}/{name}", src.display(), mnt.display()));
    }
}

fn fsck(c: &Cluster) -> (i32, serde_json::Value) {
    let (code, out, err) = c.cairn(&["fsck", "--json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("fsck output {out:?} {err}: {e}"));
    (code, v)
}

/// Waits until fsck sees every chunk with its full replica count.
fn wait_healthy(c: &Cluster, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, v) = fsck(c);
        if code == 0 && v["chunks"].as_u64() > Some(0) && v["healthy"] == v["chunks"] {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not healthy within {timeout:?}: {v}\nstatus: {:?}",
            c.status()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Flips the last byte (chunk data, past the header) of chunk file `id` of server `n`.
fn rot(c: &Cluster, n: usize, id: &str) {
    let p = c.chunk_data_dir(n).join("chunks").join(&id[..2]).join(id);
    let mut b = std::fs::read(&p).expect("read chunk file");
    let last = b.len() - 1;
    b[last] ^= 0x5a;
    std::fs::write(&p, b).expect("write chunk file");
}

/// Rots every chunk file of server `n` (see [`rot`]).
fn rot_all(c: &Cluster, n: usize) -> BTreeSet<String> {
    let ids = c.chunk_files(n);
    for id in &ids {
        rot(c, n, id);
    }
    ids
}

fn quarantined(c: &Cluster, n: usize) -> usize {
    std::fs::read_dir(c.chunk_data_dir(n).join("quarantine"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn total_scrub_corruptions(c: &Cluster) -> u64 {
    c.status()
        .map(|s| {
            s["chunk_servers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| c["scrub"]["corruptions"].as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn t10_rot_is_scrubbed_quarantined_and_repaired_and_reads_stay_correct() {
    init_tracing();
    let mut c = Cluster::start_with(3, 3, opts());
    let mnt = c.mount_with(NO_INLINE);
    let files = write_files(&c, &mnt, 6);
    let before = wait_healthy(&c, Duration::from_secs(30));
    let chunks = before["chunks"].as_u64().unwrap();
    info!(chunks, "--- written; every chunk has 3 replicas");

    info!("--- rot every copy on chunk server 1; scrub finds and quarantines each one");
    let rotten1 = rot_all(&c, 1);
    assert_eq!(rotten1.len() as u64, chunks);
    let (code, out, err) = c.cairn(&["scrub", "--now"]);
    assert_eq!(code, 0, "scrub --now: {out} {err}");
    wait_until(
        "scrub to find every rotten copy",
        Duration::from_secs(60),
        || total_scrub_corruptions(&c) == chunks,
    );
    assert_eq!(
        quarantined(&c, 1),
        rotten1.len(),
        "corrupt copies are moved aside, not deleted"
    );

    info!("--- repair copies healthy replicas back; fsck is clean again");
    wait_healthy(&c, Duration::from_secs(60));
    let st = c.status().unwrap();
    assert!(
        st["repair"]["replicas_copied"].as_u64().unwrap() >= chunks,
        "{st}"
    );
    assert_eq!(
        c.chunk_files(1),
        rotten1,
        "server 1 holds fresh copies again"
    );

    info!(
        "--- rot every copy on server 2; reads through a fresh mount still return the right bytes"
    );
    let rotten2 = rot_all(&c, 2);
    let fresh = c.mount();
    cmp_all(&files, &fresh);
    let (code, out, err) = c.cairn(&["scrub", "--now"]);
    assert_eq!(code, 0, "scrub --now: {out} {err}");
    wait_until(
        "every rotten copy on server 2 to be quarantined",
        Duration::from_secs(60),
        || quarantined(&c, 2) == rotten2.len(),
    );
    wait_healthy(&c, Duration::from_secs(60));

    info!("--- only server 2 left: its repaired copies alone serve every byte");
    c.chunks[0].kill9();
    c.chunks[2].kill9();
    let last = c.mount();
    cmp_all(&files, &last);
    let (code, v) = fsck(&c);
    assert_eq!(code, 0, "under-replicated is not lost: {v}");
    assert_eq!(v["missing"], 0);
}

#[test]
fn t20_a_lost_server_is_replaced_and_a_returning_one_is_trimmed() {
    init_tracing();
    let mut c = Cluster::start_with(3, 4, opts());
    let mnt = c.mount_with(NO_INLINE);
    let files = write_files(&c, &mnt, 8);
    let chunks = wait_healthy(&c, Duration::from_secs(30))["chunks"]
        .as_u64()
        .unwrap();
    let all: BTreeSet<String> = (1..=4).flat_map(|n| c.chunk_files(n)).collect();
    assert_eq!(all.len() as u64, chunks);
    info!(chunks, "--- kill chunk server 4 for good");
    let t0 = Instant::now();
    c.chunks[3].kill9();
    wait_until(
        "the leader to declare the server down",
        Duration::from_secs(30),
        || c.chunk_servers_up() == 3,
    );

    wait_healthy(&c, Duration::from_secs(90));
    info!(elapsed = ?t0.elapsed(), "--- every chunk is back to 3 healthy replicas");
    for n in 1..=3 {
        assert_eq!(c.chunk_files(n), all, "server {n} holds every chunk");
    }
    let (code, out, _) = c.cairn(&["fsck"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("status: healthy"), "{out}");
    let fresh = c.mount();
    cmp_all(&files, &fresh);

    info!("--- server 4 comes back: its copies count again and the surplus is removed");
    let had = c.chunk_files(4).len();
    assert!(had > 0);
    c.chunks[3].start();
    wait_until(
        "every chunk to be on exactly 3 servers",
        Duration::from_secs(60),
        || {
            let on_disk: usize = (1..=4).map(|n| c.chunk_files(n).len()).sum();
            on_disk as u64 == 3 * chunks
        },
    );
    for id in &all {
        let holders = (1..=4).filter(|n| c.chunk_files(*n).contains(id)).count();
        assert_eq!(holders, 3, "chunk {id}");
    }
    let st = c.status().unwrap();
    assert!(
        st["repair"]["replicas_removed"].as_u64().unwrap() >= had as u64,
        "{st}"
    );
    wait_healthy(&c, Duration::from_secs(30));
    cmp_all(&files, &fresh);
}

#[test]
fn t30_drain_empties_a_server_and_fsck_reports_lost_data() {
    init_tracing();
    let mut c = Cluster::start_with(3, 4, opts());
    let mnt = c.mount_with(NO_INLINE);
    let files = write_files(&c, &mnt, 5);
    let chunks = wait_healthy(&c, Duration::from_secs(30))["chunks"]
        .as_u64()
        .unwrap();

    info!("--- drain the chunk server with the most replicas");
    let st = c.status().unwrap();
    let victim = st["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|s| s["listed_replicas"].as_u64().unwrap_or(0))
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let (code, out, err) = c.cairn(&["chunk", "drain", &victim.to_string(), "--wait", "90"]);
    assert_eq!(code, 0, "drain: {out} {err}");
    assert!(out.contains("drained"), "{out}");
    let empty: Vec<usize> = (1..=4).filter(|n| c.chunk_files(*n).is_empty()).collect();
    assert_eq!(empty.len(), 1, "exactly the drained server is empty");
    let all: BTreeSet<String> = (1..=4).flat_map(|n| c.chunk_files(n)).collect();
    assert_eq!(all.len() as u64, chunks);
    for n in (1..=4).filter(|n| *n != empty[0]) {
        assert_eq!(c.chunk_files(n), all, "server {n} holds every chunk");
    }
    let st = c.status().unwrap();
    let drained = st["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == victim)
        .unwrap()
        .clone();
    assert_eq!(drained["draining"], true, "{drained}");

    info!("--- the drained server can go: nothing is lost");
    c.chunks[empty[0] - 1].kill9();
    let fresh = c.mount();
    cmp_all(&files, &fresh);

    info!("--- lose every other copy: fsck reports lost data and exits 2");
    for n in (1..=4).filter(|n| *n != empty[0]) {
        c.chunks[n - 1].kill9();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, v) = fsck(&c);
        if code == 2 {
            assert_eq!(v["missing"].as_u64(), Some(chunks), "{v}");
            let affected = v["affected"].as_array().unwrap();
            assert_eq!(affected.len(), files.len(), "{v}");
            assert!(affected.iter().all(
                |f| f["problem"] == "missing" && f["path"].as_str().unwrap().starts_with("/f")
            ));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fsck never reported the loss: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, out, _) = c.cairn(&["fsck"]);
    assert_eq!(code, 2);
    assert!(out.contains("DATA LOST"), "{out}");
}

#[test]
fn t40_gc_deletes_overwritten_and_deleted_chunks_and_never_a_live_one() {
    init_tracing();
    let mut o = opts();
    o.meta_args.extend(
        ["--gc-grace", "1s", "--gc-interval", "300ms"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut c = Cluster::start_with(3, 3, o);
    let mnt = c.mount();
    let files_on = |c: &Cluster| c.chunk_files(1);

    info!("--- keep, del and over are written; each adds its own chunks");
    let put = |c: &Cluster, name: &str, len: u64, seed: u64| -> PathBuf {
        let src = c.path(&format!("{name}.{seed}.src"));
        write_random_file(&src, len, seed);
        sh(&format!("cp {} {}/{name}", src.display(), mnt.display()));
        src
    };
    let keep_src = put(&c, "keep", 9 << 20, 1);
    let k = files_on(&c);
    let del_src = put(&c, "del", 5 << 20, 2);
    let d: BTreeSet<String> = files_on(&c).difference(&k).cloned().collect();
    let before_over = files_on(&c);
    put(&c, "over", 6 << 20, 3);
    let old_over: BTreeSet<String> = files_on(&c).difference(&before_over).cloned().collect();
    assert!(!d.is_empty() && !old_over.is_empty());

    info!("--- delete del, overwrite over, and write del's content again as dup");
    std::fs::remove_file(mnt.join("del")).unwrap();
    let over_src = put(&c, "over", 6 << 20, 4);
    sh(&format!("cp {} {}/dup", del_src.display(), mnt.display()));

    info!("--- meanwhile a writer keeps creating and deleting files while GC runs");
    let churn_src = c.path("churn.src");
    write_random_file(&churn_src, 5 << 20, 5);
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        sh(&format!(
            "cp {} {}/churn",
            churn_src.display(),
            mnt.display()
        ));
        if n % 2 == 0 {
            std::fs::remove_file(mnt.join("churn")).unwrap();
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Leave it live at the end.
    sh(&format!(
        "cp {} {}/churn",
        churn_src.display(),
        mnt.display()
    ));

    info!("--- the old chunks of over disappear from every server; everything live stays");
    wait_until(
        "old chunks of over to be collected",
        Duration::from_secs(60),
        || (1..=3).all(|n| c.chunk_files(n).is_disjoint(&old_over)),
    );
    wait_until("the gc queue to drain", Duration::from_secs(60), || {
        c.status()
            .is_some_and(|s| s["repair"]["gc_pending"].as_u64() == Some(0))
    });
    let st = c.status().unwrap();
    assert!(
        st["repair"]["gc_collected"].as_u64().unwrap() >= old_over.len() as u64,
        "{st}"
    );
    for n in 1..=3 {
        let on = c.chunk_files(n);
        assert!(on.is_superset(&k), "server {n} lost a chunk of keep");
        assert!(
            on.is_superset(&d),
            "server {n} lost a chunk of dup (del's content)"
        );
    }
    let fresh = c.mount();
    for (src, name) in [
        (&keep_src, "keep"),
        (&del_src, "dup"),
        (&over_src, "over"),
        (&churn_src, "churn"),
    ] {
        sh(&format!("cmp {} {}/{name}", src.display(), fresh.display()));
    }
    let (code, v) = fsck(&c);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["healthy"], v["chunks"], "{v}");
    // Exactly the live chunks remain: 3 copies each, nothing else.
    let live = v["chunks"].as_u64().unwrap() as usize;
    for n in 1..=3 {
        assert_eq!(
            c.chunk_files(n).len(),
            live,
            "server {n} holds garbage or lacks chunks"
        );
    }
}

/// A copy cut off by kill -9 of the mount leaves stored chunks no file references: those
/// recorded in its upload session are kept while the session lives (so a rerun need not send
/// them again) and collected once it expires (`--upload-ttl`); any stored but never
/// recorded are found by the inventory scan. Either way nothing is left behind.
#[test]
fn t50_chunks_of_an_upload_that_never_committed_are_collected() {
    init_tracing();
    let mut o = opts();
    o.meta_args.extend(
        [
            "--gc-grace",
            "1s",
            "--gc-interval",
            "300ms",
            "--gc-orphan-scan",
            "1s",
            "--gc-orphan-age",
            "2s",
            "--upload-ttl",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut c = Cluster::start_with(3, 3, o);
    let mnt = c.mount();
    let keep_src = c.path("keep.src");
    write_random_file(&keep_src, 5 << 20, 11);
    sh(&format!("cp {} {}/keep", keep_src.display(), mnt.display()));
    let live = c.chunk_files(1);

    info!("--- a large copy is cut off by kill -9 of the mount after some chunks are stored");
    let big = c.path("big.src");
    write_random_file(&big, 300 << 20, 12);
    let (s, d) = (big.clone(), mnt.join("big"));
    let cp = std::thread::spawn(move || std::process::Command::new("cp").arg(&s).arg(&d).output());
    wait_until("uploaded chunks to appear", Duration::from_secs(60), || {
        c.chunk_files(1).len() >= live.len() + 8
    });
    c.mounts[0].proc.kill9();
    e2e_harness::lazy_unmount(&mnt);
    let _ = cp.join();
    let orphans = c.chunk_files(1).len() - live.len();
    assert!(orphans >= 8, "the killed upload left its chunks behind");
    info!(
        orphans,
        "--- uncommitted chunks on disk; GC must find and delete them"
    );

    wait_until(
        "the uncommitted chunks to be collected",
        Duration::from_secs(60),
        || (1..=3).all(|n| c.chunk_files(n) == live),
    );
    // The copies go from disk (step 3 of a GC round) before the round commits `GcSwept` and
    // counts them (step 4): wait for the count too.
    let counted = |c: &Cluster| {
        c.status()
            .and_then(|st| st["repair"]["gc_collected"].as_u64())
            .is_some_and(|n| n >= orphans as u64)
    };
    wait_until(
        "the collected chunks to be counted",
        Duration::from_secs(30),
        || counted(&c),
    );
    let st = c.status().unwrap();
    assert!(
        st["repair"]["gc_collected"].as_u64().unwrap() >= orphans as u64,
        "{st}"
    );
    let fresh = c.mount();
    sh(&format!(
        "cmp {} {}/keep",
        keep_src.display(),
        fresh.display()
    ));
    let big_len = std::fs::metadata(fresh.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        big_len, 0,
        "no partial version of the killed copy is visible"
    );
    let (code, v) = fsck(&c);
    assert_eq!((code, v["missing"].as_u64()), (0, Some(0)), "{v}");
}

/// Sends `ReportBadReplica` for every copy of every chunk in `ids` on every registered chunk
/// server, as a careless or malicious chunk server could; returns how many reports were taken.
fn report_every_copy(c: &Cluster, ids: &BTreeSet<String>) -> usize {
    let servers: Vec<u64> = c.status().expect("status")["chunk_servers"]
        .as_array()
        .expect("chunk servers")
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    let addrs = c.meta_list().split(',').map(str::to_owned).collect();
    let meta = cairn_fuse_client::meta::Meta::new(addrs);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut n = 0;
    for id in ids {
        let id = cairn_common::ChunkId::from_hex(id).expect("a chunk file is named by its id");
        for &server in &servers {
            rt.block_on(meta.report_bad_replica(server, id.as_bytes(), "test: a careless report"))
                .unwrap_or_else(|s| panic!("report {id} on {server}: {}", s.message()));
            n += 1;
        }
    }
    n
}

#[test]
fn t60_reports_alone_never_delist_intact_copies_and_a_really_bad_copy_is_replaced() {
    init_tracing();
    let mut c = Cluster::start_with(3, 3, opts());
    let mnt = c.mount();
    let files = write_files(&c, &mnt, 1);
    let v = wait_healthy(&c, Duration::from_secs(30));
    let ids = c.chunk_files(1);
    assert_eq!(v["chunks"].as_u64(), Some(ids.len() as u64));
    info!(
        chunks = ids.len(),
        "--- a 9 MiB file, every chunk on all 3 servers"
    );

    info!("--- one report per replica of every chunk");
    let reports = report_every_copy(&c, &ids);
    assert_eq!(reports, 3 * ids.len());

    info!("--- the file stays readable, byte-identical, on a fresh mount; fsck sees no loss");
    let fresh = c.mount();
    cmp_all(&files, &fresh);
    let (code, v) = fsck(&c);
    assert_ne!(code, 2, "reports alone are not lost data: {v}");
    assert_eq!(v["missing"], 0, "{v}");

    info!("--- repair has each server verify its copy: every copy is listed and trusted again");
    wait_healthy(&c, Duration::from_secs(60));
    let st = c.status().expect("status");
    assert_eq!(
        st["repair"]["replicas_copied"], 0,
        "nothing was re-copied: {st}"
    );
    for n in 1..=3 {
        assert_eq!(c.chunk_files(n), ids, "server {n} kept its copies");
        assert_eq!(
            quarantined(&c, n),
            0,
            "server {n} quarantined an intact copy"
        );
    }
    cmp_all(&files, &fresh);

    info!("--- a copy that really is corrupt is still dropped and replaced from a good one");
    let victim = ids.iter().next().expect("a chunk").clone();
    rot(&c, 1, &victim);
    report_every_copy(&c, &BTreeSet::from([victim.clone()]));
    wait_until(
        "server 1 to find its copy corrupt on verification",
        Duration::from_secs(60),
        || quarantined(&c, 1) == 1,
    );
    wait_healthy(&c, Duration::from_secs(60));
    let st = c.status().expect("status");
    assert_eq!(st["repair"]["replicas_copied"], 1, "{st}");
    assert!(
        c.chunk_files(1).contains(&victim),
        "server 1 holds a fresh copy"
    );
    let last = c.mount();
    cmp_all(&files, &last);
}
