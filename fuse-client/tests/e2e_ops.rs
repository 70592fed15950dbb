//! End to end, as an operator and a new user meet Cairn: the cluster named once (a cluster
//! file, the mount the shell is in), the health verdict of `cairn status` and its exit status
//! while a chunk server is down and after it returns, a closed stdout, mounts from
//! `/etc/fstab`-style lines with `ro` and `remount`, `cairn mount --background` and
//! `cairn umount`, `scripts/up` putting `cairn` on the PATH of a new shell, and mounts of a
//! sub-directory (`subdir=`).
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

/// 3 meta nodes and 3 chunk servers on small tmpfs disks of their own: the health verdict
/// then does not depend on how full the machine's disk is.
fn cluster_on_tmpfs(meta_args: &[&str], chunk_args: &[&str]) -> Cluster {
    let mut c = Cluster::start_meta_with(3, e2e_harness::Opts::new(meta_args, chunk_args));
    for n in 1..=3 {
        c.add_chunk_server_on_tmpfs(n, 512 << 20);
    }
    c.wait_for_chunk_servers(3, Duration::from_secs(30));
    c
}

#[test]
fn t10_the_cluster_is_named_once_and_status_judges_its_health() {
    init_tracing();
    let mut c = cluster_on_tmpfs(&[], &[]);
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

    info!("--- shell completions, and the commit in --version");
    let o = cairn_in(&home, &home, &["completions", "bash"]);
    assert!(
        text(&o.stdout).contains("complete -F _cairn"),
        "{}",
        text(&o.stderr)
    );
    let v = text(&cairn_in(&home, &home, &["--version"]).stdout);
    assert!(v.starts_with("cairn 0.") && v.contains("(git "), "{v}");

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
        .env("RUST_LOG", "info")
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

    info!("--- cairn scrub --now --wait returns once every pass has finished");
    e2e_harness::write_random_file(&mp.join("big"), 6 << 20, 10);
    let o = cairn_in(&mp, &home, &["scrub", "--now", "--wait", "60"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("scrub finished on 3 chunk server(s)"), "{out}");
    let o = cairn_in(&mp, &home, &["status", "--json"]);
    for server in json(&o)["chunk_servers"].as_array().unwrap() {
        assert_eq!(
            server["scrub"]["unverified_chunks"], 0,
            "every chunk read back: {server}"
        );
    }

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

/// The offset `scripts/up` adds to a node's port for its HTTP (metrics) port in this test.
const METRICS_OFFSET: u16 = 1000;

/// `n` consecutive free ports on 127.0.0.1, each also free `METRICS_OFFSET` higher, for
/// `scripts/up` (which numbers its nodes' ports from a base). Below the kernel's ephemeral
/// range, so the sockets of the other tests running meanwhile do not take them.
fn free_port_run(n: u16) -> u16 {
    let taken = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_err();
    for _ in 0..500 {
        let base = 20_000 + (rand::random::<u16>() % 8_000);
        let mut ports = (0..n).flat_map(|i| [base + i, base + i + METRICS_OFFSET]);
        if !ports.any(taken) {
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
    let mut chunk_port = free_port_run(3);
    while chunk_port.abs_diff(meta_port) < 3
        || chunk_port.abs_diff(meta_port + METRICS_OFFSET) < 3
        || meta_port.abs_diff(chunk_port + METRICS_OFFSET) < 3
    {
        chunk_port = free_port_run(3);
    }
    let mount_metrics = free_port_run(1);
    let cluster = ScriptCluster {
        env: vec![
            ("CAIRN_STATE_DIR".into(), state.display().to_string()),
            ("CAIRN_MOUNT".into(), mnt.display().to_string()),
            ("CAIRN_META_BASE_PORT".into(), meta_port.to_string()),
            ("CAIRN_CHUNK_BASE_PORT".into(), chunk_port.to_string()),
            ("CAIRN_METRICS_OFFSET".into(), METRICS_OFFSET.to_string()),
            (
                "CAIRN_MOUNT_METRICS_ADDR".into(),
                format!("127.0.0.1:{mount_metrics}"),
            ),
            ("CARGO_TARGET_DIR".into(), target_dir.display().to_string()),
            // scripts/test built the binaries; this run must not rebuild them under it.
            ("CAIRN_SKIP_BUILD".into(), "1".into()),
        ],
    };

    info!("--- scripts/up starts the cluster and mounts it");
    let o = cluster.script("up");
    if !o.status.success() {
        let logs: String = ["meta1", "chunk1", "chunk2", "chunk3", "mount"]
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(state.join(format!("logs/{n}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {n}\n{}\n",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect();
        panic!("scripts/up failed:\n{}\n{logs}", text(&o.stderr));
    }
    assert!(is_mounted(&mnt));

    info!("--- a new login shell, with nothing set up, finds cairn and the cluster");
    let o = run(Command::new("env")
        .args(["-i", "HOME=/root", "TERM=dumb", "bash", "-lc"])
        .arg(
            "command -v cairn cairn-meta cairn-chunk && cairn --version && \
             { cairn status; echo \"status exit $?\"; }",
        )
        .current_dir(dir.path()));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert!(
        out.contains("/cairn\n") && out.contains("cairn 0."),
        "{out}"
    );
    // These chunk servers share the machine's disk: a nearly full one is a fair warning.
    assert!(
        (out.starts_with("HEALTH_OK") || out.contains("\nHEALTH_OK\n"))
            && out.contains("status exit 0")
            || out.contains("HEALTH_WARN") && out.contains("status exit 1"),
        "{out}"
    );
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

/// `GET path` from `http://addr`: (status code, body). Plain HTTP/1.1, one request.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

/// The body of a chunked HTTP response.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn promtool() -> PathBuf {
    PathBuf::from(std::env::var("CAIRN_PROMTOOL").expect(
        "CAIRN_PROMTOOL is not set: run the tests through scripts/test (it unpacks promtool)",
    ))
}

/// `promtool check metrics` accepts `text` (exposition format and naming lint).
fn assert_valid_metrics(what: &str, text_: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text_.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics refused {what}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// The value of the sample `series` (name with labels, as rendered) in `page`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every `cairn_…` metric name a text (rules, a dashboard) refers to.
fn referenced_metrics(text_: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text_.as_bytes();
    let mut i = 0;
    while let Some(pos) = text_[i..].find("cairn_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let name = &text_[start..end];
        if !(start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_')) {
            out.insert(name.trim_end_matches("_bucket").to_owned());
        }
        i = end;
    }
    out
}

#[test]
fn t40_every_process_serves_metrics_and_the_alerts_fire_on_real_figures() {
    init_tracing();
    let http = ["--metrics-listen", "127.0.0.1:0"];
    let mut c = Cluster::start_with(3, 3, e2e_harness::Opts::new(&http, &http));
    let mount_http = format!(
        "127.0.0.1:{}",
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let mnt = c.mount_with(&["--metrics-listen", &mount_http]);

    info!("--- some traffic: a file written and read through the mount");
    e2e_harness::write_random_file(&mnt.join("f"), 9 << 20, 40);
    let back = std::fs::read(mnt.join("f")).unwrap();
    assert_eq!(back.len(), 9 << 20);

    info!("--- cairn status --json lists every node's metrics URL");
    let st = c.status().expect("status");
    let urls: Vec<String> = st["metrics"]
        .as_array()
        .expect("a metrics list")
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(urls.len(), 6, "3 meta nodes and 3 chunk servers: {urls:?}");
    let leader_url = st["meta"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "leader")
        .and_then(|m| m["metrics_url"].as_str())
        .expect("the leader's URL")
        .to_owned();
    let addr_of = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_owned()
    };

    info!("--- each page is valid Prometheus text with the figures the issue names");
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = vec![];
    for url in urls
        .iter()
        .chain(std::iter::once(&format!("http://{mount_http}/metrics")))
    {
        let addr = addr_of(url);
        let (code, page) = http_get(&addr, "/metrics");
        assert_eq!(code, 200, "{url}");
        assert_valid_metrics(url, &page);
        assert_eq!(http_get(&addr, "/healthz").0, 200, "{url} /healthz");
        let (code, why) = http_get(&addr, "/readyz");
        assert_eq!(code, 200, "{url} /readyz: {why}");
        for l in page.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            seen.insert(name.trim_end_matches("_bucket").to_owned());
        }
        pages.push((url.clone(), page));
    }
    let leader_page = &pages.iter().find(|(u, _)| *u == leader_url).unwrap().1;
    for name in [
        "cairn_raft_term",
        "cairn_raft_commit_index",
        "cairn_raft_applied_index",
        "cairn_raft_follower_lag_entries",
        "cairn_rpc_requests_total",
        "cairn_rpc_duration_seconds_bucket",
        "cairn_chunk_server_up",
        "cairn_chunk_server_free_bytes",
        "cairn_repair_under_replicated_chunks",
        "cairn_repair_missing_chunks",
        "cairn_gc_pending_chunks",
        "cairn_gc_collected_chunks",
        "cairn_scrub_unverified_chunks",
    ] {
        assert!(leader_page.contains(name), "the leader's page lacks {name}");
    }
    assert_eq!(
        sample(leader_page, "cairn_raft_state{state=\"leader\"}"),
        Some(1.0)
    );
    let chunk_pages: Vec<&String> = pages
        .iter()
        .filter(|(u, _)| !st["meta"].to_string().contains(u.as_str()) && !u.contains(&mount_http))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(chunk_pages.len(), 3);
    let written: f64 = chunk_pages
        .iter()
        .filter_map(|p| sample(p, "cairn_chunk_bytes_written_total"))
        .sum();
    assert!(
        written >= 3.0 * (9 << 20) as f64,
        "three replicas of 9 MiB written, counted {written}"
    );
    for p in &chunk_pages {
        for name in [
            "cairn_scrub_unverified_chunks",
            "cairn_scrub_oldest_unverified_age_seconds",
            "cairn_store_free_bytes",
            "cairn_rpc_requests_total{service=\"chunk\",method=\"PutChunk\",outcome=\"ok\"}",
        ] {
            assert!(p.contains(name), "a chunk server's page lacks {name}");
        }
    }
    let mount_page = &pages.last().unwrap().1;
    for name in [
        "cairn_fuse_ops_total{op=\"write\",outcome=\"ok\"}",
        "cairn_fuse_op_duration_seconds_bucket{op=\"read\"",
        "cairn_mount_cache_lookups_total",
        "cairn_mount_uploads_in_flight",
    ] {
        assert!(mount_page.contains(name), "the mount's page lacks {name}");
    }

    info!("--- the alert rules check, and every metric they and the dashboard use exists");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let rules = root.join("prometheus/cairn-alerts.yml");
    let o = run(Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules));
    assert!(o.status.success(), "{}", text(&o.stdout));
    let dashboard = std::fs::read_to_string(root.join("grafana/cairn-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().unwrap().len() >= 10);
    let used = referenced_metrics(&std::fs::read_to_string(&rules).unwrap())
        .into_iter()
        .chain(referenced_metrics(&dashboard));
    for name in used {
        // cairn_mount_commit_conflicts_total appears only once a conflict happened.
        if name == "cairn_mount_commit_conflicts_total" {
            continue;
        }
        assert!(
            seen.contains(&name),
            "{name} is used but no process exports it"
        );
    }

    info!("--- a chunk server killed: its up figure drops, and the alert fires on those figures");
    c.chunks[1].kill9();
    let mut page = String::new();
    let mut victim = None;
    wait_until(
        "the leader to export a server down",
        Duration::from_secs(30),
        || {
            page = http_get(&addr_of(&leader_url), "/metrics").1;
            victim = page
                .lines()
                .find(|l| l.starts_with("cairn_chunk_server_up{") && l.ends_with(" 0"))
                .and_then(|l| l.split('"').nth(1).map(str::to_owned));
            victim.is_some()
        },
    );
    let victim = victim.unwrap();
    info!(%victim, "victim down in the leader's figures");
    let inputs: Vec<String> = page
        .lines()
        .filter(|l| l.starts_with("cairn_chunk_server_up{"))
        .map(|l| {
            let (s, v) = l.rsplit_once(' ').unwrap();
            format!("      - series: '{s}'\n        values: '{v}x10'\n")
        })
        .collect();
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{}    alert_rule_test:\n      - eval_time: 5m\n        alertname: CairnChunkServerDown\n        exp_alerts:\n          - exp_labels:\n              severity: warning\n              server: \"{victim}\"\n            exp_annotations:\n              summary: \"Chunk server {victim} is down\"\n              description: \"The meta leader has had no heartbeat from chunk server {victim} for over a minute; its chunks are being re-replicated elsewhere.\"\n",
        rules.display(),
        inputs.concat()
    );
    let test_file = c.path("alert-test.yml");
    std::fs::write(&test_file, &test).unwrap();
    let o = run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(&test_file));
    assert!(
        o.status.success(),
        "the alert did not fire as expected on the real figures:\n{test}\n{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| {
        panic!("CAIRN_CHROMIUM is not set: run the tests through scripts/test (it installs it)")
    }))
}

/// Loads `url` in headless Chromium, lets its scripts run for a few seconds, and returns the
/// page as rendered (`--dump-dom`) or writes a screenshot.
fn chromium_run(url: &str, extra: &[&str]) -> Output {
    run(Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            "--window-size=1400,1000",
        ])
        .args(extra)
        .arg(url))
}

#[test]
fn t50_the_leaders_status_page_renders_in_a_browser() {
    init_tracing();
    let c = cluster_on_tmpfs(&["--metrics-listen", "127.0.0.1:0"], &[]);
    let st = c.status().expect("status");
    let page_of = |role: &str| {
        st["meta"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == role)
            .and_then(|m| m["metrics_url"].as_str())
            .map(|u| u.trim_end_matches("metrics").to_owned())
            .expect("a meta node's HTTP address")
    };
    let leader = page_of("leader");

    info!("--- status.json is the report of cairn status; a follower points to the leader");
    let addr = leader.trim_start_matches("http://").trim_end_matches('/');
    let (code, body) = http_get(addr, "/status.json");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["health"]["status"], "HEALTH_OK", "{v}");
    assert_eq!(v["status"]["chunk_servers"].as_array().unwrap().len(), 3);
    let follower = page_of("follower");
    let (code, body) = http_get(
        follower.trim_start_matches("http://").trim_end_matches('/'),
        "/status.json",
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not the leader"), "{body}");

    info!("--- the page, rendered by Chromium, shows the verdict and every server");
    let o = chromium_run(&leader, &["--dump-dom"]);
    assert!(o.status.success(), "chromium failed: {}", text(&o.stderr));
    let dom = text(&o.stdout);
    assert!(dom.contains("HEALTH_OK"), "{dom}");
    for server in st["chunk_servers"].as_array().unwrap() {
        let addr = server["addr"].as_str().unwrap();
        assert!(
            dom.contains(addr),
            "the page lacks chunk server {addr}: {dom}"
        );
    }
    for m in st["meta"].as_array().unwrap() {
        let addr = m["addr"].as_str().unwrap();
        assert!(dom.contains(addr), "the page lacks meta node {addr}");
    }
    assert!(dom.contains("class=\"bar"), "capacity bars");
    assert!(
        dom.contains("<p id=\"error\"></p>"),
        "no load error shown: {dom}"
    );

    info!("--- a screenshot, kept as a test artifact");
    let dir = bin_dir()
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let o = chromium_run(&leader, &[&format!("--screenshot={}", shot.display())]);
    assert!(o.status.success(), "chromium failed: {}", text(&o.stderr));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    info!(path = %shot.display(), "status page screenshot");
}

#[test]
fn t60_systemd_units_verify_and_the_processes_run_from_config_files_and_notify_readiness() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bin = bin_dir();

    info!("--- systemd-analyze verify accepts the units, pointed at these binaries");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let mut names = vec![];
    for e in std::fs::read_dir(&units).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().replace('@', "@mnt-x");
        let unit = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bin.display()))
            .replace("/etc/cairn/", &format!("{}/", dir.path().display()));
        std::fs::write(dir.path().join(&name), unit).unwrap();
        names.push(name);
    }
    for example in ["cairn-meta.toml", "cairn-chunk.toml"] {
        let from = units.join("../config").join(example);
        std::fs::copy(from, dir.path().join(example)).unwrap();
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let o = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(dir.path()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr).trim(), "", "no warnings");

    info!("--- a config file with a typo is refused, naming the key");
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, file_metrics, flag_metrics) = (free_port(), free_port(), free_port());
    let config = dir.path().join("meta.toml");
    std::fs::write(&config, "id = 1\ngc-grace-secs = 600\n").unwrap();
    let o = run(Command::new(bin.join("cairn-meta"))
        .arg("--config")
        .arg(&config));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("unknown key `gc-grace-secs`"),
        "{}",
        text(&o.stderr)
    );

    info!(
        "--- cairn-meta runs from its config file (a flag wins over it), sends READY=1 once \
           it serves and STOPPING=1 on SIGTERM"
    );
    std::fs::write(
        &config,
        format!(
            "id = 1\nlisten = \"127.0.0.1:{port}\"\npeers = [\"1=127.0.0.1:{port}\"]\n\
             data-dir = \"{}\"\nmetrics-listen = \"127.0.0.1:{file_metrics}\"\n\
             gc-grace = \"15m\"\nelection-timeout-max = \"500ms\"\n",
            dir.path().join("meta").display()
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut meta = Command::new(bin.join("cairn-meta"))
        .arg("--config")
        .arg(&config)
        .args(["--metrics-listen", &format!("127.0.0.1:{flag_metrics}")])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification within 30 s");
    assert_eq!(text(&buf[..n]).trim(), "READY=1");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("it serves once it said so");
    std::net::TcpStream::connect(("127.0.0.1", flag_metrics))
        .expect("the flag's metrics address, not the file's");
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_metrics)).is_err());
    unsafe {
        libc::kill(meta.id() as i32, libc::SIGTERM);
    }
    let n = sock.recv(&mut buf).expect("a notification on SIGTERM");
    assert_eq!(text(&buf[..n]).trim(), "STOPPING=1");
    let st = meta.wait().unwrap();
    assert!(st.success(), "cairn-meta exits cleanly on SIGTERM: {st}");
}

/// Lazily unmounts its paths when dropped, also when the test fails (the mount processes of
/// background mounts then exit on their own).
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in &self.0 {
            e2e_harness::lazy_unmount(p);
        }
    }
}

fn cstr(s: impl AsRef<std::ffi::OsStr>) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(s.as_ref().as_bytes()).unwrap()
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (p, n) = (cstr(path), cstr(name));
    // SAFETY: valid NUL-terminated strings and a buffer of `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getxattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (p, n) = (cstr(path), cstr(name));
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of `buf.len()` bytes.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`.
fn try_flock(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a descriptor owned by `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The names in directory `d`, sorted.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn t70_subdir_mounts_show_one_directory_as_their_root() {
    use std::os::unix::fs::MetadataExt;
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let home = c.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let full = c.mount();
    let (by_mount, by_fstab, failed) = (
        c.path("sub-mount"),
        c.path("sub-fstab"),
        c.path("sub-failed"),
    );
    // Helper mounts log here rather than in /var/log/cairn.
    let logs = c.path("");
    let log = move |name: &str| format!("log={}", logs.join(format!("{name}.log")).display());
    for d in [&by_mount, &by_fstab, &failed] {
        std::fs::create_dir_all(d).unwrap();
    }
    let _unmount = Unmount(vec![by_mount.clone(), by_fstab.clone(), failed.clone()]);

    info!("--- /projects/a/file through a mount of the whole namespace");
    let a = full.join("projects/a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(full.join("top-secret"), b"at the Cairn root").unwrap();
    std::fs::create_dir_all(full.join("projects/b")).unwrap();
    let content = e2e_harness::random_bytes(300 << 10, 70);
    std::fs::write(a.join("file"), &content).unwrap();

    info!("--- cairn mount --subdir /projects/a: the file is at the root, and only the subdir's content");
    let sub = c.mount_with(&["--subdir", "/projects/a"]);
    assert_eq!(std::fs::read(sub.join("file")).unwrap(), content);
    assert_eq!(names(&sub), vec!["file"]);
    let root = std::fs::metadata(&sub).unwrap();
    assert!(root.is_dir(), "the mount root is a directory");
    assert_eq!(root.ino(), 1, "the mount root is FUSE inode 1");
    assert_eq!(
        std::fs::metadata(sub.join("file")).unwrap().ino(),
        std::fs::metadata(a.join("file")).unwrap().ino(),
        "inodes below the root keep their Cairn numbers"
    );
    for outside in ["top-secret", "projects", "b", "a"] {
        let e = std::fs::metadata(sub.join(outside)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{outside}: {e}");
    }
    assert_eq!(
        std::fs::metadata(sub.join("..")).unwrap().ino(),
        std::fs::metadata(c.path("")).unwrap().ino(),
        "the mount root's .. is the kernel's: the directory the mount point is in"
    );
    let ls = e2e_harness::sh(&format!("ls -a '{}'", sub.display()));
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "file"],
        "{ls}"
    );

    info!("--- writes, mkdir, renames, links and removals in the subdir land in /projects/a");
    let big = e2e_harness::random_bytes(5 << 20, 71);
    std::fs::write(sub.join("new.bin"), &big).unwrap();
    std::fs::create_dir(sub.join("dir")).unwrap();
    std::fs::rename(sub.join("new.bin"), sub.join("dir/renamed.bin")).unwrap();
    std::fs::hard_link(sub.join("dir/renamed.bin"), sub.join("link")).unwrap();
    std::os::unix::fs::symlink("dir/renamed.bin", sub.join("sym")).unwrap();
    std::fs::write(sub.join("gone"), b"removed below").unwrap();
    std::fs::remove_file(sub.join("gone")).unwrap();
    std::fs::create_dir(sub.join("empty")).unwrap();
    std::fs::remove_dir(sub.join("empty")).unwrap();
    assert_eq!(names(&a), ["dir", "file", "link", "sym"]);
    assert_eq!(names(&a.join("dir")), ["renamed.bin"]);
    assert_eq!(std::fs::read(a.join("dir/renamed.bin")).unwrap(), big);
    assert_eq!(std::fs::read(a.join("sym")).unwrap(), big);
    let linked = std::fs::metadata(a.join("link")).unwrap();
    assert_eq!(linked.nlink(), 2);
    assert_eq!(
        linked.ino(),
        std::fs::metadata(sub.join("dir/renamed.bin"))
            .unwrap()
            .ino()
    );
    std::fs::write(a.join("from-full"), b"written through the whole mount").unwrap();
    assert_eq!(
        std::fs::read(sub.join("from-full")).unwrap(),
        b"written through the whole mount"
    );
    assert_eq!(names(&sub), ["dir", "file", "from-full", "link", "sym"]);
    let ls = e2e_harness::sh(&format!("ls -la '{}'", sub.display()));
    assert!(ls.contains("sym -> dir/renamed.bin"), "{ls}");

    info!("--- xattrs of the mount root are the subdir's; locks hold across both mounts");
    setxattr(&sub, "user.team", b"a-team").unwrap();
    assert_eq!(getxattr(&a, "user.team").unwrap(), b"a-team");
    setxattr(&a.join("file"), "user.origin", b"full").unwrap();
    assert_eq!(getxattr(&sub.join("file"), "user.origin").unwrap(), b"full");
    let held = std::fs::File::open(sub.join("file")).unwrap();
    try_flock(&held).unwrap();
    let other = std::fs::File::open(a.join("file")).unwrap();
    let e = try_flock(&other).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK), "{e}");
    drop(held);
    wait_until(
        "the lock to go with its file",
        Duration::from_secs(10),
        || try_flock(&other).is_ok(),
    );
    drop(other);

    info!("--- statfs, df and cairn status inside the subdir mount name the cluster");
    let (s, f) = (
        nix::sys::statvfs::statvfs(&sub).unwrap(),
        nix::sys::statvfs::statvfs(&full).unwrap(),
    );
    assert_eq!((s.blocks(), s.block_size()), (f.blocks(), f.block_size()));
    let df = e2e_harness::sh(&format!("df --output=source,fstype '{}'", sub.display()));
    assert!(
        df.contains(&c.meta_list()) && df.contains("fuse.cairn"),
        "{df}"
    );
    let o = cairn_in(&sub.join("dir"), &home, &["status", "--json"]);
    let v = json(&o);
    assert_eq!(v["cluster"]["meta"], c.meta_list().as_str());
    assert_eq!(
        v["cluster"]["source"],
        format!("the mount at {}", sub.display()).as_str()
    );

    info!("--- mount -t fuse.cairn -o subdir=: the same directory, the cluster as the source");
    install_mount_helper();
    let o = run(Command::new("mount")
        .args([
            "-t",
            "fuse.cairn",
            "-o",
            &format!("subdir=/projects/a,nosuid,{}", log("by-mount")),
        ])
        .arg(c.meta_list())
        .arg(&by_mount));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(by_mount.join("file")).unwrap(), content);
    assert_eq!(std::fs::read(by_mount.join("link")).unwrap(), big);
    assert_eq!(names(&by_mount), names(&a));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!(" {} ", by_mount.display())))
        .expect("in mountinfo");
    assert!(
        line.contains(&format!("- fuse.cairn {} ", c.meta_list())),
        "{line}"
    );
    std::fs::rename(by_mount.join("dir"), by_mount.join("dir2")).unwrap();
    assert!(a.join("dir2/renamed.bin").exists());
    let o = run(Command::new("umount").arg(&by_mount));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!is_mounted(&by_mount));

    info!("--- an fstab line with subdir=, remounted read-only (mount passes subdir= back)");
    let fstab = c.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.cairn _netdev,subdir=projects/a/,{} 0 0\n",
            c.meta_list(),
            by_fstab.display(),
            log("by-fstab")
        ),
    )
    .unwrap();
    install_mount_helper();
    let o = run(Command::new("mount").arg("-T").arg(&fstab).arg(&by_fstab));
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::fs::write(by_fstab.join("from-fstab"), b"fstab").unwrap();
    assert_eq!(std::fs::read(a.join("from-fstab")).unwrap(), b"fstab");
    let o = run(Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .args(["-o", "remount,ro"])
        .arg(&by_fstab));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = std::fs::write(by_fstab.join("ro"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(
        names(&by_fstab),
        names(&a),
        "still the subdir after the remount"
    );
    let o = run(Command::new(bin_dir().join("cairn"))
        .arg("umount")
        .arg(&by_fstab));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!is_mounted(&by_fstab));

    info!("--- a missing subdir, a file and a path with .. fail the mount, naming the path");
    let bg = |opts: &[&str]| {
        let mut cmd = Command::new(bin_dir().join("cairn"));
        cmd.arg("mount")
            .arg(&failed)
            .args(["--background", "--meta", &c.meta_list()]);
        cmd.args(opts).arg("--log-file").arg(c.path("failed.log"));
        run(&mut cmd)
    };
    for (opts, said) in [
        (
            &["--subdir", "/projects/nope"][..],
            "subdir /projects/nope: /projects/nope does not exist in the Cairn file system",
        ),
        (
            &["-o", "subdir=projects/a/file"][..],
            "subdir /projects/a/file: /projects/a/file is not a directory",
        ),
        (
            &["-o", "subdir=/projects/../a"][..],
            "subdir \"/projects/../a\": \"..\" is not allowed",
        ),
    ] {
        let o = bg(opts);
        assert_eq!(o.status.code(), Some(1), "{opts:?}");
        assert!(
            text(&o.stderr).contains(said),
            "{opts:?}: {}",
            text(&o.stderr)
        );
        assert!(!is_mounted(&failed), "{opts:?}");
    }
    install_mount_helper();
    let o = run(Command::new("mount")
        .args([
            "-t",
            "fuse.cairn",
            "-o",
            &format!("subdir=/projects/zz,{}", log("failed-helper")),
        ])
        .arg(c.meta_list())
        .arg(&failed));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("/projects/zz does not exist"),
        "{}",
        text(&o.stderr)
    );
    assert!(!is_mounted(&failed));
    wait_until(
        "failed mount processes to be gone",
        Duration::from_secs(10),
        || mount_processes(&failed) == 0,
    );

    info!("--- unmounting the subdir mount leaves the whole mount as it was");
    let idx = c.mounts.iter().position(|m| m.path == sub).unwrap();
    let st = c.mounts[idx].proc.terminate(Duration::from_secs(30));
    assert!(st.success(), "the subdir mount exits cleanly: {st}");
    assert!(!is_mounted(&sub));
    assert_eq!(std::fs::read(a.join("file")).unwrap(), content);
    assert_eq!(
        std::fs::read(full.join("top-secret")).unwrap(),
        b"at the Cairn root"
    );
}
