//! Configuration of one meta node: command-line flags (clap, each with a `CAIRN_META_*` env var).
use crate::raft::network::SNAPSHOT_CHUNK_BYTES;
use crate::service::ServiceConfig;
use cairn_common::config_file::{parse_duration, parse_rate, ConfigError};
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
///
/// Every setting is a flag, an environment variable (`CAIRN_META_*`) and a key of the
/// `--config` file (the flag's long name: `heartbeat-timeout = "5s"`); flags win over the
/// environment, which wins over the file. Durations take a unit (`500ms`, `5s`, `10m`, `24h`),
/// sizes and rates too (`64MiB`, `100MiB/s`).
#[derive(Parser, Clone, Debug)]
#[command(name = "cairn-meta", version, about)]
pub struct Config {
    /// A TOML file of settings: the keys are the long flags below (`listen = "0.0.0.0:7001"`,
    /// `peers = ["1=host1:7001", "2=host2:7001", "3=host3:7001"]`, `gc-grace = "10m"`).
    #[arg(long, env = "CAIRN_META_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

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

    /// A chunk server with no heartbeat for this long is considered down (duration).
    #[arg(long, env = "CAIRN_META_HEARTBEAT_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Build a snapshot (and purge the log) after this many entries since the last one.
    #[arg(long, env = "CAIRN_META_SNAPSHOT_LOGS", default_value_t = 10000)]
    pub snapshot_logs: u64,

    /// Interval of the leader's Raft heartbeats (duration).
    #[arg(long, env = "CAIRN_META_RAFT_HEARTBEAT", default_value = "100ms", value_name = "DURATION", value_parser = parse_duration)]
    pub raft_heartbeat: Duration,

    /// Lower bound of the randomized Raft election timeout (duration). A follower that hears
    /// nothing from the leader starts an election after the leader's lease (openraft 0.9: the
    /// upper bound) plus this random timeout: 600–800 ms with the defaults, which with the vote,
    /// the new leader's first entry and the clients' retry makes a leader failover of ~0.8 s
    /// (`scripts/bench` measures it). Lower values fail over faster and risk elections on a
    /// loaded machine; the heartbeat interval must stay well below it.
    #[arg(
        long,
        env = "CAIRN_META_ELECTION_TIMEOUT_MIN",
        default_value = "200ms",
        value_name = "DURATION", value_parser = parse_duration
    )]
    pub election_timeout_min: Duration,

    /// Upper bound of the randomized Raft election timeout (duration).
    #[arg(
        long,
        env = "CAIRN_META_ELECTION_TIMEOUT_MAX",
        default_value = "400ms",
        value_name = "DURATION", value_parser = parse_duration
    )]
    pub election_timeout_max: Duration,

    /// Confirm leadership with a heartbeat round for every read (coalesced), instead of
    /// answering reads under the leader's lease (see `read_index`). Both are linearizable; the
    /// lease saves a network round per read and leans on bounded clock-rate drift.
    #[arg(long, env = "CAIRN_META_NO_LEASE_READS")]
    pub no_lease_reads: bool,

    /// On shutdown, how long in-flight RPCs may take to finish before they are cut off
    /// (duration).
    #[arg(long, env = "CAIRN_META_DRAIN_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Pause between two scans of the repair worker, leader only (duration).
    #[arg(long, env = "CAIRN_META_REPAIR_INTERVAL", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub repair_interval: Duration,

    /// Bandwidth repair may use to copy chunks server to server (rate, like `100MiB/s`; 0 is
    /// unlimited).
    #[arg(long, env = "CAIRN_META_REPAIR_RATE", default_value = "100MiB/s", value_name = "RATE", value_parser = parse_rate)]
    pub repair_rate: u64,

    /// Chunk copies repair keeps in flight at once.
    #[arg(long, env = "CAIRN_META_REPAIR_CONCURRENCY", default_value_t = 4)]
    pub repair_concurrency: usize,

    /// How long a chunk stays unreferenced (overwritten, deleted) before GC deletes it
    /// (duration).
    #[arg(long, env = "CAIRN_META_GC_GRACE", default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_grace: Duration,

    /// Pause between two GC rounds, leader only (duration).
    #[arg(long, env = "CAIRN_META_GC_INTERVAL", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_interval: Duration,

    /// How long a collected chunk's tombstone is kept (duration); a commit of an upload placed
    /// before an older collection is refused.
    #[arg(long, env = "CAIRN_META_GC_TICKET_HORIZON", default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_ticket_horizon: Duration,

    /// Pause between two scans of the chunk servers' inventories for copies the cluster does
    /// not know (uploads never committed); such copies older than `--gc-orphan-age` are
    /// collected (duration).
    #[arg(long, env = "CAIRN_META_GC_ORPHAN_SCAN", default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_orphan_scan: Duration,

    /// How long a copy no chunk record knows must have been on disk before it counts as an
    /// abandoned upload (duration). A file being written keeps its uploaded chunks uncommitted
    /// until it is closed, so this must exceed the longest write.
    #[arg(long, env = "CAIRN_META_GC_ORPHAN_AGE", default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub gc_orphan_age: Duration,

    /// How long a mount session lives without a renewal (duration). When it ends, the mount's
    /// locks are released and the files it kept open after unlink are deleted. Mounts renew
    /// every quarter.
    #[arg(long, env = "CAIRN_META_SESSION_TTL", default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub session_ttl: Duration,

    /// How long an upload session (chunks stored for a version not yet committed: an
    /// interrupted copy, `cairn put`) lives without a new chunk recorded (duration). Then it is
    /// aborted and its chunks become garbage.
    #[arg(long, env = "CAIRN_META_UPLOAD_TTL", default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub upload_ttl: Duration,
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
    /// A config with every default, for tests and embedding. The defaults are the flags' own
    /// (parsed here), so they are written in one place.
    pub fn new(id: u64, listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Config {
        let id = id.to_string();
        let listen: String = listen.into();
        let data_dir: PathBuf = data_dir.into();
        let args: [&std::ffi::OsStr; 7] = [
            "cairn-meta".as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        Config::try_parse_from(args).unwrap_or_else(|e| panic!("cairn-meta defaults: {e}"))
    }

    /// The settings of this process: flags, environment, then the `--config` file.
    pub fn from_args() -> Result<Config, ConfigError> {
        cairn_common::config_file::parse()
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
        let ms = |d: Duration| d.as_millis();
        if ms(self.raft_heartbeat) == 0 || self.election_timeout_min <= self.raft_heartbeat {
            return Err("--election-timeout-min must exceed --raft-heartbeat (>= 1ms)".into());
        }
        if ms(self.election_timeout_max) <= ms(self.election_timeout_min) {
            return Err("--election-timeout-max must exceed --election-timeout-min".into());
        }
        if self.repair_interval.is_zero() {
            return Err("--repair-interval must be more than 0".into());
        }
        if self.repair_concurrency == 0 {
            return Err("--repair-concurrency must be at least 1".into());
        }
        if self.gc_interval.is_zero() {
            return Err("--gc-interval must be more than 0".into());
        }
        if self.upload_ttl < Duration::from_secs(1) {
            return Err("--upload-ttl must be at least 1s".into());
        }
        if self.session_ttl < Duration::from_secs(2) {
            return Err("--session-ttl must be at least 2s".into());
        }
        if self.gc_ticket_horizon < self.gc_grace {
            return Err("--gc-ticket-horizon must be at least --gc-grace".into());
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
            heartbeat_interval: self.raft_heartbeat.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
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
            interval: self.repair_interval,
            rate_bytes: self.repair_rate,
            concurrency: self.repair_concurrency,
        }
    }

    /// The longest age this node's expiries ask its log clock about (see `crate::log_clock`).
    pub fn longest_expiry(&self) -> Duration {
        [
            self.gc_grace,
            self.session_ttl,
            self.upload_ttl,
            crate::gc::REQUEST_ID_TTL,
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    pub fn gc_config(&self) -> crate::gc::GcConfig {
        crate::gc::GcConfig {
            grace: self.gc_grace,
            interval: self.gc_interval,
            horizon: self.gc_ticket_horizon,
            orphan_scan: self.gc_orphan_scan,
            orphan_age: self.gc_orphan_age,
        }
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            replication: self.replication,
            min_replication: self.min_replication,
            session_ttl: self.session_ttl,
        }
    }

    /// A chunk server with no heartbeat for this long is down.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
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
    fn durations_and_rates_take_units() {
        let c = Config::try_parse_from([
            "cairn-meta",
            "--id=1",
            "--listen=127.0.0.1:0",
            "--data-dir=/tmp/x",
            "--gc-grace=90s",
            "--repair-rate=1GiB/s",
            "--raft-heartbeat=50ms",
        ])
        .unwrap();
        assert_eq!(c.gc_grace, Duration::from_secs(90));
        assert_eq!(c.repair_rate, 1 << 30);
        assert_eq!(c.raft_config().unwrap().heartbeat_interval, 50);
        let unitless = [
            "cairn-meta",
            "--id=1",
            "--listen=a:1",
            "--data-dir=/x",
            "--gc-grace=90",
        ];
        assert!(Config::try_parse_from(unitless).is_err());
    }

    /// The example in `packaging/config/` parses, and the defaults it shows in comments are the
    /// real ones (uncommented, they change nothing).
    #[test]
    fn the_packaged_example_file_is_true() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/config/cairn-meta.toml"
        );
        let c: Config = cairn_common::config_file::check_example(example.as_ref()).unwrap();
        c.validate().unwrap();
        assert_eq!((c.id, c.peers.len()), (1, 3));
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
