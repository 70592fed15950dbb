//! End to end, resumable uploads (issue 5), with real processes and real FUSE mounts:
//! `cairn put` and `cairn get` killed with -9 halfway and run again (only the missing chunks
//! travel, measured on the chunk servers' received-bytes counters), upload sessions listed,
//! aborted and expired (and their chunks collected), and copies through the mount that survive
//! the death of the mount itself, of a chunk server and of the meta leader; and whole trees
//! copied in and out with `cairn put -r` / `cairn get -r`.
mod e2e_harness;

use cairn_common::{ChunkClients, ChunkId, MetaClient};
use cairn_proto::{ChunkServerInfoRequest, GetUploadRequest};
use e2e_harness::{
    bin_dir, init_tracing, lazy_unmount, sh, wait_until, write_random_file, Cluster, Opts,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tracing::info;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 4 * MIB;
const REPLICATION: u64 = 3;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The sum of every chunk server's `received_bytes` (bytes that arrived by PutChunk since the
/// server started), asked of each server directly (`Info`).
fn received_bytes(c: &Cluster) -> u64 {
    let st = c.status().expect("cairn status");
    let addrs: Vec<String> = st["chunk_servers"]
        .as_array()
        .expect("chunk_servers")
        .iter()
        .map(|s| s["addr"].as_str().expect("addr").to_owned())
        .collect();
    rt().block_on(async {
        let clients = ChunkClients::new();
        let mut sum = 0;
        for a in addrs {
            let mut cl = clients.get(&a).expect("chunk client");
            sum += cl
                .info(ChunkServerInfoRequest {})
                .await
                .unwrap_or_else(|e| panic!("Info of chunk server {a}: {e}"))
                .into_inner()
                .received_bytes;
        }
        sum
    })
}

/// `cairn uploads list --json`.
fn uploads(c: &Cluster) -> Vec<Value> {
    let (code, out, err) = c.cairn(&["uploads", "list", "--json"]);
    assert_eq!(code, 0, "cairn uploads list --json failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("uploads list output {out:?}: {e}"))
}

/// `uploads(c)` once it has stopped changing: a client killed with -9 may have left a
/// `RecordUpload` in flight, which the leader still commits after the kill (the request had
/// arrived whole). Reading the listing before that lands would undercount what is recorded.
fn settled_uploads(c: &Cluster) -> Vec<Value> {
    // Ages tick by themselves; what is recorded is the id and the byte count.
    let recorded = |ups: &[Value]| -> Vec<(Value, Value)> {
        ups.iter()
            .map(|u| (u["id"].clone(), u["bytes"].clone()))
            .collect()
    };
    let t0 = Instant::now();
    let mut last = uploads(c);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = uploads(c);
        if recorded(&now) == recorded(&last) {
            return now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the upload listing kept changing after the client was killed: {now:?}"
        );
        last = now;
    }
}

/// The upload whose target is `path`, if listed.
fn upload_of(c: &Cluster, path: &str) -> Option<Value> {
    uploads(c).into_iter().find(|u| u["target"] == path)
}

/// The chunk ids (hex) recorded in upload `id` (`GetUpload`).
fn upload_chunk_ids(c: &Cluster, id: u64) -> BTreeSet<String> {
    rt().block_on(async {
        let meta = MetaClient::new(c.meta_addrs.clone());
        let r = meta
            .call(|mut m| async move {
                m.get_upload(GetUploadRequest {
                    upload: id,
                    ..Default::default()
                })
                .await
            })
            .await
            .unwrap_or_else(|e| panic!("GetUpload {id}: {}", e.message()));
        r.slots
            .iter()
            .filter_map(|s| s.chunk.as_ref())
            .map(|ch| ChunkId::from_bytes(&ch.id).expect("chunk id").to_hex())
            .collect()
    })
}

/// Starts `cairn <args> --meta <cluster>` in the background, its output in `<name>.log`.
fn spawn_cairn(c: &Cluster, args: &[&str], name: &str) -> (Child, PathBuf) {
    let log = c.path(&format!("{name}.log"));
    let f = std::fs::File::create(&log).expect("log file");
    let child = Command::new(bin_dir().join("cairn"))
        .args(args)
        .args(["--meta", &c.meta_list()])
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .expect("spawn cairn");
    (child, log)
}

/// Kills `child` with SIGKILL once `progress()` reaches `target`; returns the elapsed time.
/// Panics if the process ends first (it was meant to be interrupted).
fn kill9_when(
    child: &mut Child,
    log: &Path,
    what: &str,
    target: u64,
    timeout: Duration,
    mut progress: impl FnMut() -> u64,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "{what} ended ({st}) before it could be interrupted at {target} bytes:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let p = progress();
        if p >= target {
            child.kill().expect("kill -9");
            let _ = child.wait();
            info!(progress = p, elapsed = ?t0.elapsed(), "{what} killed with SIGKILL");
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "{what} did not reach {target} bytes within {timeout:?} (at {p}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn blake3_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// The number after `word ` in a summary line (`sent 123 bytes` → 123).
fn number_after(text: &str, word: &str) -> u64 {
    let at = text
        .find(&format!("{word} "))
        .unwrap_or_else(|| panic!("no {word:?} in {text:?}"));
    text[at + word.len() + 1..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {text:?}"))
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64().max(1e-3)
}

fn on_any_server(c: &Cluster, ids: &BTreeSet<String>) -> usize {
    let all: BTreeSet<String> = (1..=c.chunks.len())
        .flat_map(|n| c.chunk_files(n))
        .collect();
    ids.intersection(&all).count()
}

fn gc_opts(extra_meta: &[&str]) -> Opts {
    let mut meta = vec!["--gc-grace", "1s", "--gc-interval", "200ms"];
    meta.extend_from_slice(extra_meta);
    Opts::new(&meta, &[])
}

/// The issue's first test: `cairn put` of 1 GiB is killed with -9 at about half; the file is
/// not visible by name meanwhile; the same command run again completes while the chunk servers
/// receive at most the remaining bytes plus one chunk (× 3 replicas); the stored file's blake3
/// equals the source's. Also: clear errors for a missing source and a missing parent, and a
/// second put of the same content sends nothing at all.
#[test]
fn t10_an_interrupted_put_resumes_and_sends_only_the_missing_chunks() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let total: u64 = 1 << 30;
    let src = c.path("big.src");
    write_random_file(&src, total, 42);
    let src_s = src.display().to_string();
    let src_hash = blake3_of(&src);

    info!("--- clear errors: a missing source, a missing parent directory");
    let (code, _, err) = c.cairn(&["put", "/nonexistent/file", "/x"]);
    assert_eq!(code, 1, "missing source: exit 1 ({err})");
    assert!(
        err.contains("cairn put: /nonexistent/file: No such file"),
        "missing source: {err}"
    );
    let (code, _, err) = c.cairn(&["put", &src_s, "/no/such/dir/big"]);
    assert_ne!(code, 0, "a missing parent directory must fail");
    assert!(
        err.contains("/no/such/dir") && err.contains("does not exist"),
        "missing parent: {err}"
    );

    info!("--- cairn put of 1 GiB, killed with -9 once about half is recorded");
    let (mut put, log) = spawn_cairn(&c, &["put", &src_s, "/big"], "put1");
    let first_run = kill9_when(
        &mut put,
        &log,
        "cairn put",
        total / 2,
        Duration::from_secs(300),
        || uploads(&c).iter().filter_map(|u| u["bytes"].as_u64()).sum(),
    );
    let ups = settled_uploads(&c);
    assert_eq!(ups.len(), 1, "one interrupted upload is listed: {ups:?}");
    let up = &ups[0];
    assert_eq!(up["target"], "/big", "{up}");
    assert!(
        up["label"].as_str().unwrap().contains("big.src"),
        "the label names the source: {up}"
    );
    let recorded = up["bytes"].as_u64().unwrap();
    assert!(
        recorded >= total / 2 && recorded < total,
        "about half was recorded: {recorded}"
    );
    info!(
        recorded,
        rate_mib_s = mib_per_s(recorded, first_run),
        "--- interrupted"
    );
    assert!(
        !mnt.join("big").exists(),
        "the interrupted file must not be visible by name"
    );
    let (code, _, err) = c.cairn(&["get", "/big", &c.path("nothing").display().to_string()]);
    assert!(
        code != 0 && err.contains("No such file"),
        "lookup of the interrupted file: {err}"
    );

    info!("--- the same command again completes, sending only what is missing");
    let before = received_bytes(&c);
    let t1 = Instant::now();
    let (code, out, err) = c.cairn(&["put", &src_s, "/big"]);
    let took = t1.elapsed();
    assert_eq!(code, 0, "resumed put failed:\n{out}\n{err}");
    let sent = received_bytes(&c) - before;
    let bound = (total - recorded + CHUNK) * REPLICATION;
    info!(
        sent,
        bound,
        ?took,
        rate_mib_s = mib_per_s(total - recorded, took),
        "{}",
        out.trim()
    );
    assert!(
        sent <= bound,
        "the rerun sent {sent} bytes to the chunk servers; at most {bound} = (remaining {} + one \
         chunk) × {REPLICATION} allowed",
        total - recorded
    );
    assert_eq!(
        number_after(&out, "resumed"),
        recorded,
        "every recorded chunk is skipped: {out}"
    );
    assert!(
        uploads(&c).is_empty(),
        "the committed upload is no longer listed"
    );

    info!("--- the stored file is the source: size on the mount, blake3 through cairn get");
    assert_eq!(std::fs::metadata(mnt.join("big")).unwrap().len(), total);
    let copy = c.path("big.out");
    let t2 = Instant::now();
    let (code, out, err) = c.cairn(&["get", "/big", &copy.display().to_string()]);
    assert_eq!(code, 0, "get failed:\n{out}\n{err}");
    info!(
        rate_mib_s = mib_per_s(total, t2.elapsed()),
        "{}",
        out.trim()
    );
    assert_eq!(blake3_of(&copy), src_hash, "blake3 of the stored file");
    std::fs::remove_file(&copy).unwrap();

    info!("--- the same content under another name: nothing is sent at all");
    let before = received_bytes(&c);
    let (code, out, err) = c.cairn(&["put", "-q", &src_s, "/big-again"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        received_bytes(&c) - before,
        0,
        "chunks the cluster holds are never sent again: {out}"
    );
    assert_eq!(number_after(&out, "sent"), 0, "{out}");
}

/// A conflicting concurrent writer: while `cairn put` of a large file runs, another put
/// replaces the target. The large put's commit is refused with a clear message (based on a
/// version that changed) and exit status 1; the file shows the other writer's whole version.
/// Run again, it uploads over the new version without sending a chunk twice (the refused upload
/// still holds them), and the refused upload is cleaned up.
#[test]
fn t15_a_concurrent_writer_makes_the_commit_fail_and_a_rerun_uploads_over_it() {
    init_tracing();
    let c = Cluster::start(3, 3);
    let first = c.path("first.src");
    write_random_file(&first, MIB, 1);
    let (code, out, err) = c.cairn(&["put", "-q", &first.display().to_string(), "/f"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let big = c.path("big.src");
    write_random_file(&big, 400 * MIB, 2);
    let big_s = big.display().to_string();
    let other = c.path("other.src");
    write_random_file(&other, 2 * MIB, 3);

    info!("--- put 400 MiB over /f; meanwhile another writer replaces /f");
    let (mut put, log) = spawn_cairn(&c, &["put", &big_s, "/f"], "put");
    wait_until(
        "the big put to record a chunk",
        Duration::from_secs(60),
        || upload_of(&c, "/f").is_some_and(|u| u["bytes"].as_u64() > Some(0)),
    );
    let (code, out, err) = c.cairn(&["put", "-q", &other.display().to_string(), "/f"]);
    assert_eq!(code, 0, "the concurrent put: {out}\n{err}");
    let st = put.wait().expect("wait for the big put");
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(1), "the refused put exits 1:\n{said}");
    assert!(
        said.contains("/f changed while uploading (based on version")
            && said.contains("run again to upload over the new version"),
        "{said}"
    );
    let got = c.path("f.out");
    let (code, out, err) = c.cairn(&["get", "-q", "/f", &got.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        blake3_of(&got),
        blake3_of(&other),
        "/f is the other version, whole"
    );
    std::fs::remove_file(&got).unwrap();

    info!("--- run again: it uploads over the new version and sends nothing twice");
    let before = received_bytes(&c);
    let (code, out, err) = c.cairn(&["put", "-q", &big_s, "/f"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("changed since the interrupted upload began"),
        "{err}"
    );
    let sent = received_bytes(&c) - before;
    info!(sent, "{}", out.trim());
    assert!(
        sent <= CHUNK * REPLICATION,
        "the refused upload's chunks are reused, not sent again: {sent} bytes sent"
    );
    assert!(
        uploads(&c).is_empty(),
        "the refused upload is aborted after the commit"
    );
    let (code, out, err) = c.cairn(&["get", "-q", "/f", &got.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(blake3_of(&got), blake3_of(&big));
}

/// A full cluster: chunk servers on 80 MiB tmpfs disks (64 MiB of it reserved) cannot take a
/// 100 MiB file. `cairn put` says "cluster is full" and exits 1, and no file appears.
#[test]
fn t17_a_full_cluster_is_a_clear_error_and_no_file_appears() {
    init_tracing();
    let mut c = Cluster::start_meta(3);
    for n in 1..=3 {
        c.add_chunk_server_on_tmpfs(n, 80 << 20);
    }
    c.wait_for_chunk_servers(3, Duration::from_secs(30));
    let src = c.path("big.src");
    write_random_file(&src, 100 * MIB, 1);
    let (code, out, err) = c.cairn(&["put", &src.display().to_string(), "/big"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("cluster is full"), "{err}");
    let (code, _, err) = c.cairn(&["get", "/big", &c.path("out").display().to_string()]);
    assert!(code != 0 && err.contains("No such file"), "{err}");
}

/// The issue's `get` test: `cairn get` of a large file is killed with -9 at about half; the
/// rerun completes, equals the source, and fetches fewer bytes (it keeps the verified chunks of
/// `<local>.cairn-part`). Then a part file with a flipped byte keeps every chunk but that one,
/// and a part file of an older version of the remote file keeps every chunk that still
/// matches.
#[test]
fn t20_an_interrupted_get_resumes_and_keeps_only_verified_chunks() {
    init_tracing();
    let c = Cluster::start(3, 3);
    let total: u64 = 768 * MIB;
    let src = c.path("big.src");
    write_random_file(&src, total, 7);
    let src_s = src.display().to_string();
    let src_hash = blake3_of(&src);
    let (code, out, err) = c.cairn(&["put", "-q", &src_s, "/big"]);
    assert_eq!(code, 0, "{out}\n{err}");
    info!("{}", out.trim());

    info!("--- cairn get, killed with -9 once about half is written");
    let local = c.path("big.out");
    let local_s = local.display().to_string();
    let part = c.path("big.out.cairn-part");
    let (mut get, log) = spawn_cairn(&c, &["get", "/big", &local_s], "get1");
    kill9_when(
        &mut get,
        &log,
        "cairn get",
        total / 2,
        Duration::from_secs(300),
        || std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0),
    );
    assert!(
        !local.exists(),
        "nothing at <local> before the copy is whole"
    );
    assert!(part.exists(), "the partial file is kept");

    info!("--- run again: completes, equal to the source, fetching only what is missing");
    let t0 = Instant::now();
    let (code, out, err) = c.cairn(&["get", "/big", &local_s]);
    let took = t0.elapsed();
    assert_eq!(code, 0, "resumed get failed:\n{out}\n{err}");
    let (fetched, reused) = (number_after(&out, "fetched"), number_after(&out, "reused"));
    info!(fetched, reused, ?took, "{}", out.trim());
    assert!(reused > 0, "the rerun reuses the part file: {out}");
    assert!(fetched < total, "the rerun fetches fewer bytes: {out}");
    assert_eq!(fetched + reused, total, "{out}");
    assert!(!part.exists(), "the part file was renamed into place");
    assert_eq!(blake3_of(&local), src_hash, "blake3 of the copy");

    info!("--- a part file with one flipped byte: that chunk alone is fetched again");
    std::fs::remove_file(&local).unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    bytes.truncate((100 * MIB) as usize);
    bytes[(3 * CHUNK + 100) as usize] ^= 0x40;
    std::fs::write(&part, &bytes).unwrap();
    drop(bytes);
    let (code, out, err) = c.cairn(&["get", "/big", &local_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    // 100 MiB = 25 whole chunks there, one of them corrupt.
    assert_eq!(number_after(&out, "reused"), 96 * MIB, "{out}");
    assert_eq!(number_after(&out, "fetched"), total - 96 * MIB, "{out}");
    assert_eq!(blake3_of(&local), src_hash, "blake3 after the flipped byte");

    info!("--- the remote changed between runs: only the chunks that still match are kept");
    let v2 = c.path("big.v2");
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[(5 * CHUNK + 7) as usize] ^= 0x01;
    std::fs::write(&v2, &bytes).unwrap();
    drop(bytes);
    let (code, out, err) = c.cairn(&["put", "-q", &v2.display().to_string(), "/big"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        number_after(&out, "sent"),
        CHUNK,
        "one chunk changed: {out}"
    );
    std::fs::rename(&local, &part).unwrap();
    let (code, out, err) = c.cairn(&["get", "/big", &local_s]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(number_after(&out, "fetched"), CHUNK, "{out}");
    assert_eq!(number_after(&out, "reused"), total - CHUNK, "{out}");
    assert_eq!(
        blake3_of(&local),
        blake3_of(&v2),
        "blake3 of the new version"
    );
}

/// `cairn uploads list` shows a put interrupted by SIGTERM (table and JSON); its chunks stay while the
/// upload lives, even with GC running at a 1 s grace; `cairn uploads abort` removes it, and GC
/// then deletes its chunks from every chunk server.
#[test]
fn t30_an_aborted_upload_disappears_and_its_chunks_are_collected() {
    init_tracing();
    let c = Cluster::start_with(3, 3, gc_opts(&[]));
    let src = c.path("victim.src");
    write_random_file(&src, 200 * MIB, 3);
    let src_s = src.display().to_string();

    info!("--- a put interrupted by SIGTERM: it stops, says how to resume, exits 130");
    let (mut put, log) = spawn_cairn(&c, &["put", &src_s, "/victim"], "put");
    wait_until("the put to record 40 MiB", Duration::from_secs(120), || {
        upload_of(&c, "/victim").is_some_and(|u| u["bytes"].as_u64() >= Some(40 * MIB))
    });
    unsafe {
        libc::kill(put.id() as i32, libc::SIGTERM);
    }
    let st = put.wait().expect("wait for cairn put");
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(st.code(), Some(130), "exit status after SIGTERM:\n{said}");
    let up = upload_of(&c, "/victim").expect("the interrupted put is listed");
    let id = up["id"].as_u64().unwrap();
    assert!(
        said.contains(&format!("run the same command again to resume upload {id}")),
        "{said}"
    );
    let (code, table, err) = c.cairn(&["uploads", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("upload {id} not in the table:\n{table}"));
    assert!(row.contains("/victim"), "{table}");
    assert!(row.contains("victim.src"), "the label is shown: {table}");

    let ids = upload_chunk_ids(&c, id);
    assert_eq!(ids.len() as u64, up["slots"].as_u64().unwrap(), "{up}");
    assert!(!ids.is_empty());
    info!(
        chunks = ids.len(),
        "--- GC runs (1 s grace) but spares the live upload's chunks"
    );
    std::thread::sleep(Duration::from_secs(4));
    for n in 1..=3 {
        assert!(
            c.chunk_files(n).is_superset(&ids),
            "chunk server {n} lost chunks of a live upload"
        );
    }

    info!("--- abort: the upload goes, then its chunks");
    let (code, out, err) = c.cairn(&["uploads", "abort", &id.to_string()]);
    assert_eq!(code, 0, "abort: {out}\n{err}");
    assert!(out.contains("aborted"), "{out}");
    assert!(
        upload_of(&c, "/victim").is_none(),
        "an aborted upload is no longer listed"
    );
    let (code, _, err) = c.cairn(&["uploads", "abort", &id.to_string()]);
    assert_ne!(code, 0, "aborting it again fails");
    assert!(err.contains("no upload"), "{err}");
    wait_until(
        "the aborted upload's chunks to be collected",
        Duration::from_secs(60),
        || on_any_server(&c, &ids) == 0,
    );
    // The files go before the leader commits the round (GcSwept) that counts them.
    wait_until(
        "gc_collected to count the aborted upload's chunks",
        Duration::from_secs(30),
        || {
            c.status()
                .is_some_and(|st| st["repair"]["gc_collected"].as_u64() >= Some(ids.len() as u64))
        },
    );
}

/// An upload nobody records into for `--upload-ttl` (2 s here) expires: it disappears
/// from the list and GC collects its chunks. A put that runs longer than the TTL but keeps
/// recording is not expired, and the same put run after the expiry starts over and completes.
#[test]
fn t40_an_idle_upload_expires_and_its_chunks_are_collected() {
    init_tracing();
    let ttl = Duration::from_secs(2);
    let c = Cluster::start_with(3, 3, gc_opts(&["--upload-ttl", "2s"]));

    info!("--- a put longer than the TTL completes: recording keeps its upload alive");
    let long = c.path("long.src");
    write_random_file(&long, 600 * MIB, 1);
    let t0 = Instant::now();
    let (code, out, err) = c.cairn(&["put", "-q", &long.display().to_string(), "/long"]);
    assert_eq!(code, 0, "{out}\n{err}");
    info!(took = ?t0.elapsed(), "{}", out.trim());
    assert!(
        t0.elapsed() > ttl,
        "this check needs a put that outlasts the TTL: make the file larger"
    );

    info!("--- an interrupted put, then left alone");
    let src = c.path("idle.src");
    write_random_file(&src, 200 * MIB, 2);
    let src_s = src.display().to_string();
    let (mut put, log) = spawn_cairn(&c, &["put", &src_s, "/idle"], "put");
    kill9_when(
        &mut put,
        &log,
        "cairn put",
        40 * MIB,
        Duration::from_secs(120),
        || {
            upload_of(&c, "/idle")
                .and_then(|u| u["bytes"].as_u64())
                .unwrap_or(0)
        },
    );
    let id = upload_of(&c, "/idle").expect("listed")["id"]
        .as_u64()
        .unwrap();
    let ids = upload_chunk_ids(&c, id);
    assert!(!ids.is_empty());
    let t1 = Instant::now();
    wait_until("the idle upload to expire", Duration::from_secs(60), || {
        upload_of(&c, "/idle").is_none()
    });
    info!(after = ?t1.elapsed(), "--- expired; now its chunks must go");
    assert!(t1.elapsed() >= ttl / 2, "expired well before its TTL");
    wait_until(
        "the expired upload's chunks to be collected",
        Duration::from_secs(60),
        || on_any_server(&c, &ids) == 0,
    );

    info!("--- the same put again starts over and completes");
    let (code, out, err) = c.cairn(&["put", "-q", &src_s, "/idle"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(number_after(&out, "resumed"), 0, "{out}");
    let copy = c.path("idle.out");
    let (code, out, err) = c.cairn(&["get", "-q", "/idle", &copy.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(blake3_of(&copy), blake3_of(&src));
}

/// The issue's mount test: `cairn mount` is killed with -9 in the middle of a `cp` of 400 MiB
/// over an existing file. A second mount sees the old content intact throughout and after; the
/// interrupted session is listed by `cairn uploads list`; after a restart of the mount the same
/// `cp` completes, the chunk servers receive at most the missing bytes plus two chunks
/// (× 3 replicas), and the content is correct on both mounts.
#[test]
fn t50_a_copy_cut_off_by_kill_9_of_the_mount_resumes_and_never_shows_a_partial_file() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let other = c.mount();
    let old = c.path("old.src");
    write_random_file(&old, 20 * MIB, 1);
    sh(&format!("cp {} {}/target", old.display(), mnt.display()));
    sh(&format!("cmp {} {}/target", old.display(), other.display()));
    let total = 400 * MIB;
    let src = c.path("new.src");
    write_random_file(&src, total, 2);

    info!("--- cp of 400 MiB over it; the other mount watches; kill -9 the mount halfway");
    let before = received_bytes(&c);
    let (s, d) = (src.clone(), mnt.join("target"));
    let cp = std::thread::spawn(move || Command::new("cp").arg(&s).arg(&d).output());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut checks = 0;
    while received_bytes(&c) - before < total / 2 * REPLICATION {
        assert!(Instant::now() < deadline, "the copy made no progress");
        sh(&format!("cmp {} {}/target", old.display(), other.display()));
        checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    c.mounts[0].proc.kill9();
    lazy_unmount(&mnt);
    let cut = cp.join().expect("cp thread").expect("spawn cp");
    assert!(!cut.status.success(), "cp cannot succeed without its mount");
    info!(
        checks,
        "--- the mount is gone; the other mount still reads the old content"
    );
    sh(&format!("cmp {} {}/target", old.display(), other.display()));

    let up = upload_of(&c, "/target").unwrap_or_else(|| {
        panic!(
            "the interrupted session of the mount is not listed: {:?}",
            uploads(&c)
        )
    });
    let recorded = up["bytes"].as_u64().unwrap();
    info!(recorded, "{up}");
    assert!(recorded > 0, "chunks were recorded before the kill: {up}");

    info!("--- restart the mount and run the same cp: only the missing chunks travel");
    c.remount(0);
    let before = received_bytes(&c);
    let t0 = Instant::now();
    sh(&format!("cp {} {}/target", src.display(), mnt.display()));
    let took = t0.elapsed();
    let sent = received_bytes(&c) - before;
    let bound = (total - recorded + 2 * CHUNK) * REPLICATION;
    info!(sent, bound, ?took, "--- the second cp is done");
    assert!(
        sent <= bound,
        "the second cp sent {sent} bytes; at most {bound} = (missing {} + 2 chunks) × \
         {REPLICATION} allowed",
        total - recorded
    );
    sh(&format!("cmp {} {}/target", src.display(), mnt.display()));
    sh(&format!("cmp {} {}/target", src.display(), other.display()));
    info!(left = ?uploads(&c), "--- upload sessions still listed");
}

/// The issue's fault test: a chunk server and then the meta leader are killed and restarted
/// during a large `cp` through the mount; the copy succeeds and `cmp` is clean, on this mount
/// and on a fresh one.
#[test]
fn t60_a_copy_survives_restarts_of_a_chunk_server_and_the_meta_leader() {
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();
    let total = 600 * MIB;
    let src = c.path("src");
    write_random_file(&src, total, 9);

    let (s, d) = (src.clone(), mnt.join("copy"));
    let cp = std::thread::spawn(move || Command::new("cp").arg(&s).arg(&d).output());
    // The mount reports the size of a file being written: cp's progress.
    let written = |mnt: &Path| std::fs::metadata(mnt.join("copy")).map_or(0, |m| m.len());
    wait_until("cp to pass 25%", Duration::from_secs(120), || {
        written(&mnt) >= total / 4
    });
    info!("--- restart chunk server 1");
    c.chunks[0].kill9();
    std::thread::sleep(Duration::from_millis(800));
    c.chunks[0].start();
    wait_until("cp to pass 60%", Duration::from_secs(120), || {
        written(&mnt) >= total * 6 / 10
    });
    let leader = c.wait_for_leader(Duration::from_secs(10));
    info!(leader, "--- restart the meta leader");
    c.meta[(leader - 1) as usize].kill9();
    std::thread::sleep(Duration::from_millis(800));
    c.meta[(leader - 1) as usize].start();
    let out = cp.join().expect("cp thread").expect("spawn cp");
    assert!(
        out.status.success(),
        "cp failed across the restarts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sh(&format!("cmp {} {}/copy", src.display(), mnt.display()));
    let fresh = c.mount();
    sh(&format!("cmp {} {}/copy", src.display(), fresh.display()));
}

/// What a tree holds, path by path (relative to `root`): `dir <mode>`, `file <mode> <size>
/// <blake3>`, `link -> <target>`, or `special`. Two trees with equal listings have the same
/// entries, bytes, modes and link targets.
fn tree_listing(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let mode = md.permissions().mode() & 0o7777;
            let what = if md.is_dir() {
                todo.push(p.clone());
                format!("dir {mode:o}")
            } else if md.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_file() {
                format!("file {mode:o} {} {}", md.len(), blake3_of(&p))
            } else {
                "special".into()
            };
            out.insert(rel, what);
        }
    }
    out
}

/// `cairn ... --json`, run and parsed: (exit code, the summary, stderr).
fn cairn_json(c: &Cluster, args: &[&str]) -> (i32, Value, String) {
    let (code, out, err) = c.cairn(args);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("cairn {args:?}: not JSON ({e}):\n{out}\n{err}"));
    (code, v, err)
}

/// `cairn put -r` / `cairn get -r` of a directory tree: nested directories with their modes,
/// files of various sizes (empty, one chunk, several chunks), an executable, symlinks (one
/// dangling) and a FIFO (skipped with a warning). The tree put into the cluster reads back
/// identical through the mount; `get -r` brings it back identical (`diff -r` and a listing of
/// bytes, modes and link targets); `cp -r` rules for the destination (`<dest>/<name>` when
/// `<dest>` exists, `-T` to resume into a destination the first run made); a rerun skips every
/// complete file; a directory without `-r` is refused with a hint; an entry that cannot be
/// copied is reported with its path and makes the exit status 1 while the rest is copied.
#[test]
fn t70_put_r_and_get_r_copy_a_whole_tree() {
    use std::os::unix::fs::PermissionsExt;
    init_tracing();
    let mut c = Cluster::start(3, 3);
    let mnt = c.mount();

    info!("--- a local tree: nested directories, files of many sizes, symlinks, a FIFO");
    let src = c.path("tree");
    let mkdir = |p: &Path, mode: u32| {
        std::fs::create_dir(p).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mkdir(&src, 0o755);
    mkdir(&src.join("sub"), 0o750);
    mkdir(&src.join("sub/deep"), 0o700);
    mkdir(&src.join("sub/deep/empty-dir"), 0o755);
    let files: [(&str, u64); 6] = [
        ("empty", 0),
        ("small.txt", 100),
        ("run.sh", 1000),
        ("sub/mid.bin", MIB + 7),
        ("sub/deep/multi.bin", 2 * CHUNK + 123),
        ("sub/deep/exact.bin", CHUNK),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        write_random_file(&src.join(name), *len, 100 + i as u64);
    }
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/mid.bin", src.join("link")).unwrap();
    std::os::unix::fs::symlink("/no/such/target", src.join("sub/dangling")).unwrap();
    sh(&format!("mkfifo {}", src.join("fifo").display()));
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let src_s = src.display().to_string();
    let mut want = tree_listing(&src);
    assert_eq!(want.remove("fifo").as_deref(), Some("special"));

    info!("--- a directory without -r is refused, with a hint");
    let (code, _, err) = c.cairn(&["put", &src_s, "/t"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a directory") && err.contains("-r"),
        "{err}"
    );

    info!("--- put -r to a new destination: made, with the tree's contents");
    let (code, sum, err) = cairn_json(&c, &["put", "-r", "--json", &src_s, "/t"]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert!(err.contains("skipping") && err.contains("fifo"), "{err}");
    assert_eq!(sum["files"], 6, "{sum}");
    assert_eq!(sum["bytes"], total, "{sum}");
    assert_eq!(sum["dirs"], 4, "{sum}");
    assert_eq!(sum["symlinks"], 2, "{sum}");
    assert_eq!(sum["skipped"], 1, "{sum}");
    assert_eq!(sum["failed"], 0, "{sum}");
    assert_eq!(sum["unchanged"], 0, "{sum}");
    assert!(sum["seconds"].as_f64().is_some(), "{sum}");
    assert_eq!(sum["destination"], "/t", "{sum}");

    info!("--- through the mount: the same bytes, modes and link targets");
    assert_eq!(tree_listing(&mnt.join("t")), want);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&mnt.join("t")), 0o755);
    assert_eq!(mode(&mnt.join("t/sub/deep")), 0o700);
    assert_eq!(
        std::fs::read_link(mnt.join("t/link")).unwrap(),
        Path::new("sub/mid.bin")
    );
    assert!(!mnt.join("t/fifo").exists(), "special files are not copied");

    info!("--- the same put again with -T: every file is complete, nothing is sent");
    let before = received_bytes(&c);
    let (code, sum, err) = cairn_json(&c, &["put", "-r", "-T", "--json", &src_s, "/t"]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert_eq!(
        (sum["files"].as_u64(), sum["unchanged"].as_u64()),
        (Some(6), Some(6)),
        "{sum}"
    );
    assert_eq!(sum["transferred"], 0, "{sum}");
    assert_eq!(received_bytes(&c) - before, 0, "a rerun sends nothing");
    assert_eq!(tree_listing(&mnt.join("t")), want);

    info!("--- put -r onto an existing directory: copied into <dest>/<name>");
    let (code, out, err) = c.cairn(&["put", "-r", "-q", &src_s, "/t"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("put -r") && out.contains("/t/tree"), "{out}");
    assert_eq!(tree_listing(&mnt.join("t/tree")), want);

    info!("--- get -r to a new local directory: the same tree, byte for byte");
    let back = c.path("back");
    let back_s = back.display().to_string();
    let (code, sum, err) = cairn_json(&c, &["get", "-r", "--json", "/t", &back_s]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert_eq!(
        sum["files"], 12,
        "/t holds the tree twice (itself and /t/tree): {sum}"
    );
    assert_eq!(sum["failed"], 0, "{sum}");
    assert_eq!(sum["skipped"], 0, "{sum}");
    let mut got = tree_listing(&back);
    let below: Vec<String> = got
        .keys()
        .filter(|k| k.starts_with("tree"))
        .cloned()
        .collect();
    for k in below {
        got.remove(&k);
    }
    assert_eq!(got, want, "get -r brings back every byte, mode and link");
    sh(&format!(
        "diff -r --no-dereference -x fifo {src_s} {}",
        back.join("tree").display()
    ));
    assert_eq!(mode(&back), 0o755);

    info!("--- get -r into an existing directory: <dest>/<name>; then again, all unchanged");
    let into = c.path("into");
    std::fs::create_dir(&into).unwrap();
    let into_s = into.display().to_string();
    let (code, sum, err) = cairn_json(&c, &["get", "-r", "--json", "/t/tree", &into_s]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert_eq!(tree_listing(&into.join("tree")), want);
    let (code, sum, err) = cairn_json(&c, &["get", "-r", "--json", "/t/tree", &into_s]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert_eq!(
        (sum["files"].as_u64(), sum["unchanged"].as_u64()),
        (Some(6), Some(6)),
        "{sum}"
    );
    assert_eq!(sum["transferred"], 0, "{sum}");

    info!("--- a file whose copy is corrupt locally is not skipped: it is fetched again");
    let victim = into.join("tree/sub/deep/multi.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[(CHUNK + 5) as usize] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let (code, sum, err) = cairn_json(&c, &["get", "-r", "--json", "/t/tree", &into_s]);
    assert_eq!(code, 0, "{sum}\n{err}");
    assert_eq!(
        sum["unchanged"], 5,
        "same size, different bytes: copied again: {sum}"
    );
    assert_eq!(tree_listing(&into.join("tree")), want);

    info!("--- a remote directory without -r is refused, with a hint");
    let (code, _, err) = c.cairn(&["get", "/t", &c.path("x").display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is a directory") && err.contains("-r"),
        "{err}"
    );

    info!("--- an entry that cannot be copied: reported with its path, the rest copied, exit 1");
    std::fs::create_dir_all(mnt.join("f/small.txt")).unwrap();
    let (code, sum, err) = cairn_json(&c, &["put", "-r", "-T", "--json", &src_s, "/f"]);
    assert_eq!(code, 1, "{sum}\n{err}");
    assert_eq!(sum["failed"], 1, "{sum}");
    assert_eq!(sum["files"], 5, "{sum}");
    let failure = &sum["failures"][0];
    assert!(
        failure["path"]
            .as_str()
            .unwrap()
            .ends_with("tree/small.txt")
            && failure["error"]
                .as_str()
                .unwrap()
                .contains("is a directory"),
        "{sum}"
    );
    assert!(
        err.contains("small.txt"),
        "the failure is on stderr too: {err}"
    );
    assert_eq!(
        blake3_of(&mnt.join("f/sub/deep/multi.bin")),
        blake3_of(&src.join("sub/deep/multi.bin"))
    );
}
