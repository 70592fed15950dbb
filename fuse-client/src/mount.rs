//! `cairn mount`: mounts the file system and keeps it until SIGTERM/SIGINT or an external
//! unmount. Shutdown is ordered so nothing acknowledged is lost and nothing written is dropped
//! silently: flush every dirty file, unmount, then flush whatever arrived in between.
use crate::data::DataPlane;
use crate::fs::{CairnFs, Core, InoMap};
use crate::meta::Meta;
use crate::mount_cli::MountOptions;
use crate::mount_session::{MountSession, Renewal};
use crate::mount_sys;
use anyhow::Context;
use cairn_common::metrics::Probe;
use cairn_common::worker::TaskSet;
use fuser::MountOption;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the mount's background tasks get to stop at exit.
const TASK_DEADLINE: Duration = Duration::from_secs(5);

/// The kernel readahead of the mount, in KiB (one chunk). A FUSE mount starts with the kernel's
/// default of 128 KiB whatever `max_readahead` the file system asks for, which keeps a single
/// 128 KiB read in flight per sequential reader; with 4 MiB the kernel sends the next 1 MiB
/// reads while the current ones are copied out.
const MOUNT_READ_AHEAD_KB: u32 = 4096;

pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub meta: Vec<String>,
    /// Files of at most this many bytes are committed inline, in the metadata.
    pub inline_max: usize,
    /// `ro`, `allow_other`, `subdir=` and kernel flags (see [`crate::mount_cli`]).
    pub options: MountOptions,
}

/// A kernel flag of `-o` as fuser's option.
fn kernel_option(o: &str) -> MountOption {
    match o {
        "nosuid" => MountOption::NoSuid,
        "suid" => MountOption::Suid,
        "nodev" => MountOption::NoDev,
        "dev" => MountOption::Dev,
        "noexec" => MountOption::NoExec,
        "exec" => MountOption::Exec,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        "dirsync" => MountOption::DirSync,
        other => MountOption::CUSTOM(other.to_owned()),
    }
}

/// Something (any file system, a dead FUSE mount included) is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    crate::cluster::mount_table()
        .iter()
        .any(|m| m.mount_point == path)
}

fn allow_other() -> bool {
    nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/etc/fuse.conf")
            .map(|s| s.lines().any(|l| l.trim() == "user_allow_other"))
            .unwrap_or(false)
}

/// Sets the readahead of the mount at `mountpoint` to [`MOUNT_READ_AHEAD_KB`], through its
/// backing device's `read_ahead_kb` in sysfs (writable by root only; otherwise the mount keeps
/// the default, with a warning). Waits for the mount to answer first: the kernel lowers the
/// readahead to the file system's `max_readahead` when the FUSE handshake completes.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    // The handshake is done once the mount answers a stat of its root.
    let dev = match std::fs::metadata(mountpoint) {
        Ok(md) => md.dev(),
        Err(e) => {
            tracing::warn!(error = %e, "the new mount does not answer; readahead left as it is");
            return;
        }
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, format!("{MOUNT_READ_AHEAD_KB}\n")) {
        Ok(()) => tracing::debug!(path, kb = MOUNT_READ_AHEAD_KB, "mount readahead raised"),
        Err(e) => tracing::warn!(path, error = %e,
            "could not raise the mount's readahead (needs root); sequential reads will be slower"),
    }
}

pub fn run(cfg: MountConfig) -> anyhow::Result<()> {
    let mountpoint = cfg
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {} does not exist", cfg.mountpoint.display()))?;
    anyhow::ensure!(
        mountpoint.is_dir(),
        "mountpoint {} is not a directory",
        mountpoint.display()
    );
    anyhow::ensure!(
        !cfg.meta.is_empty(),
        "no meta server addresses given (--meta)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("cairn-io")
        .build()
        .context("start the tokio runtime")?;

    let meta = Meta::new(cfg.meta.clone());
    // Fail early and clearly when the cluster cannot be reached at all.
    rt.block_on(meta.get_attr(cairn_common::ROOT_INO))
        .map_err(|s| {
            anyhow::anyhow!(
                "cannot reach the Cairn cluster at {}: {}",
                cfg.meta.join(","),
                s.message()
            )
        })?;
    // The directory shown as the mount's root, found before anything is set up: a missing
    // path or a file fails the mount here, with the path in the message.
    let inos = match &cfg.options.subdir {
        Some(d) => InoMap::rooted_at(rt.block_on(d.resolve(&meta))?),
        None => InoMap::WHOLE,
    };

    let session = rt
        .block_on(MountSession::open(
            meta.clone(),
            &mountpoint.display().to_string(),
        ))
        .map_err(|s| anyhow::anyhow!("cannot open a mount session: {}", s.message()))?;
    // The mount's background tasks: the session renewal.
    let mut tasks = TaskSet::new();
    {
        let _guard = rt.enter();
        tasks.spawn_worker(Renewal::new(session.clone()));
    }
    let dp = DataPlane::with_inline_max(meta, cfg.inline_max);
    // The HTTP port (/metrics, /healthz, /readyz), stopped with the other tasks.
    let probe = Arc::new(MountProbe {
        dp: dp.clone(),
        mounted: AtomicBool::new(false),
    });
    if let Some(listen) = &cfg.options.metrics_listen {
        let http = rt
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("bind the metrics port {listen}"))?;
        let router = cairn_common::metrics::router(probe.clone(), axum::Router::new());
        let stop = tasks.token().cancelled_owned();
        let _guard = rt.enter();
        tasks.spawn(
            "metrics-http",
            cairn_common::metrics::serve(http, router, stop),
        );
    }
    let _ = dp
        .writer_label
        .set(format!("{}:{}", session.host(), mountpoint.display()));
    let core = Core::new(dp, session.clone(), inos);
    let fs = CairnFs::new(core.clone(), rt.handle().clone());
    // The source `mount` and `df` show is the cluster, as `--meta` takes it: `cairn` commands
    // run inside the mount find their cluster there (crate::cluster), in a `subdir=` mount too
    // (the sub-directory is not part of the source, which must stay a plain address list; the
    // FUSE kernel module refuses options it does not know, so it is not among the options
    // either). These options are for the fusermount3 path (not root), which needs the commas
    // of the list escaped.
    let cluster = cfg.meta.join(",");
    let allow_other = cfg.options.allow_other || allow_other();
    let mut options = vec![
        MountOption::FSName(cfg.meta.join("\\,")),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
        if cfg.options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        MountOption::NoAtime,
    ];
    if allow_other {
        options.push(MountOption::AllowOther);
    }
    options.extend(cfg.options.kernel.iter().map(|o| kernel_option(o)));
    let mounted = mount_sys::mount(
        fs,
        &mountpoint,
        &cluster,
        &cfg.options,
        allow_other,
        &options,
    )
    .with_context(|| format!("mount at {}", mountpoint.display()))?;
    let fuse = mounted.session;
    core.set_notifier(fuse.notifier());
    raise_readahead(&mountpoint);
    probe.mounted.store(true, Ordering::Relaxed);
    cairn_common::systemd::notify_ready();
    let subdir = cfg.options.subdir.as_ref().map(ToString::to_string);
    tracing::info!(mountpoint = %mountpoint.display(), meta = %cfg.meta.join(","),
        subdir = subdir.as_deref().unwrap_or("/"), root_inode = inos.root(),
        read_only = cfg.options.read_only, "mounted");

    let reason = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, std::io::Error>("SIGTERM"),
                _ = tokio::signal::ctrl_c() => return Ok("SIGINT"),
                _ = poll.tick() => {
                    if fuse.guard.is_finished() {
                        return Ok("unmounted");
                    }
                }
            }
        }
    })?;
    tracing::info!(reason, "shutting down: flushing dirty files");
    cairn_common::systemd::notify_stopping();
    let failed = rt.block_on(core.drain());

    // Unmount (ours, or fuser's by dropping the session), and make sure the mount is gone even
    // if the kernel still had it busy.
    if !mounted.owned_by_fuser && is_mounted(&mountpoint) {
        if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::empty()) {
            tracing::debug!(error = %e, "umount2 at shutdown");
        }
    }
    drop(fuse);
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_mounted(&mountpoint) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_mounted(&mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "mount busy; detaching it lazily");
        if let Err(e) = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(error = %e, "umount2(MNT_DETACH) failed; trying fusermount3 -uz");
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mountpoint)
                .status();
        }
    }
    // Writes that raced with the first drain.
    let failed = failed + rt.block_on(core.drain());
    // Only now that nothing can use them: release this mount's locks and open unlinked files.
    rt.block_on(tasks.shutdown(TASK_DEADLINE));
    rt.block_on(session.close());
    rt.shutdown_timeout(Duration::from_secs(5));
    anyhow::ensure!(
        failed == 0,
        "{failed} file(s) could not be flushed before exit"
    );
    tracing::info!("unmounted cleanly");
    Ok(())
}

/// The mount's probe: cache size at scrape, ready once mounted.
struct MountProbe {
    dp: Arc<DataPlane>,
    mounted: AtomicBool,
}

impl Probe for MountProbe {
    fn describe(&self) {
        use metrics::{describe_counter as c, describe_gauge as d, describe_histogram as h};
        c!(
            "cairn_fuse_ops_total",
            "FUSE operations answered, by type and outcome"
        );
        h!(
            "cairn_fuse_op_duration_seconds",
            metrics::Unit::Seconds,
            "Time to answer a FUSE operation, by type"
        );
        c!(
            "cairn_mount_cache_lookups_total",
            "Chunk cache lookups: hit, miss, joined (a fetch under way)"
        );
        c!(
            "cairn_mount_commit_conflicts_total",
            "Commits refused because the file changed, by whether it was harmless"
        );
        d!("cairn_mount_uploads_in_flight", "Chunk uploads under way");
        d!("cairn_mount_cache_bytes", "Bytes held in the chunk cache");
    }

    async fn refresh(&self) {
        metrics::gauge!("cairn_mount_cache_bytes").set(self.dp.cache.cached_bytes() as f64);
    }

    async fn ready(&self) -> Result<(), String> {
        if self.mounted.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not mounted yet".into())
        }
    }
}
