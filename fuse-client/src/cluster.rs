//! Which cluster a command talks to: the cluster is named once, not on every command line.
//!
//! The meta addresses come from the first of these that names one ([`resolve`]):
//!
//! 1. `--meta host:port,host:port,…`;
//! 2. the `CAIRN_META` environment variable (same form);
//! 3. a cluster file `.cairn/cairn.toml` in the current directory or one of its parents (so
//!    inside the checkout where `scripts/up` ran, its cluster is found);
//! 4. the Cairn mount the current directory (or a path the command works on) is inside: a
//!    mount's source (its FUSE fsname, shown by `mount` and `df`) is its meta address list;
//! 5. `~/.config/cairn/cairn.toml`;
//! 6. `/etc/cairn/cairn.toml`.
//!
//! A cluster file holds `meta = "host:port,host:port"` or `meta = ["host:port", …]`.
//! `cairn status` says which source it used ([`Cluster::source`]).
use anyhow::Context;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The file system type of a Cairn mount, as `/proc/self/mountinfo` shows it.
pub const FSTYPE: &str = "fuse.cairn";

/// The name of a cluster file (in `.cairn/`, `~/.config/cairn/`, `/etc/cairn/`).
pub const CLUSTER_FILE: &str = "cairn.toml";

/// Where the meta addresses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    /// A `.cairn/cairn.toml` found walking up from the current directory.
    CheckoutFile(PathBuf),
    /// The Cairn mount at this mount point.
    Mount(PathBuf),
    UserFile(PathBuf),
    SystemFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => write!(f, "--meta"),
            Source::Env => write!(f, "CAIRN_META"),
            Source::CheckoutFile(p) | Source::UserFile(p) | Source::SystemFile(p) => {
                write!(f, "{}", p.display())
            }
            Source::Mount(p) => write!(f, "the mount at {}", p.display()),
        }
    }
}

/// A named cluster: its meta addresses and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub meta: Vec<String>,
    pub source: Source,
}

impl Cluster {
    /// The address list as `--meta` takes it (and as a mount's source shows it).
    pub fn list(&self) -> String {
        self.meta.join(",")
    }
}

/// Splits `host:port,host:port` (spaces and empty items ignored).
pub fn split_addrs(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    meta: MetaList,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MetaList {
    One(String),
    Many(Vec<String>),
}

/// Reads a cluster file; `Ok(None)` if it does not exist.
pub fn read_cluster_file(path: &Path) -> anyhow::Result<Option<Vec<String>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("read the cluster file {}", path.display()))
        }
    };
    let file: ClusterFile = toml::from_str(&text)
        .with_context(|| format!("the cluster file {} is not valid", path.display()))?;
    let meta = match file.meta {
        MetaList::One(s) => split_addrs(&s),
        MetaList::Many(v) => v.iter().flat_map(|s| split_addrs(s)).collect(),
    };
    anyhow::ensure!(
        !meta.is_empty(),
        "the cluster file {} names no meta address",
        path.display()
    );
    Ok(Some(meta))
}

/// The text of a cluster file naming `meta` (what `scripts/up` writes).
pub fn cluster_file_text(meta: &[String]) -> String {
    let items: Vec<String> = meta.iter().map(|a| format!("{a:?}")).collect();
    format!("meta = [{}]\n", items.join(", "))
}

/// One mount of `/proc/self/mountinfo`: where, what type, from what source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], oct) {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` (lines it cannot read are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                source: unescape(source),
            })
        })
        .collect()
}

/// This process's mount table (`/proc/self/mountinfo`; empty if it cannot be read).
pub fn mount_table() -> Vec<MountEntry> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The Cairn mount `path` (absolute) is in: the innermost mount whose mount point is `path`
/// or one of its parents, if that mount is a Cairn mount.
pub fn cairn_mount_of<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        // The last match wins: a later mount on the same point hides an earlier one.
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .filter(|m| m.fstype == FSTYPE)
}

/// Everything [`resolve`] looks at, so it can be tested without touching the machine.
pub struct Env {
    pub flag: Option<String>,
    pub env: Option<String>,
    pub cwd: Option<PathBuf>,
    /// Paths the command works on (checked for a Cairn mount after the current directory).
    pub paths: Vec<PathBuf>,
    pub mountinfo: String,
    pub home: Option<PathBuf>,
    pub system_file: PathBuf,
}

impl Env {
    /// This process's view: its flag, `CAIRN_META`, current directory, mounts and home.
    pub fn current(flag: Option<String>, paths: &[PathBuf]) -> Env {
        Env {
            flag,
            env: std::env::var("CAIRN_META").ok(),
            cwd: std::env::current_dir().ok(),
            paths: paths.to_vec(),
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            system_file: PathBuf::from("/etc/cairn").join(CLUSTER_FILE),
        }
    }
}

/// Names the cluster from the first source that gives one (see the module doc).
pub fn resolve(env: &Env) -> anyhow::Result<Cluster> {
    let from = |list: &str, source: Source| -> anyhow::Result<Cluster> {
        let meta = split_addrs(list);
        anyhow::ensure!(!meta.is_empty(), "{source} names no meta address");
        Ok(Cluster { meta, source })
    };
    if let Some(f) = &env.flag {
        return from(f, Source::Flag);
    }
    if let Some(e) = env.env.as_deref().filter(|e| !e.trim().is_empty()) {
        return from(e, Source::Env);
    }
    if let Some(cwd) = &env.cwd {
        for dir in cwd.ancestors() {
            let file = dir.join(".cairn").join(CLUSTER_FILE);
            if let Some(meta) = read_cluster_file(&file)? {
                return Ok(Cluster {
                    meta,
                    source: Source::CheckoutFile(file),
                });
            }
        }
    }
    let mounts = parse_mountinfo(&env.mountinfo);
    let candidates = env.cwd.iter().chain(env.paths.iter());
    for p in candidates {
        let abs = match (p.is_absolute(), &env.cwd) {
            (true, _) => p.clone(),
            (false, Some(cwd)) => cwd.join(p),
            (false, None) => continue,
        };
        if let Some(m) = cairn_mount_of(&mounts, &abs) {
            return from(&m.source, Source::Mount(m.mount_point.clone()));
        }
    }
    if let Some(home) = &env.home {
        let file = home.join(".config").join("cairn").join(CLUSTER_FILE);
        if let Some(meta) = read_cluster_file(&file)? {
            return Ok(Cluster {
                meta,
                source: Source::UserFile(file),
            });
        }
    }
    if let Some(meta) = read_cluster_file(&env.system_file)? {
        return Ok(Cluster {
            meta,
            source: Source::SystemFile(env.system_file.clone()),
        });
    }
    anyhow::bail!(
        "no Cairn cluster named: pass --meta host:port,…, set CAIRN_META, run inside a checkout \
         whose .cairn/{CLUSTER_FILE} names one or inside a Cairn mount, or write \
         ~/.config/cairn/{CLUSTER_FILE} or /etc/cairn/{CLUSTER_FILE} (meta = [\"host:port\", …])"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Env {
        Env {
            flag: None,
            env: None,
            cwd: Some(dir.join("work/deep")),
            paths: vec![],
            mountinfo: String::new(),
            home: Some(dir.join("home")),
            system_file: dir.join("etc/cairn.toml"),
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /srv/my\\040mnt rw,nosuid,nodev shared:40 - fuse.cairn 127.0.0.1:7001,127.0.0.1:7002 rw,user_id=0
91 90 0:51 / /srv/my\\040mnt/inner rw shared:41 - tmpfs tmpfs rw
";

    #[test]
    fn each_source_in_order_of_precedence() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let mut e = env(d);
        assert!(resolve(&e).is_err(), "nothing names a cluster yet");

        write(&d.join("etc/cairn.toml"), "meta = \"10.0.0.6:1\"\n");
        assert_eq!(
            resolve(&e).unwrap().source,
            Source::SystemFile(d.join("etc/cairn.toml"))
        );

        let user = d.join("home/.config/cairn/cairn.toml");
        write(&user, "meta = [\"10.0.0.5:1\", \"10.0.0.5:2\"]\n");
        let c = resolve(&e).unwrap();
        assert_eq!(
            (c.list(), c.source),
            ("10.0.0.5:1,10.0.0.5:2".into(), Source::UserFile(user))
        );

        e.mountinfo = MOUNTINFO.into();
        e.paths = vec![PathBuf::from("/srv/my mnt/a/b")];
        let c = resolve(&e).unwrap();
        assert_eq!(c.list(), "127.0.0.1:7001,127.0.0.1:7002");
        assert_eq!(c.source, Source::Mount("/srv/my mnt".into()));
        e.paths = vec![PathBuf::from("/srv/my mnt/inner/x")];
        assert!(
            matches!(resolve(&e).unwrap().source, Source::UserFile(_)),
            "a tmpfs mounted inside the Cairn mount is not Cairn"
        );

        let checkout = d.join("work/.cairn/cairn.toml");
        write(&checkout, &cluster_file_text(&["127.0.0.1:9".into()]));
        let c = resolve(&e).unwrap();
        assert_eq!(
            (c.list(), c.source),
            ("127.0.0.1:9".into(), Source::CheckoutFile(checkout))
        );

        e.env = Some("127.0.0.1:8".into());
        assert_eq!(resolve(&e).unwrap().source, Source::Env);
        e.flag = Some(" 127.0.0.1:7 , ".into());
        let c = resolve(&e).unwrap();
        assert_eq!(
            (c.meta, c.source),
            (vec!["127.0.0.1:7".to_string()], Source::Flag)
        );
    }

    #[test]
    fn a_bad_cluster_file_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let e = env(t.path());
        write(&t.path().join("work/.cairn/cairn.toml"), "meta = 5\n");
        let err = format!("{:#}", resolve(&e).unwrap_err());
        assert!(err.contains("is not valid"), "{err}");
        write(&t.path().join("work/.cairn/cairn.toml"), "meta = []\n");
        let err = format!("{:#}", resolve(&e).unwrap_err());
        assert!(err.contains("names no meta address"), "{err}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/srv/my mnt"));
        assert_eq!(m[1].fstype, FSTYPE);
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
