//! Cairn's chunk server: stores file chunks durably and serves them, verified.
//!
//! Chunks are content-addressed (the id is the blake3 of the bytes, at most 4 MiB). Clients
//! fan each chunk out to R servers themselves, so a server only stores and serves.
//!
//! - [`store`]: the [`store::ChunkStore`] trait, its errors and result types.
//!   - [`store::format`]: the chunk file format — header with per-64 KiB-block blake3 hashes,
//!     its encoding, verified reads of the header, of a block range and of a whole chunk.
//!   - [`store::file_store`]: [`store::FileStore`], the store on a local disk — directory
//!     layout, the durable write path (`write_chunk_durably`: temp, fsync, rename, fsync dir,
//!     through [`cairn_common::durable`]), durable deletes, quarantine of corrupt chunks, ENOSPC
//!     handling, crash recovery of `tmp/` at startup, the server identity.
//!   - [`store::gc_marks`]: the garbage-collection marks that keep a put racing a collection
//!     safe.
//! - [`service`]: [`service::ChunkServiceImpl`], the `ChunkService` gRPC service: PutChunk /
//!   GetChunk / HasChunk / Info for clients; ReplicateChunk / DeleteChunks / MarkChunks /
//!   ListChunks / ScrubNow for the metadata cluster.
//! - [`replicate`]: ReplicateChunk's fetch of a chunk from another replica, checked against the
//!   chunk id before it is stored.
//! - [`scrub`]: the scrub worker, which re-verifies every stored chunk at a limited bandwidth
//!   (quarantine and reports are the store's), and the scrub figures.
//! - [`heartbeat`]: the workers that talk to the metadata cluster — registration and periodic
//!   heartbeats (with the scrub figures), and the reports of corrupt copies
//!   (`ReportBadReplica`).
//! - [`config`]: command-line flags / `CAIRN_CHUNK_*` environment.
//! - [`metrics`]: what the server serves on its HTTP port (`/metrics`, `/readyz`).
//! - [`start`] / [`RunningServer`]: runs a server in-process (used by `main.rs` and tests): the
//!   gRPC server, and the workers in one [`TaskSet`], with a graceful shutdown that stops the
//!   workers and drains in-flight requests.
pub mod config;
pub mod heartbeat;
pub mod metrics;
pub mod replicate;
pub mod scrub;
pub mod service;
pub mod store;

pub use config::Config;

use anyhow::Context;
use cairn_common::worker::TaskSet;
use cairn_common::MetaClient;
use cairn_proto::chunk_service_server::ChunkServiceServer;
use scrub::Scrub;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{FileStore, StoreOptions};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// HTTP/2 windows: a 4 MiB chunk flows without waiting for window updates.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Concurrent requests per connection; with [`cairn_proto::MAX_MESSAGE_BYTES`] this bounds
/// the request memory one connection can pin.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// How long shutdown waits for the workers. Each stops at its next await, so this is only
/// reached by a worker stuck in a blocking call; it is then named in the log and aborted.
const WORKERS_DEADLINE: Duration = Duration::from_secs(10);

/// A chunk server running in this process.
pub struct RunningServer {
    addr: SocketAddr,
    advertise: String,
    store: Arc<FileStore>,
    server_id: Arc<AtomicU64>,
    /// The scrub, and (with a metadata cluster) the heartbeat and the bad-replica reporter. The
    /// set's token also stops the gRPC server from accepting connections.
    workers: TaskSet,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    scrub: Arc<Scrub>,
    drain: Duration,
}

/// Opens the store, binds the listener, starts serving and the scrub and (when `config.meta`
/// is not empty) registers with the metadata cluster and starts heartbeats. Returns once the
/// server accepts connections.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let opts = StoreOptions {
        reserve_bytes: config.reserve,
        ..StoreOptions::default()
    };
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || FileStore::open(dir, opts))
        .await
        .context("join store-opening task")?
        .with_context(|| format!("open chunk store in {}", config.data_dir.display()))?;
    let store = Arc::new(store);

    // Bind first so that port 0 resolves to a real port, then advertise that.
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let addr = listener.local_addr().context("read bound address")?;
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None => {
            if addr.ip().is_unspecified() {
                tracing::warn!(%addr, "listening on a wildcard address without --advertise; peers cannot reach it by this address");
            }
            addr.to_string()
        }
    };

    let server_id = Arc::new(AtomicU64::new(0));
    let mut workers = TaskSet::new();
    let scrub = Scrub::new(config.scrub());
    let svc = ChunkServiceServer::new(service::ChunkServiceImpl::new(
        store.clone(),
        server_id.clone(),
        scrub.clone(),
    ))
    .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
    // The HTTP port, stopped with the workers.
    let mut metrics_addr = String::new();
    if let Some(listen) = &config.metrics_listen {
        let http = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the metrics port {listen}"))?;
        metrics_addr = http
            .local_addr()
            .context("read the metrics address")?
            .to_string();
        let probe = Arc::new(metrics::ChunkProbe {
            store: store.clone(),
            scrub: scrub.clone(),
            server_id: server_id.clone(),
            registers: !config.meta.is_empty(),
        });
        let router = cairn_common::metrics::router(probe, axum::Router::new());
        let stop = workers.token().cancelled_owned();
        workers.spawn(
            "metrics-http",
            cairn_common::metrics::serve(http, router, stop),
        );
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = tonic::transport::Server::builder()
        .layer(cairn_common::metrics::RpcMetricsLayer::new("chunk"))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, workers.token().cancelled_owned());
    let server = tokio::spawn(serve);

    if config.meta.is_empty() {
        tracing::warn!("no --meta given: running standalone, without registration or heartbeats");
    } else {
        let meta = MetaClient::new(config.meta.clone());
        let (reporter, sink) = heartbeat::BadReplicaReporter::new(meta.clone(), server_id.clone());
        store.report_corruption_to(sink);
        let hb = heartbeat::Heartbeat {
            meta,
            store: store.clone(),
            scrub: scrub.clone(),
            uuid: store.uuid().to_owned(),
            addr: advertise.clone(),
            metrics_addr,
            interval: config.heartbeat_interval(),
            server_id: server_id.clone(),
            id_file: config.data_dir.join("server.id"),
        };
        workers.spawn_worker(hb.worker());
        workers.spawn_worker(reporter);
    }
    // After the bad-replica sink is set, so corruption the scrub finds is reported.
    workers.spawn_worker(scrub.worker(store.clone()));
    tracing::info!(%addr, %advertise, uuid = %store.uuid(), "chunk server listening");
    Ok(RunningServer {
        addr,
        advertise,
        store,
        server_id,
        workers,
        server,
        scrub,
        drain: config.drain_timeout(),
    })
}

impl RunningServer {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address given to the metadata cluster.
    pub fn advertise_addr(&self) -> &str {
        &self.advertise
    }

    /// The store (tests inspect files and counters through it).
    pub fn store(&self) -> &Arc<FileStore> {
        &self.store
    }

    /// The scrub's figures and its pass trigger.
    pub fn scrub(&self) -> &Arc<Scrub> {
        &self.scrub
    }

    /// The id assigned by the metadata cluster; 0 until registered.
    pub fn server_id(&self) -> u64 {
        self.server_id.load(Ordering::Relaxed)
    }

    /// Runs until `stop` completes, then shuts down gracefully. Returns an error if the server
    /// stopped on its own first.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = stop => self.shutdown().await,
            r = &mut self.server => {
                self.workers.shutdown(WORKERS_DEADLINE).await;
                match r {
                    Ok(Ok(())) => anyhow::bail!("gRPC server stopped unexpectedly"),
                    Ok(Err(e)) => Err(e).context("gRPC server failed"),
                    Err(e) => Err(e).context("gRPC server task failed"),
                }
            }
        }
    }

    /// Stops accepting connections, the scrub and heartbeats, waits (up to the drain timeout)
    /// for in-flight requests — puts included — to finish, and returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "chunk server shutting down");
        // Sticky: the set's token is cancelled first, so no new connection is accepted, no
        // heartbeat is sent and no scrub pass starts. Each worker stops at its next await
        // (see `cairn_common::worker`); requests in flight are not workers and go on.
        self.workers.shutdown(WORKERS_DEADLINE).await;
        match tokio::time::timeout(self.drain, &mut self.server).await {
            Ok(Ok(r)) => r.context("gRPC server failed")?,
            Ok(Err(e)) => return Err(e).context("gRPC server task failed"),
            Err(_) => {
                self.server.abort();
                anyhow::bail!(
                    "in-flight requests did not finish within {:?}; aborted",
                    self.drain
                );
            }
        }
        tracing::info!("chunk server stopped");
        Ok(())
    }
}
