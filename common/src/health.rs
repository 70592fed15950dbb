//! The health verdict of `cairn status`: `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR` with the
//! reasons, computed from the leader's cluster report alone (so every caller — the table, the
//! JSON, the exit status — agrees).
//!
//! - **ERR** (data is at risk or the cluster cannot do its job): chunks with no intact replica,
//!   fewer chunk servers up than a write needs (the cluster's commit quorum, `--min-replication`), a chunk server's disk almost full
//!   (< [`ERR_FREE_PERCENT`] free), meta nodes whose applied states differ at the same log
//!   index, or most meta nodes down.
//! - **WARN** (redundancy reduced or attention needed): a meta node or chunk server down,
//!   fewer chunk servers up than the replication factor, chunks under-replicated, a disk nearly full (< [`WARN_FREE_PERCENT`] free), a meta node
//!   more than [`LAG_WARN_ENTRIES`] entries behind the leader, or a scrub overdue (some chunk
//!   not read back for longer than its schedule allows, see [`scrub_overdue`]).
//!
//! The exit status of `cairn status` is 0, 1 or 2 to match ([`Level::exit_code`]).
use crate::cluster_report::{ago_secs, ChunkServer, ClusterReport, Scrub};
pub use crate::cluster_report::{Health, Level, Reason};
use crate::units::human_secs;
use cairn_proto::ClusterStatusReply;
use std::collections::BTreeMap;

pub const WARN_FREE_PERCENT: u64 = 15;
pub const ERR_FREE_PERCENT: u64 = 5;
pub const LAG_WARN_ENTRIES: u64 = 10_000;

/// How long a chunk may go without a scrub read-back before the scrub counts as overdue:
/// twice the interval between passes (a pass takes time to reach every chunk), and never
/// less than the delay before the first pass plus one interval.
pub fn overdue_after_secs(s: &Scrub) -> u64 {
    (2 * s.interval_secs).max(s.start_delay_secs + s.interval_secs)
}

/// The age in seconds of the oldest unchecked chunk if it is past [`overdue_after_secs`].
pub fn scrub_overdue(s: &Scrub, now_ms: u64) -> Option<u64> {
    if s.interval_secs == 0 {
        return None; // a server too old to report its schedule
    }
    let oldest = [s.oldest_verified_unix_ms, s.oldest_unverified_unix_ms]
        .into_iter()
        .filter(|&t| t > 0)
        .min()?;
    let age = ago_secs(now_ms, oldest);
    (age > overdue_after_secs(s)).then_some(age)
}

/// The share of a server's disk still free for chunks, as `df` counts it: available over used
/// plus available (space reserved for root is neither).
pub fn free_percent(c: &ChunkServer) -> Option<u64> {
    let usable = c.used_bytes.saturating_add(c.free_bytes);
    (usable > 0).then(|| c.free_bytes.saturating_mul(100) / usable)
}

/// The report of a leader's `ClusterStatus` answer, judged at `now_ms`: what `cairn status`
/// and the status page show.
pub fn report(reply: ClusterStatusReply, now_ms: u64) -> ClusterReport {
    let mut r = ClusterReport::unjudged(reply);
    r.health = verdict(&r, now_ms);
    r
}

/// The verdict on `r` at `now_ms`.
pub fn verdict(r: &ClusterReport, now_ms: u64) -> Health {
    let mut reasons = Vec::new();
    let mut add = |level, code, message: String| {
        reasons.push(Reason {
            level,
            code,
            message,
        })
    };

    // Meta nodes.
    let down: Vec<_> = r.meta.iter().filter(|m| m.role == "down").collect();
    for m in &down {
        add(
            Level::Warn,
            "META_NODE_DOWN",
            format!("meta node {} ({}) is down", m.id, m.addr),
        );
    }
    if !r.meta.is_empty() && down.len() * 2 >= r.meta.len() {
        add(
            Level::Err,
            "META_QUORUM_AT_RISK",
            format!(
                "{} of {} meta nodes are down: one more failure stops the cluster",
                down.len(),
                r.meta.len()
            ),
        );
    }
    let leader_index = r
        .meta
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.last_log_index);
    if let Some(li) = leader_index {
        for m in r
            .meta
            .iter()
            .filter(|m| m.role != "down" && m.role != "leader")
        {
            let lag = li.saturating_sub(m.last_applied);
            if lag > LAG_WARN_ENTRIES {
                add(
                    Level::Warn,
                    "META_NODE_LAGGING",
                    format!("meta node {} is {lag} log entries behind the leader", m.id),
                );
            }
        }
    }
    let mut by_index: BTreeMap<u64, Vec<(&str, u64)>> = BTreeMap::new();
    for m in r
        .meta
        .iter()
        .filter(|m| m.role != "down" && !m.applied_digest.is_empty())
    {
        by_index
            .entry(m.last_applied)
            .or_default()
            .push((m.applied_digest.as_str(), m.id));
    }
    for (index, nodes) in &by_index {
        if nodes.iter().any(|(d, _)| *d != nodes[0].0) {
            let ids: Vec<String> = nodes.iter().map(|(_, id)| id.to_string()).collect();
            add(
                Level::Err,
                "META_STATE_DIVERGED",
                format!(
                    "meta nodes {} applied different states at log index {index}",
                    ids.join(", ")
                ),
            );
        }
    }

    // Chunk servers.
    let up = r.chunk_servers.iter().filter(|c| c.state == "up").count();
    for c in r.chunk_servers.iter().filter(|c| c.state != "up") {
        add(
            Level::Warn,
            "CHUNK_SERVER_DOWN",
            format!("chunk server {} ({}) is {}", c.id, c.addr, c.state),
        );
    }
    let replication = u64::from(r.replication);
    let quorum = u64::from(r.commit_quorum);
    if (up as u64) < quorum {
        add(
            Level::Err,
            "TOO_FEW_CHUNK_SERVERS",
            format!("only {up} chunk server(s) up; writes need at least {quorum}"),
        );
    } else if (up as u64) < replication {
        add(
            Level::Warn,
            "REPLICATION_DEGRADED",
            format!(
                "only {up} chunk server(s) up: new chunks get fewer than {replication} replicas"
            ),
        );
    }
    for c in r.chunk_servers.iter().filter(|c| c.state == "up") {
        match free_percent(c) {
            Some(p) if p < ERR_FREE_PERCENT => add(
                Level::Err,
                "DISK_FULL",
                format!("chunk server {} has {p}% free space left", c.id),
            ),
            Some(p) if p < WARN_FREE_PERCENT => add(
                Level::Warn,
                "DISK_NEARLY_FULL",
                format!("chunk server {} has {p}% free space left", c.id),
            ),
            _ => {}
        }
        if let Some(age) = c.scrub.as_ref().and_then(|s| scrub_overdue(s, now_ms)) {
            let s = c.scrub.as_ref().map_or(0, overdue_after_secs);
            add(
                Level::Warn,
                "SCRUB_OVERDUE",
                format!(
                    "chunk server {}: a chunk has not been verified for {} (due within {})",
                    c.id,
                    human_secs(age),
                    human_secs(s)
                ),
            );
        }
    }

    // Data.
    if r.repair.missing > 0 {
        add(
            Level::Err,
            "CHUNKS_MISSING",
            format!(
                "{} chunk(s) have no intact replica (see cairn fsck)",
                r.repair.missing
            ),
        );
    }
    let degraded = r.repair.under_replicated.saturating_sub(r.repair.missing);
    if degraded > 0 {
        add(
            Level::Warn,
            "CHUNKS_UNDER_REPLICATED",
            format!(
                "{degraded} chunk(s) have fewer than {} replicas",
                r.replication
            ),
        );
    }

    reasons.sort_by_key(|r| std::cmp::Reverse(r.level));
    Health {
        status: reasons.iter().map(|r| r.level).max().unwrap_or(Level::Ok),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_report::{example_reply, MetaNode};
    use crate::time::unix_ms as now_ms;

    fn sample() -> ClusterReport {
        report(example_reply(), now_ms())
    }

    fn codes(h: &Health) -> Vec<&'static str> {
        h.reasons.iter().map(|r| r.code).collect()
    }

    /// The sample made healthy: three chunk servers up with room, nothing missing.
    fn healthy() -> ClusterReport {
        let mut r = sample();
        r.repair.missing = 0;
        r.repair.under_replicated = 0;
        let mut servers = vec![];
        for id in 1..=3 {
            let mut c = sample().chunk_servers.remove(0);
            c.id = id;
            c.scrub.as_mut().unwrap().oldest_verified_unix_ms = now_ms();
            servers.push(c);
        }
        r.chunk_servers = servers;
        r
    }

    #[test]
    fn a_healthy_cluster_is_ok() {
        let h = verdict(&healthy(), now_ms());
        assert_eq!((h.status, h.reasons.len()), (Level::Ok, 0), "{h:?}");
        assert_eq!(Level::Ok.exit_code(), 0);
        assert_eq!(serde_json::to_value(&h).unwrap()["status"], "HEALTH_OK");
    }

    #[test]
    fn each_problem_is_named_at_its_level() {
        let now = now_ms();
        let mut r = healthy();
        r.chunk_servers[1].state = "down".into();
        let h = verdict(&r, now);
        assert_eq!(
            (h.status, codes(&h)),
            (
                Level::Warn,
                vec!["CHUNK_SERVER_DOWN", "REPLICATION_DEGRADED"]
            )
        );
        assert_eq!(h.status.exit_code(), 1);

        r.chunk_servers[2].state = "down".into();
        let h = verdict(&r, now);
        assert_eq!(h.status, Level::Err, "{h:?}");
        assert_eq!(codes(&h)[0], "TOO_FEW_CHUNK_SERVERS", "errors first");
        assert!(h.reasons[0].message.ends_with("need at least 2"), "{h:?}");
        r.commit_quorum = 1;
        let h = verdict(&r, now);
        assert_eq!(
            h.status,
            Level::Warn,
            "writes still commit with one replica (--min-replication 1): {h:?}"
        );

        let mut r = healthy();
        r.repair.under_replicated = 3;
        r.repair.missing = 1;
        let h = verdict(&r, now);
        assert_eq!(codes(&h), vec!["CHUNKS_MISSING", "CHUNKS_UNDER_REPLICATED"]);
        assert!(h.reasons[1].message.starts_with("2 chunk(s)"), "{h:?}");

        let mut r = healthy();
        r.chunk_servers[0].used_bytes = 90;
        r.chunk_servers[0].free_bytes = 10;
        r.chunk_servers[1].used_bytes = 98;
        r.chunk_servers[1].free_bytes = 2;
        assert_eq!(
            codes(&verdict(&r, now)),
            vec!["DISK_FULL", "DISK_NEARLY_FULL"]
        );

        let mut r = healthy();
        r.meta.push(MetaNode {
            id: 2,
            addr: "127.0.0.1:7002".into(),
            role: "down".into(),
            term: 0,
            last_applied: 0,
            last_log_index: 0,
            lag: 0,
            applied_digest: String::new(),
            metrics_url: None,
        });
        let h = verdict(&r, now);
        assert_eq!(
            codes(&h),
            vec!["META_QUORUM_AT_RISK", "META_NODE_DOWN"],
            "1 of 2 down"
        );

        let mut r = healthy();
        let mut twin = sample().meta.remove(0);
        twin.id = 3;
        twin.role = "follower".into();
        twin.applied_digest = "beef".into();
        r.meta[0].applied_digest = "cafe".into();
        r.meta.push(twin);
        assert_eq!(codes(&verdict(&r, now)), vec!["META_STATE_DIVERGED"]);
        r.meta[1].last_applied -= 1;
        r.meta[0].last_log_index = r.meta[1].last_applied + LAG_WARN_ENTRIES + 2;
        assert_eq!(
            codes(&verdict(&r, now)),
            vec!["META_NODE_LAGGING"],
            "different indexes are not compared"
        );
    }

    #[test]
    fn a_scrub_is_overdue_when_a_chunk_waits_past_its_schedule() {
        let now = now_ms();
        let mut r = healthy();
        let s = r.chunk_servers[0].scrub.as_mut().unwrap();
        (s.interval_secs, s.start_delay_secs) = (60, 30);
        assert_eq!(overdue_after_secs(s), 120);
        s.unverified_chunks = 5969;
        s.oldest_unverified_unix_ms = now - 119_000;
        assert_eq!(scrub_overdue(s, now), None);
        s.oldest_unverified_unix_ms = now - 121_000;
        assert_eq!(scrub_overdue(s, now), Some(121));
        let h = verdict(&r, now);
        assert_eq!(codes(&h), vec!["SCRUB_OVERDUE"]);
        assert!(h.reasons[0].message.contains("2m01s"), "{h:?}");
    }
}
