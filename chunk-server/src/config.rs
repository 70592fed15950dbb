//! Configuration of a chunk server: command-line flags, each also settable from a
//! `CAIRN_CHUNK_*` environment variable.
use crate::scrub::ScrubConfig;
use std::path::PathBuf;
use std::time::Duration;

/// `cairn-chunk`: stores Cairn's file chunks durably and serves them, verified.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cairn-chunk", version, about)]
pub struct Config {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    #[arg(long, env = "CAIRN_CHUNK_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: String,

    /// Address clients and the metadata cluster use to reach this server. Defaults to the
    /// address actually bound (so `--listen 127.0.0.1:0` advertises the real port).
    #[arg(long, env = "CAIRN_CHUNK_ADVERTISE")]
    pub advertise: Option<String>,

    /// Address of the HTTP port serving `/metrics` (Prometheus text), `/healthz` and `/readyz`
    /// (host:port; port 0 picks a free port). Default: none.
    #[arg(long, env = "CAIRN_CHUNK_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Directory holding chunks, temp files, quarantine and the server identity.
    #[arg(long, env = "CAIRN_CHUNK_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Metadata servers, comma-separated (`host:port,host:port`). Empty: run standalone,
    /// without registration or heartbeats (tests).
    #[arg(long, env = "CAIRN_CHUNK_META", value_delimiter = ',')]
    pub meta: Vec<String>,

    /// Milliseconds between heartbeats to the metadata cluster.
    #[arg(long, env = "CAIRN_CHUNK_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,

    /// Free bytes kept in reserve on the data file system: puts that would eat into it are
    /// refused with `no-space`.
    #[arg(long, env = "CAIRN_CHUNK_RESERVE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub reserve_bytes: u64,

    /// Seconds to wait for in-flight requests to finish after SIGTERM before exiting anyway.
    #[arg(long, env = "CAIRN_CHUNK_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,

    /// Disk bandwidth the background scrub may use, in MiB/s (0: unlimited). Low enough that
    /// client reads and writes keep most of the disk.
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_RATE_MB", default_value_t = 64)]
    pub scrub_rate_mb: u64,

    /// Seconds between the end of one scrub pass and the start of the next.
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_INTERVAL_SECS", default_value_t = 3600)]
    pub scrub_interval_secs: u64,

    /// Seconds after start-up before the first scrub pass (lets the server settle first).
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_START_DELAY_SECS", default_value_t = 10)]
    pub scrub_start_delay_secs: u64,
}

impl Config {
    /// A configuration for an in-process server on `127.0.0.1:0` with no metadata cluster.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: "127.0.0.1:0".into(),
            advertise: None,
            metrics_listen: None,
            data_dir: data_dir.into(),
            meta: Vec::new(),
            heartbeat_ms: 1000,
            reserve_bytes: 0,
            drain_secs: 5,
            scrub_rate_mb: 64,
            scrub_interval_secs: 3600,
            // No pass on its own while a test runs: tests start passes with ScrubNow.
            scrub_start_delay_secs: 3600,
        }
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.listen.is_empty(), "--listen must not be empty");
        anyhow::ensure!(
            self.heartbeat_ms > 0,
            "--heartbeat-ms must be at least 1 (got {})",
            self.heartbeat_ms
        );
        anyhow::ensure!(
            self.meta.iter().all(|a| !a.trim().is_empty()),
            "--meta contains an empty address"
        );
        anyhow::ensure!(
            self.scrub_rate_mb.checked_mul(1024 * 1024).is_some(),
            "--scrub-rate-mb is too large (got {})",
            self.scrub_rate_mb
        );
        anyhow::ensure!(
            self.scrub_interval_secs > 0,
            "--scrub-interval-secs must be at least 1 (got 0)"
        );
        Ok(())
    }

    /// The scrub's settings.
    pub fn scrub(&self) -> ScrubConfig {
        ScrubConfig {
            rate_bytes: self.scrub_rate_mb.saturating_mul(1024 * 1024),
            interval: Duration::from_secs(self.scrub_interval_secs),
            start_delay: Duration::from_secs(self.scrub_start_delay_secs),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}
