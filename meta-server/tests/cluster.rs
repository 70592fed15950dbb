//! An in-process 3-node metadata cluster on 127.0.0.1:0: election, leader failover, restart
//! catch-up, catch-up by snapshot after the log was purged, oversized requests refused before
//! they reach the log, catch-up through more entries than one AppendEntries may carry, and
//! concurrent writers sharing log entries (group commit) with a result each, and reads under
//! the leader's lease (no round per read; none once the quorum is gone).
//!
//! Writes are real commands (`RegisterChunkServer`, idempotent per uuid): registering a uuid
//! again returns the id it got the first time, which proves the state survived. At the end of a
//! scenario every node's replicated state (the `STATE_CFS` column families) is compared byte for
//! byte.
use cairn_common::error::ErrorKind;
use cairn_meta_server::command::{self as cmd, Command, Reply};
use cairn_meta_server::config::{Config, Peer};
use cairn_meta_server::error::MetaError;
use cairn_meta_server::fsm::STATE_CFS;
use cairn_meta_server::{start_with_listener, RunningNode};
use cairn_proto as pb;
use cairn_proto::meta_service_client::MetaServiceClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Each node's replicated state: (column family, key, value) rows.
type StateDumps = BTreeMap<u64, Vec<(String, Vec<u8>, Vec<u8>)>>;

const WAIT: Duration = Duration::from_secs(15);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_test_writer()
        .try_init();
}

struct Cluster {
    dirs: BTreeMap<u64, TempDir>,
    addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, RunningNode>,
    snapshot_logs: u64,
}

impl Cluster {
    async fn start(n: u64, snapshot_logs: u64) -> Cluster {
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(id, l.local_addr().unwrap());
            listeners.insert(id, l);
        }
        let mut c = Cluster {
            dirs: (1..=n)
                .map(|id| (id, tempfile::tempdir().unwrap()))
                .collect(),
            addrs,
            nodes: BTreeMap::new(),
            snapshot_logs,
        };
        for (id, l) in listeners {
            let node = start_with_listener(c.config(id), l).await.unwrap();
            c.nodes.insert(id, node);
        }
        c
    }

    fn config(&self, id: u64) -> Config {
        let mut cfg = Config::new(id, self.addrs[&id].to_string(), self.dirs[&id].path());
        cfg.peers = self
            .addrs
            .iter()
            .map(|(id, a)| Peer {
                id: *id,
                addr: a.to_string(),
            })
            .collect();
        cfg.snapshot_logs = self.snapshot_logs;
        cfg.drain_timeout = Duration::from_secs(2);
        // No periodic GC entries: the tests watch the log stand still.
        cfg.gc_interval = Duration::from_secs(3600);
        cfg
    }

    async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown().await.unwrap();
    }

    async fn restart(&mut self, id: u64) {
        let deadline = Instant::now() + WAIT;
        // Rebind the same port (peers know it) and reopen the same data dir; both may take a
        // moment to be released by the previous incarnation.
        loop {
            let attempt = async {
                let l = TcpListener::bind(self.addrs[&id]).await?;
                start_with_listener(self.config(id), l).await
            };
            match attempt.await {
                Ok(node) => {
                    self.nodes.insert(id, node);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "restart not possible yet; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restart node {id}: {e:#}"),
            }
        }
    }

    /// Waits until every running node agrees on one running leader.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let views: Vec<Option<u64>> = self
                .nodes
                .values()
                .map(|n| n.node.leader().map(|(id, _)| id))
                .collect();
            if let Some(Some(l)) = views.first() {
                if views.iter().all(|v| *v == Some(*l))
                    && self.nodes.get(l).is_some_and(|n| n.node.is_leader())
                {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes through whichever node is leader, following NotLeader redirects.
    async fn write(&self, cmd: Command) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            let l = self.leader().await;
            match self.nodes[&l].node.write(cmd.clone()).await {
                Ok(r) => return r,
                Err(MetaError::NotLeader { .. }) | Err(MetaError::Raft(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("write failed: {e}"),
            }
        }
    }

    async fn register(&self, uuid: &str) -> u64 {
        let cmd = Command::RegisterChunkServer(cmd::RegisterChunkServer {
            uuid: uuid.to_string(),
            addr: format!("127.0.0.1:{}", 9000 + uuid.len()),
        });
        match self.write(cmd).await {
            Reply::ServerId(id) => id,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Waits until every running node has applied `index`.
    async fn wait_applied(&self, index: u64) {
        let deadline = Instant::now() + WAIT;
        for (id, n) in &self.nodes {
            loop {
                let s = n.node.local_status();
                if s.last_applied >= index {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} stuck at {s:?}, want {index}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn last_log(&self, id: u64) -> u64 {
        self.nodes[&id].node.local_status().last_log_index
    }

    /// A gRPC client of node `id`'s `MetaService`, taking messages as large as any server does.
    async fn client(&self, id: u64) -> MetaServiceClient<tonic::transport::Channel> {
        MetaServiceClient::connect(format!("http://{}", self.addrs[&id]))
            .await
            .unwrap()
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
    }

    /// Creates a regular file in the root directory and returns its inode.
    async fn create_file(&self, name: &str) -> u64 {
        match self.write(create_in_root(name)).await {
            Reply::Attr(i) => i.ino,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Shuts every node down and returns each one's replicated state, read from its database.
    async fn stop_all_and_dump(mut self) -> StateDumps {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.stop(*id).await;
        }
        let mut out = BTreeMap::new();
        for id in ids {
            let db = cairn_meta_server::store::open_db(&self.dirs[&id].path().join("db")).unwrap();
            let mut rows = Vec::new();
            for name in STATE_CFS {
                let cf = db.cf_handle(name).unwrap();
                for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                    let (k, v) = item.unwrap();
                    rows.push((name.to_string(), k.to_vec(), v.to_vec()));
                }
            }
            out.insert(id, rows);
        }
        out
    }
}

/// An exclusive `Create` of regular file `name` in the root directory.
fn create_in_root(name: &str) -> Command {
    Command::Create(cmd::Create {
        parent: cairn_common::ROOT_INO,
        name: name.as_bytes().to_vec(),
        kind: cmd::Kind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        symlink_target: Vec::new(),
        exclusive: true,
        now: cmd::Time::now(),
    })
}

fn assert_same_state(dumps: &StateDumps) {
    let (first_id, first) = dumps.iter().next().unwrap();
    assert!(!first.is_empty(), "node {first_id} holds no state at all");
    for (id, d) in dumps {
        assert_eq!(d, first, "node {id} differs from node {first_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t10_elect_write_failover_restart() {
    init_tracing();
    tracing::info!("--- start 3 nodes; they bootstrap from the same peer list and elect a leader");
    let mut c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    assert_eq!(c.nodes[&leader].node.members().len(), 3);

    tracing::info!(
        "--- writes through the leader are applied; a follower refuses with the leader's address"
    );
    let mut ids = BTreeMap::new();
    for i in 0..20 {
        let uuid = format!("server-{i}");
        ids.insert(uuid.clone(), c.register(&uuid).await);
    }
    let distinct: std::collections::BTreeSet<_> = ids.values().collect();
    assert_eq!(distinct.len(), 20, "every server got its own id");
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    match c.nodes[&follower]
        .node
        .write(Command::RegisterChunkServer(cmd::RegisterChunkServer {
            uuid: "x".into(),
            addr: "a:1".into(),
        }))
        .await
    {
        Err(MetaError::NotLeader { leader: Some(addr) }) => {
            assert_eq!(addr, c.addrs[&leader].to_string())
        }
        other => panic!("follower accepted a write: {other:?}"),
    }
    assert!(matches!(
        c.nodes[&follower].node.linearizable_read().await,
        Err(MetaError::NotLeader { .. })
    ));
    c.nodes[&leader].node.linearizable_read().await.unwrap();

    tracing::info!(
        "--- stop the leader: a new one is elected and every acknowledged write is there"
    );
    let t0 = Instant::now();
    c.stop(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    tracing::info!(elapsed = ?t0.elapsed(), new_leader, "new leader elected");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        t0.elapsed()
    );
    c.nodes[&new_leader].node.linearizable_read().await.unwrap();
    for (uuid, id) in &ids {
        assert_eq!(
            c.register(uuid).await,
            *id,
            "{uuid} kept its id across failover"
        );
    }

    tracing::info!("--- new writes succeed with one node down");
    for i in 20..40 {
        let uuid = format!("server-{i}");
        ids.insert(uuid.clone(), c.register(&uuid).await);
    }

    tracing::info!("--- restart the old leader from its data dir: it catches up");
    c.restart(leader).await;
    let target = c.last_log(new_leader);
    c.wait_applied(target).await;
    assert_eq!(
        c.leader().await,
        new_leader,
        "the restarted node did not disrupt the leader"
    );

    tracing::info!("--- every node holds the same replicated state");
    let dumps = c.stop_all_and_dump().await;
    assert_same_state(&dumps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_lagging_node_catches_up_by_snapshot() {
    init_tracing();
    tracing::info!("--- start 3 nodes with a snapshot every 20 entries");
    let mut c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.register("before").await;
    let before = c.last_log(leader);
    c.wait_applied(before).await;

    tracing::info!("--- stop a follower, then write far past the snapshot threshold");
    c.stop(lagging).await;
    let mut ids = BTreeMap::new();
    for i in 0..150 {
        let uuid = format!("s-{i}");
        ids.insert(uuid.clone(), c.register(&uuid).await);
    }
    let leader = c.leader().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = c.nodes[&leader].node.raft().metrics().borrow().clone();
        if m.purged.is_some_and(|p| p.index > before + 1) {
            tracing::info!(purged = ?m.purged, snapshot = ?m.snapshot, "leader purged its log");
            break;
        }
        assert!(Instant::now() < deadline, "leader never purged: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tracing::info!(
        "--- restart the follower: its missing entries are gone, so it installs a snapshot"
    );
    c.restart(lagging).await;
    let target = c.last_log(leader);
    c.wait_applied(target).await;
    let m = c.nodes[&lagging].node.raft().metrics().borrow().clone();
    assert!(
        m.snapshot.is_some_and(|s| s.index > before),
        "follower holds no snapshot past index {before}: {m:?}"
    );

    tracing::info!("--- the follower serves the full state: stop the other follower and check through a leader");
    let other = *c
        .nodes
        .keys()
        .find(|id| **id != leader && **id != lagging)
        .unwrap();
    c.stop(other).await;
    for (uuid, id) in ids.iter().take(10) {
        assert_eq!(c.register(uuid).await, *id);
    }

    tracing::info!("--- every node holds the same replicated state");
    c.restart(other).await;
    let target = c.last_log(c.leader().await);
    c.wait_applied(target).await;
    let dumps = c.stop_all_and_dump().await;
    assert_same_state(&dumps);
}

/// (term, last log index) of every running node.
fn terms_and_logs(c: &Cluster) -> BTreeMap<u64, (u64, u64)> {
    c.nodes
        .iter()
        .map(|(id, n)| {
            let s = n.node.local_status();
            (*id, (s.term, s.last_log_index))
        })
        .collect()
}

/// Bytes no format can shrink (an xattr value).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t30_oversized_requests_never_reach_the_log() {
    init_tracing();
    tracing::info!("--- start 3 nodes, make a file, note every node's term and last log index");
    let c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let ino = c.create_file("f").await;
    c.wait_applied(c.last_log(leader)).await;
    let before = terms_and_logs(&c);
    let mut client = c.client(leader).await;
    const BIG: usize = 5 * 1024 * 1024;

    tracing::info!("--- oversized requests sent straight to the leader are refused at once");
    // A request that reached the log would hang or fail later; give it a generous bound.
    let refused =
        |what: &str, r: Result<Result<(), tonic::Status>, tokio::time::error::Elapsed>| match r {
            Err(_) => panic!("{what}: no answer (proposed to Raft?)"),
            Ok(Ok(())) => panic!("{what}: accepted"),
            Ok(Err(status)) => {
                tracing::info!(what, %status, "refused");
                ErrorKind::from_status(&status)
            }
        };
    let bound = Duration::from_secs(10);
    let r = tokio::time::timeout(
        bound,
        client.set_xattr(pb::SetXattrRequest {
            ino,
            name: b"user.big".to_vec(),
            value: noise(BIG, 1),
            flags: 0,
        }),
    )
    .await;
    assert_eq!(
        refused("5 MiB xattr", r.map(|r| r.map(|_| ()))),
        ErrorKind::TooBig
    );
    let r = tokio::time::timeout(
        bound,
        client.create(pb::CreateRequest {
            parent: cairn_common::ROOT_INO,
            name: b"link".to_vec(),
            kind: pb::FileKind::Symlink as i32,
            symlink_target: vec![b'a'; BIG],
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        refused("5 MiB symlink target", r.map(|r| r.map(|_| ()))),
        ErrorKind::InvalidArgument
    );
    for (label, host) in [(vec![b'l'; BIG], Vec::new()), (Vec::new(), vec![b'h'; BIG])] {
        let r = tokio::time::timeout(
            bound,
            client.open_upload(pb::OpenUploadRequest {
                ino,
                label: String::from_utf8(label).unwrap(),
                host: String::from_utf8(host).unwrap(),
                ..Default::default()
            }),
        )
        .await;
        assert_eq!(
            refused("5 MiB upload label or host", r.map(|r| r.map(|_| ()))),
            ErrorKind::InvalidArgument
        );
    }
    let many: Vec<pb::SlotUpdate> = (0..100_000)
        .map(|i| pb::SlotUpdate {
            index: i,
            ..Default::default()
        })
        .collect();
    let r = tokio::time::timeout(
        bound,
        client.record_upload(pb::RecordUploadRequest {
            upload: 1,
            updates: many.clone(),
        }),
    )
    .await;
    assert_eq!(
        refused("100k upload records", r.map(|r| r.map(|_| ()))),
        ErrorKind::InvalidArgument
    );
    let r = tokio::time::timeout(
        bound,
        client.commit_write(pb::CommitWriteRequest {
            ino,
            updates: many,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        refused("100k slot updates", r.map(|r| r.map(|_| ()))),
        ErrorKind::InvalidArgument
    );
    let r = tokio::time::timeout(
        bound,
        client.unlink(pb::UnlinkRequest {
            parent: cairn_common::ROOT_INO,
            name: b"f".to_vec(),
            session: 1,
            open_inodes: vec![u64::MAX; 1 << 20],
        }),
    )
    .await;
    assert_eq!(
        refused("1 Mi open inodes", r.map(|r| r.map(|_| ()))),
        ErrorKind::InvalidArgument
    );

    tracing::info!("--- nothing reached any log, nobody held an election, the leader serves");
    assert_eq!(
        terms_and_logs(&c),
        before,
        "(term, last log index) per node"
    );
    assert_eq!(c.leader().await, leader);
    c.register("after").await;
    c.stop_all_and_dump().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t40_follower_catches_up_through_more_bytes_than_one_append_carries() {
    init_tracing();
    tracing::info!("--- start 3 nodes, make a file, stop a follower");
    let mut c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let ino = c.create_file("f").await;
    c.wait_applied(c.last_log(leader)).await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.stop(lagging).await;

    tracing::info!(
        "--- write 400 xattrs of 64 KiB (26 MB of entries, more than one gRPC message holds)"
    );
    for i in 0..400u64 {
        c.write(Command::SetXattr(cmd::SetXattr {
            ino,
            name: b"user.big".to_vec(),
            value: noise(64 * 1024, i),
            flags: 0,
            now: cmd::Time::now(),
        }))
        .await;
    }

    tracing::info!("--- restart the follower: it catches up in AppendEntries of bounded size");
    let term = c.nodes[&leader].node.local_status().term;
    c.restart(lagging).await;
    let target = c.last_log(leader);
    c.wait_applied(target).await;
    assert_eq!(c.leader().await, leader);
    assert_eq!(
        c.nodes[&leader].node.local_status().term,
        term,
        "no election"
    );

    tracing::info!("--- every node holds the same replicated state");
    let dumps = c.stop_all_and_dump().await;
    assert_same_state(&dumps);
}

/// Group commit: writers that arrive together share log entries, and each still gets its own
/// result — the creates of new names their inodes, the creates of a name that exists their
/// `AlreadyExists` — with every acknowledged create there exactly once on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t50_concurrent_writers_share_entries_and_keep_their_own_results() {
    init_tracing();
    let c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    c.create_file("taken").await;
    let node = c.nodes[&leader].node.clone();
    const WRITERS: usize = 400;
    tracing::info!(
        WRITERS,
        "--- writers at once: every tenth creates a name that exists"
    );
    let before = c.last_log(leader);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let (node, name) = (
            node.clone(),
            if i % 10 == 0 {
                "taken".to_string()
            } else {
                format!("f{i}")
            },
        );
        let cmd = create_in_root(&name);
        tasks.spawn(async move { (name, node.write(cmd).await) });
    }
    let mut created = BTreeMap::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (name, Ok(Reply::Attr(i))) => assert!(created.insert(name, i.ino).is_none()),
            (name, Err(MetaError::Fs(e))) if name == "taken" => {
                assert_eq!(e.kind, ErrorKind::AlreadyExists);
                refused += 1;
            }
            (name, other) => panic!("create {name}: {other:?}"),
        }
    }
    let entries = c.last_log(leader) - before;
    tracing::info!(entries, "--- {WRITERS} writes took this many log entries");
    assert_eq!(
        (created.len(), refused),
        (WRITERS - WRITERS / 10, WRITERS / 10)
    );
    let inos: std::collections::BTreeSet<_> = created.values().collect();
    assert_eq!(
        inos.len(),
        created.len(),
        "every create got an inode of its own"
    );
    assert!(
        entries < WRITERS as u64 / 2,
        "{entries} entries for {WRITERS} concurrent writes: they were not grouped"
    );

    tracing::info!("--- every node holds every name, and the same state");
    c.wait_applied(c.last_log(leader)).await;
    let fsm = c.nodes[&leader].node.fsm();
    for (name, ino) in &created {
        let i = fsm
            .lookup(cairn_common::ROOT_INO, name.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(i.ino, *ino, "{name}");
    }
    drop(node);
    let dumps = c.stop_all_and_dump().await;
    assert_same_state(&dumps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t60_reads_under_the_lease_need_no_round_and_stop_when_the_quorum_is_gone() {
    init_tracing();
    let mut c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let node = c.nodes[&leader].node.clone();

    tracing::info!(
        "--- a healthy leader answers reads under its lease: they see every acked write"
    );
    const READS: u64 = 200;
    let before = node.read_rounds();
    for i in 0..READS {
        let name = format!("leased{i}");
        let ino = c.create_file(&name).await;
        node.linearizable_read().await.unwrap();
        let seen = node
            .fsm()
            .lookup(cairn_common::ROOT_INO, name.as_bytes())
            .unwrap_or_else(|e| panic!("{name} acked, then not seen: {e}"));
        assert_eq!(seen.ino, ino);
    }
    let rounds = node.read_rounds() - before;
    tracing::info!(rounds, "--- {READS} reads took this many leadership rounds");
    assert!(
        rounds < READS / 4,
        "{rounds} rounds for {READS} reads: the lease did not serve them"
    );

    tracing::info!("--- both followers stop: once the lease has run out, reads are refused");
    let followers: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    for id in followers {
        c.stop(id).await;
    }
    // The followers' own lease is election_timeout_max (400 ms); ours is half of it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, node.linearizable_read()).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "a leader without a quorum answered a read: {r:?}"
        );
    }
    drop(node);
    c.stop(leader).await;
}
