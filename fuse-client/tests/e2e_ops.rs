//! End to end, as an operator and a new user meet Cairn: the cluster named once (a cluster
//! file, the mount the shell is in), the health verdict of `cairn status` and its exit status
//! while a chunk server is down and after it returns, a closed stdout, mounts from
//! `/etc/fstab`-style lines with `ro` and `remount`, `cairn mount --background` and
//! `cairn umount`, and `scripts/up` putting `cairn` on the PATH of a new shell.
mod e2e_harness;

use e2e_harness::{bin_dir, init_tracing, is_mounted, wait_until, Cluster};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tracing::info;

/// `cairn <args>` in `cwd` with no cluster on its command line or in its environment, and a
/// home directory without a cluster file: only what `cwd` is in can name the cluster.
fn cairn_in(cwd: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().join("cairn"))
        .args(args)
        .current_dir(cwd)
        .env_remove("CAIRN_META")
        .env("HOME", home)
        .output()
        .expect("run cairn")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", text(&o.stdout), text(&o.stderr)))
}

fn reason_codes(v: &serde_json::Value) -> Vec<String> {
    v["health"]["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line runs `cairn mount <mp>`.
fn mount_processes(mp: &Path) -> usize {
    let needle = format!("mount\0{}\0", mp.display());
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| text(&c).contains(&needle))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn t10_the_cluster_is_named_once_and_status_judges_its_health() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let home = c.path("home");
    std::fs::create_dir_all(&home).unwrap();

    info!("--- a cluster file in .cairn/ names the cluster for every directory below it");
    let checkout = c.path("checkout");
    let deep = checkout.join("src/deep");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(checkout.join(".cairn")).unwrap();
    let file = checkout.join(".cairn/cairn.toml");
    std::fs::write(&file, format!("meta = \"{}\"\n", c.meta_list())).unwrap();
    let o = cairn_in(&deep, &home, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["health"]["status"], "HEALTH_OK", "{v}");
    assert_eq!(v["cluster"]["meta"], c.meta_list().as_str());
    assert_eq!(v["cluster"]["source"], file.display().to_string().as_str());
    let o = cairn_in(&deep, &home, &["status"]);
    let t = text(&o.stdout);
    assert!(t.starts_with("HEALTH_OK\n"), "{t}");
    assert!(t.contains(&format!("(from {})", file.display())), "{t}");
    for column in ["LAG", "HEARTBEAT", "CAPACITY"] {
        assert!(t.contains(column), "the table shows {column}: {t}");
    }

    info!("--- nothing names a cluster: a clear error");
    let o = cairn_in(&home, &home, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no Cairn cluster named"),
        "{}",
        text(&o.stderr)
    );

    info!("--- a reader that closes stdout early ends cairn quietly, with status 0");
    let o = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; '{}' status --watch 0.2 --meta {} | head -c 10 >/dev/null",
                bin_dir().join("cairn").display(),
                c.meta_list()
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "no complaint about the closed pipe");

    info!("--- a chunk server down: HEALTH_WARN, exit status 1, the server named");
    c.chunks[1].kill9();
    let mut last = serde_json::Value::Null;
    wait_until(
        "status to report the server down",
        Duration::from_secs(30),
        || {
            let o = cairn_in(&deep, &home, &["status", "--json"]);
            last = json(&o);
            o.status.code() == Some(1)
        },
    );
    assert_eq!(last["health"]["status"], "HEALTH_WARN", "{last}");
    let codes = reason_codes(&last);
    assert!(
        codes.contains(&"CHUNK_SERVER_DOWN".to_string()),
        "{codes:?}"
    );
    let t = text(&cairn_in(&deep, &home, &["status"]).stdout);
    assert!(t.starts_with("HEALTH_WARN\n  [WARN] chunk server"), "{t}");

    info!("--- the server back: HEALTH_OK and 0 again");
    c.chunks[1].start();
    wait_until("status to be OK again", Duration::from_secs(30), || {
        cairn_in(&deep, &home, &["status"]).status.code() == Some(0)
    });

    info!("--- cairn mount --background returns once the mount answers");
    let elsewhere = c.path("elsewhere");
    let mp = elsewhere.join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let log = c.path("bg-mount.log");
    let o = Command::new(bin_dir().join("cairn"))
        .args(["mount", &mp.display().to_string(), "--background", "--meta"])
        .arg(c.meta_list())
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(is_mounted(&mp), "mounted when the command returned");
    std::fs::write(mp.join("hello"), b"from the background mount").unwrap();

    info!("--- inside the mount, the mount names the cluster; df shows it too");
    let o = cairn_in(&mp, &home, &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["cluster"]["meta"], c.meta_list().as_str());
    assert_eq!(
        v["cluster"]["source"],
        format!("the mount at {}", mp.display()).as_str()
    );
    let df = Command::new("df")
        .args(["--output=source,fstype"])
        .arg(&mp)
        .output()
        .unwrap();
    let df = text(&df.stdout);
    assert!(
        df.contains(&c.meta_list()) && df.contains("fuse.cairn"),
        "{df}"
    );

    info!("--- cairn umount refuses a busy mount, then unmounts and waits for the process");
    let busy = std::fs::File::open(mp.join("hello")).unwrap();
    let o = cairn_in(&home, &home, &["umount", &mp.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("busy"), "{}", text(&o.stderr));
    drop(busy);
    let o = cairn_in(&home, &home, &["umount", &mp.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!is_mounted(&mp));
    assert_eq!(mount_processes(&mp), 0, "the mount process exited");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("unmounted cleanly"),
        "the background mount logged its clean exit"
    );
}

/// `/sbin/mount.fuse.cairn` is the `cairn` binary under test (as `scripts/up` links it).
fn install_mount_helper() {
    let helper = Path::new("/sbin/mount.fuse.cairn");
    let target = bin_dir().join("cairn");
    if std::fs::read_link(helper).ok().as_deref() != Some(target.as_path()) {
        let _ = std::fs::remove_file(helper);
        std::os::unix::fs::symlink(&target, helper).expect("link /sbin/mount.fuse.cairn");
    }
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().expect("spawn");
    info!(
        "{:?}: {} {}{}",
        cmd,
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

#[test]
fn t20_fstab_mount_read_only_remount_and_umount() {
    init_tracing();
    let c = Cluster::start(3, 3);
    install_mount_helper();
    let mp = c.path("fstab-mnt");
    std::fs::create_dir_all(&mp).unwrap();
    let fstab = c.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a Cairn line as in /etc/fstab\n{} {} fuse.cairn _netdev,ro,nosuid 0 0\n",
            c.meta_list(),
            mp.display()
        ),
    )
    .unwrap();

    info!("--- mount <dir> from the fstab line: read-only, the cluster as the source");
    let o = run(Command::new("mount").arg("-T").arg(&fstab).arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!(" {} ", mp.display())))
        .expect("in mountinfo");
    assert!(
        line.contains(&format!("- fuse.cairn {} ro,", c.meta_list())),
        "{line}"
    );
    let e = std::fs::write(mp.join("f"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    info!("--- mount -o remount,rw, write, remount,ro again");
    let o = run(Command::new("mount").args(["-o", "remount,rw"]).arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::write(mp.join("f"), b"written after remount").unwrap();
    let o = run(Command::new("mount").args(["-o", "remount,ro"]).arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = std::fs::write(mp.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    info!("--- umount: the mount goes away and its process exits");
    let o = run(Command::new("umount").arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!is_mounted(&mp));
    wait_until("the mount process to exit", Duration::from_secs(30), || {
        mount_processes(&mp) == 0
    });

    info!("--- mount -t fuse.cairn <cluster> <dir>: the file written before is there");
    let o = run(Command::new("mount")
        .args(["-t", "fuse.cairn", &c.meta_list()])
        .arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read(mp.join("f")).unwrap(),
        b"written after remount"
    );
    let o = run(Command::new(bin_dir().join("cairn")).arg("umount").arg(&mp));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!is_mounted(&mp));
}

/// `n` consecutive free ports on 127.0.0.1, for `scripts/up` (which numbers its nodes' ports
/// from a base).
fn free_port_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if base == 0 || base > 65_000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

/// Runs `scripts/down` for the cluster of `env` when dropped (also when the test fails).
struct ScriptCluster {
    env: Vec<(String, String)>,
}

impl ScriptCluster {
    fn script(&self, name: &str) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new(root.join("scripts").join(name));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run(&mut cmd)
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        self.script("down");
    }
}

#[test]
fn t30_scripts_up_puts_cairn_on_the_path_of_a_new_shell() {
    init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("cairn-e2e-up-")
        .tempdir()
        .unwrap();
    let state = dir.path().join(".cairn");
    let mnt = dir.path().join("mnt");
    let target_dir: PathBuf = bin_dir().parent().expect("target dir").to_owned();
    let meta_port = free_port_run(3);
    let chunk_port = free_port_run(3);
    let cluster = ScriptCluster {
        env: vec![
            ("CAIRN_STATE_DIR".into(), state.display().to_string()),
            ("CAIRN_MOUNT".into(), mnt.display().to_string()),
            ("CAIRN_META_BASE_PORT".into(), meta_port.to_string()),
            ("CAIRN_CHUNK_BASE_PORT".into(), chunk_port.to_string()),
            ("CARGO_TARGET_DIR".into(), target_dir.display().to_string()),
            // scripts/test built the binaries; this run must not rebuild them under it.
            ("CAIRN_SKIP_BUILD".into(), "1".into()),
        ],
    };

    info!("--- scripts/up starts the cluster and mounts it");
    let o = cluster.script("up");
    assert!(
        o.status.success(),
        "scripts/up failed:\n{}",
        text(&o.stderr)
    );
    assert!(is_mounted(&mnt));

    info!("--- a new login shell, with nothing set up, finds cairn and the cluster");
    let o = run(Command::new("env")
        .args(["-i", "HOME=/root", "TERM=dumb", "bash", "-lc"])
        .arg("command -v cairn cairn-meta cairn-chunk && cairn --version && cairn status")
        .current_dir(dir.path()));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert!(
        out.contains("/cairn\n") && out.contains("cairn 0."),
        "{out}"
    );
    assert!(out.contains("HEALTH_OK"), "{out}");
    assert!(
        out.contains(&format!("(from {})", state.join("cairn.toml").display())),
        "{out}"
    );

    info!("--- the mount works, and scripts/down takes everything away");
    std::fs::write(mnt.join("f"), b"up").unwrap();
    let o = cluster.script("down");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!is_mounted(&mnt));
    assert_eq!(mount_processes(&mnt), 0);
}
