//! Configuration of a chunk server: command-line flags, each also settable from a
//! `CAIRN_CHUNK_*` environment variable and as a key of the `--config` file.
use crate::scrub::ScrubConfig;
use cairn_common::config_file::{parse_duration, parse_rate, parse_size, ConfigError};
use std::path::PathBuf;
use std::time::Duration;

/// `cairn-chunk`: stores Cairn's file chunks durably and serves them, verified.
///
/// Every setting is a flag, an environment variable (`CAIRN_CHUNK_*`) and a key of the
/// `--config` file (the flag's long name: `scrub-interval = "1h"`); flags win over the
/// environment, which wins over the file. Durations take a unit (`500ms`, `5s`, `1h`), sizes
/// and rates too (`64MiB`, `64MiB/s`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cairn-chunk", version, about)]
pub struct Config {
    /// A TOML file of settings: the keys are the long flags below (`data-dir =
    /// "/var/lib/cairn/chunks"`, `meta = ["host1:7001", "host2:7001"]`, `reserve = "1GiB"`).
    #[arg(long, env = "CAIRN_CHUNK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

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

    /// Interval of the heartbeats to the metadata cluster (duration).
    #[arg(long, env = "CAIRN_CHUNK_HEARTBEAT", default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Free space kept in reserve on the data file system (size): puts that would eat into it
    /// are refused with `no-space`.
    #[arg(long, env = "CAIRN_CHUNK_RESERVE", default_value = "64MiB", value_name = "SIZE", value_parser = parse_size)]
    pub reserve: u64,

    /// How long in-flight requests may take to finish after SIGTERM before the server exits
    /// anyway (duration).
    #[arg(long, env = "CAIRN_CHUNK_DRAIN_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Disk bandwidth the background scrub may use (rate, like `64MiB/s`; 0 is unlimited). Low
    /// enough that client reads and writes keep most of the disk.
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_RATE", default_value = "64MiB/s", value_name = "RATE", value_parser = parse_rate)]
    pub scrub_rate: u64,

    /// Pause between the end of one scrub pass and the start of the next (duration).
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_INTERVAL", default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    pub scrub_interval: Duration,

    /// Wait after start-up before the first scrub pass, to let the server settle (duration).
    #[arg(long, env = "CAIRN_CHUNK_SCRUB_START_DELAY", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub scrub_start_delay: Duration,
}

impl Config {
    /// A configuration for an in-process server on `127.0.0.1:0` with no metadata cluster.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir: PathBuf = data_dir.into();
        let args: [&std::ffi::OsStr; 5] = [
            "cairn-chunk".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        let mut c = <Config as clap::Parser>::try_parse_from(args)
            .unwrap_or_else(|e| panic!("cairn-chunk defaults: {e}"));
        c.reserve = 0;
        c.drain_timeout = Duration::from_secs(5);
        // No pass on its own while a test runs: tests start passes with ScrubNow.
        c.scrub_start_delay = Duration::from_secs(3600);
        c
    }

    /// The settings of this process: flags, environment, then the `--config` file.
    pub fn from_args() -> Result<Config, ConfigError> {
        cairn_common::config_file::parse()
    }

    /// Checks values clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.listen.is_empty(), "--listen must not be empty");
        anyhow::ensure!(
            self.heartbeat.as_millis() > 0,
            "--heartbeat must be at least 1ms (got {:?})",
            self.heartbeat
        );
        anyhow::ensure!(
            self.meta.iter().all(|a| !a.trim().is_empty()),
            "--meta contains an empty address"
        );
        anyhow::ensure!(
            !self.scrub_interval.is_zero(),
            "--scrub-interval must be more than 0"
        );
        Ok(())
    }

    /// The scrub's settings.
    pub fn scrub(&self) -> ScrubConfig {
        ScrubConfig {
            rate_bytes: self.scrub_rate,
            interval: self.scrub_interval,
            start_delay: self.scrub_start_delay,
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_rates_take_units() {
        let c = <Config as clap::Parser>::try_parse_from([
            "cairn-chunk",
            "--data-dir=/tmp/x",
            "--reserve=1GiB",
            "--scrub-rate=8MiB/s",
            "--scrub-interval=2h",
        ])
        .unwrap();
        assert_eq!(c.reserve, 1 << 30);
        assert_eq!(c.scrub().rate_bytes, 8 << 20);
        assert_eq!(c.scrub().interval, Duration::from_secs(7200));
        assert_eq!(
            c.heartbeat_interval(),
            Duration::from_secs(1),
            "the default"
        );
        let unitless = ["cairn-chunk", "--data-dir=/x", "--scrub-interval=60"];
        assert!(<Config as clap::Parser>::try_parse_from(unitless).is_err());
    }

    /// The example in `packaging/config/` parses, and the defaults it shows in comments are the
    /// real ones (uncommented, they change nothing).
    #[test]
    fn the_packaged_example_file_is_true() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/config/cairn-chunk.toml"
        );
        let c: Config = cairn_common::config_file::check_example(example.as_ref()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.meta.len(), 3);
    }
}
