//! The `cairn` binary: `cairn mount` and `cairn status`.
use cairn_fuse_client::{mount, status};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn distributed file system client"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the file system (runs in the foreground until SIGTERM/SIGINT or unmount).
    Mount {
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// Meta server addresses, comma separated (host:port,host:port,...).
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// Accepted for compatibility; the mount always runs in the foreground.
        #[arg(long)]
        foreground: bool,
    },
    /// Show the cluster: meta nodes and chunk servers.
    Status {
        /// Meta server addresses, comma separated.
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds without an answer from a leader.
        #[arg(long, env = "CAIRN_STATUS_TIMEOUT", default_value_t = 5.0)]
        timeout: f64,
    },
}

fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Mount {
            mountpoint, meta, ..
        } => mount::run(mount::MountConfig {
            mountpoint,
            meta: split_addrs(&meta),
        }),
        Cmd::Status {
            meta,
            json,
            timeout,
        } => run_status(split_addrs(&meta), json, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_status(meta: Vec<String>, json: bool, timeout: f64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs_f64(timeout.max(0.1));
    let st = rt.block_on(status::fetch(meta, timeout))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", status::table(&st));
    }
    Ok(())
}
