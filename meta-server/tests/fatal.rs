//! A storage failure on one meta node stops that node, never lets replicas diverge, and the
//! others keep serving. Real `cairn-meta` processes on 127.0.0.1:
//!
//! - a stored value that no longer decodes, met while applying an entry: the node exits with
//!   an error instead of skipping the entry (before, it refused the command on its own and went
//!   on with a state different from its peers');
//! - an injected storage failure (the `--test-fail-apply-at` hook): the node exits non-zero with
//!   a clear message, the other two go on, and after a restart it replays its log to exactly the
//!   state (digest) of the others, which `cairn fsck`'s comparison confirms;
//! - a full disk under one node's data directory (a small tmpfs): that node exits with an
//!   error, the other two go on.
use cairn_common::MetaClient;
use cairn_proto as pb;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    id: u64,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    _tmp: TempDir,
    nodes: Vec<Node>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

impl Cluster {
    /// Three meta nodes; `dir_of(id)` may put a node's data directory elsewhere (a tmpfs).
    fn start(dir_of: impl Fn(u64, &Path) -> PathBuf) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let nodes = (1..=3)
            .map(|id| Node {
                id,
                port: free_port(),
                dir: dir_of(id, tmp.path()),
                log: tmp.path().join(format!("meta{id}.log")),
                child: None,
            })
            .collect();
        let mut c = Cluster { _tmp: tmp, nodes };
        for id in 1..=3 {
            c.spawn(id, &[]);
        }
        c
    }

    fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}=127.0.0.1:{}", n.id, n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn spawn(&mut self, id: u64, extra: &[String]) {
        let peers = self.peers();
        let n = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("open node log");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-meta"))
            .args(["--id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", n.port)])
            .args(["--peers", &peers])
            .arg("--data-dir")
            .arg(&n.dir)
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(log.try_clone().expect("clone node log"))
            .stderr(log)
            .spawn()
            .expect("start cairn-meta");
        n.child = Some(child);
    }

    /// Waits for node `id`'s process to exit by itself; its exit status.
    fn wait_exit(&mut self, id: u64) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        let child = self.node(id).child.as_mut().expect("node is running");
        loop {
            if let Some(st) = child.try_wait().expect("wait for cairn-meta") {
                self.node(id).child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "meta node {id} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_running(&mut self, id: u64) -> bool {
        match self.node(id).child.as_mut() {
            Some(c) => c.try_wait().expect("poll cairn-meta").is_none(),
            None => false,
        }
    }

    fn log_of(&mut self, id: u64) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.node(id).log)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read node log");
        s
    }

    /// Stops node `id` with SIGTERM and waits for it.
    fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A node's NodeStatus, asked directly (no leader following).
async fn status(meta: &MetaClient, addr: &str, digest_at: u64) -> Option<pb::NodeStatusReply> {
    let mut c = meta.node(addr).ok()?;
    c.node_status(pb::NodeStatusRequest { digest_at })
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn mkdir(meta: &MetaClient, parent: u64, name: &str) -> Result<pb::Attr, tonic::Status> {
    let name = name.as_bytes().to_vec();
    let r = meta
        .call(|mut c| {
            let name = name.clone();
            async move {
                c.create(pb::CreateRequest {
                    parent,
                    name,
                    kind: pb::FileKind::Directory as i32,
                    mode: 0o755,
                    exclusive: true,
                    ..Default::default()
                })
                .await
            }
        })
        .await?;
    r.attr
        .ok_or_else(|| tonic::Status::internal("create answered no attributes"))
}

async fn fsck(meta: &MetaClient) -> pb::FsckReply {
    meta.call(|mut c| async move { c.fsck(pb::FsckRequest { max_files: 10 }).await })
        .await
        .expect("fsck")
}

/// Waits until `meta` has a leader that commits writes (a directory create).
async fn wait_writable(meta: &MetaClient, name: &str) -> pb::Attr {
    let deadline = Instant::now() + WAIT;
    loop {
        match mkdir(meta, 1, name).await {
            Ok(a) => return a,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e.message(), "cluster not writable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cluster never became writable: {}", e.message()),
        }
    }
}

/// The highest index every node in `addrs` has applied, once each has applied at least
/// `at_least`.
async fn common_index(meta: &MetaClient, addrs: &[String], at_least: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut min = u64::MAX;
        for a in addrs {
            let applied = status(meta, a, 0)
                .await
                .and_then(|s| s.node)
                .map_or(0, |n| n.last_applied);
            min = min.min(applied);
        }
        if min >= at_least && min != u64::MAX {
            return min;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not catch up to {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node's digest at `index`, which must all be known and equal.
async fn assert_same_digest(meta: &MetaClient, addrs: &[String], index: u64) -> Vec<u8> {
    let mut digests = Vec::new();
    for a in addrs {
        let d = status(meta, a, index)
            .await
            .map(|s| s.digest_at)
            .unwrap_or_default();
        assert!(
            !d.is_empty(),
            "node {a} does not know its digest at {index}"
        );
        digests.push(d);
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "digests differ at index {index}: {digests:?}"
    );
    digests.remove(0)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_storage_failure_stops_the_node_and_a_restart_replays_to_the_same_state() {
    init_tracing();
    let mut c = Cluster::start(|id, tmp| tmp.join(format!("meta{id}")));
    let meta = MetaClient::new(c.addrs());
    wait_writable(&meta, "warm-up").await;
    let addrs = c.addrs();
    let applied = common_index(&meta, &addrs, 1).await;

    tracing::info!("--- node 3 will fail to apply the entry 5 after this point");
    c.stop(3);
    let fail_at = applied + 5;
    c.spawn(3, &["--test-fail-apply-at".into(), fail_at.to_string()]);
    for i in 0..10 {
        wait_writable(&meta, &format!("d{i}")).await;
    }
    let st = c.wait_exit(3);
    assert!(
        !st.success(),
        "the failing node must exit with an error, got {st}"
    );
    let log = c.log_of(3);
    assert!(
        log.contains("storage failed") && log.contains("injected storage failure"),
        "the node says why it stopped:\n{log}"
    );

    tracing::info!("--- the other two go on");
    for i in 10..15 {
        wait_writable(&meta, &format!("d{i}")).await;
    }
    assert!(c.is_running(1) && c.is_running(2));

    tracing::info!("--- restarted without the hook, it replays to the same state");
    c.spawn(3, &[]);
    let last = status(&meta, &addrs[0], 0)
        .await
        .and_then(|s| s.node)
        .map_or(0, |n| n.last_applied);
    let index = common_index(&meta, &addrs, last).await;
    assert!(
        index >= fail_at,
        "node 3 applied past the entry it failed on"
    );
    assert_same_digest(&meta, &addrs, index).await;
    let report = fsck(&meta).await;
    assert_eq!(report.meta_digests.len(), 3, "{report:?}");
    assert!(!report.meta_diverged, "{report:?}");
    assert!(report.meta_digests.iter().all(|d| !d.digest.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_stored_value_met_while_applying_stops_the_node() {
    init_tracing();
    let mut c = Cluster::start(|id, tmp| tmp.join(format!("meta{id}")));
    let meta = MetaClient::new(c.addrs());
    let d = wait_writable(&meta, "d").await;
    let addrs = c.addrs();
    let applied = common_index(&meta, &addrs, 1).await;
    assert_same_digest(&meta, &addrs, applied).await;

    tracing::info!("--- the directory's record on node 3 rots while node 3 is down");
    c.stop(3);
    {
        let db = cairn_meta_server::store::open_db(&c.node(3).dir.join("db")).expect("open db");
        let cf = db.cf_handle("inodes").expect("inodes column family");
        db.put_cf(cf, d.ino.to_be_bytes(), b"{not an inode")
            .expect("write garbage");
        db.flush_wal(true).expect("sync");
    }
    c.spawn(3, &[]);
    common_index(&meta, &addrs, applied).await;

    tracing::info!("--- a create in that directory: node 3 cannot decode it and stops");
    let made = wait_writable(&meta, "elsewhere").await;
    assert!(made.ino > d.ino);
    let name = b"f".to_vec();
    meta.call(|mut cl| {
        let name = name.clone();
        async move {
            cl.create(pb::CreateRequest {
                parent: d.ino,
                name,
                kind: pb::FileKind::Regular as i32,
                mode: 0o644,
                exclusive: true,
                ..Default::default()
            })
            .await
        }
    })
    .await
    .expect("the healthy majority commits the create");
    let st = c.wait_exit(3);
    assert!(!st.success(), "got {st}");
    let log = c.log_of(3);
    assert!(log.contains("metadata state"), "{log}");
    assert!(c.is_running(1) && c.is_running(2));
    wait_writable(&meta, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_that_node_and_the_others_go_on() {
    init_tracing();
    let small = tempfile::tempdir().expect("temp dir");
    let fs = Tmpfs::mount(small.path(), 48 << 20);
    let mut c = Cluster::start(|id, tmp| {
        if id == 3 {
            fs.path.join("meta3")
        } else {
            tmp.join(format!("meta{id}"))
        }
    });
    let meta = MetaClient::new(c.addrs());
    let d = wait_writable(&meta, "d").await;

    tracing::info!("--- fill node 3's disk but for a few hundred KiB");
    fs.fill_leaving(256 << 10);
    let value = vec![b'x'; 60 << 10];
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    while c.is_running(3) {
        let name = format!("user.x{n}").into_bytes();
        let v = value.clone();
        let r = meta
            .call(|mut cl| {
                let (name, v) = (name.clone(), v.clone());
                async move {
                    cl.set_xattr(pb::SetXattrRequest {
                        ino: d.ino,
                        name,
                        value: v,
                        flags: 0,
                    })
                    .await
                }
            })
            .await;
        if let Err(e) = r {
            panic!("the healthy majority must keep committing: {}", e.message());
        }
        n += 1;
        assert!(Instant::now() < deadline, "node 3 never hit its full disk");
    }
    let st = c.wait_exit(3);
    assert!(!st.success(), "got {st}");
    let log = c.log_of(3);
    assert!(
        log.contains("No space left") || log.contains("storage failed"),
        "{log}"
    );
    tracing::info!(writes = n, "node 3 stopped on its full disk");
    wait_writable(&meta, "after").await;
    drop(c);
}

/// A small tmpfs mounted for one test (the meta node's disk), unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount a tmpfs at {} (needs root)",
            at.display()
        );
        Tmpfs {
            path: at.to_path_buf(),
        }
    }

    /// Writes a filler file until only about `left` bytes are free.
    fn fill_leaving(&self, left: u64) {
        let st = nix::sys::statvfs::statvfs(&self.path).expect("statvfs");
        let free = st.blocks_available() * st.fragment_size();
        let fill = free.saturating_sub(left);
        let f = std::fs::File::create(self.path.join("filler")).expect("create filler");
        let chunk = vec![0u8; 1 << 20];
        let mut w = std::io::BufWriter::new(f);
        let mut written = 0;
        while written < fill {
            let n = (fill - written).min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n]).expect("write filler");
            written += n as u64;
        }
        std::io::Write::flush(&mut w).expect("flush filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
