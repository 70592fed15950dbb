//! The background scrub on real chunk files in temp dirs: it finds and quarantines every
//! corrupt chunk (reporting each once), leaves healthy ones alone, counts what it did, honours
//! its rate limit and schedule, tolerates chunks that vanish mid-pass, and stops at shutdown.
mod support;

use bytes::Bytes;
use cairn_chunk_server::scrub::{Scrub, ScrubConfig};
use cairn_chunk_server::store::{
    data_offset, ChunkStore, FileStore, PutOutcome, StoreOptions, StoreStats, VerifyReport,
};
use cairn_chunk_server::{start, Config};
use cairn_common::worker::TaskSet;
use cairn_common::{ChunkId, BLOCK_SIZE, CHUNK_SIZE};
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::mpsc;

const MIB: u64 = 1024 * 1024;

/// Names of the files in `dir`.
fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_quarantines_every_corrupt_chunk_and_reports_each_once() {
    tracing::info!("--- a server (unlimited scrub rate) whose corruption reports go to a sink");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.scrub_rate = 0;
    let server = start(cfg).await.unwrap();
    let (sink, mut reports) = mpsc::channel(256);
    assert!(server.store().report_corruption_to(sink));
    let mut c = client(server.addr()).await;
    let store = server.store().clone();

    tracing::info!("--- 40 chunks of many sizes, among them the empty chunk and a full one");
    let mut chunks: Vec<(ChunkId, Bytes)> = (0..38)
        .map(|i| chunk(&format!("scrub-{i}"), 1 + i * 53_711))
        .collect();
    chunks.push(chunk("empty", 0));
    chunks.push(chunk("full", CHUNK_SIZE));
    for (id, d) in &chunks {
        assert_eq!(store.put(*id, d.clone()).unwrap(), PutOutcome::Stored);
    }
    let before = scrub_stats(&mut c).await;
    assert_eq!(
        (
            before.passes,
            before.chunks_verified,
            before.oldest_verified_unix_ms
        ),
        (0, 0, 0),
        "nothing verified yet"
    );
    assert!(!before.running);
    assert_eq!(before.rate_limit_bytes, 0, "unlimited");
    assert_eq!(
        before.unverified_chunks, 40,
        "chunks written after the last (no) pass count as never verified"
    );
    assert!(before.oldest_unverified_unix_ms > 0);

    tracing::info!(
        "--- rot: flipped data bytes (first, middle block, last), a header byte, a truncation"
    );
    let len_of = |i: usize| chunks[i].1.len() as u64;
    let path_of = |i: usize| store.chunk_path(chunks[i].0);
    flip_byte(&path_of(3), data_offset(len_of(3) as usize));
    flip_byte(
        &path_of(10),
        data_offset(len_of(10) as usize) + 2 * BLOCK_SIZE as u64 + 17,
    );
    flip_byte(
        &path_of(20),
        data_offset(len_of(20) as usize) + len_of(20) - 1,
    );
    flip_byte(
        &path_of(39),
        data_offset(CHUNK_SIZE) + CHUNK_SIZE as u64 / 2,
    );
    flip_byte(&path_of(25), 60); // inside the first block hash of the header
    fs::OpenOptions::new()
        .write(true)
        .open(path_of(30))
        .unwrap()
        .set_len(data_offset(len_of(30) as usize) + len_of(30) / 2)
        .unwrap();
    let bad: BTreeSet<usize> = [3, 10, 20, 25, 30, 39].into();
    let healthy: Vec<usize> = (0..chunks.len()).filter(|i| !bad.contains(i)).collect();
    // What a healthy chunk file is before the scrub: its bytes and its inode.
    let snapshot = |i: usize| {
        let p = path_of(i);
        (fs::read(&p).unwrap(), fs::metadata(&p).unwrap().ino())
    };
    let untouched: HashMap<usize, (Vec<u8>, u64)> =
        healthy.iter().map(|&i| (i, snapshot(i))).collect();

    tracing::info!("--- ScrubNow runs a pass");
    let t0 = now_ms();
    assert!(scrub_now(&mut c).await);
    let s = wait_for_scrub(&mut c, "first pass", |s| s.passes == 1).await;
    let healthy_bytes: u64 = healthy.iter().map(|&i| len_of(i)).sum();
    assert_eq!(s.chunks_verified, healthy.len() as u64);
    assert_eq!(s.bytes_verified, healthy_bytes);
    assert_eq!(s.corruptions, bad.len() as u64);
    assert!(!s.running);
    assert!(s.last_full_pass_unix_ms >= t0);
    assert!(
        s.oldest_verified_unix_ms >= t0 && s.oldest_verified_unix_ms <= s.last_full_pass_unix_ms,
        "every present chunk was verified in this pass: {s:?}"
    );
    assert_eq!(
        (s.unverified_chunks, s.oldest_unverified_unix_ms),
        (0, 0),
        "{s:?}"
    );

    tracing::info!("--- every corrupt chunk is in quarantine/ (moved, not deleted)");
    let quarantined = names(store.quarantine_dir());
    assert_eq!(quarantined.len(), bad.len(), "{quarantined:?}");
    for &i in &bad {
        assert!(!path_of(i).exists(), "chunk {i} must have left chunks/");
        assert!(
            quarantined
                .iter()
                .any(|n| n.starts_with(&chunks[i].0.to_hex())),
            "chunk {i} must be in quarantine/"
        );
    }
    assert_eq!(info(&mut c).await.chunk_count, healthy.len() as u64);

    tracing::info!("--- healthy chunks are untouched");
    for (&i, was) in &untouched {
        assert_eq!(&snapshot(i), was, "healthy chunk {i} changed");
    }

    tracing::info!("--- each corrupt chunk was reported exactly once");
    let mut got = Vec::new();
    while let Ok(r) = reports.try_recv() {
        assert!(!r.reason.is_empty());
        got.push(r.id);
    }
    got.sort();
    let mut want: Vec<ChunkId> = bad.iter().map(|&i| chunks[i].0).collect();
    want.sort();
    assert_eq!(got, want);

    tracing::info!("--- a second pass finds nothing new and reports nothing");
    assert!(scrub_now(&mut c).await);
    let s2 = wait_for_scrub(&mut c, "second pass", |s| s.passes == 2).await;
    assert_eq!(s2.corruptions, bad.len() as u64);
    assert_eq!(s2.chunks_verified, 2 * healthy.len() as u64);
    assert!(s2.oldest_verified_unix_ms >= s.last_full_pass_unix_ms);
    assert!(reports.try_recv().is_err(), "no further report");
    assert_eq!(names(store.quarantine_dir()).len(), bad.len());

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_honours_its_rate_limit_and_refuses_a_second_start() {
    tracing::info!("--- 8 MiB of chunks, scrubbed at 4 MiB/s");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.scrub_rate = 4 << 20;
    let server = start(cfg).await.unwrap();
    let mut c = client(server.addr()).await;
    for i in 0..8 {
        let (id, d) = chunk(&format!("rate-{i}"), MIB as usize);
        server.store().put(id, d).unwrap();
    }
    assert_eq!(scrub_stats(&mut c).await.rate_limit_bytes, 4 * MIB);

    tracing::info!("--- ScrubNow starts a pass; a second one while it runs does not");
    let started = Instant::now();
    assert!(scrub_now(&mut c).await);
    assert!(!scrub_now(&mut c).await, "a pass is running (or about to)");
    wait_for_scrub(&mut c, "the pass to run", |s| s.running).await;
    assert!(!scrub_now(&mut c).await);

    tracing::info!("--- the pass takes at least 8 MiB / 4 MiB/s, less the 100 ms burst");
    let s = wait_for_scrub(&mut c, "the pass", |s| s.passes == 1).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!((s.chunks_verified, s.bytes_verified), (8, 8 * MIB));
    assert!(!s.running);

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_start_after_the_start_delay_and_repeat_on_the_interval() {
    tracing::info!("--- three chunks stored before the server starts");
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..3 {
            let (id, d) = chunk(&format!("sched-{i}"), 1000 * (i + 1));
            store.put(id, d).unwrap();
        }
    }
    let mut cfg = Config::for_tests(dir.path());
    cfg.scrub_start_delay = Duration::ZERO;
    cfg.scrub_interval = Duration::from_secs(1);
    let server = start(cfg).await.unwrap();
    let mut c = client(server.addr()).await;

    tracing::info!("--- the first pass runs at start-up without being asked");
    let s = wait_for_scrub(&mut c, "start-up pass", |s| s.passes >= 1).await;
    let first_end = Instant::now();
    assert_eq!(s.chunks_verified, 3 * s.passes);
    assert_eq!(s.bytes_verified, 6000 * s.passes);

    tracing::info!("--- the next one a scrub interval (1 s) later");
    let s = wait_for_scrub(&mut c, "second pass", |s| s.passes >= 2).await;
    assert!(first_end.elapsed() >= Duration::from_millis(800));
    assert_eq!(s.chunks_verified, 3 * s.passes);
    assert_eq!(s.corruptions, 0);

    server.shutdown().await.unwrap();
}

/// A store whose listing races with deletes and puts: a listed "ghost" chunk is gone before
/// it is verified, one chunk is deleted and one replaced (deleted and put again) between
/// listing and verification.
struct Racing {
    inner: FileStore,
    ghost: ChunkId,
    deleted: ChunkId,
    replaced: (ChunkId, Bytes),
    verified: Mutex<Vec<ChunkId>>,
}

impl ChunkStore for Racing {
    fn put(&self, id: ChunkId, data: Bytes) -> cairn_chunk_server::store::Result<PutOutcome> {
        self.inner.put(id, data)
    }
    fn read(
        &self,
        id: ChunkId,
        o: u64,
        l: u64,
        proof: bool,
    ) -> cairn_chunk_server::store::Result<cairn_chunk_server::store::ChunkRead> {
        self.inner.read(id, o, l, proof)
    }
    fn has(&self, id: ChunkId) -> cairn_chunk_server::store::Result<Option<u64>> {
        self.inner.has(id)
    }
    fn list(
        &self,
    ) -> cairn_chunk_server::store::Result<
        Box<dyn Iterator<Item = cairn_chunk_server::store::Result<ChunkId>> + Send + '_>,
    > {
        self.inner.list()
    }
    fn list_shard(&self, shard: u8) -> cairn_chunk_server::store::Result<Vec<ChunkId>> {
        let mut ids = self.inner.list_shard(shard)?;
        if shard == self.ghost.0[0] {
            ids.push(self.ghost);
        }
        Ok(ids)
    }
    fn verify(&self, id: ChunkId) -> cairn_chunk_server::store::Result<VerifyReport> {
        if id == self.deleted {
            self.inner.delete(id)?;
        }
        if id == self.replaced.0 {
            self.inner.delete(id)?;
            self.inner.put(id, self.replaced.1.clone())?;
        }
        self.verified.lock().unwrap().push(id);
        self.inner.verify(id)
    }
    fn delete(&self, id: ChunkId) -> cairn_chunk_server::store::Result<()> {
        self.inner.delete(id)
    }
    fn mark_for_gc(&self, ids: &[ChunkId]) -> cairn_chunk_server::store::Result<u64> {
        self.inner.mark_for_gc(ids)
    }
    fn delete_if_marked(&self, id: ChunkId) -> cairn_chunk_server::store::Result<bool> {
        self.inner.delete_if_marked(id)
    }
    fn stored_at(
        &self,
        id: ChunkId,
    ) -> cairn_chunk_server::store::Result<Option<std::time::SystemTime>> {
        self.inner.stored_at(id)
    }
    fn stats(&self) -> cairn_chunk_server::store::Result<StoreStats> {
        self.inner.stats()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_that_vanish_or_change_during_a_pass_are_not_errors() {
    tracing::info!("--- ten chunks, one deleted and one replaced mid-pass, one listed ghost");
    let dir = tempfile::tempdir().unwrap();
    let inner = FileStore::open(dir.path(), StoreOptions::default()).unwrap();
    let chunks: Vec<(ChunkId, Bytes)> = (0..10)
        .map(|i| chunk(&format!("race-{i}"), 70_000 + i))
        .collect();
    for (id, d) in &chunks {
        inner.put(*id, d.clone()).unwrap();
    }
    let (sink, mut reports) = mpsc::channel(16);
    inner.report_corruption_to(sink);
    let store = Arc::new(Racing {
        inner,
        ghost: ChunkId::of(b"never stored"),
        deleted: chunks[2].0,
        replaced: chunks[5].clone(),
        verified: Mutex::new(Vec::new()),
    });
    let scrub = Scrub::new(ScrubConfig {
        rate_bytes: 0,
        interval: Duration::from_secs(3600),
        start_delay: Duration::from_secs(3600),
    });
    let mut workers = TaskSet::new();
    workers.spawn_worker(scrub.worker(store.clone()));

    tracing::info!("--- the pass completes and counts no corruption");
    assert!(scrub.request_pass());
    wait_for("the pass", || scrub.stats(0).passes == 1).await;
    let s = scrub.stats(0);
    assert_eq!(s.corruptions, 0);
    assert_eq!(
        s.chunks_verified, 9,
        "all but the deleted chunk (and the ghost)"
    );
    assert!(store.verified.lock().unwrap().contains(&store.ghost));
    assert!(reports.try_recv().is_err(), "nothing reported");
    assert!(names(store.inner.quarantine_dir()).is_empty());
    assert_eq!(store.inner.get(chunks[5].0, 0, 0).unwrap().0, chunks[5].1);

    let unclean = workers.shutdown(Duration::from_secs(5)).await;
    assert!(
        unclean.is_empty(),
        "the worker stops at shutdown: {unclean:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_pass_returns_promptly() {
    tracing::info!("--- a pass that needs about 8 s (8 MiB at 1 MiB/s)");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(dir.path());
    cfg.scrub_rate = 1 << 20;
    let server = start(cfg).await.unwrap();
    for i in 0..8 {
        let (id, d) = chunk(&format!("stop-{i}"), MIB as usize);
        server.store().put(id, d).unwrap();
    }
    let scrub = server.scrub().clone();
    assert!(scrub.request_pass());
    wait_for("the pass to get going", || {
        let s = scrub.stats(0);
        s.running && s.chunks_verified >= 1
    })
    .await;

    tracing::info!("--- shutdown does not wait for the pass");
    let t = Instant::now();
    server.shutdown().await.unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    let s = scrub.stats(0);
    assert!(!s.running, "the worker has stopped");
    assert_eq!(s.passes, 0, "an interrupted pass is not a full pass");
    assert!(s.chunks_verified < 8);
    assert_eq!(
        s.bytes_verified,
        s.chunks_verified * MIB,
        "the dropped pass counted whole chunks only"
    );
}
