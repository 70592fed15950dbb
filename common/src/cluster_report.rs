//! The cluster as `cairn status` and the meta leader's status page show it: the leader's
//! `ClusterStatus` reply turned into one report ([`ClusterReport`]), judged by
//! [`crate::health`] (which builds the reports: [`crate::health::report`]). Its serde form is the JSON of `cairn status --json` and of the status
//! page's `status.json`.
use crate::time::unix_ms;
use cairn_proto::ClusterStatusReply;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    #[serde(rename = "HEALTH_OK")]
    Ok,
    #[serde(rename = "HEALTH_WARN")]
    Warn,
    #[serde(rename = "HEALTH_ERR")]
    Err,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "HEALTH_OK",
            Level::Warn => "HEALTH_WARN",
            Level::Err => "HEALTH_ERR",
        }
    }

    /// 0, 1 or 2.
    pub fn exit_code(self) -> u8 {
        self as u8
    }
}

/// One reason for a verdict worse than OK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub level: Level,
    /// A stable identifier, for scripts and alerting (`CHUNK_SERVER_DOWN`, …).
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: Level,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MetaNode {
    pub id: u64,
    pub addr: String,
    pub role: String,
    pub term: u64,
    pub last_applied: u64,
    pub last_log_index: u64,
    /// Log entries this node's applied state is behind the leader's log (0 for the leader).
    pub lag: u64,
    /// Hex digest of the node's applied state at `last_applied` (empty if it did not answer).
    pub applied_digest: String,
    /// `http://host:port/metrics` of the node, if it serves one.
    pub metrics_url: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChunkServer {
    pub id: u64,
    pub addr: String,
    pub state: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Milliseconds since the leader last heard from it (0: never).
    pub heartbeat_age_ms: u64,
    pub chunk_count: u64,
    /// `http://host:port/metrics` of the server, if it serves one.
    pub metrics_url: Option<String>,
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
    /// Unix ms of the least recent read-back of a verified chunk; 0: none.
    pub oldest_verified_unix_ms: u64,
    /// Chunks no pass has read back since they were written (or since the server started).
    pub unverified_chunks: u64,
    /// Unix ms when the oldest of those arrived; 0: none.
    pub oldest_unverified_unix_ms: u64,
    pub rate_limit_bytes: u64,
    pub interval_secs: u64,
    pub start_delay_secs: u64,
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
    pub health: Health,
    /// Which cluster, and where its name came from (set by the command that asked).
    pub cluster: Option<Named>,
    pub meta: Vec<MetaNode>,
    pub chunk_servers: Vec<ChunkServer>,
    /// Every node's `/metrics` URL (meta nodes, then chunk servers): Prometheus targets.
    pub metrics: Vec<String>,
    pub leader_id: u64,
    pub replication: u32,
    /// Fewest replicas a chunk write commits with: fewer chunk servers up and writes fail.
    pub commit_quorum: u32,
    pub repair: Repair,
}

/// The cluster a command talked to: `meta` as `--meta` takes it, `source` where it came from
/// (see [`crate::cluster`]).
#[derive(Debug, Serialize, PartialEq)]
pub struct Named {
    pub meta: String,
    pub source: String,
}

impl ClusterReport {
    /// The report of a leader's reply, with an OK verdict not judged yet: use
    /// [`crate::health::report`], which judges it.
    pub fn unjudged(r: ClusterStatusReply) -> ClusterReport {
        let leader_index = r
            .meta
            .iter()
            .find(|m| m.role == "leader")
            .map_or(0, |m| m.last_log_index);
        let mut report = ClusterReport {
            health: Health {
                status: Level::Ok,
                reasons: vec![],
            },
            cluster: None,
            meta: r
                .meta
                .into_iter()
                .map(|m| MetaNode {
                    lag: if m.role == "down" {
                        0
                    } else {
                        leader_index.saturating_sub(m.last_applied)
                    },
                    id: m.id,
                    addr: m.addr,
                    role: m.role,
                    term: m.term,
                    last_applied: m.last_applied,
                    last_log_index: m.last_log_index,
                    applied_digest: hex::encode(&m.applied_digest),
                    metrics_url: metrics_url(&m.metrics_addr),
                })
                .collect(),
            metrics: vec![],
            chunk_servers: r
                .chunk_servers
                .into_iter()
                .map(|c| ChunkServer {
                    id: c.id,
                    addr: c.addr,
                    state: c.state,
                    capacity_bytes: c.capacity_bytes,
                    used_bytes: c.used_bytes,
                    free_bytes: c.free_bytes,
                    heartbeat_age_ms: c.last_heartbeat_ms_ago,
                    metrics_url: metrics_url(&c.metrics_addr),
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
                        unverified_chunks: s.unverified_chunks,
                        oldest_unverified_unix_ms: s.oldest_unverified_unix_ms,
                        rate_limit_bytes: s.rate_limit_bytes,
                        interval_secs: s.interval_secs,
                        start_delay_secs: s.start_delay_secs,
                    }),
                })
                .collect(),
            leader_id: r.leader_id,
            replication: r.replication,
            // A server from before the field: the default, a majority of the replicas.
            commit_quorum: match r.commit_quorum {
                0 => r.replication / 2 + 1,
                q => q,
            },
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
        };
        report.metrics = report
            .meta
            .iter()
            .filter_map(|m| m.metrics_url.clone())
            .chain(
                report
                    .chunk_servers
                    .iter()
                    .filter_map(|c| c.metrics_url.clone()),
            )
            .collect();
        report
    }
}

/// `http://<addr>/metrics`, or nothing for an empty address.
fn metrics_url(addr: &str) -> Option<String> {
    (!addr.is_empty()).then(|| format!("http://{addr}/metrics"))
}

/// Whole seconds from `then_ms` to `now_ms` (0 if `then_ms` is later).
pub fn ago_secs(now_ms: u64, then_ms: u64) -> u64 {
    now_ms.saturating_sub(then_ms) / 1000
}

/// The leader's answer of an example cluster (one leader, one draining chunk server with a
/// corrupt and two unverified chunks, one chunk missing), for documentation and tests.
pub fn example_reply() -> ClusterStatusReply {
    cairn_proto::ClusterStatusReply {
        meta: vec![cairn_proto::MetaNodeStatus {
            id: 1,
            addr: "127.0.0.1:7001".into(),
            role: "leader".into(),
            term: 4,
            last_applied: 99,
            last_log_index: 100,
            applied_digest: vec![],
            metrics_addr: "127.0.0.1:9101".into(),
        }],
        chunk_servers: vec![cairn_proto::ChunkServerStatus {
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
                last_full_pass_unix_ms: unix_ms() - 300_000,
                oldest_verified_unix_ms: unix_ms() - 300_000,
                running: false,
                rate_limit_bytes: 64 << 20,
                unverified_chunks: 2,
                oldest_unverified_unix_ms: unix_ms() - 60_000,
                interval_secs: 3600,
                start_delay_secs: 3600,
            }),
            draining: true,
            listed_replicas: 6,
            metrics_addr: String::new(),
        }],
        leader_id: 1,
        replication: 3,
        commit_quorum: 2,
        repair: Some(cairn_proto::RepairStatus {
            under_replicated: 2,
            missing: 1,
            replicas_copied: 5,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_shape() {
        let v = serde_json::to_value(ClusterReport::unjudged(example_reply())).unwrap();
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
        assert_eq!(v["metrics"][0], "http://127.0.0.1:9101/metrics");
        assert_eq!(
            v["metrics"].as_array().unwrap().len(),
            1,
            "none for the chunk server"
        );
    }
}
