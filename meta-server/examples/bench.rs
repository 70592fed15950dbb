//! Per-operation latency of metadata calls, sequential, one client.
//!
//! ```text
//! cargo run --release -p cairn-meta-server --example bench            # in-process 3-node cluster
//! cargo run --release -p cairn-meta-server --example bench -- 2000    # N operations per kind
//! CAIRN_META=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!   cargo run --release -p cairn-meta-server --example bench          # a running cluster
//! ```
//!
//! Every call goes through gRPC and [`MetaClient`] (the path the FUSE client uses): `mkdir`,
//! `create` and `setxattr` (a 64 KiB value) are Raft writes, `lookup`/`getattr` are read-index
//! reads. The in-process cluster keeps its data in temp dirs on the same disk as `/tmp`, with
//! every fsync real.
//!
//! First it measures the log entry encoding by itself (no Raft, no gRPC): the encoded bytes of
//! typical entries and the CPU time to encode and decode them, and the apply CPU per entry
//! (decode the stored entry, apply it to a state machine on a temp RocksDB, write the batch
//! unsynced), in the old JSON format (`json`) and in the log's own encoding (`log`, `raft/codec.rs`).
use anyhow::Context;
use cairn_common::{ChunkId, MetaClient, ROOT_INO};
use cairn_meta_server::command::{self as cmd, Command, Kind, Time};
use cairn_meta_server::config::{Config, Peer};
use cairn_meta_server::raft::{codec, Entry};
use cairn_meta_server::{start_with_listener, RunningNode};
use cairn_proto as pb;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// An entry format: its name, how an entry is encoded and decoded.
struct Format {
    name: &'static str,
    encode: fn(&Entry) -> anyhow::Result<Vec<u8>>,
    decode: fn(&[u8]) -> anyhow::Result<Entry>,
}

fn formats() -> Vec<Format> {
    vec![
        Format {
            name: "json",
            encode: |e| Ok(serde_json::to_vec(e)?),
            decode: |b| Ok(serde_json::from_slice(b)?),
        },
        Format {
            name: "log",
            encode: |e| Ok(codec::encode(e)?),
            decode: |b| Ok(codec::decode(b)?),
        },
    ]
}

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Bytes that do not compress into anything shorter in any format (an xattr value).
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

fn create_cmd(parent: u64, i: usize) -> Command {
    Command::Create(cmd::Create {
        parent,
        name: format!("file-{i:06}.txt").into_bytes(),
        kind: Kind::Regular,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        rdev: 0,
        symlink_target: Vec::new(),
        exclusive: true,
        now: Time::now(),
    })
}

fn commit_cmd(slots: u64) -> Command {
    Command::CommitWrite(cmd::CommitWrite {
        ino: 12_345,
        base_version: 7,
        size: slots * 4 * 1024 * 1024,
        updates: (0..slots)
            .map(|i| cmd::SlotUpdate {
                index: i,
                chunk: Some(cmd::SlotChunk {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len: 4 * 1024 * 1024,
                    stored_len: 4 * 1024 * 1024,
                }),
                replicas: vec![1, 2, 3],
                ticket: 42,
            })
            .collect(),
        mtime: Some(Time::now()),
        now: Time::now(),
        upload: 0,
        apply_upload: false,
        replace: false,
    })
}

fn setxattr_cmd(ino: u64, seed: u64) -> Command {
    Command::SetXattr(cmd::SetXattr {
        ino,
        name: b"user.bench".to_vec(),
        value: noise(64 * 1024, seed),
        flags: 0,
        now: Time::now(),
    })
}

/// Encoded size and encode/decode CPU of typical entries, then apply CPU per entry.
fn measure_codec() -> anyhow::Result<()> {
    let samples = [
        ("create", entry(10, create_cmd(ROOT_INO, 1)), 20_000),
        ("commit64", entry(11, commit_cmd(64)), 2_000),
        ("xattr64k", entry(12, setxattr_cmd(2, 9)), 500),
    ];
    for f in formats() {
        for (what, e, n) in &samples {
            let bytes = (f.encode)(e)?;
            let t = Instant::now();
            for _ in 0..*n {
                std::hint::black_box((f.encode)(std::hint::black_box(e))?);
            }
            let enc = t.elapsed().as_secs_f64() * 1e6 / *n as f64;
            let t = Instant::now();
            for _ in 0..*n {
                let back = (f.decode)(std::hint::black_box(&bytes))?;
                std::hint::black_box(back);
            }
            let dec = t.elapsed().as_secs_f64() * 1e6 / *n as f64;
            println!(
                "entry {:<5} {what:<9} {:>7} bytes  encode {enc:>8.2} us  decode {dec:>8.2} us",
                f.name,
                bytes.len()
            );
        }
        apply_cpu(&f)?;
    }
    Ok(())
}

/// Decode + apply + unsynced write per entry, on a fresh state machine: `creates` new files,
/// then 64 KiB xattrs replacing each other on one of them.
fn apply_cpu(f: &Format) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = cairn_meta_server::store::open_db(&dir.path().join("db"))?;
    let fsm = cairn_meta_server::fsm::Fsm::open(db.clone())?;
    let run = |entries: Vec<Vec<u8>>| -> anyhow::Result<f64> {
        let n = entries.len();
        let t = Instant::now();
        for bytes in entries {
            let e = (f.decode)(&bytes)?;
            let EntryPayload::Normal(cmd) = &e.payload else {
                anyhow::bail!("not a command entry");
            };
            let mut batch = rocksdb::WriteBatch::default();
            fsm.apply(cmd, e.log_id.index, &mut batch, &mut blake3::Hasher::new())
                .map_err(|e| anyhow::anyhow!("apply: {e}"))?;
            db.write(batch)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
    };
    let creates = (0..5_000)
        .map(|i| (f.encode)(&entry(100 + i as u64, create_cmd(ROOT_INO, i))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let create_us = run(creates)?;
    let ino = fsm.lookup(ROOT_INO, b"file-000000.txt")?.ino;
    let xattrs = (0..500)
        .map(|i| (f.encode)(&entry(10_000 + i, setxattr_cmd(ino, i))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let xattr_us = run(xattrs)?;
    println!(
        "apply {:<5} create {create_us:>8.2} us/entry  xattr64k {xattr_us:>8.2} us/entry",
        f.name
    );
    Ok(())
}

struct Stats(Vec<Duration>);

impl Stats {
    fn report(mut self, what: &str) {
        self.0.sort();
        let n = self.0.len();
        let total: Duration = self.0.iter().sum();
        let pct = |p: usize| self.0[(n * p / 100).min(n - 1)];
        println!(
            "{what:<8} n={n:<5} mean={:>7.3} ms  p50={:>7.3} ms  p99={:>7.3} ms",
            total.as_secs_f64() * 1e3 / n as f64,
            pct(50).as_secs_f64() * 1e3,
            pct(99).as_secs_f64() * 1e3,
        );
    }
}

async fn start_cluster(dirs: &[tempfile::TempDir]) -> anyhow::Result<Vec<RunningNode>> {
    let mut listeners = Vec::new();
    for _ in dirs {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let peers: Vec<Peer> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(Peer {
                id: i as u64 + 1,
                addr: l.local_addr()?.to_string(),
            })
        })
        .collect::<std::io::Result<_>>()?;
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let mut cfg = Config::new(i as u64 + 1, peers[i].addr.clone(), dirs[i].path());
        cfg.peers = peers.clone();
        nodes.push(start_with_listener(cfg, l).await?);
    }
    Ok(nodes)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let n: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().context("N must be a number")?,
        None => 1000,
    };
    measure_codec()?;
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<std::io::Result<_>>()?;
    let (meta, nodes) = match std::env::var("CAIRN_META") {
        Ok(list) => (MetaClient::from_list(&list), Vec::new()),
        Err(_) => {
            let nodes = start_cluster(&dirs).await?;
            let addrs = nodes.iter().map(|n| n.addr.to_string()).collect();
            (MetaClient::new(addrs), nodes)
        }
    };
    // Wait for a leader (the first call retries until there is one).
    meta.call(|mut c| async move { c.get_attr(pb::GetAttrRequest { ino: ROOT_INO }).await })
        .await?;

    let tag = format!("bench-{}-{}", std::process::id(), rand_suffix());
    let dir = meta
        .call(|mut c| {
            let name = tag.clone().into_bytes();
            async move {
                c.create(mkreq(ROOT_INO, name, pb::FileKind::Directory))
                    .await
            }
        })
        .await?
        .attr
        .context("create reply without attr")?
        .ino;

    let mut mkdir = Stats(Vec::new());
    let mut create = Stats(Vec::new());
    let mut lookup = Stats(Vec::new());
    let mut lookup_missing = Stats(Vec::new());
    let mut getattr = Stats(Vec::new());
    let mut setxattr = Stats(Vec::new());
    for i in 0..n {
        let t = Instant::now();
        meta.call(|mut c| async move {
            c.create(mkreq(
                dir,
                format!("d{i}").into_bytes(),
                pb::FileKind::Directory,
            ))
            .await
        })
        .await?;
        mkdir.0.push(t.elapsed());

        let t = Instant::now();
        let missing = meta
            .call(|mut c| async move {
                c.lookup(pb::LookupRequest {
                    parent: dir,
                    name: format!("f{i}").into_bytes(),
                })
                .await
            })
            .await;
        lookup_missing.0.push(t.elapsed());
        anyhow::ensure!(missing.is_err(), "f{i} exists before it was created");

        let t = Instant::now();
        let ino = meta
            .call(|mut c| async move {
                c.create(mkreq(
                    dir,
                    format!("f{i}").into_bytes(),
                    pb::FileKind::Regular,
                ))
                .await
            })
            .await?
            .attr
            .context("create reply without attr")?
            .ino;
        create.0.push(t.elapsed());

        let t = Instant::now();
        meta.call(|mut c| async move {
            c.lookup(pb::LookupRequest {
                parent: dir,
                name: format!("f{i}").into_bytes(),
            })
            .await
        })
        .await?;
        lookup.0.push(t.elapsed());

        let t = Instant::now();
        meta.call(|mut c| async move { c.get_attr(pb::GetAttrRequest { ino }).await })
            .await?;
        getattr.0.push(t.elapsed());

        let t = Instant::now();
        meta.call(|mut c| async move {
            c.set_xattr(pb::SetXattrRequest {
                ino,
                name: b"user.bench".to_vec(),
                value: noise(64 * 1024, i as u64),
                flags: 0,
            })
            .await
        })
        .await?;
        setxattr.0.push(t.elapsed());
    }
    // One gRPC round trip without Raft: a follower refuses a read at once (not-leader).
    let mut rtt = Stats(Vec::new());
    let mut follower = None;
    for addr in meta.addrs() {
        let mut c = meta.node(addr)?;
        if c.get_attr(pb::GetAttrRequest { ino: ROOT_INO })
            .await
            .is_err()
        {
            follower = Some(addr.clone());
            break;
        }
    }
    if let Some(addr) = follower {
        let client = meta.node(&addr)?;
        for _ in 0..n {
            let mut c = client.clone();
            let t = Instant::now();
            let _ = c.get_attr(pb::GetAttrRequest { ino: ROOT_INO }).await;
            rtt.0.push(t.elapsed());
        }
    }
    if !rtt.0.is_empty() {
        rtt.report("rtt");
    }
    mkdir.report("mkdir");
    create.report("create");
    lookup_missing.report("lookup-");
    lookup.report("lookup");
    getattr.report("getattr");
    setxattr.report("xattr64k");

    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

fn mkreq(parent: u64, name: Vec<u8>, kind: pb::FileKind) -> pb::CreateRequest {
    pb::CreateRequest {
        parent,
        name,
        kind: kind as i32,
        mode: if kind == pb::FileKind::Directory {
            0o755
        } else {
            0o644
        },
        exclusive: true,
        ..Default::default()
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
