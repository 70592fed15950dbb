//! Configuration of one meta node: command-line flags (clap, each with a `CAIRN_META_*` env var).
use crate::raft::network::SNAPSHOT_CHUNK_BYTES;
use crate::service::ServiceConfig;
use clap::Parser;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// One `id=host:port` entry of `--peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
}

fn parse_peer(s: &str) -> Result<Peer, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer {s:?} is not of the form id=host:port"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("peer {s:?}: bad id: {e}"))?;
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(format!("peer {s:?}: address is not host:port"));
    }
    Ok(Peer {
        id,
        addr: addr.to_string(),
    })
}

/// A Cairn metadata node (one member of the Raft cluster).
#[derive(Parser, Clone, Debug)]
#[command(name = "cairn-meta", version, about)]
pub struct Config {
    /// This node's Raft id: unique in the cluster, greater than 0.
    #[arg(long, env = "CAIRN_META_ID")]
    pub id: u64,

    /// Address to listen on for clients and peers (host:port; port 0 picks a free port).
    #[arg(long, env = "CAIRN_META_LISTEN")]
    pub listen: String,

    /// Address peers and clients reach this node at. Default: this node's entry in `--peers`,
    /// else the bound listen address.
    #[arg(long, env = "CAIRN_META_ADVERTISE")]
    pub advertise: Option<String>,

    /// The initial cluster, `id=host:port,...` (including this node). A node whose log is empty
    /// bootstraps the cluster with exactly this membership; every node may be given the same list.
    #[arg(long, env = "CAIRN_META_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,

    /// Address of the HTTP port serving `/metrics` (Prometheus text), `/healthz` and `/readyz`
    /// (host:port; port 0 picks a free port). Default: none.
    #[arg(long, env = "CAIRN_META_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Directory of this node's RocksDB (`db/`) and current snapshot (`snapshot/`).
    #[arg(long, env = "CAIRN_META_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Replicas per chunk.
    #[arg(long, env = "CAIRN_META_REPLICATION", default_value_t = 3)]
    pub replication: u32,

    /// Fewest acknowledged replicas a chunk write may commit with while servers are down.
    #[arg(long, env = "CAIRN_META_MIN_REPLICATION", default_value_t = 2)]
    pub min_replication: u32,

    /// A chunk server with no heartbeat for this long (ms) is considered down.
    #[arg(long, env = "CAIRN_META_HEARTBEAT_TIMEOUT_MS", default_value_t = 5000)]
    pub heartbeat_timeout_ms: u64,

    /// Build a snapshot (and purge the log) after this many entries since the last one.
    #[arg(long, env = "CAIRN_META_SNAPSHOT_LOGS", default_value_t = 10000)]
    pub snapshot_logs: u64,

    /// Interval (ms) of the leader's Raft heartbeats.
    #[arg(long, env = "CAIRN_META_RAFT_HEARTBEAT_MS", default_value_t = 100)]
    pub raft_heartbeat_ms: u64,

    /// Lower bound (ms) of the randomized Raft election timeout. A follower that hears nothing
    /// from the leader starts an election after the leader's lease (openraft 0.9: the upper
    /// bound) plus this random timeout: 600–800 ms with the defaults, which with the vote, the
    /// new leader's first entry and the clients' retry makes a leader failover of ~0.8 s
    /// (`scripts/bench` measures it). Lower values fail over faster and risk elections on a
    /// loaded machine; the heartbeat interval must stay well below it.
    #[arg(
        long,
        env = "CAIRN_META_ELECTION_TIMEOUT_MIN_MS",
        default_value_t = 200
    )]
    pub election_timeout_min_ms: u64,

    /// Upper bound (ms) of the randomized Raft election timeout.
    #[arg(
        long,
        env = "CAIRN_META_ELECTION_TIMEOUT_MAX_MS",
        default_value_t = 400
    )]
    pub election_timeout_max_ms: u64,

    /// Confirm leadership with a heartbeat round for every read (coalesced), instead of
    /// answering reads under the leader's lease (see `read_index`). Both are linearizable; the
    /// lease saves a network round per read and leans on bounded clock-rate drift.
    #[arg(long, env = "CAIRN_META_NO_LEASE_READS")]
    pub no_lease_reads: bool,

    /// On shutdown, how long (ms) in-flight RPCs may take to finish before they are cut off.
    #[arg(long, env = "CAIRN_META_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Pause (ms) between two scans of the repair worker (leader only).
    #[arg(long, env = "CAIRN_META_REPAIR_INTERVAL_MS", default_value_t = 10_000)]
    pub repair_interval_ms: u64,

    /// Bandwidth (MiB/s) repair may use to copy chunks server to server; 0 is unlimited.
    #[arg(long, env = "CAIRN_META_REPAIR_RATE_MB", default_value_t = 100)]
    pub repair_rate_mb: u64,

    /// Chunk copies repair keeps in flight at once.
    #[arg(long, env = "CAIRN_META_REPAIR_CONCURRENCY", default_value_t = 4)]
    pub repair_concurrency: usize,

    /// Seconds a chunk stays unreferenced (overwritten, deleted) before GC deletes it.
    #[arg(long, env = "CAIRN_META_GC_GRACE_SECS", default_value_t = 600)]
    pub gc_grace_secs: u64,

    /// Pause (ms) between two GC rounds (leader only).
    #[arg(long, env = "CAIRN_META_GC_INTERVAL_MS", default_value_t = 10_000)]
    pub gc_interval_ms: u64,

    /// Seconds a collected chunk's tombstone is kept; a commit of an upload placed before an
    /// older collection is refused.
    #[arg(
        long,
        env = "CAIRN_META_GC_TICKET_HORIZON_SECS",
        default_value_t = 86_400
    )]
    pub gc_ticket_horizon_secs: u64,

    /// Seconds between two scans of the chunk servers' inventories for copies the cluster does
    /// not know (uploads never committed); such copies older than the grace are collected.
    #[arg(long, env = "CAIRN_META_GC_ORPHAN_SCAN_SECS", default_value_t = 3600)]
    pub gc_orphan_scan_secs: u64,

    /// Seconds a copy no chunk record knows must have been on disk before it counts as an
    /// abandoned upload (a file being written keeps its uploaded chunks uncommitted until it is
    /// closed, so this must exceed the longest write).
    #[arg(long, env = "CAIRN_META_GC_ORPHAN_AGE_SECS", default_value_t = 86_400)]
    pub gc_orphan_age_secs: u64,

    /// Seconds a mount session lives without a renewal. When it ends, the mount's locks are
    /// released and the files it kept open after unlink are deleted. Mounts renew every quarter.
    #[arg(long, env = "CAIRN_META_SESSION_TTL_SECS", default_value_t = 60)]
    pub session_ttl_secs: u64,

    /// Seconds an upload session (chunks stored for a version not yet committed: an interrupted
    /// copy, `cairn put`) lives without a new chunk recorded. Then it is aborted and its chunks
    /// become garbage.
    #[arg(long, env = "CAIRN_META_UPLOAD_TTL_SECS", default_value_t = 86_400)]
    pub upload_ttl_secs: u64,
    /// TEST HOOK: applying the log entry at this index fails as a storage error would (the
    /// node must stop). Never set in production.
    #[arg(long, hide = true)]
    pub test_fail_apply_at: Option<u64>,
    /// TEST HOOK: a file holding seconds (signed) added to this node's wall clock, read at every
    /// use, so a test can step the clock of a running node. Never set in production.
    #[arg(long, hide = true)]
    pub test_clock_offset_file: Option<PathBuf>,
}

impl Config {
    /// A config with every default, for tests and embedding.
    pub fn new(id: u64, listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            id,
            listen: listen.into(),
            advertise: None,
            peers: Vec::new(),
            metrics_listen: None,
            data_dir: data_dir.into(),
            replication: 3,
            min_replication: 2,
            heartbeat_timeout_ms: 5000,
            snapshot_logs: 10_000,
            raft_heartbeat_ms: 100,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            no_lease_reads: false,
            drain_timeout_ms: 10_000,
            repair_interval_ms: 10_000,
            repair_rate_mb: 100,
            repair_concurrency: 4,
            gc_grace_secs: 600,
            gc_interval_ms: 10_000,
            gc_ticket_horizon_secs: 86_400,
            gc_orphan_scan_secs: 3600,
            gc_orphan_age_secs: 86_400,
            session_ttl_secs: 60,
            upload_ttl_secs: 86_400,
            test_fail_apply_at: None,
            test_clock_offset_file: None,
        }
    }

    /// Refuses inconsistent settings with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be greater than 0".into());
        }
        let mut ids = BTreeSet::new();
        for p in &self.peers {
            if p.id == 0 {
                return Err("--peers: ids must be greater than 0".into());
            }
            if !ids.insert(p.id) {
                return Err(format!("--peers: id {} appears twice", p.id));
            }
        }
        if !self.peers.is_empty() && !ids.contains(&self.id) {
            return Err(format!("--peers must include this node (id {})", self.id));
        }
        if let (Some(adv), Some(me)) =
            (&self.advertise, self.peers.iter().find(|p| p.id == self.id))
        {
            if adv != &me.addr {
                return Err(format!(
                    "--advertise {adv} differs from this node's --peers address {}",
                    me.addr
                ));
            }
        }
        if self.replication == 0 {
            return Err("--replication must be at least 1".into());
        }
        if self.min_replication == 0 || self.min_replication > self.replication {
            return Err("--min-replication must be between 1 and --replication".into());
        }
        if self.snapshot_logs == 0 {
            return Err("--snapshot-logs must be at least 1".into());
        }
        if self.raft_heartbeat_ms == 0 || self.election_timeout_min_ms <= self.raft_heartbeat_ms {
            return Err("--election-timeout-min-ms must exceed --raft-heartbeat-ms (> 0)".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("--election-timeout-max-ms must exceed --election-timeout-min-ms".into());
        }
        if self.repair_interval_ms == 0 {
            return Err("--repair-interval-ms must be at least 1".into());
        }
        if self.repair_concurrency == 0 {
            return Err("--repair-concurrency must be at least 1".into());
        }
        if self.gc_interval_ms == 0 {
            return Err("--gc-interval-ms must be at least 1".into());
        }
        if self.upload_ttl_secs == 0 {
            return Err("--upload-ttl-secs must be at least 1".into());
        }
        if self.session_ttl_secs < 2 {
            return Err("--session-ttl-secs must be at least 2".into());
        }
        if self.gc_ticket_horizon_secs < self.gc_grace_secs {
            return Err("--gc-ticket-horizon-secs must be at least --gc-grace-secs".into());
        }
        Ok(())
    }

    /// The address this node advertises, given the address its listener is bound to.
    pub fn advertise_addr(&self, bound: std::net::SocketAddr) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        if let Some(me) = self.peers.iter().find(|p| p.id == self.id) {
            return me.addr.clone();
        }
        bound.to_string()
    }

    /// openraft's settings derived from this config.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        openraft::Config {
            cluster_name: "cairn-meta".to_string(),
            heartbeat_interval: self.raft_heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // A snapshot chunk is at most SNAPSHOT_CHUNK_BYTES; give it time on a busy LAN.
            install_snapshot_timeout: 5_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            // Keep a tail of the log after a snapshot so a briefly lagging follower catches up by
            // entries rather than by a full snapshot.
            max_in_snapshot_log_to_keep: (self.snapshot_logs / 10).min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft config: {e}"))
    }

    /// How long reads may be answered under the leader's lease; `None` with
    /// `--no-lease-reads`.
    pub fn read_lease(&self, raft: &openraft::Config) -> Option<Duration> {
        (!self.no_lease_reads).then(|| crate::read_index::lease_window(raft))
    }

    pub fn repair_config(&self) -> crate::repair::RepairConfig {
        crate::repair::RepairConfig {
            replication: self.replication as usize,
            interval: Duration::from_millis(self.repair_interval_ms),
            rate_bytes: self.repair_rate_mb.saturating_mul(1 << 20),
            concurrency: self.repair_concurrency,
        }
    }

    /// The longest age this node's expiries ask its log clock about (see `crate::log_clock`).
    pub fn longest_expiry(&self) -> Duration {
        [
            self.gc_grace_secs,
            self.session_ttl_secs,
            self.upload_ttl_secs,
        ]
        .into_iter()
        .map(Duration::from_secs)
        .chain([crate::gc::REQUEST_ID_TTL])
        .max()
        .unwrap_or_default()
    }

    pub fn gc_config(&self) -> crate::gc::GcConfig {
        crate::gc::GcConfig {
            grace: Duration::from_secs(self.gc_grace_secs),
            interval: Duration::from_millis(self.gc_interval_ms),
            horizon: Duration::from_secs(self.gc_ticket_horizon_secs),
            orphan_scan: Duration::from_secs(self.gc_orphan_scan_secs),
            orphan_age: Duration::from_secs(self.gc_orphan_age_secs),
        }
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            replication: self.replication,
            min_replication: self.min_replication,
            session_ttl: Duration::from_secs(self.session_ttl_secs),
        }
    }

    /// A chunk server with no heartbeat for this long is down.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_validates() {
        let c = Config::try_parse_from([
            "cairn-meta",
            "--id",
            "2",
            "--listen",
            "0.0.0.0:7002",
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(c.peers.len(), 3);
        assert_eq!(
            c.peers[1],
            Peer {
                id: 2,
                addr: "127.0.0.1:7002".into()
            }
        );
        c.validate().unwrap();
        assert_eq!(
            c.advertise_addr("0.0.0.0:7002".parse().unwrap()),
            "127.0.0.1:7002"
        );
        c.raft_config().unwrap();
    }

    #[test]
    fn refuses_bad_settings() {
        assert!(parse_peer("x=1.2.3.4:5").is_err());
        assert!(parse_peer("1=nohost").is_err());
        let mut c = Config::new(4, "127.0.0.1:0", "/tmp/x");
        c.peers = vec![parse_peer("1=a:1").unwrap()];
        assert!(c.validate().unwrap_err().contains("include this node"));
        let mut c = Config::new(1, "127.0.0.1:0", "/tmp/x");
        c.min_replication = 4;
        assert!(c.validate().is_err());
        c = Config::new(0, "127.0.0.1:0", "/tmp/x");
        assert!(c.validate().is_err());
    }
}
