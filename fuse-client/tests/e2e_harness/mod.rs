//! A real Cairn cluster for end-to-end tests: `cairn-meta` and `cairn-chunk` processes on
//! 127.0.0.1, and `cairn mount` FUSE mounts, all under one temporary directory.
//!
//! Everything is torn down in `Drop` (mounts lazily unmounted, processes killed), also when a
//! test fails. The binaries are found next to the `cairn` binary cargo built for this test
//! (`scripts/test` builds all of them first).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub name: String,
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            child: None,
            program: program.to_owned(),
            args,
            log,
        };
        p.start();
        p
    }

    /// (Re)starts the process with the same arguments, appending to its log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// kill -9: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("process not running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Mount {
    pub path: PathBuf,
    pub proc: Proc,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    pub meta: Vec<Proc>,
    pub meta_addrs: Vec<String>,
    pub chunks: Vec<Proc>,
    pub mounts: Vec<Mount>,
    /// tmpfs file systems mounted for chunk servers (unmounted after the processes are gone).
    tmpfs: Vec<PathBuf>,
    /// Extra flags of every chunk server this cluster starts.
    chunk_args: Vec<String>,
}

/// Extra command-line flags for the processes of a cluster. In meta flags, `{id}` is replaced
/// by the node's id and `{dir}` by the cluster's directory.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    pub meta_args: Vec<String>,
    pub chunk_args: Vec<String>,
}

impl Opts {
    pub fn new(meta_args: &[&str], chunk_args: &[&str]) -> Opts {
        Opts {
            meta_args: meta_args.iter().map(|s| s.to_string()).collect(),
            chunk_args: chunk_args.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// How many times the meta nodes of a cluster are started on new ports before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How long a new meta node may take to bind its port.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago. Only a candidate: nothing holds it between this call and
/// the bind of the process it is given to, so another process may take it meanwhile (see
/// [`Cluster::try_start_meta`] for how that is detected and retried).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Whether process `pid` holds the listening TCP socket of 127.0.0.1:`port`: the socket's
/// inode in `/proc/net/tcp` is among the process's open files. (A connect would not tell: it
/// also succeeds when another process took the port.)
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == LISTEN)
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// How a new node's attempt to bind its port ended.
enum Bind {
    Listening,
    /// Another process took the port first; the node exited.
    PortTaken,
}

/// Waits until `p` listens on `port`; panics with its log if it died of anything but a port
/// that was taken, or never bound.
fn wait_bound(p: &mut Proc, port: u16) -> Bind {
    let deadline = Instant::now() + BIND_TIMEOUT;
    loop {
        if let Some(pid) = p.pid() {
            if listens_on(pid, port) {
                return Bind::Listening;
            }
        }
        if !p.is_running() {
            let log = p.log_tail();
            if log.contains("Address already in use") || log.contains("AddrInUse") {
                return Bind::PortTaken;
            }
            panic!("{} exited at start:\n{log}", p.name);
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within {BIND_TIMEOUT:?}:\n{}",
            p.name,
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 100 ms until it holds; panics after `timeout`. Returns how long it took.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

pub fn bin_dir() -> PathBuf {
    let cairn = PathBuf::from(env!("CARGO_BIN_EXE_cairn"));
    let dir = cairn.parent().expect("bin dir").to_owned();
    for b in ["cairn-meta", "cairn-chunk"] {
        assert!(
            dir.join(b).exists(),
            "{} not found in {}: build all binaries first (scripts/test does)",
            b,
            dir.display()
        );
    }
    dir
}

impl Cluster {
    /// Starts `n_meta` meta nodes and `n_chunk` chunk servers and waits until a leader is
    /// elected and every chunk server is up.
    pub fn start(n_meta: usize, n_chunk: usize) -> Cluster {
        Cluster::start_with(n_meta, n_chunk, Opts::default())
    }

    /// [`Cluster::start`] with extra flags for the meta nodes and chunk servers.
    pub fn start_with(n_meta: usize, n_chunk: usize, opts: Opts) -> Cluster {
        let mut c = Cluster::start_meta_with(n_meta, opts);
        for i in 0..n_chunk {
            c.add_chunk_server(i + 1);
        }
        c.wait_for_chunk_servers(n_chunk, Duration::from_secs(30));
        c
    }

    /// Starts `n_meta` meta nodes only and waits for a leader; add chunk servers yourself.
    pub fn start_meta(n_meta: usize) -> Cluster {
        Cluster::start_meta_with(n_meta, Opts::default())
    }

    /// [`Cluster::start_meta`] with extra flags (the chunk flags for the servers added later).
    pub fn start_meta_with(n_meta: usize, opts: Opts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut c = Cluster {
            bin: bin_dir(),
            meta: Vec::new(),
            meta_addrs: Vec::new(),
            chunks: Vec::new(),
            mounts: Vec::new(),
            tmpfs: Vec::new(),
            chunk_args: opts.chunk_args.clone(),
            dir,
        };
        let mut attempt = 1;
        while !c.try_start_meta(n_meta, &opts) {
            assert!(
                attempt < PORT_ATTEMPTS,
                "meta ports taken by other processes {PORT_ATTEMPTS} times in a row"
            );
            attempt += 1;
        }
        c.wait_for_leader(Duration::from_secs(30));
        c
    }

    /// Starts `n_meta` meta nodes on new ports and waits until each listens on its own.
    ///
    /// The meta nodes must know each other's addresses before they start (`--peers`), so their
    /// ports are chosen here ([`free_port`]) and handed over by number: a listener cannot be
    /// passed to a `cairn-meta` process. Another process (a chunk server or a client socket of
    /// a test running in parallel) may take such a port before the node binds it. So each
    /// node's bind is verified — the listening socket of its port must be the node's own — and
    /// when a node lost its port (it exits with "address already in use"), every node of this
    /// attempt is stopped, their data removed, and `false` returned for the caller to try again
    /// on new ports. Every port that survives this check is held by its node, so a started
    /// cluster never talks to a stranger.
    fn try_start_meta(&mut self, n_meta: usize, opts: &Opts) -> bool {
        let ports: Vec<u16> = (0..n_meta).map(|_| free_port()).collect();
        self.meta_addrs = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let peers = self
            .meta_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n_meta {
            let id = i + 1;
            let mut args = vec![
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                self.meta_addrs[i].clone(),
                "--peers".into(),
                peers.clone(),
                "--data-dir".into(),
                self.path(&format!("meta{id}")).display().to_string(),
            ];
            // `{id}` and `{dir}` in an extra flag stand for this node's id and the cluster's
            // directory (per-node files of test hooks).
            let dir = self.dir.path().display().to_string();
            args.extend(
                opts.meta_args
                    .iter()
                    .map(|a| a.replace("{id}", &id.to_string()).replace("{dir}", &dir)),
            );
            let p = Proc::spawn(
                &format!("meta{id}"),
                &self.bin.join("cairn-meta"),
                args,
                self.path(&format!("meta{id}.log")),
            );
            self.meta.push(p);
        }
        let mut taken = false;
        for (p, port) in self.meta.iter_mut().zip(&ports) {
            if let Bind::PortTaken = wait_bound(p, *port) {
                eprintln!(
                    "e2e: {}'s port {port} was taken; restarting the meta nodes on new ports",
                    p.name
                );
                taken = true;
                break;
            }
        }
        if !taken {
            return true;
        }
        for mut p in self.meta.drain(..) {
            p.kill9();
        }
        for id in 1..=n_meta {
            let data = self.path(&format!("meta{id}"));
            if let Err(e) = std::fs::remove_dir_all(&data) {
                assert!(
                    e.kind() == std::io::ErrorKind::NotFound,
                    "remove {}: {e}",
                    data.display()
                );
            }
        }
        false
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn meta_list(&self) -> String {
        self.meta_addrs.join(",")
    }

    pub fn chunk_data_dir(&self, n: usize) -> PathBuf {
        self.path(&format!("chunk{n}"))
    }

    /// Adds chunk server `n` whose data directory is a tmpfs of `bytes` (a small disk that fills).
    pub fn add_chunk_server_on_tmpfs(&mut self, n: usize, bytes: u64) {
        let dir = self.chunk_data_dir(n);
        std::fs::create_dir_all(&dir).expect("mkdir chunk dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {} failed", dir.display());
        self.tmpfs.push(dir);
        self.add_chunk_server(n);
    }

    pub fn add_chunk_server(&mut self, n: usize) {
        let mut args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.chunk_data_dir(n).display().to_string(),
            "--meta".into(),
            self.meta_list(),
        ];
        args.extend(self.chunk_args.iter().cloned());
        let p = Proc::spawn(
            &format!("chunk{n}"),
            &self.bin.join("cairn-chunk"),
            args,
            self.path(&format!("chunk{n}.log")),
        );
        self.chunks.push(p);
    }

    /// Runs `cairn <args> --meta <this cluster>`: (exit code, stdout, stderr).
    pub fn cairn(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(self.bin.join("cairn"))
            .args(args)
            .args(["--meta", &self.meta_list()])
            .output()
            .expect("run cairn");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `cairn status --json`, parsed; None while the cluster cannot answer. (Its exit status is
    /// the health verdict — 1 while, say, a chunk server is down — so only its output counts.)
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = Command::new(self.bin.join("cairn"))
            .args(["status", "--json", "--meta", &self.meta_list()])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The id of the current leader according to `cairn status`.
    pub fn leader_id(&self) -> Option<u64> {
        let st = self.status()?;
        st["meta"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| m["id"].as_u64())
    }

    pub fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.leader_id() {
                return id;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.meta.iter().map(|m| m.log_tail()).collect();
                panic!(
                    "no leader within {timeout:?}; meta logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn chunk_servers_up(&self) -> usize {
        self.status()
            .and_then(|st| {
                st["chunk_servers"]
                    .as_array()
                    .map(|a| a.iter().filter(|c| c["state"] == "up").count())
            })
            .unwrap_or(0)
    }

    pub fn wait_for_chunk_servers(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.chunk_servers_up() < n {
            if Instant::now() > deadline {
                let logs: Vec<String> = self.chunks.iter().map(|m| m.log_tail()).collect();
                panic!(
                    "fewer than {n} chunk servers up within {timeout:?}; status: {:?}\nlogs:\n{}",
                    self.status(),
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mounts the cluster at a new directory and waits until the mount answers.
    pub fn mount(&mut self) -> PathBuf {
        self.mount_with(&[])
    }

    /// [`Cluster::mount`] with extra flags for `cairn mount` (e.g. `["--inline-max", "0"]`).
    /// A [`Cluster::remount`] of it keeps them.
    pub fn mount_with(&mut self, extra: &[&str]) -> PathBuf {
        let n = self.mounts.len() + 1;
        let path = self.path(&format!("mnt{n}"));
        std::fs::create_dir_all(&path).expect("mkdir mountpoint");
        let mut args: Vec<String> = vec![
            "mount".into(),
            path.display().to_string(),
            "--meta".into(),
            self.meta_list(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut proc = Proc::spawn(
            &format!("mount{n}"),
            &self.bin.join("cairn"),
            args,
            self.path(&format!("mount{n}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&path) {
            if !proc.is_running() || Instant::now() > deadline {
                panic!(
                    "mount at {} did not appear:\n{}",
                    path.display(),
                    proc.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.mounts.push(Mount {
            path: path.clone(),
            proc,
        });
        path
    }

    /// Restarts mount `i` (0-based) after its process died or was killed.
    pub fn remount(&mut self, i: usize) {
        let path = self.mounts[i].path.clone();
        lazy_unmount(&path);
        self.mounts[i].proc.start();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&path) || std::fs::metadata(&path).is_err() {
            if !self.mounts[i].proc.is_running() || Instant::now() > deadline {
                panic!("remount failed:\n{}", self.mounts[i].proc.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every chunk file stored by chunk server `n` (1-based), as hex ids.
    pub fn chunk_files(&self, n: usize) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let root = self.chunk_data_dir(n).join("chunks");
        if let Ok(dirs) = std::fs::read_dir(&root) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    for f in files.flatten() {
                        out.insert(f.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        out
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.as_str()))
}

pub fn lazy_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(path)
            .status();
        if is_mounted(path) {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.mounts {
            m.proc.kill9();
            lazy_unmount(&m.path);
        }
        for p in self.chunks.iter_mut().chain(self.meta.iter_mut()) {
            p.kill9();
        }
        for t in &self.tmpfs {
            let _ = Command::new("umount").arg(t).status();
        }
        if std::thread::panicking() {
            // Keep the logs of a failed test for a post-mortem.
            let kept = self.dir.path().to_owned();
            eprintln!("e2e: cluster files kept at {}", kept.display());
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = d.keep();
        }
    }
}

/// Logs of the test process (RUST_LOG, default info), once per test binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs a shell command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .output()
        .expect("spawn bash");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `len` bytes of deterministic pseudo-random data to `path` (fast, incompressible).
pub fn write_random_file(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = xorshift_state(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        fill_xorshift(&mut buf, &mut x);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Fills `buf` with xorshift64* output from state `x` (advanced): incompressible bytes.
/// The generator's start for `seed`: splitmix64's finalizer, a bijection, so different seeds
/// give different streams (never zero, which xorshift cannot leave).
fn xorshift_state(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

fn fill_xorshift(buf: &mut [u8], x: &mut u64) {
    for w in buf.chunks_mut(8) {
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

/// Deterministic, incompressible bytes (xorshift64*), different for every seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = xorshift_state(seed);
    let mut v = vec![0u8; len];
    fill_xorshift(&mut v, &mut x);
    v
}

/// The committed slots (chunk and listed replicas, first page) of file `name` in the root
/// directory, asked of the metadata cluster directly.
pub async fn root_file_slots(
    meta: &cairn_common::MetaClient,
    name: &str,
) -> Vec<cairn_proto::ChunkSlot> {
    let name = name.as_bytes().to_vec();
    let attr = meta
        .call(|mut m| {
            let name = name.clone();
            async move {
                m.lookup(cairn_proto::LookupRequest {
                    parent: cairn_common::ROOT_INO,
                    name,
                })
                .await
            }
        })
        .await
        .expect("lookup")
        .attr
        .expect("attr");
    let ino = attr.ino;
    meta.call(|mut m| async move {
        m.get_chunks(cairn_proto::GetChunksRequest {
            ino,
            ..Default::default()
        })
        .await
    })
    .await
    .expect("get chunks")
    .slots
}
