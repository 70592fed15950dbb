//! `cairn status [--json]`: the leader's view of the cluster.
use cairn_common::MetaClient;
use cairn_proto::{ClusterStatusReply, ClusterStatusRequest};
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
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    pub meta: Vec<MetaNode>,
    pub chunk_servers: Vec<ChunkServer>,
    pub leader_id: u64,
    pub replication: u32,
}

impl From<ClusterStatusReply> for Status {
    fn from(r: ClusterStatusReply) -> Status {
        Status {
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
                })
                .collect(),
            leader_id: r.leader_id,
            replication: r.replication,
        }
    }
}

/// Asks the leader for the cluster status, giving up after `timeout`.
pub async fn fetch(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<Status> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    let list = addrs.join(",");
    let meta = MetaClient::with_timeouts(addrs, timeout, timeout.min(Duration::from_secs(3)));
    let reply = meta
        .call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
        .await
        .map_err(|s| {
            anyhow::anyhow!("cannot reach the Cairn cluster at {list}: {}", s.message())
        })?;
    Ok(Status::from(reply))
}

fn human(bytes: u64) -> String {
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
pub fn table(s: &Status) -> String {
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
        "  {:>4}  {:<22} {:<5} {:>11} {:>11} {:>8}\n",
        "ID", "ADDR", "STATE", "USED", "FREE", "CHUNKS"
    ));
    for c in &s.chunk_servers {
        out.push_str(&format!(
            "  {:>4}  {:<22} {:<5} {:>11} {:>11} {:>8}\n",
            c.id,
            c.addr,
            c.state,
            human(c.used_bytes),
            human(c.free_bytes),
            c.chunk_count
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{ChunkServerStatus, MetaNodeStatus};

    fn sample() -> Status {
        Status::from(ClusterStatusReply {
            meta: vec![MetaNodeStatus {
                id: 1,
                addr: "127.0.0.1:7001".into(),
                role: "leader".into(),
                term: 4,
                last_applied: 99,
                last_log_index: 100,
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
            }],
            leader_id: 1,
            replication: 3,
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
    }

    #[test]
    fn table_lists_every_node() {
        let t = table(&sample());
        assert!(t.contains("127.0.0.1:7001"), "{t}");
        assert!(t.contains("leader"));
        assert!(t.contains("3.0 MiB"));
        assert!(t.contains("5.0 GiB"));
        assert_eq!(human(512), "512 B");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_an_error() {
        let r = fetch(vec!["127.0.0.1:1".into()], Duration::from_millis(300)).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("cannot reach"), "{e}");
    }
}
