//! Starting and stopping mounts the way other file systems are: mount options (`-o ro,…`), the
//! `mount.fuse.cairn` helper that `mount -t fuse.cairn` and `/etc/fstab` use, `cairn mount
//! --background` (returns once the mount answers), and `cairn umount`.
//!
//! The helper is the `cairn` binary itself under the name `mount.fuse.cairn` (`scripts/up`
//! links it into `/sbin`). `mount(8)` runs it as
//! `mount.fuse.cairn <cluster> <mountpoint> [-o opts]`, where `<cluster>` is the meta address
//! list as `--meta` takes it, and expects it to return once the file system is mounted: it
//! starts the mount in the background like `cairn mount --background`.
use crate::cluster::{self, MountEntry};
use crate::mount_subdir::Subdir;
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `--background` waits for the mount to answer.
pub const BACKGROUND_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The mount options Cairn understands (from `-o` or `cairn mount` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    /// Let other users than the one who mounted use the mount.
    pub allow_other: bool,
    /// Options passed to the kernel as they are (`nosuid`, `nodev`, `noexec`, …).
    pub kernel: Vec<String>,
    /// Where the background mount logs (the helper's `log=`).
    pub log_file: Option<PathBuf>,
    /// `remount`: change the flags (`ro`/`rw`, …) of an existing mount, start nothing.
    pub remount: bool,
    /// `metrics=<host:port>`: serve `/metrics`, `/healthz`, `/readyz` there.
    pub metrics_listen: Option<String>,
    /// `subdir=<path>`: mount this directory of the namespace as the root (see
    /// [`crate::mount_subdir`]). Fixed for the life of the mount: a remount ignores it, since
    /// `mount(8)` passes an fstab line's options back on `mount -o remount`.
    pub subdir: Option<Subdir>,
}

/// Options `mount(8)` and fstab carry that are not for the file system.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "rw",
    "loop",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
];

/// Prefixes of options to ignore: fstab's comments, and the options of the FUSE super block
/// that mount(8) passes back on a remount (set by the mount itself).
const IGNORED_PREFIXES: &[&str] = &[
    "x-",
    "comment=",
    "user_id=",
    "group_id=",
    "rootmode=",
    "fd=",
    "max_read=",
    "blksize=",
    "default_permissions",
    "fsname=",
    "subtype=",
];

/// Kernel mount flags passed through.
const KERNEL: &[&str] = &[
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
];

impl MountOptions {
    /// Parses a `-o` list (`ro,allow_other,_netdev`); several lists add up.
    pub fn parse(&mut self, list: &str) -> anyhow::Result<()> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match opt {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "remount" => self.remount = true,
                o if KERNEL.contains(&o) => self.kernel.push(o.to_owned()),
                o if IGNORED.contains(&o) || IGNORED_PREFIXES.iter().any(|p| o.starts_with(p)) => {}
                o if o.starts_with("log=") => self.log_file = Some(PathBuf::from(&o[4..])),
                o if o.starts_with("metrics=") => self.metrics_listen = Some(o[8..].to_owned()),
                o if o.starts_with("subdir=") => self.subdir = Some(Subdir::parse(&o[7..])?),
                o => bail!(
                    "unknown mount option {o:?} (Cairn takes ro, rw, remount, allow_other, \
                     subdir=<path>, log=<file>, metrics=<host:port>, nosuid, nodev, noexec, sync, \
                     dirsync and mount(8)'s own options)"
                ),
            }
        }
        Ok(())
    }
}

/// The helper's command line: `<cluster> <mountpoint> [-o opts] [-n] [-s] [-f] [-v]`.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperArgs {
    pub cluster: String,
    pub mountpoint: PathBuf,
    pub options: MountOptions,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
}

/// Parses the helper's arguments (without argv[0]).
pub fn parse_helper_args(args: &[OsString]) -> anyhow::Result<HelperArgs> {
    let mut positional = Vec::new();
    let mut options = MountOptions::default();
    let mut foreground = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let list = it.next().context("-o needs a list of options")?;
                options.parse(&list.to_string_lossy())?;
            }
            s if s.starts_with("-o") => options.parse(&s[2..])?,
            // -n: no mtab; -s: sloppy; -v: verbose. Nothing to do for them.
            "-n" | "-s" | "-v" => {}
            "-f" => foreground = true,
            s if s.starts_with('-') => bail!("unknown helper flag {s}"),
            _ => positional.push(a.clone()),
        }
    }
    let [cluster, mountpoint] = positional.as_slice() else {
        bail!("usage: mount.fuse.cairn <meta-addresses> <mountpoint> [-o options]");
    };
    Ok(HelperArgs {
        cluster: cluster.to_string_lossy().into_owned(),
        mountpoint: PathBuf::from(mountpoint),
        options,
        foreground,
    })
}

/// The argument list of a foreground `cairn mount` that does what the helper was asked.
pub fn foreground_args(cluster: &str, mountpoint: &Path, o: &MountOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["mount".into(), mountpoint.into(), "--meta".into()];
    args.push(cluster.into());
    let mut opts = Vec::new();
    if o.read_only {
        opts.push("ro".to_owned());
    }
    if o.allow_other {
        opts.push("allow_other".to_owned());
    }
    opts.extend(o.kernel.iter().cloned());
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.join(",").into());
    }
    if let Some(m) = &o.metrics_listen {
        args.push("--metrics-listen".into());
        args.push(m.into());
    }
    // A flag of its own rather than `-o subdir=`: the path may hold a comma.
    if let Some(d) = &o.subdir {
        args.push("--subdir".into());
        args.push(d.to_string().into());
    }
    args
}

/// Where a background mount logs when no `log=` is given.
pub fn default_log_file(mountpoint: &Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/log/cairn")
    } else {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/cairn"))
            .unwrap_or_else(std::env::temp_dir)
    };
    dir.join(format!("mount-{name}.log"))
}

/// The Cairn mount at exactly `mountpoint`, if there is one.
pub fn cairn_mount_at(mountpoint: &Path) -> Option<MountEntry> {
    cluster::mount_table()
        .into_iter()
        .rfind(|m| m.mount_point == mountpoint)
        .filter(|m| m.fstype == cluster::FSTYPE)
}

/// Starts `cairn <args>` detached (own session, stdin from /dev/null, output to `log`) and
/// returns once a Cairn mount at `mountpoint` answers a stat; an error, with the end of the
/// log, if the mount process exits first or nothing answers within
/// [`BACKGROUND_READY_TIMEOUT`].
pub fn spawn_background(args: &[OsString], mountpoint: &Path, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the log directory {}", dir.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open the mount log {}", log.display()))?;
    let err = out.try_clone().context("duplicate the log handle")?;
    let exe = std::env::current_exe().context("find the cairn binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the mount process")?;
    let pid = child.id();
    let deadline = Instant::now() + BACKGROUND_READY_TIMEOUT;
    loop {
        if cairn_mount_at(mountpoint).is_some() && std::fs::metadata(mountpoint).is_ok() {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait().context("watch the mount process")? {
            bail!(
                "the mount process exited ({status}) before the mount answered; its log ({}):\n{}",
                log.display(),
                tail(log, 20)
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "the mount did not answer within {BACKGROUND_READY_TIMEOUT:?}; its log ({}):\n{}",
                log.display(),
                tail(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Pids of the `cairn mount` processes serving `mountpoint` (found by their command line).
pub fn mount_processes(mountpoint: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    let me = std::process::id();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_cairn = args
            .first()
            .and_then(|a| Path::new(std::str::from_utf8(a).ok()?).file_name())
            .is_some_and(|n| n == "cairn");
        let serves = args.windows(2).any(|w| {
            w[0] == b"mount"
                && std::str::from_utf8(w[1])
                    .ok()
                    .and_then(|p| Path::new(p).canonicalize().ok())
                    .is_some_and(|p| p == mountpoint)
        });
        if is_cairn && serves {
            pids.push(pid);
        }
    }
    pids
}

/// `cairn umount <mountpoint>`: unmounts a Cairn mount and waits (up to `wait`) for its mount
/// process to finish flushing and exit. A busy mount is refused, as `umount` does; `lazy`
/// detaches it instead.
pub fn umount(mountpoint: &Path, lazy: bool, wait: Duration) -> anyhow::Result<String> {
    let mp = mountpoint
        .canonicalize()
        .or_else(|_| std::path::absolute(mountpoint))
        .with_context(|| format!("{} does not exist", mountpoint.display()))?;
    let Some(entry) = cairn_mount_at(&mp) else {
        bail!("{} is not a Cairn mount", mp.display());
    };
    let procs = mount_processes(&mp);
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(&mp, flags) {
        Ok(()) => {}
        Err(nix::errno::Errno::EBUSY) => {
            bail!(
                "{} is busy (files open or a process inside it); close them, or use --lazy",
                mp.display()
            )
        }
        Err(nix::errno::Errno::EPERM) => {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u");
            if lazy {
                cmd.arg("-z");
            }
            let st = cmd
                .arg(&mp)
                .status()
                .context("run fusermount3 (not root, so the unmount goes through it)")?;
            anyhow::ensure!(
                st.success(),
                "fusermount3 -u {} failed ({st})",
                mp.display()
            );
        }
        Err(e) => bail!("unmount {}: {e}", mp.display()),
    }
    let deadline = Instant::now() + wait;
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    while procs.iter().any(|&p| alive(p)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} is unmounted, but its mount process (pid {:?}) is still flushing after {wait:?}",
            mp.display(),
            procs
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(format!(
        "unmounted {} (cluster {})",
        mp.display(),
        entry.source
    ))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments_as_mount_passes_them() {
        let a = parse_helper_args(&os(&[
            "127.0.0.1:7001,127.0.0.1:7002",
            "/mnt/cairn",
            "-o",
            "rw,_netdev,ro,allow_other,nosuid,x-systemd.automount",
            "-n",
        ]))
        .unwrap();
        assert_eq!(a.cluster, "127.0.0.1:7001,127.0.0.1:7002");
        assert_eq!(a.mountpoint, PathBuf::from("/mnt/cairn"));
        assert!(a.options.read_only && a.options.allow_other && !a.foreground);
        assert_eq!(a.options.kernel, vec!["nosuid".to_string()]);
        assert_eq!(
            foreground_args(&a.cluster, &a.mountpoint, &a.options),
            os(&[
                "mount",
                "/mnt/cairn",
                "--meta",
                "127.0.0.1:7001,127.0.0.1:7002",
                "-o",
                "ro,allow_other,nosuid"
            ])
        );
        let e = parse_helper_args(&os(&["c", "/m", "-o", "bogus"])).unwrap_err();
        assert!(
            format!("{e}").contains("unknown mount option \"bogus\""),
            "{e}"
        );
        assert!(parse_helper_args(&os(&["only-one"])).is_err());
        let a = parse_helper_args(&os(&[
            "c",
            "/m",
            "-o",
            "remount,rw,user_id=0,group_id=0,default_permissions,allow_other",
        ]))
        .unwrap();
        assert!(a.options.remount && !a.options.read_only);
        let a = parse_helper_args(&os(&["c", "/m", "-oro,log=/tmp/x.log", "-f"])).unwrap();
        assert!(a.foreground && a.options.read_only);
        assert_eq!(a.options.log_file, Some(PathBuf::from("/tmp/x.log")));
    }

    #[test]
    fn subdir_comes_from_the_options_and_goes_to_the_mount_as_a_flag() {
        let a = parse_helper_args(&os(&[
            "c",
            "/mnt/a",
            "-o",
            "rw,subdir=projects/a/,nosuid,_netdev",
        ]))
        .unwrap();
        let sub = a.options.subdir.clone().expect("subdir parsed");
        assert_eq!(sub.to_string(), "/projects/a");
        assert_eq!(
            foreground_args(&a.cluster, &a.mountpoint, &a.options),
            os(&[
                "mount",
                "/mnt/a",
                "--meta",
                "c",
                "-o",
                "nosuid",
                "--subdir",
                "/projects/a"
            ])
        );
        let mut o = MountOptions::default();
        o.parse("subdir=/x").unwrap();
        o.parse("ro,subdir=/projects/b").unwrap();
        assert_eq!(o.subdir.map(|d| d.to_string()), Some("/projects/b".into()));
        assert!(o.read_only);
        for bad in ["subdir=", "subdir=/a/../b", "subdir=a//b"] {
            let e = MountOptions::default().parse(bad).unwrap_err();
            assert!(format!("{e}").starts_with("subdir \""), "{bad}: {e}");
        }
        assert!(MountOptions::default().parse("subdirx=/a").is_err());
    }

    #[test]
    fn default_log_names_the_mountpoint() {
        let p = default_log_file(Path::new("/mnt/my cairn"));
        assert!(
            p.to_string_lossy().ends_with("mount-mnt-my-cairn.log"),
            "{p:?}"
        );
    }
}
