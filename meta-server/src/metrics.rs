//! What a meta node serves on its HTTP port (`--metrics-listen`, see
//! [`cairn_common::metrics`]): its Raft figures on every node, and on the leader the
//! cluster's — chunk servers (up, capacity, scrub), repair and GC.
//!
//! Gauges, set at each scrape ([`MetaProbe::refresh`]):
//! - `cairn_raft_term`, `cairn_raft_state{state}` (1 for the node's state: leader, follower,
//!   candidate, learner, shutdown), `cairn_raft_last_log_index`, `cairn_raft_applied_index`,
//!   and on the leader `cairn_raft_commit_index` (the index a majority holds) and
//!   `cairn_raft_follower_lag_entries{follower}`;
//! - leader only: `cairn_chunk_server_up{server}`, `cairn_chunk_server_capacity_bytes`,
//!   `…_used_bytes`, `…_free_bytes`, `…_chunks`, `cairn_chunk_server_heartbeat_age_seconds`,
//!   the scrub's `cairn_scrub_unverified_chunks{server}`,
//!   `cairn_scrub_oldest_unverified_age_seconds`, `cairn_scrub_oldest_verified_age_seconds`,
//!   `cairn_scrub_corruptions{server}`; `cairn_repair_under_replicated_chunks`,
//!   `cairn_repair_missing_chunks`, `cairn_repair_over_replicated_chunks`,
//!   `cairn_repair_replicas_copied`, `cairn_repair_failures`, `cairn_gc_pending_chunks`,
//!   `cairn_gc_collected_chunks` (the last three since the leader took office).
//!
//! `/readyz` answers 200 when the node knows a leader (it can serve or forward requests).
use crate::leader::LeaderState;
use crate::node::MetaNode;
use cairn_common::metrics::{age_secs, Probe};
use metrics::gauge;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Instant;

pub struct MetaProbe {
    pub node: Arc<MetaNode>,
    pub leader: Arc<LeaderState>,
}

const STATES: [(ServerState, &str); 5] = [
    (ServerState::Leader, "leader"),
    (ServerState::Follower, "follower"),
    (ServerState::Candidate, "candidate"),
    (ServerState::Learner, "learner"),
    (ServerState::Shutdown, "shutdown"),
];

/// The highest index a majority of the voters (leader included) hold: the commit index.
fn majority_index(own: u64, followers: &[u64], voters: usize) -> u64 {
    let mut all: Vec<u64> = std::iter::once(own)
        .chain(followers.iter().copied())
        .collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    let majority = voters / 2 + 1;
    all.get(majority.saturating_sub(1)).copied().unwrap_or(0)
}

impl MetaProbe {
    fn raft_figures(&self) {
        let m = self.node.raft().metrics().borrow().clone();
        gauge!("cairn_raft_term").set(m.current_term as f64);
        for (state, name) in STATES {
            gauge!("cairn_raft_state", "state" => name).set(f64::from(u8::from(m.state == state)));
        }
        let last = m.last_log_index.unwrap_or(0);
        gauge!("cairn_raft_last_log_index").set(last as f64);
        gauge!("cairn_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
        if let Some(repl) = &m.replication {
            let voters = m.membership_config.membership().voter_ids().count();
            let mut matched = Vec::new();
            for (id, log) in repl.iter().filter(|(id, _)| **id != self.node.id) {
                let index = log.map_or(0, |l| l.index);
                matched.push(index);
                gauge!("cairn_raft_follower_lag_entries", "follower" => id.to_string())
                    .set(last.saturating_sub(index) as f64);
            }
            gauge!("cairn_raft_commit_index").set(majority_index(last, &matched, voters) as f64);
        }
    }

    fn leader_figures(&self) {
        let now = Instant::now();
        let scrub = self.leader.scrub_figures();
        if let Ok(servers) = self.node.fsm().servers() {
            for rec in servers {
                let id = rec.id.to_string();
                let up = self.leader.placement.is_up(rec.id, now);
                gauge!("cairn_chunk_server_up", "server" => id.clone())
                    .set(f64::from(u8::from(up)));
                if let Some(s) = self.leader.placement.get(rec.id) {
                    let l = &s.load;
                    gauge!("cairn_chunk_server_capacity_bytes", "server" => id.clone())
                        .set(l.capacity_bytes as f64);
                    gauge!("cairn_chunk_server_used_bytes", "server" => id.clone())
                        .set(l.used_bytes as f64);
                    gauge!("cairn_chunk_server_free_bytes", "server" => id.clone())
                        .set(l.free_bytes as f64);
                    gauge!("cairn_chunk_server_chunks", "server" => id.clone())
                        .set(l.chunk_count as f64);
                    gauge!("cairn_chunk_server_heartbeat_age_seconds", "server" => id.clone())
                        .set(now.saturating_duration_since(s.last_seen).as_secs_f64());
                }
                if let Some(st) = scrub.get(&rec.id) {
                    gauge!("cairn_scrub_unverified_chunks", "server" => id.clone())
                        .set(st.unverified_chunks as f64);
                    gauge!("cairn_scrub_oldest_unverified_age_seconds", "server" => id.clone())
                        .set(age_secs(st.oldest_unverified_unix_ms));
                    gauge!("cairn_scrub_oldest_verified_age_seconds", "server" => id.clone())
                        .set(age_secs(st.oldest_verified_unix_ms));
                    gauge!("cairn_scrub_corruptions", "server" => id.clone())
                        .set(st.corruptions as f64);
                    gauge!("cairn_scrub_interval_seconds", "server" => id)
                        .set(st.interval_secs as f64);
                }
            }
        }
        let r = self.leader.repair.to_proto();
        gauge!("cairn_repair_under_replicated_chunks").set(r.under_replicated as f64);
        gauge!("cairn_repair_missing_chunks").set(r.missing as f64);
        gauge!("cairn_repair_over_replicated_chunks").set(r.over_replicated as f64);
        gauge!("cairn_repair_replicas_copied").set(r.replicas_copied as f64);
        gauge!("cairn_repair_failures").set(r.failures as f64);
        if let Ok(pending) = self.node.fsm().gc_pending() {
            gauge!("cairn_gc_pending_chunks").set(pending as f64);
        }
        gauge!("cairn_gc_collected_chunks").set(self.leader.gc.collected_total() as f64);
    }
}

impl Probe for MetaProbe {
    fn describe(&self) {
        use metrics::describe_gauge as d;
        d!("cairn_raft_term", "This node's current Raft term");
        d!(
            "cairn_raft_state",
            "1 for this node's Raft state (leader, follower, candidate, learner, shutdown)"
        );
        d!(
            "cairn_raft_last_log_index",
            "Index of the last entry in this node's Raft log"
        );
        d!(
            "cairn_raft_applied_index",
            "Index of the last entry this node applied to its state"
        );
        d!(
            "cairn_raft_commit_index",
            "Leader only: the highest log index a majority of the voters hold"
        );
        d!(
            "cairn_raft_follower_lag_entries",
            "Leader only: log entries a follower lacks"
        );
        d!("cairn_meta_is_leader", "1 on the meta leader, else 0");
        d!(
            "cairn_chunk_server_up",
            "Leader only: 1 if the chunk server heartbeats, else 0"
        );
        d!(
            "cairn_chunk_server_capacity_bytes",
            "Leader only: size of the chunk server's disk"
        );
        d!(
            "cairn_chunk_server_used_bytes",
            "Leader only: used bytes of the chunk server's disk"
        );
        d!(
            "cairn_chunk_server_free_bytes",
            "Leader only: bytes available on the chunk server's disk"
        );
        d!(
            "cairn_chunk_server_chunks",
            "Leader only: chunks the server holds"
        );
        d!(
            "cairn_chunk_server_heartbeat_age_seconds",
            "Leader only: seconds since the server's last heartbeat"
        );
        d!(
            "cairn_scrub_unverified_chunks",
            "Leader only: chunks on the server not read back by a scrub since they arrived"
        );
        d!(
            "cairn_scrub_oldest_unverified_age_seconds",
            "Leader only: age of the oldest chunk not verified yet (0: none)"
        );
        d!(
            "cairn_scrub_oldest_verified_age_seconds",
            "Leader only: age of the least recent scrub read-back (0: none)"
        );
        d!(
            "cairn_scrub_corruptions",
            "Leader only: corrupt copies the server's scrub found since it started"
        );
        d!(
            "cairn_scrub_interval_seconds",
            "Leader only: the server's scrub interval"
        );
        d!(
            "cairn_repair_under_replicated_chunks",
            "Leader only: chunks with fewer intact replicas than the replication factor"
        );
        d!(
            "cairn_repair_missing_chunks",
            "Leader only: chunks with no intact replica"
        );
        d!(
            "cairn_repair_over_replicated_chunks",
            "Leader only: chunks with surplus replicas"
        );
        d!(
            "cairn_repair_replicas_copied",
            "Leader only: replicas repair copied since this leader took office"
        );
        d!(
            "cairn_repair_failures",
            "Leader only: failed repair copies since this leader took office"
        );
        d!(
            "cairn_gc_pending_chunks",
            "Leader only: unreferenced chunks waiting for collection"
        );
        d!(
            "cairn_gc_collected_chunks",
            "Leader only: chunks collected since this leader took office"
        );
    }

    async fn refresh(&self) {
        self.raft_figures();
        let leading = self.node.is_leader();
        gauge!("cairn_meta_is_leader").set(f64::from(u8::from(leading)));
        if leading {
            self.leader_figures();
        }
    }

    async fn ready(&self) -> Result<(), String> {
        match self.node.leader() {
            Some(_) => Ok(()),
            None => Err("no meta leader known".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::majority_index;

    #[test]
    fn the_commit_index_is_what_a_majority_holds() {
        assert_eq!(majority_index(10, &[10, 4], 3), 10);
        assert_eq!(majority_index(10, &[7, 4], 3), 7);
        assert_eq!(majority_index(10, &[3, 4, 9, 1], 5), 4);
        assert_eq!(majority_index(5, &[], 1), 5);
    }
}
