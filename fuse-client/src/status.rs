//! `cairn status [--json]`: the leader's view of the cluster ([`ClusterReport`]), as JSON or a
//! table.
use crate::meta::Meta;
use cairn_proto::ClusterStatusReply;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Serialize, PartialEq)]
pub struct MetaNode {
    pub id: u64,
    pub addr: String,
    pub role: String,
    pub term: u64,
    pub last_applied: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChunkServer {
    pub id: u64,
    pub addr: String,
    pub state: String,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub chunk_count: u64,
    /// Replicas the metadata cluster lists here (as of the last repair scan).
    pub listed_replicas: u64,
    pub draining: bool,
    pub scrub: Option<Scrub>,
}

/// A chunk server's scrub figures (from its last heartbeat).
#[derive(Debug, Serialize, PartialEq)]
pub struct Scrub {
    pub chunks_verified: u64,
    pub bytes_verified: u64,
    pub corruptions: u64,
    pub passes: u64,
    pub running: bool,
    /// Unix ms; 0 when no full pass has finished yet.
    pub last_full_pass_unix_ms: u64,
    /// Unix ms of the least recently verified chunk; 0: some chunk not verified yet.
    pub oldest_verified_unix_ms: u64,
    pub rate_limit_bytes: u64,
}

/// The repair worker's figures.
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct Repair {
    pub under_replicated: u64,
    pub missing: u64,
    pub over_replicated: u64,
    pub replicas_copied: u64,
    pub bytes_copied: u64,
    pub replicas_removed: u64,
    pub failures: u64,
    pub last_scan_unix_ms: u64,
    /// Unreferenced chunks waiting for the grace period or being deleted.
    pub gc_pending: u64,
    /// Chunks deleted by GC since the leader took office.
    pub gc_collected: u64,
}

/// The cluster as `cairn status` shows it (also its `--json` shape).
#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterReport {
    pub meta: Vec<MetaNode>,
    pub chunk_servers: Vec<ChunkServer>,
    pub leader_id: u64,
    pub replication: u32,
    pub repair: Repair,
}

impl From<ClusterStatusReply> for ClusterReport {
    fn from(r: ClusterStatusReply) -> ClusterReport {
        ClusterReport {
            meta: r
                .meta
                .into_iter()
                .map(|m| MetaNode {
                    id: m.id,
                    addr: m.addr,
                    role: m.role,
                    term: m.term,
                    last_applied: m.last_applied,
                })
                .collect(),
            chunk_servers: r
                .chunk_servers
                .into_iter()
                .map(|c| ChunkServer {
                    id: c.id,
                    addr: c.addr,
                    state: c.state,
                    used_bytes: c.used_bytes,
                    free_bytes: c.free_bytes,
                    chunk_count: c.chunk_count,
                    listed_replicas: c.listed_replicas,
                    draining: c.draining,
                    scrub: c.scrub.map(|s| Scrub {
                        chunks_verified: s.chunks_verified,
                        bytes_verified: s.bytes_verified,
                        corruptions: s.corruptions,
                        passes: s.passes,
                        running: s.running,
                        last_full_pass_unix_ms: s.last_full_pass_unix_ms,
                        oldest_verified_unix_ms: s.oldest_verified_unix_ms,
                        rate_limit_bytes: s.rate_limit_bytes,
                    }),
                })
                .collect(),
            leader_id: r.leader_id,
            replication: r.replication,
            repair: r
                .repair
                .map(|p| Repair {
                    under_replicated: p.under_replicated,
                    missing: p.missing,
                    over_replicated: p.over_replicated,
                    replicas_copied: p.replicas_copied,
                    bytes_copied: p.bytes_copied,
                    replicas_removed: p.replicas_removed,
                    failures: p.failures,
                    last_scan_unix_ms: p.last_scan_unix_ms,
                    gc_pending: p.gc_pending,
                    gc_collected: p.gc_collected,
                })
                .unwrap_or_default(),
        }
    }
}

/// Asks the leader for the cluster status, giving up after `timeout`.
pub async fn fetch(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<ClusterReport> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    let list = addrs.join(",");
    let meta = Meta::with_timeouts(addrs, timeout, timeout.min(Duration::from_secs(3)));
    let reply = meta.cluster_status().await.map_err(|s| {
        anyhow::anyhow!("cannot reach the Cairn cluster at {list}: {}", s.message())
    })?;
    Ok(ClusterReport::from(reply))
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human-readable table.
pub fn table(s: &ClusterReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "meta nodes (leader {}, replication {})\n",
        s.leader_id, s.replication
    ));
    out.push_str(&format!(
        "  {:>4}  {:<22} {:<9} {:>6} {:>12}\n",
        "ID", "ADDR", "ROLE", "TERM", "LAST_APPLIED"
    ));
    for m in &s.meta {
        out.push_str(&format!(
            "  {:>4}  {:<22} {:<9} {:>6} {:>12}\n",
            m.id, m.addr, m.role, m.term, m.last_applied
        ));
    }
    out.push_str("chunk servers\n");
    out.push_str(&format!(
        "  {:>4}  {:<22} {:<8} {:>11} {:>11} {:>8} {:>8}  {}\n",
        "ID", "ADDR", "STATE", "USED", "FREE", "CHUNKS", "LISTED", "SCRUB"
    ));
    let now = now_ms();
    for c in &s.chunk_servers {
        let state = if c.draining {
            format!("{}/drain", c.state)
        } else {
            c.state.clone()
        };
        out.push_str(&format!(
            "  {:>4}  {:<22} {:<8} {:>11} {:>11} {:>8} {:>8}  {}\n",
            c.id,
            c.addr,
            state,
            human(c.used_bytes),
            human(c.free_bytes),
            c.chunk_count,
            c.listed_replicas,
            scrub_summary(c.scrub.as_ref(), now)
        ));
    }
    let r = &s.repair;
    out.push_str(&format!(
        "repair: {} under-replicated ({} missing), {} over-replicated; copied {} replicas ({}), removed {}, {} failures",
        r.under_replicated,
        r.missing,
        r.over_replicated,
        r.replicas_copied,
        human(r.bytes_copied),
        r.replicas_removed,
        r.failures
    ));
    if r.last_scan_unix_ms == 0 {
        out.push_str("; no scan yet\n");
    } else {
        out.push_str(&format!(
            "; last scan {} ago\n",
            ago(now, r.last_scan_unix_ms)
        ));
    }
    out.push_str(&format!(
        "gc: {} unreferenced chunks pending, {} collected\n",
        r.gc_pending, r.gc_collected
    ));
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// "verified 120 chunks (480.0 MiB), 1 corrupt, last full pass 5m ago, oldest check 5m ago".
fn scrub_summary(s: Option<&Scrub>, now: u64) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let mut out = format!(
        "{}verified {} chunks ({}), {} corrupt",
        if s.running { "running; " } else { "" },
        s.chunks_verified,
        human(s.bytes_verified),
        s.corruptions
    );
    if s.last_full_pass_unix_ms == 0 {
        out.push_str(", no full pass yet");
    } else {
        out.push_str(&format!(
            ", last full pass {} ago",
            ago(now, s.last_full_pass_unix_ms)
        ));
    }
    if s.oldest_verified_unix_ms != 0 {
        out.push_str(&format!(
            ", oldest check {} ago",
            ago(now, s.oldest_verified_unix_ms)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{ChunkServerStatus, MetaNodeStatus};

    fn sample() -> ClusterReport {
        ClusterReport::from(ClusterStatusReply {
            meta: vec![MetaNodeStatus {
                id: 1,
                addr: "127.0.0.1:7001".into(),
                role: "leader".into(),
                term: 4,
                last_applied: 99,
                last_log_index: 100,
                applied_digest: vec![],
            }],
            chunk_servers: vec![ChunkServerStatus {
                id: 2,
                addr: "127.0.0.1:7101".into(),
                state: "up".into(),
                capacity_bytes: 10 << 30,
                used_bytes: 3 << 20,
                free_bytes: 5 << 30,
                chunk_count: 7,
                last_heartbeat_ms_ago: 300,
                scrub: Some(cairn_proto::ScrubStats {
                    chunks_verified: 7,
                    bytes_verified: 3 << 20,
                    corruptions: 1,
                    passes: 1,
                    last_full_pass_unix_ms: now_ms() - 300_000,
                    oldest_verified_unix_ms: now_ms() - 300_000,
                    running: false,
                    rate_limit_bytes: 64 << 20,
                }),
                draining: true,
                listed_replicas: 6,
            }],
            leader_id: 1,
            replication: 3,
            repair: Some(cairn_proto::RepairStatus {
                under_replicated: 2,
                missing: 1,
                replicas_copied: 5,
                ..Default::default()
            }),
        })
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["meta"][0]["role"], "leader");
        assert_eq!(v["meta"][0]["id"], 1);
        assert_eq!(v["meta"][0]["term"], 4);
        assert_eq!(v["meta"][0]["last_applied"], 99);
        assert_eq!(v["chunk_servers"][0]["state"], "up");
        assert_eq!(v["chunk_servers"][0]["used_bytes"], 3 << 20);
        assert_eq!(v["chunk_servers"][0]["chunk_count"], 7);
        assert_eq!(v["chunk_servers"][0]["scrub"]["corruptions"], 1);
        assert_eq!(v["chunk_servers"][0]["draining"], true);
        assert_eq!(v["repair"]["under_replicated"], 2);
        assert_eq!(v["repair"]["missing"], 1);
    }

    #[test]
    fn table_lists_every_node() {
        let t = table(&sample());
        assert!(t.contains("127.0.0.1:7001"), "{t}");
        assert!(t.contains("leader"));
        assert!(t.contains("3.0 MiB"));
        assert!(t.contains("5.0 GiB"));
        assert!(t.contains("up/drain"), "{t}");
        assert!(t.contains("1 corrupt, last full pass 5m ago"), "{t}");
        assert!(t.contains("repair: 2 under-replicated (1 missing)"), "{t}");
        assert_eq!(human(512), "512 B");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_an_error() {
        let r = fetch(vec!["127.0.0.1:1".into()], Duration::from_millis(300)).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("cannot reach"), "{e}");
    }
}
