//! The `cairn` binary: `cairn mount`, `cairn status`, `cairn put`/`get`, `cairn bench` and the
//! admin commands.
use anyhow::Context;
use cairn_fuse_client::{admin, bench, mount, status, transfer};
use clap::{Args, Parser, Subcommand};
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
        /// Files of at most this many bytes (up to 65536) keep their content in the metadata
        /// cluster, replicated by Raft, instead of on chunk servers: no chunk round trips to
        /// write or read them. 0: every file's content goes to chunk servers.
        #[arg(long, env = "CAIRN_INLINE_MAX", default_value_t = cairn_common::INLINE_MAX as u32,
              value_parser = clap::value_parser!(u32).range(0..=cairn_common::INLINE_MAX as i64))]
        inline_max: u32,
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
    /// Check every file's chunks against the chunk servers: healthy, under-replicated and
    /// missing chunks, and the files affected. Exits with 2 when data is lost.
    Fsck {
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        #[arg(long)]
        json: bool,
        /// Most affected files to list.
        #[arg(long, default_value_t = 100)]
        max_files: u32,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Show each chunk server's scrub progress, or start a pass now (--now).
    Scrub {
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// Start a scrub pass on every chunk server that is up.
        #[arg(long)]
        now: bool,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Chunk server administration.
    Chunk {
        #[command(subcommand)]
        cmd: ChunkCmd,
    },
    /// Copy a local file into the file system, resumably: run the same command again after an
    /// interruption and only the missing chunks are sent; the file appears atomically when
    /// complete.
    Put {
        /// The local file.
        local: PathBuf,
        /// Absolute path inside the file system (/dir/file; a directory or a trailing / keeps
        /// the local file name).
        remote: String,
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Copy a file out of the file system, verifying every chunk; an interrupted copy resumes
    /// from `<local>.cairn-part`.
    Get {
        /// Absolute path inside the file system (/dir/file).
        remote: String,
        /// The local file (or an existing directory to copy into).
        local: PathBuf,
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Upload sessions: interrupted `cairn put`s and writes of mounts that died.
    Uploads {
        #[command(subcommand)]
        cmd: UploadsCmd,
    },
    /// Measure a directory — a Cairn mount or a local disk — with one fixed workload of
    /// metadata and data operations; `scripts/bench` runs it on both and compares.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// The directory to measure; the bench works in a fresh sub-directory that it removes.
    #[arg(required_unless_present = "compare")]
    dir: Option<PathBuf>,
    /// Files (and directories, and random reads) of each per-file row.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// MiB of the sequential file; each of the 4 parallel writers writes a quarter of it.
    #[arg(long, default_value_t = 1024)]
    data_mib: u64,
    /// The tree the copy row copies, as `cp -r` would.
    #[arg(long, default_value = "/usr/include")]
    copy_src: PathBuf,
    /// Leave out the data rows (seq-write, seq-read, rand-read, par-write).
    #[arg(long)]
    skip_data: bool,
    /// Leave out the copy row.
    #[arg(long)]
    skip_copy: bool,
    /// Run only these rows, comma separated.
    #[arg(long, value_delimiter = ',', help = format!(
        "Run only these rows, comma separated: {}", bench::row_ids()))]
    rows: Vec<String>,
    /// Before cold reads, evict only the bench's own files from the page cache, not (as root)
    /// the whole machine's page, dentry and inode caches.
    #[arg(long)]
    no_drop_caches: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Run nothing: print two `--json` results side by side, with the ratio A/B per row (the
    /// columns are named after the files).
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "dir")]
    compare: Option<Vec<PathBuf>>,
}

#[derive(Subcommand)]
enum UploadsCmd {
    /// List the upload sessions the cluster holds.
    List {
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop an upload session; its chunks become garbage unless a file uses them.
    Abort {
        id: u64,
        #[arg(long, env = "CAIRN_META")]
        meta: String,
    },
}

#[derive(Subcommand)]
enum ChunkCmd {
    /// Move every replica off a chunk server (by id or address) before it is retired.
    Drain {
        server: String,
        #[arg(long, env = "CAIRN_META")]
        meta: String,
        /// Stop draining.
        #[arg(long)]
        undo: bool,
        /// Wait until the server holds no replica (at most this many seconds).
        #[arg(long)]
        wait: Option<f64>,
        #[arg(long, default_value_t = 5.0)]
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
            mountpoint,
            meta,
            inline_max,
            ..
        } => mount::run(mount::MountConfig {
            mountpoint,
            meta: split_addrs(&meta),
            inline_max: inline_max as usize,
        }),
        Cmd::Status {
            meta,
            json,
            timeout,
        } => run_status(split_addrs(&meta), json, timeout),
        Cmd::Fsck {
            meta,
            json,
            max_files,
            timeout,
        } => {
            return match block_on(admin::fsck(split_addrs(&meta), max_files, secs(timeout))) {
                Ok(report) => {
                    if json {
                        match serde_json::to_string_pretty(&report) {
                            Ok(j) => println!("{j}"),
                            Err(e) => {
                                eprintln!("cairn: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", report.text());
                    }
                    if report.damaged() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("cairn: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Scrub { meta, now, timeout } => {
            let addrs = split_addrs(&meta);
            if now {
                block_on(admin::scrub_now(addrs, secs(timeout))).map(|lines| {
                    for l in lines {
                        println!("{l}");
                    }
                })
            } else {
                run_status(addrs, false, timeout)
            }
        }
        Cmd::Chunk {
            cmd:
                ChunkCmd::Drain {
                    server,
                    meta,
                    undo,
                    wait,
                    timeout,
                },
        } => block_on(admin::drain(
            split_addrs(&meta),
            server,
            undo,
            wait.map(secs),
            secs(timeout),
        ))
        .map(|msg| println!("{msg}")),
        Cmd::Put {
            local,
            remote,
            meta,
            quiet,
        } => return transfer::put_main(split_addrs(&meta), local, remote, quiet),
        Cmd::Get {
            remote,
            local,
            meta,
            quiet,
        } => return transfer::get_main(split_addrs(&meta), remote, local, quiet),
        Cmd::Uploads {
            cmd: UploadsCmd::List { meta, json },
        } => return transfer::uploads_list_main(split_addrs(&meta), json),
        Cmd::Uploads {
            cmd: UploadsCmd::Abort { id, meta },
        } => return transfer::uploads_abort_main(split_addrs(&meta), id),
        Cmd::Bench(args) => run_bench(args),
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

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some([a, b]) = args.compare.as_deref() {
        print!("{}", bench::compare_files(a, b)?);
        return Ok(());
    }
    let dir = args.dir.context("no directory to measure")?;
    let opts = bench::Options {
        files: args.files,
        data_mib: args.data_mib,
        copy_src: args.copy_src,
        skip_data: args.skip_data,
        skip_copy: args.skip_copy,
        rows: args.rows,
        drop_caches: !args.no_drop_caches,
    };
    let report = bench::run(&dir, &opts)?;
    if args.json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.1, 1e6))
}

/// Runs one admin future on a small runtime.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
