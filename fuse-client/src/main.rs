//! The `cairn` binary: `cairn mount`, `cairn status`, `cairn put`/`get`, `cairn bench` and the
//! admin commands. Run as `mount.fuse.cairn` it is the mount helper of `mount -t fuse.cairn`
//! and `/etc/fstab` (see `cairn_fuse_client::mount_cli`).
use anyhow::Context;
use cairn_fuse_client::cluster::{self, Cluster};
use cairn_fuse_client::mount_cli::{self, MountOptions};
use cairn_fuse_client::mount_subdir::Subdir;
use cairn_fuse_client::{admin, bench, mount, out, outln, status, transfer};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `0.1.0 (git 1a2b3c4d5e6f)`: the build's version and commit (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("CAIRN_GIT_HASH"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "cairn",
    version = VERSION,
    about = "Cairn distributed file system client",
    after_help = "The cluster comes from --meta, else CAIRN_META, else .cairn/cairn.toml in the \
current directory or a parent, else the Cairn mount the current directory is in, else \
~/.config/cairn/cairn.toml, else /etc/cairn/cairn.toml."
)]
struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Errors only on stderr, and no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The cluster to talk to.
#[derive(Args, Clone, Default)]
struct ClusterArg {
    /// Meta server addresses, comma separated (host:port,host:port,…). Default: see the end of
    /// `cairn --help`.
    #[arg(long, value_name = "ADDRS")]
    meta: Option<String>,
}

impl ClusterArg {
    /// The cluster named by the flag or the first source that names one.
    fn resolve(&self) -> anyhow::Result<Cluster> {
        cluster::resolve(&cluster::Env::current(self.meta.clone(), &[]))
    }

    /// Runs `f` with the named cluster's meta addresses; a cluster nothing names is an error
    /// (status 1).
    fn with_meta(&self, f: impl FnOnce(Vec<String>) -> ExitCode) -> ExitCode {
        match self.resolve() {
            Ok(c) => f(c.meta),
            Err(e) => report(Err(e)),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the file system. Runs in the foreground until SIGTERM/SIGINT or unmount, unless
    /// --background.
    Mount(MountArgs),
    /// Unmount a Cairn mount and wait until its mount process has flushed and exited.
    #[command(alias = "unmount")]
    Umount {
        mountpoint: PathBuf,
        /// Detach a busy mount now; it goes away when the last user leaves.
        #[arg(long, short = 'l')]
        lazy: bool,
        /// Seconds to wait for the mount process to exit.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
    },
    /// Show the cluster: a health verdict (HEALTH_OK / HEALTH_WARN / HEALTH_ERR, also the exit
    /// status 0 / 1 / 2) with its reasons, meta nodes and chunk servers.
    Status {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Print JSON instead of tables.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh every this many seconds until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// Give up after this many seconds without an answer from a leader.
        #[arg(long, env = "CAIRN_STATUS_TIMEOUT", default_value_t = 5.0)]
        timeout: f64,
    },
    /// Check every file's chunks against the chunk servers: healthy, under-replicated and
    /// missing chunks, and the files affected. Exits with 2 when data is lost.
    Fsck {
        #[command(flatten)]
        cluster: ClusterArg,
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
        #[command(flatten)]
        cluster: ClusterArg,
        /// Start a scrub pass on every chunk server that is up.
        #[arg(long)]
        now: bool,
        /// With --now: wait until every pass has finished (at most this many seconds),
        /// showing progress.
        #[arg(long, requires = "now", value_name = "SECS")]
        wait: Option<f64>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Chunk server administration.
    Chunk {
        #[command(subcommand)]
        cmd: ChunkCmd,
    },
    /// Copy a local file (with -r, a directory tree) into the file system, resumably: run the
    /// same command again after an interruption and only the missing chunks are sent; each
    /// file appears atomically when complete.
    #[command(after_help = PUT_TREE_HELP)]
    Put {
        /// The local file (with -r, or a directory).
        local: PathBuf,
        /// Absolute path inside the file system (/dir/file; a directory or a trailing / keeps
        /// the local file name).
        remote: String,
        #[command(flatten)]
        copy: TreeArgs,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Copy a file (with -r, a directory tree) out of the file system, verifying every chunk;
    /// an interrupted copy resumes from `<local>.cairn-part`.
    #[command(after_help = GET_TREE_HELP)]
    Get {
        /// Absolute path inside the file system (/dir/file; with -r, or a directory).
        remote: String,
        /// The local file (or an existing directory to copy into).
        local: PathBuf,
        #[command(flatten)]
        copy: TreeArgs,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Upload sessions: interrupted `cairn put`s and writes of mounts that died.
    Uploads {
        #[command(subcommand)]
        cmd: UploadsCmd,
    },
    /// Measure a directory — a Cairn mount or a local disk — with one fixed workload of
    /// metadata and data operations; `scripts/bench` runs it on both and compares.
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout, e.g.
    /// `cairn completions bash > /etc/bash_completion.d/cairn`.
    Completions { shell: clap_complete::Shell },
}

/// `-r` and its options, for `cairn put` and `cairn get`.
#[derive(Args, Clone, Copy)]
struct TreeArgs {
    /// Copy a directory and everything in it (see below).
    #[arg(short = 'r', long, visible_short_alias = 'R')]
    recursive: bool,
    /// With -r: files copied at once (each still resumable).
    #[arg(short = 'j', long, requires = "recursive", default_value_t = transfer::DEFAULT_JOBS as u64,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// With -r: the destination is the tree's root itself, even if it is an existing
    /// directory (never <dest>/<name>): the same command then lands in the same place on every
    /// run, which is how to resume a copy whose first run made the destination.
    #[arg(short = 'T', long, requires = "recursive")]
    no_target_directory: bool,
    /// With -r: print the summary as JSON (files, bytes, unchanged, transferred, dirs,
    /// symlinks, skipped, failed, interrupted, seconds, failures, skipped_paths).
    #[arg(long, requires = "recursive")]
    json: bool,
}

impl TreeArgs {
    fn opts(self, quiet: bool) -> transfer::CopyOpts {
        transfer::CopyOpts {
            quiet,
            recursive: self.recursive,
            jobs: self.jobs as usize,
            json: self.json,
            dest_is_root: self.no_target_directory,
        }
    }
}

const PUT_TREE_HELP: &str = "\
With -r, the source may be a directory, copied as `cp -r` does: if <REMOTE> is an existing \
directory the tree goes to <REMOTE>/<name of LOCAL>, else <REMOTE> is created (its parent must \
exist) with LOCAL's contents. Directories get their local modes, regular files are copied with \
mode, owner and mtime (--jobs at a time, each resumable), symlinks are recreated as symlinks \
(never followed; a symlink named as LOCAL itself is), FIFOs, sockets and devices are skipped \
with a warning. One progress bar covers the whole tree.

Resuming a tree: run the same command again. A file whose target already has the same size \
and content (every chunk's blake3 compared; never size and mtime alone) is skipped, a file cut \
off midway resumes from its upload session, the rest are copied. If the first run made \
<REMOTE>, the same command would now copy into <REMOTE>/<name>: add -T to resume into <REMOTE> \
itself (the command says so when it stops).

Exit status with -r: 0 when everything was copied (skipped special files are warned about and \
counted, not failures), 1 when any entry failed (each is listed with its reason at the end), \
130 when interrupted.

Examples:
  cairn put -r ./photos /backup       # /backup exists: /backup/photos
  cairn put -r ./photos /photos-2024  # /photos-2024 is created
  cairn put -r -T ./photos /photos-2024   # again: into /photos-2024 itself";

const GET_TREE_HELP: &str = "\
With -r, the source may be a directory, copied as `cp -r` does: if <LOCAL> is an existing \
directory the tree goes to <LOCAL>/<name of REMOTE>, else <LOCAL> is created (its parent must \
exist) with REMOTE's contents. Directories and files get the remote permission bits (not \
setuid/setgid) and files their mtime; symlinks are recreated as symlinks, special files are \
skipped with a warning. Files are copied --jobs at a time; one progress bar covers the tree.

Resuming a tree: run the same command again. A local file that already has the same size and \
content (every chunk's blake3 compared with the remote chunk ids; never size and mtime alone) \
is skipped, a file cut off midway resumes from its .cairn-part file, the rest are copied. If \
the first run made <LOCAL>, the same command would now copy into <LOCAL>/<name>: add -T to \
resume into <LOCAL> itself (the command says so when it stops).

Exit status with -r: 0 when everything was copied (skipped special files are warned about and \
counted, not failures), 1 when any entry failed (each is listed with its reason at the end), \
130 when interrupted.

Examples:
  cairn get -r /photos ./restore      # ./restore exists: ./restore/photos
  cairn get -r /photos ./photos-copy  # ./photos-copy is created
  cairn get -r -T /photos ./photos-copy   # again: into ./photos-copy itself";

#[derive(Args)]
struct MountArgs {
    /// An existing, empty directory.
    mountpoint: PathBuf,
    #[command(flatten)]
    cluster: ClusterArg,
    /// Return once the mount answers; the mount goes on in the background, logging to
    /// --log-file.
    #[arg(long)]
    background: bool,
    /// With --background: where the mount logs (default /var/log/cairn/mount-<path>.log
    /// as root, else ~/.local/state/cairn/).
    #[arg(long, requires = "background")]
    log_file: Option<PathBuf>,
    /// Mount options, comma separated: ro, rw, allow_other, subdir=<path>, nosuid, nodev,
    /// noexec, sync, dirsync.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Mount this directory of the file system as the root of the mount (a path from the
    /// file system's root, e.g. /projects/a; same as -o subdir=). It must exist and be a
    /// directory; nothing above it can be reached through the mount.
    #[arg(long, value_name = "PATH")]
    subdir: Option<Subdir>,
    /// Accepted for compatibility; the mount runs in the foreground unless --background.
    #[arg(long)]
    foreground: bool,
    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on this host:port.
    #[arg(long, env = "CAIRN_MOUNT_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Files of at most this many bytes (up to 65536) keep their content in the metadata
    /// cluster, replicated by Raft, instead of on chunk servers: no chunk round trips to
    /// write or read them. 0: every file's content goes to chunk servers.
    #[arg(long, env = "CAIRN_INLINE_MAX", default_value_t = cairn_common::INLINE_MAX as u32,
          value_parser = clap::value_parser!(u32).range(0..=cairn_common::INLINE_MAX as i64))]
    inline_max: u32,
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
        #[command(flatten)]
        cluster: ClusterArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop an upload session; its chunks become garbage unless a file uses them.
    Abort {
        id: u64,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

#[derive(Subcommand)]
enum ChunkCmd {
    /// Move every replica off a chunk server (by id or address) before it is retired.
    Drain {
        server: String,
        #[command(flatten)]
        cluster: ClusterArg,
        /// Stop draining.
        #[arg(long)]
        undo: bool,
        /// Wait until the server holds no replica (at most this many seconds).
        #[arg(long)]
        wait: Option<f64>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

/// Sets up logging on stderr: `-q` errors only, default warnings (info for a mount), `-v`
/// debug, `-vv` trace; `RUST_LOG` overrides. Lines are printed above a progress bar, not
/// through it ([`out::LogWriter`]).
fn init_logging(verbose: u8, quiet: bool, mount: bool) {
    let level = match (quiet, verbose, mount) {
        (true, _, _) => "error",
        (false, 0, true) => "info",
        (false, 0, false) => "warn",
        (false, 1, _) => "debug",
        (false, _, _) => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_writer(out::LogWriter::make)
        .init();
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| {
            PathBuf::from(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    if invoked_as.starts_with("mount.") {
        init_logging(0, false, true);
        return report(mount_helper(&argv[1..]));
    }
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, matches!(cli.cmd, Cmd::Mount(_)));
    let quiet = cli.quiet;
    let result = match cli.cmd {
        Cmd::Mount(args) => run_mount(args),
        Cmd::Umount {
            mountpoint,
            lazy,
            wait,
        } => mount_cli::umount(&mountpoint, lazy, secs(wait)).map(|m| outln!("{m}")),
        Cmd::Status {
            cluster,
            json,
            watch,
            timeout,
        } => return run_status(cluster, json, watch, timeout),
        Cmd::Fsck {
            cluster,
            json,
            max_files,
            timeout,
        } => {
            let fsck = cluster
                .resolve()
                .and_then(|c| block_on(admin::fsck(c.meta, max_files, secs(timeout))));
            let printed = fsck.and_then(|r| {
                if json {
                    out::json(&r)?;
                } else {
                    out::print(&r.text());
                }
                Ok(r)
            });
            return match printed {
                Ok(r) if r.damaged() => ExitCode::from(2),
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => report(Err(e)),
            };
        }
        Cmd::Scrub {
            cluster,
            now,
            wait,
            json,
            timeout,
        } => {
            if now {
                cluster.resolve().and_then(|c| {
                    let lines = block_on(admin::scrub_now(
                        c.meta,
                        secs(timeout),
                        wait.map(secs),
                        quiet,
                    ))?;
                    if json {
                        out::json(&lines)
                    } else {
                        lines.iter().for_each(|l| outln!("{l}"));
                        Ok(())
                    }
                })
            } else {
                return run_status(cluster, json, None, timeout);
            }
        }
        Cmd::Chunk {
            cmd:
                ChunkCmd::Drain {
                    server,
                    cluster,
                    undo,
                    wait,
                    json,
                    timeout,
                },
        } => cluster.resolve().and_then(|c| {
            let msg = block_on(admin::drain(
                c.meta,
                server,
                undo,
                wait.map(secs),
                secs(timeout),
                quiet,
            ))?;
            if json {
                out::json(&serde_json::json!({ "message": msg }))
            } else {
                outln!("{msg}");
                Ok(())
            }
        }),
        Cmd::Put {
            local,
            remote,
            copy,
            cluster,
        } => {
            return cluster
                .with_meta(|meta| transfer::put_main(meta, local, remote, copy.opts(quiet)))
        }
        Cmd::Get {
            remote,
            local,
            copy,
            cluster,
        } => {
            return cluster
                .with_meta(|meta| transfer::get_main(meta, remote, local, copy.opts(quiet)))
        }
        Cmd::Uploads {
            cmd: UploadsCmd::List { cluster, json },
        } => return cluster.with_meta(|meta| transfer::uploads_list_main(meta, json)),
        Cmd::Uploads {
            cmd: UploadsCmd::Abort { id, cluster },
        } => return cluster.with_meta(|meta| transfer::uploads_abort_main(meta, id)),
        Cmd::Bench(args) => run_bench(args),
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cairn", &mut script);
            out::print(&String::from_utf8_lossy(&script));
            Ok(())
        }
    };
    report(result)
}

/// Exit status 0, or the error on stderr and 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_mount(a: MountArgs) -> anyhow::Result<()> {
    let MountArgs {
        mountpoint,
        cluster,
        background,
        log_file,
        options,
        metrics_listen,
        subdir,
        inline_max,
        foreground: _,
    } = a;
    let mut opts = MountOptions::default();
    for o in &options {
        opts.parse(o)?;
    }
    if metrics_listen.is_some() {
        opts.metrics_listen = metrics_listen;
    }
    if subdir.is_some() {
        opts.subdir = subdir;
    }
    if opts.remount {
        let mp = mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {} does not exist", mountpoint.display()))?;
        return remount(&mp, &opts);
    }
    // The mount point itself is not a source: a mount never names its own cluster.
    let cluster = cluster.resolve()?;
    if background {
        let mp = mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {} does not exist", mountpoint.display()))?;
        let mut args = mount_cli::foreground_args(&cluster.list(), &mp, &opts);
        args.push("--inline-max".into());
        args.push(inline_max.to_string().into());
        let log = log_file
            .or(opts.log_file)
            .unwrap_or_else(|| mount_cli::default_log_file(&mp));
        let pid = mount_cli::spawn_background(&args, &mp, &log)?;
        let what = match &opts.subdir {
            Some(d) => format!("{d} of cluster {}", cluster.list()),
            None => format!("cluster {}", cluster.list()),
        };
        outln!(
            "mounted {what} at {} (pid {pid}, log {})",
            mp.display(),
            log.display()
        );
        return Ok(());
    }
    mount::run(mount::MountConfig {
        mountpoint,
        meta: cluster.meta,
        inline_max: inline_max as usize,
        options: opts,
    })
}

/// `-o remount,…` of the Cairn mount at `mp`.
fn remount(mp: &std::path::Path, opts: &MountOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        mount_cli::cairn_mount_at(mp).is_some(),
        "{} is not a Cairn mount",
        mp.display()
    );
    cairn_fuse_client::mount_sys::remount(mp, opts)
        .with_context(|| format!("remount {}", mp.display()))
}

/// `mount.fuse.cairn <cluster> <mountpoint> [-o options]`, as mount(8) runs it.
fn mount_helper(args: &[OsString]) -> anyhow::Result<()> {
    let h = mount_cli::parse_helper_args(args)?;
    let mp = h
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {} does not exist", h.mountpoint.display()))?;
    if h.options.remount {
        return remount(&mp, &h.options);
    }
    if h.foreground {
        return mount::run(mount::MountConfig {
            mountpoint: mp,
            meta: cluster::split_addrs(&h.cluster),
            inline_max: cairn_common::INLINE_MAX,
            options: h.options,
        });
    }
    let args = mount_cli::foreground_args(&h.cluster, &mp, &h.options);
    let log = h
        .options
        .log_file
        .clone()
        .unwrap_or_else(|| mount_cli::default_log_file(&mp));
    mount_cli::spawn_background(&args, &mp, &log).map(|_| ())
}

/// `cairn status`: the report, and the verdict as the exit status (0 OK, 1 WARN, 2 ERR; 2 too
/// when the cluster cannot be reached at all).
fn run_status(cluster: ClusterArg, json: bool, watch: Option<f64>, timeout: f64) -> ExitCode {
    let named = match cluster.resolve() {
        Ok(c) => c,
        Err(e) => return report(Err(e)),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(Err(e.into())),
    };
    let timeout = Duration::from_secs_f64(timeout.max(0.1));
    loop {
        let fetched = rt.block_on(status::fetch(named.meta.clone(), timeout));
        let code = match fetched {
            Ok(mut st) => {
                st.cluster = Some(status::Named {
                    meta: named.list(),
                    source: named.source.to_string(),
                });
                if json {
                    if let Err(e) = out::json(&st) {
                        return report(Err(e));
                    }
                } else {
                    if watch.is_some() {
                        // Clear the screen and home the cursor.
                        out::print("\x1b[2J\x1b[H");
                    }
                    out::print(&status::table(&st));
                }
                st.health.status.exit_code()
            }
            Err(e) => {
                eprintln!("cairn: HEALTH_ERR: {e:#}");
                2
            }
        };
        let Some(every) = watch else {
            return ExitCode::from(code);
        };
        std::thread::sleep(Duration::from_secs_f64(every.clamp(0.2, 3600.0)));
    }
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if let Some([a, b]) = args.compare.as_deref() {
        out::print(&bench::compare_files(a, b)?);
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
        outln!("{}", report.json()?);
    } else {
        out::print(&report.table());
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
