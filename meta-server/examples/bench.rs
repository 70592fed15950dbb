//! Per-operation latency of metadata calls, sequential, one client.
//!
//! ```text
//! cargo run --release -p cairn-meta-server --example bench            # in-process 3-node cluster
//! cargo run --release -p cairn-meta-server --example bench -- 2000    # N operations per kind
//! CAIRN_META=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!   cargo run --release -p cairn-meta-server --example bench          # a running cluster
//! ```
//!
//! Every call goes through gRPC and [`MetaClient`] (the path the FUSE client uses): `mkdir` and
//! `create` are Raft writes, `lookup`/`getattr` are read-index reads. The in-process cluster keeps
//! its data in temp dirs on the same disk as `/tmp`, with every fsync real.
use anyhow::Context;
use cairn_common::{MetaClient, ROOT_INO};
use cairn_meta_server::config::{Config, Peer};
use cairn_meta_server::{start_with_listener, RunningNode};
use cairn_proto as pb;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

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
