//! End to end: real `cairn-meta` ×3, `cairn-chunk` ×3 and a real FUSE mount.
//!
//! These are the scenarios a user cares about: copy a real directory tree and a large file in
//! with `cp -a`, get the same bytes back, find every chunk on three servers, lose the meta leader
//! and a chunk server and keep working, and never lose an fsync'd file when the client dies.
mod e2e_harness;

use e2e_harness::{init_tracing, sh, write_random_file, Cluster};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use tracing::info;

const GIB: u64 = 1024 * 1024 * 1024;

#[test]
fn t10_copy_tree_and_large_file_then_survive_leader_and_chunk_server_loss() {
    init_tracing();
    info!("--- start a 3-meta + 3-chunk cluster and mount it");
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();

    info!("--- cp -a a real tree with thousands of files; diff -r is clean");
    let files: usize = sh("find /usr/include -type f | wc -l")
        .trim()
        .parse()
        .unwrap();
    assert!(files > 1000, "/usr/include has only {files} files");
    let t = Instant::now();
    sh(&format!("cp -a /usr/include {}/", mnt.display()));
    info!(
        files,
        secs = t.elapsed().as_secs_f64(),
        "copied /usr/include"
    );
    sh(&format!(
        "diff -r --no-dereference /usr/include {}/include",
        mnt.display()
    ));

    info!("--- a 1 GiB file: cp in, byte-identical back");
    let src = c.path("big.src");
    write_random_file(&src, GIB, 42);
    let t = Instant::now();
    sh(&format!("cp {} {}/big", src.display(), mnt.display()));
    let secs = t.elapsed().as_secs_f64();
    info!(
        secs,
        mib_per_s = 1024.0 / secs,
        "wrote 1 GiB through the mount"
    );
    let t = Instant::now();
    sh(&format!("cmp {} {}/big", src.display(), mnt.display()));
    info!(
        secs = t.elapsed().as_secs_f64(),
        "read back 1 GiB and compared"
    );
    assert_eq!(std::fs::metadata(mnt.join("big")).unwrap().len(), GIB);

    info!("--- every chunk is stored on all 3 chunk servers");
    let sets: Vec<_> = (1..=3).map(|n| c.chunk_files(n)).collect();
    assert!(
        sets[0].len() >= (GIB / (4 << 20)) as usize,
        "only {} chunks stored",
        sets[0].len()
    );
    assert_eq!(sets[0], sets[1], "chunk servers 1 and 2 differ");
    assert_eq!(sets[0], sets[2], "chunk servers 1 and 3 differ");

    info!("--- kill -9 the meta leader and one chunk server");
    let leader = c.wait_for_leader(Duration::from_secs(5));
    c.meta[(leader - 1) as usize].kill9();
    c.chunks[0].kill9();
    let killed_at = Instant::now();

    info!("--- the mount keeps working: a new write and a read succeed within 5 s");
    let probe = mnt.join("after-failover.txt");
    let mut ok = false;
    while killed_at.elapsed() < Duration::from_secs(30) {
        let r = (|| -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(b"written after failover\n")?;
            f.sync_all()?;
            drop(f);
            std::fs::read(&probe)
        })();
        if let Ok(data) = r {
            assert_eq!(data, b"written after failover\n");
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = killed_at.elapsed();
    info!(secs = recovered.as_secs_f64(), "mount usable again");
    assert!(ok, "the mount did not recover within 30 s");
    assert!(
        recovered < Duration::from_secs(5),
        "recovery took {recovered:?} (want < 5 s)"
    );
    let new_leader = c.wait_for_leader(Duration::from_secs(5));
    assert_ne!(new_leader, leader);

    info!("--- everything written before the failure is still intact");
    sh(&format!(
        "diff -r --no-dereference /usr/include {}/include",
        mnt.display()
    ));
    sh(&format!("cmp {} {}/big", src.display(), mnt.display()));

    info!("--- a larger write after the failure (two replicas left) also succeeds");
    let src2 = c.path("mid.src");
    write_random_file(&src2, 50 << 20, 7);
    sh(&format!("cp {} {}/mid", src2.display(), mnt.display()));
    sh(&format!("cmp {} {}/mid", src2.display(), mnt.display()));

    info!("--- the killed nodes come back and the cluster is whole again");
    c.meta[(leader - 1) as usize].start();
    c.chunks[0].start();
    c.wait_for_chunk_servers(3, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.status().expect("status");
        let roles: Vec<String> = st["meta"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap_or("").to_owned())
            .collect();
        if roles.iter().filter(|r| *r == "leader").count() == 1
            && roles.iter().all(|r| r == "leader" || r == "follower")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meta nodes not all back: {roles:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    info!("--- SIGTERM unmounts cleanly");
    let st = c.mounts[0].proc.terminate(Duration::from_secs(30));
    assert!(st.success(), "cairn mount exited with {st}");
    assert!(!e2e_harness::is_mounted(&mnt));
}

#[test]
fn t20_posix_errors_and_atomic_rename_through_the_mount() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());

    info!("--- mkdir, and mkdir of an existing name is EEXIST");
    std::fs::create_dir(mnt.join("d")).unwrap();
    assert_eq!(
        errno(std::fs::create_dir(mnt.join("d"))),
        Some(libc::EEXIST)
    );

    info!("--- rmdir of a non-empty directory is ENOTEMPTY; of a file ENOTDIR");
    std::fs::write(mnt.join("d/f"), b"x").unwrap();
    assert_eq!(
        errno(std::fs::remove_dir(mnt.join("d"))),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        errno(std::fs::remove_dir(mnt.join("d/f"))),
        Some(libc::ENOTDIR)
    );

    info!("--- missing files are ENOENT; names over 255 bytes are ENAMETOOLONG");
    assert_eq!(
        errno(std::fs::metadata(mnt.join("nope")).map(|_| ())),
        Some(libc::ENOENT)
    );
    let long = "n".repeat(256);
    assert_eq!(
        errno(std::fs::write(mnt.join(&long), b"x")),
        Some(libc::ENAMETOOLONG)
    );
    std::fs::write(mnt.join("n".repeat(255)), b"ok").unwrap();

    info!("--- rename replaces the target atomically: a reader sees old or new, never a mix");
    std::fs::write(mnt.join("target"), vec![b'o'; 3 << 20]).unwrap();
    std::fs::write(mnt.join("tmp"), vec![b'n'; 5 << 20]).unwrap();
    std::fs::rename(mnt.join("tmp"), mnt.join("target")).unwrap();
    let data = std::fs::read(mnt.join("target")).unwrap();
    assert_eq!(data.len(), 5 << 20);
    assert!(data.iter().all(|&b| b == b'n'));
    assert!(!mnt.join("tmp").exists());

    info!("--- symlinks, chmod, truncate, unlink");
    std::os::unix::fs::symlink("d/f", mnt.join("link")).unwrap();
    assert_eq!(
        std::fs::read_link(mnt.join("link")).unwrap().to_str(),
        Some("d/f")
    );
    assert_eq!(std::fs::read(mnt.join("link")).unwrap(), b"x");
    std::fs::set_permissions(mnt.join("d/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        std::fs::metadata(mnt.join("d/f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("target"))
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    assert_eq!(std::fs::read(mnt.join("target")).unwrap(), vec![b'n'; 10]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("target"))
        .unwrap()
        .set_len(20)
        .unwrap();
    let mut want = vec![b'n'; 10];
    want.extend_from_slice(&[0u8; 10]);
    assert_eq!(std::fs::read(mnt.join("target")).unwrap(), want);
    std::fs::remove_file(mnt.join("target")).unwrap();
    assert!(!mnt.join("target").exists());

    info!("--- random writes inside an existing file keep the surrounding bytes");
    let mut expect = vec![0u8; (9 << 20) + 123];
    for (i, b) in expect.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(mnt.join("rw"), &expect).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("rw"))
            .unwrap();
        for off in [0u64, 4 << 20, (4 << 20) - 3, (9 << 20) + 100] {
            f.write_all_at(b"HELLO", off).unwrap();
            expect[off as usize..off as usize + 5].copy_from_slice(b"HELLO");
        }
    }
    let mut got = Vec::new();
    std::fs::File::open(mnt.join("rw"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert!(got == expect, "random writes corrupted the file");

    info!("--- readdir lists everything");
    for i in 0..1500 {
        std::fs::write(mnt.join(format!("d/e{i:05}")), b"").unwrap();
    }
    let n = std::fs::read_dir(mnt.join("d")).unwrap().count();
    assert_eq!(n, 1501);
}

#[test]
fn t30_fsynced_data_survives_kill_of_the_client() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();

    info!("--- write and fsync, then kill -9 the mount");
    let src = c.path("f.src");
    write_random_file(&src, 9 << 20, 3);
    let data = std::fs::read(&src).unwrap();
    let mut f = std::fs::File::create(mnt.join("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    c.mounts[0].proc.kill9();
    drop(f);

    info!("--- a new mount sees every fsync'd byte");
    c.remount(0);
    let got = std::fs::read(mnt.join("f")).unwrap();
    assert!(
        got == data,
        "fsync'd data lost or changed after client kill"
    );

    info!("--- a second mount of the same cluster sees a file closed on the first");
    let mnt2 = c.mount();
    std::fs::write(mnt.join("shared"), b"from mount 1").unwrap();
    assert_eq!(std::fs::read(mnt2.join("shared")).unwrap(), b"from mount 1");
}

#[test]
fn t40_readers_on_another_mount_see_whole_versions_never_a_mix() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let writer_mnt = c.mount();
    let reader_mnt = c.mount();
    const LEN: usize = 10 << 20; // three slots: the last one partly filled
    std::fs::write(writer_mnt.join("f"), vec![b'A'; LEN]).unwrap();

    info!("--- one mount overwrites the file in place with all-A / all-B versions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = {
        let (stop, path) = (stop.clone(), writer_mnt.join("f"));
        std::thread::spawn(move || {
            let mut versions = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let byte = if versions % 2 == 0 { b'B' } else { b'A' };
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all(&vec![byte; LEN]).unwrap();
                f.sync_all().unwrap();
                versions += 1;
            }
            versions
        })
    };

    info!("--- the other mount reads it over and over: every read is one whole version");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut reads = 0;
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        let data = std::fs::read(reader_mnt.join("f")).unwrap();
        assert_eq!(data.len(), LEN);
        let first = data[0];
        assert!(
            data.iter().all(|&b| b == first),
            "read {reads} mixes versions: first byte {first}, a different byte at {}",
            data.iter().position(|&b| b != first).unwrap_or(0)
        );
        seen.insert(first);
        reads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let versions = w.join().unwrap();
    info!(reads, versions, "done");
    assert!(
        versions >= 2,
        "the writer committed only {versions} versions"
    );
    assert_eq!(
        seen.len(),
        2,
        "the reader never saw the file change: {seen:?}"
    );
}

#[test]
fn t50_a_forked_child_closing_its_copy_does_not_publish_half_written_data() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let writer_mnt = c.mount();
    let reader_mnt = c.mount();
    const LEN: usize = 6 << 20;
    std::fs::write(writer_mnt.join("f"), vec![b'A'; LEN]).unwrap();

    info!("--- overwrite the first third, then fork+exec a child while the file is open");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(writer_mnt.join("f"))
        .unwrap();
    f.write_all(&vec![b'B'; 2 << 20]).unwrap();
    // The child inherits the descriptor and closes it at exec (O_CLOEXEC): the kernel sends
    // FLUSH for that close, which must not publish the writer's half-written data.
    let st = std::process::Command::new("true").status().unwrap();
    assert!(st.success());
    let seen = std::fs::read(reader_mnt.join("f")).unwrap();
    assert_eq!(seen.len(), LEN);
    assert!(
        seen.iter().all(|&b| b == b'A'),
        "another mount sees a half-written version ({} bytes of B)",
        seen.iter().filter(|&&b| b == b'B').count()
    );

    info!("--- the writer's own close publishes the whole new version");
    f.write_all(&vec![b'B'; LEN - (2 << 20)]).unwrap();
    drop(f);
    let seen = std::fs::read(reader_mnt.join("f")).unwrap();
    assert_eq!(seen.len(), LEN);
    assert!(
        seen.iter().all(|&b| b == b'B'),
        "the closed version is not whole"
    );
}

/// The meta leader goes silent without closing its connections (SIGSTOP: as a network that drops
/// its packets, or a host that froze). The mount must leave it behind as fast as it would a
/// killed leader: its connection is probed (HTTP/2 PING), closed when the probe goes
/// unanswered, and the call moves to a node that names the new leader. A writer creating files
/// through the mount keeps going while the old leader is still stopped, nothing it was told is
/// written is lost, and the old leader rejoins as a follower when it wakes.
#[test]
fn t60_a_silent_leader_is_left_behind_and_writers_go_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    std::fs::create_dir(mnt.join("w")).unwrap();

    info!("--- a writer creates small files in a loop");
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let writer = {
        let (stop, done, dir) = (stop.clone(), done.clone(), mnt.join("w"));
        std::thread::spawn(move || {
            let mut errors = vec![];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match std::fs::write(dir.join(format!("f{i}")), format!("file {i}")) {
                    Ok(()) => done.lock().unwrap().push((Instant::now(), i)),
                    Err(e) => errors.push(format!("f{i}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    info!("--- SIGSTOP the meta leader for 20 s");
    let leader = c.wait_for_leader(Duration::from_secs(5));
    let pid = c.meta[(leader - 1) as usize].pid().expect("leader running") as i32;
    /// Wakes the stopped leader however the test ends (a stopped process ignores SIGTERM).
    struct Wake(i32);
    impl Drop for Wake {
        fn drop(&mut self) {
            unsafe {
                libc::kill(self.0, libc::SIGCONT);
            }
        }
    }
    let wake = Wake(pid);
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let woke_at = Instant::now();
    drop(wake);

    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let errors = writer.join().unwrap();
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    let done = done.lock().unwrap().clone();
    let while_stopped: Vec<&(Instant, u64)> = done
        .iter()
        .filter(|(t, _)| *t > stopped_at && *t < woke_at)
        .collect();
    let first = while_stopped
        .first()
        .map(|(t, _)| t.duration_since(stopped_at));
    info!(
        creates_while_stopped = while_stopped.len(),
        first_after = ?first,
        "the writer while the leader was silent"
    );
    // The mount's per-attempt timeout is 10 s: moving on sooner shows the probe, not the
    // timeout, left the silent leader behind.
    assert!(
        first.is_some_and(|d| d < Duration::from_secs(10)),
        "no create completed within 10 s of the leader going silent (first after {first:?})"
    );

    info!("--- every acknowledged file is there, and the old leader rejoins as a follower");
    for (_, i) in &done {
        let got = std::fs::read_to_string(mnt.join("w").join(format!("f{i}")))
            .unwrap_or_else(|e| panic!("f{i} acknowledged, then lost: {e}"));
        assert_eq!(got, format!("file {i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.status().expect("status");
        let role = st["meta"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"].as_u64() == Some(leader))
            .and_then(|m| m["role"].as_str().map(str::to_owned));
        let leaders = st["meta"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "leader")
            .count();
        if leaders == 1 && matches!(role.as_deref(), Some("follower" | "leader")) {
            break;
        }
        assert!(Instant::now() < deadline, "old leader not back: {role:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
