//! End to end, faults a user meets: a full disk (chunk servers whose data directories are small
//! tmpfs file systems that fill up), kill -9 of chunk servers and of the meta leader under a
//! copy and under 8 concurrent writers, and SIGTERM of everything. Real processes, a real FUSE
//! mount.
mod e2e_harness;

use e2e_harness::{init_tracing, wait_until, write_random_file, Cluster, Opts};
use std::io::Write;
use std::time::Duration;
use tracing::info;

/// Writes `data` to `path` through the mount and fsyncs it; returns the first error.
fn write_and_sync(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    for piece in data.chunks(1 << 20) {
        f.write_all(piece)?;
    }
    f.sync_all()
}

#[test]
fn t10_a_full_cluster_is_enospc_and_leaves_no_partial_file() {
    init_tracing();
    info!("--- a cluster whose three chunk servers have 80 MiB disks (64 MiB of it reserved)");
    let mut c = Cluster::start_meta(3);
    for n in 1..=3 {
        c.add_chunk_server_on_tmpfs(n, 80 << 20);
    }
    c.wait_for_chunk_servers(3, Duration::from_secs(30));
    let mnt = c.mount();

    info!("--- a small file fits");
    let small = c.path("small.src");
    write_random_file(&small, 1 << 20, 1);
    let small_data = std::fs::read(&small).unwrap();
    write_and_sync(&mnt.join("small"), &small_data).unwrap();

    info!("--- a 100 MiB file does not: the writer gets ENOSPC, not success and not EIO");
    let big = c.path("big.src");
    write_random_file(&big, 100 << 20, 2);
    let big_data = std::fs::read(&big).unwrap();
    let err = write_and_sync(&mnt.join("big"), &big_data)
        .expect_err("writing 100 MiB into a cluster with ~16 MiB free must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "expected ENOSPC, got {err}"
    );

    info!("--- nothing half-written is visible, and what was there reads back intact");
    let fresh = c.mount();
    let big_len = std::fs::metadata(fresh.join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        big_len, 0,
        "a partial version of the failed file is visible"
    );
    assert!(std::fs::read(fresh.join("small")).unwrap() == small_data);
    for n in 1..=3 {
        let tmp = c.chunk_data_dir(n).join("tmp");
        let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            left,
            0,
            "chunk server {n} left temp files in {}",
            tmp.display()
        );
    }
}

#[test]
fn t20_a_copy_survives_kill_9_of_a_chunk_server_and_the_meta_leader_midway() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let src = c.path("src");
    write_random_file(&src, 400 << 20, 9);

    info!("--- cp a 400 MiB file; kill -9 a chunk server and then the meta leader while it runs");
    let (s, d) = (src.clone(), mnt.join("copy"));
    let cp = std::thread::spawn(move || {
        std::process::Command::new("cp")
            .arg(&s)
            .arg(&d)
            .output()
            .expect("spawn cp")
    });
    std::thread::sleep(Duration::from_millis(700));
    c.chunks[1].kill9();
    std::thread::sleep(Duration::from_millis(700));
    let leader = c.wait_for_leader(Duration::from_secs(5));
    c.meta[(leader - 1) as usize].kill9();
    let out = cp.join().expect("cp thread");
    assert!(
        out.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    info!("--- the copy is byte-identical, also through a fresh mount");
    e2e_harness::sh(&format!("cmp {} {}/copy", src.display(), mnt.display()));
    let fresh = c.mount();
    e2e_harness::sh(&format!("cmp {} {}/copy", src.display(), fresh.display()));
}

#[test]
fn t30_sigterm_drains_dirty_data_and_every_process_exits_cleanly() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();

    info!("--- write 20 MiB without closing or fsyncing, then SIGTERM the mount");
    let src = c.path("src");
    write_random_file(&src, 20 << 20, 5);
    let data = std::fs::read(&src).unwrap();
    let mut f = std::fs::File::create(mnt.join("open-file")).unwrap();
    f.write_all(&data).unwrap();
    let st = c.mounts[0].proc.terminate(Duration::from_secs(60));
    assert!(st.success(), "cairn mount exited with {st} on SIGTERM");
    drop(f);

    info!("--- the dirty data was committed before the mount went away");
    let fresh = c.mount();
    let got = std::fs::read(fresh.join("open-file")).unwrap();
    assert!(got == data, "SIGTERM lost or changed buffered data");

    info!("--- chunk servers and meta nodes exit 0 on SIGTERM");
    let mount_st = c.mounts[1].proc.terminate(Duration::from_secs(30));
    assert!(mount_st.success());
    for p in c.chunks.iter_mut().chain(c.meta.iter_mut()) {
        let st = p.terminate(Duration::from_secs(30));
        assert!(st.success(), "{} exited with {st} on SIGTERM", p.name);
    }
}

#[test]
fn t40_a_tree_copy_survives_repeated_leader_kills_without_a_single_error() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    info!("--- a source tree of 40 directories x 20 small files");
    let src = c.path("tree");
    for d in 0..40 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..20 {
            std::fs::write(
                dir.join(format!("f{f:02}")),
                format!("{d}/{f}\n").repeat(d + f + 1),
            )
            .unwrap();
        }
    }

    info!("--- cp -a while the meta leader is killed (and restarted) three times");
    let (s, d) = (src.clone(), mnt.join("tree"));
    let cp = std::thread::spawn(move || {
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&s)
            .arg(&d)
            .output()
            .expect("spawn cp")
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        let leader = c.wait_for_leader(Duration::from_secs(10));
        let i = (leader - 1) as usize;
        c.meta[i].kill9();
        std::thread::sleep(Duration::from_millis(800));
        c.meta[i].start();
    }
    let out = cp.join().expect("cp thread");
    assert!(
        out.status.success(),
        "cp -a failed across leader changes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    e2e_harness::sh(&format!(
        "diff -r --no-dereference {} {}/tree",
        src.display(),
        mnt.display()
    ));
}

/// What a writer of [`t50_eight_writers_lose_nothing_they_were_told_was_created`] puts in a file:
/// its own name, so a file holding another's bytes (or a torn write) shows.
fn content_of(name: &str) -> Vec<u8> {
    format!("{name}\n")
        .repeat(4096 / (name.len() + 1) + 1)
        .into_bytes()
}

/// The failover case: 8 writers create files in groups of 10 in their own directories
/// (`O_EXCL`, 4 KiB each, closed) while the meta leader is killed with -9. No create fails (the
/// mount retries on the new leader under the same request id, so a create that was committed
/// before the kill is not applied twice: an `O_EXCL` create applied twice would fail with
/// `EEXIST`); afterwards every acknowledged file is there exactly once with its own bytes, and
/// no name exists that no writer was told about — nothing is half-there. fsck never reports a
/// loss, and reports the cluster healthy once repair has run.
#[test]
fn t50_eight_writers_lose_nothing_they_were_told_was_created() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    init_tracing();
    let mut c = Cluster::start_with(3, 3, Opts::new(&["--repair-interval", "1000ms"], &[]));
    let mnt = c.mount();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (dir, stop) = (mnt.join(format!("w{w}")), stop.clone());
            std::thread::spawn(move || {
                std::fs::create_dir(&dir).expect("writer directory");
                // (name, when its close returned), in order; the first error ends the writer.
                let mut acked: Vec<(String, Instant)> = Vec::new();
                for group in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    for i in 0..10 {
                        let name = format!("w{w}-g{group:03}-{i}");
                        let written = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(dir.join(&name))
                            .and_then(|mut f| f.write_all(&content_of(&name)));
                        if let Err(e) = written {
                            return (acked, Some(format!("{name}: {e}")));
                        }
                        acked.push((name, Instant::now()));
                    }
                }
                (acked, None)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    let leader = c.wait_for_leader(Duration::from_secs(10));
    info!(
        leader,
        "--- kill -9 of the meta leader while 8 writers create files"
    );
    let killed_at = Instant::now();
    c.meta[(leader - 1) as usize].kill9();
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for (w, t) in writers.into_iter().enumerate() {
        let (names, err) = t.join().expect("writer thread");
        assert!(
            err.is_none(),
            "writer {w} failed: {}",
            err.unwrap_or_default()
        );
        acked.push(names);
    }
    // How long creates stalled: the first acknowledged after the kill (logged, not asserted:
    // machines are noisy; the benchmark measures failover).
    let first_after = acked
        .iter()
        .flatten()
        .filter(|(_, at)| *at > killed_at)
        .map(|(_, at)| at.duration_since(killed_at))
        .min();
    info!(?first_after, "--- first create acknowledged after the kill");
    assert!(
        first_after.is_some(),
        "no create was acknowledged after the kill: the writers stalled"
    );

    info!("--- every acknowledged create is there once, whole; nothing else is");
    for (w, names) in acked.iter().enumerate() {
        let dir = mnt.join(format!("w{w}"));
        let listed: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let told: std::collections::BTreeSet<String> =
            names.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(told.len(), names.len());
        assert_eq!(
            listed, told,
            "writer {w}: listed names differ from acknowledged ones"
        );
        for n in &told {
            let got = std::fs::read(dir.join(n)).unwrap();
            assert!(
                got == content_of(n),
                "{n}: {} bytes, not its own",
                got.len()
            );
        }
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    info!(total, "--- files checked");

    info!("--- the killed node comes back; fsck: nothing lost, and healthy once repair ran");
    // Right after the election the new leader has not heard from every chunk server yet, so a
    // chunk written then may have been placed on fewer than 3 (documented; repair adds the
    // missing copies). Never lost, though.
    c.meta[(leader - 1) as usize].start();
    let took = wait_until("fsck to report healthy", Duration::from_secs(90), || {
        let (code, out, err) = c.cairn(&["fsck"]);
        assert!(code == 0 || code == 1, "fsck exit {code}: {out}\n{err}");
        assert!(!out.contains("DATA LOST"), "{out}");
        code == 0 && out.contains("status: healthy")
    });
    info!(?took, "--- healthy");
}

/// The content of file `i` of the chunk-server crash test: 3 to 7 MiB (one or two chunks),
/// unique to the file.
fn crash_content(i: u64) -> Vec<u8> {
    let len = (3 << 20) + (i as usize % 5) * (1 << 20) + i as usize * 4099 % 65536;
    e2e_harness::random_bytes(len, i + 1)
}

/// kill -9 of chunk servers, six times, while a writer writes and fsyncs files through the
/// mount, so that puts are cut off at every stage (mid-transfer, written but not synced,
/// synced but not renamed). Every file whose fsync succeeded reads back identical; a file
/// whose write failed is empty or whole, never partial; no restarted server keeps a temp file
/// of an interrupted put; once repair has run, fsck is healthy and every listed replica of
/// every chunk serves exactly the chunk's bytes.
#[test]
fn t60_chunk_servers_killed_mid_write_lose_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    init_tracing();
    let mut c = Cluster::start_with(
        3,
        3,
        Opts::new(
            &[
                "--heartbeat-timeout",
                "2000ms",
                "--repair-interval",
                "500ms",
            ],
            &[],
        ),
    );
    let mnt = c.mount_with(&["--inline-max", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (mnt.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match write_and_sync(&dir.join(format!("f{i:04}")), &crash_content(i)) {
                    Ok(()) => acked.push(i),
                    Err(e) => failed.push((i, e.to_string())),
                }
            }
            (acked, failed)
        })
    };

    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        let n = round % 3;
        info!(
            round,
            server = n + 1,
            "--- kill -9 of a chunk server under the writer"
        );
        c.chunks[n].kill9();
        std::thread::sleep(Duration::from_millis(300));
        c.chunks[n].start();
        c.wait_for_chunk_servers(3, Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.join().expect("writer thread");
    info!(
        acked = acked.len(),
        failed = failed.len(),
        "--- the writer stopped"
    );
    assert!(acked.len() >= 6, "the writer made progress: {acked:?}");

    info!("--- a fresh mount: every acknowledged file identical; failed ones empty or whole");
    let fresh = c.mount();
    for i in &acked {
        let got = std::fs::read(fresh.join(format!("f{i:04}"))).expect("read acked file");
        assert!(
            got == crash_content(*i),
            "f{i:04}: acknowledged but differs"
        );
    }
    for (i, why) in &failed {
        match std::fs::read(fresh.join(format!("f{i:04}"))) {
            Ok(got) => assert!(
                got.is_empty() || got == crash_content(*i),
                "f{i:04} (write failed: {why}) is partial: {} bytes",
                got.len()
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "f{i:04}: {e}"),
        }
    }

    // How many restarts found temp files of puts that were cut off (deleted at start-up):
    // logged, not asserted (whether a kill lands inside a put is up to timing).
    let leftovers: usize = (1..=3)
        .map(|n| {
            std::fs::read_to_string(c.path(&format!("chunk{n}.log")))
                .unwrap_or_default()
                .matches("deleted leftover temp files")
                .count()
        })
        .sum();
    info!(leftovers, "restarts that discarded interrupted puts");
    info!("--- no server keeps a temp file of an interrupted put");
    // Repair copies chunks onto the restarted servers meanwhile, each through a temp file that
    // lives for the copy: a leftover is a temp file that never goes away, so wait for the
    // copies in flight to land (repair of this test's few chunks takes seconds).
    for n in 1..=3 {
        let tmp = c.chunk_data_dir(n).join("tmp");
        let what = format!("server {n}: no file left in tmp/");
        wait_until(&what, Duration::from_secs(30), || {
            std::fs::read_dir(&tmp).expect("tmp dir").flatten().count() == 0
        });
    }

    info!("--- once repair has run: fsck healthy, every listed replica serves intact bytes");
    wait_until("fsck to report healthy", Duration::from_secs(90), || {
        let (code, out, err) = c.cairn(&["fsck"]);
        assert!(code == 0 || code == 1, "fsck exit {code}: {out}\n{err}");
        assert!(!out.contains("DATA LOST"), "{out}");
        code == 0 && out.contains("status: healthy")
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let meta = cairn_common::MetaClient::new(c.meta_addrs.clone());
    let mut replicas = 0;
    for i in &acked {
        rt.block_on(async {
            let slots = e2e_harness::root_file_slots(&meta, &format!("f{i:04}")).await;
            for slot in slots {
                let id = slot.chunk.expect("chunk").id;
                for loc in slot.locations {
                    let mut client =
                        cairn_proto::chunk_service_client::ChunkServiceClient::connect(format!(
                            "http://{}",
                            loc.addr
                        ))
                        .await
                        .expect("connect to a chunk server")
                        .max_decoding_message_size(16 << 20);
                    let data = client
                        .get_chunk(cairn_proto::GetChunkRequest {
                            id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "server {} lists a chunk it cannot serve: {e}",
                                loc.server_id
                            )
                        })
                        .into_inner()
                        .data;
                    assert_eq!(
                        cairn_common::ChunkId::of(&data).as_bytes()[..],
                        id[..],
                        "server {} serves wrong bytes",
                        loc.server_id
                    );
                    replicas += 1;
                }
            }
        });
    }
    info!(replicas, "--- every listed replica checked");
}
