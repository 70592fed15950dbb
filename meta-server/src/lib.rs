//! cairn-meta: Cairn's metadata service, a Raft cluster (openraft) on RocksDB.
//!
//! The replicated state:
//! - [`command`]: the commands replicated through the Raft log and their results — the log
//!   entry format, in one place.
//! - [`fsm`]: the namespace state machine: each area (namespace, content, chunks, GC, servers,
//!   xattrs, locks, sessions, uploads, request ids) applies its own commands and owns its
//!   reads.
//! - [`store`]: the single RocksDB instance under openraft: the log and vote ([`store::log`]),
//!   the state machine adapter ([`store::state_machine`]) and snapshots ([`store::snapshot`]).
//! - [`raft`]: the openraft type configuration and Raft RPCs between meta nodes over gRPC.
//! - [`node`]: [`node::MetaNode`], the handle to propose writes and do linearizable reads
//!   ([`read_index`]: one leadership confirmation for all reads waiting together;
//!   [`log_clock`]: which index was applied when, to time expiries without wall clocks).
//!
//! Serving and running the cluster:
//! - [`service`]: the client-facing `MetaService`, one module per area of RPCs.
//! - [`leader`]: what only the leader keeps in memory (chunk-server liveness and placement,
//!   scrub figures, repair and GC figures), the one placement rule, and the leader gate of the
//!   workers; [`placement`]: the liveness table and weighted replica sampling.
//! - Workers (leader only, `cairn_common::worker` shape): [`repair`] re-replicates
//!   under-replicated chunks and trims surplus copies; [`gc`] collects unreferenced chunks
//!   (mark, epoch, marked delete); [`reaper`] expires dead mount sessions and idle uploads.
//! - [`fsck`]: the namespace checked against the chunk inventory.
//! - [`metrics`]: what the node serves on its HTTP port (Raft figures; on the leader, the
//!   cluster's); [`http`]: the status page on the same port.
//! - [`config`]: a node's flags; [`error`]: the meta server's error type and its one mapping to
//!   the wire.
//!
//! [`start`] runs a node inside the current tokio runtime (tests use it with `127.0.0.1:0`);
//! [`run`] is what the `cairn-meta` binary calls.
pub mod command;
pub mod config;
pub mod error;
pub mod fsck;
pub mod fsm;
pub mod gc;
pub mod http;
pub mod leader;
pub mod log_clock;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod proposer;
pub mod raft;
pub mod read_index;
pub mod reaper;
pub mod repair;
pub mod service;
pub mod store;

use anyhow::Context;
use cairn_common::worker::TaskSet;
use cairn_proto::meta_service_server::MetaServiceServer;
use cairn_proto::raft_service_server::RaftServiceServer;
use config::Config;
use node::MetaNode;
use openraft::error::{InitializeError, RaftError};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// A meta node running in the background of the current tokio runtime.
pub struct RunningNode {
    /// The address the gRPC server is bound to.
    pub addr: SocketAddr,
    pub node: Arc<MetaNode>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningNode {
    /// Resolves when the node stops by itself (a fatal storage error: `Err` with the reason).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("join meta node task")?
    }

    /// Stops accepting RPCs, lets in-flight ones finish (up to the drain timeout), shuts Raft
    /// down and syncs the WAL. The node's database is closed once every `Arc<MetaNode>` clone
    /// the caller still holds is dropped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("join meta node task")?
    }
}

/// Binds `config.listen` and starts the node (see [`start_with_listener`]).
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    config.validate().map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    start_with_listener(config, listener).await
}

/// Starts a node serving on an already bound `listener`: opens (or creates) its database,
/// starts Raft, serves `RaftService` and `MetaService`, and bootstraps the cluster from
/// `config.peers` if this node's log is empty. Tests bind `127.0.0.1:0` listeners first so they
/// can put the real addresses into `peers`.
pub async fn start_with_listener(
    config: Config,
    listener: TcpListener,
) -> anyhow::Result<RunningNode> {
    config.validate().map_err(anyhow::Error::msg)?;
    let span = tracing::info_span!("meta", node_id = config.id);
    let addr = listener.local_addr().context("read bound address")?;
    let advertise = config.advertise_addr(addr);

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let db = store::open_db(&config.data_dir.join("db")).context("open database")?;
    let fsm = Arc::new(fsm::Fsm::open(db.clone()).context("open state machine")?);
    let digests = Arc::new(
        store::digest::Digests::load(&db)
            .map_err(anyhow::Error::msg)
            .context("read the applied-state digest")?,
    );
    let log_store = store::LogStore::new(db.clone());
    let sm_store = store::StateMachineStore::new(
        db.clone(),
        fsm.clone(),
        config.data_dir.join("snapshot"),
        digests.clone(),
    )
    .context("open snapshot store")?
    .fail_apply_at(config.test_fail_apply_at);
    if let Some(path) = &config.test_clock_offset_file {
        tracing::warn!(
            path = %path.display(),
            "TEST HOOK: this node's wall clock is offset by the seconds in this file"
        );
        cairn_common::time::set_test_clock_offset_file(path.clone());
    }
    if let Some(index) = config.test_fail_apply_at {
        tracing::warn!(
            index,
            "TEST HOOK: applying log entry {index} will fail as a storage error"
        );
    }
    let raft_config = Arc::new(config.raft_config().map_err(anyhow::Error::msg)?);
    let read_lease = config.read_lease(&raft_config);
    let raft = raft::Raft::new(
        config.id,
        raft_config,
        raft::network::NetworkFactory::new(config.id),
        log_store,
        sm_store,
    )
    .instrument(span.clone())
    .await
    .context("start raft")?;
    let node = Arc::new(MetaNode::new(
        config.id,
        advertise.clone(),
        fsm,
        raft.clone(),
        digests,
        Arc::new(log_clock::LogClock::new(config.longest_expiry())),
        read_lease,
    ));

    let raft_svc =
        RaftServiceServer::new(raft::service::RaftServiceImpl::new(config.id, raft.clone()))
            .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);
    // The leader-only state has one owner, shared by the service and the workers.
    let leader = leader::LeaderState::new(node.clone(), config.heartbeat_timeout());
    let meta_impl = Arc::new(service::MetaServiceImpl::new(
        node.clone(),
        config.service_config(),
        leader.clone(),
    ));
    let mut workers = TaskSet::in_span(span.clone());
    workers.spawn_worker(repair::Repairer::worker(
        node.clone(),
        leader.clone(),
        config.repair_config(),
    ));
    workers.spawn_worker(gc::Collector::worker(
        node.clone(),
        leader.clone(),
        config.gc_config(),
    ));
    let (session_reaper, upload_reaper) =
        reaper::workers(&node, config.session_ttl, config.upload_ttl);
    workers.spawn_worker(session_reaper);
    workers.spawn_worker(upload_reaper);
    let meta_svc = MetaServiceServer::from_arc(meta_impl.clone())
        .max_decoding_message_size(cairn_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(cairn_proto::MAX_MESSAGE_BYTES);

    // `stop` (held by RunningNode) asks the background task to stop; the task then tells the
    // server to stop accepting and drain (`drain_server`), with a hard deadline.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    // The HTTP port, stopped with the workers.
    if let Some(listen) = &config.metrics_listen {
        let http = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the metrics port {listen}"))?;
        let bound = http.local_addr().context("read the metrics address")?;
        node.set_metrics_addr(bound.to_string());
        let probe = Arc::new(metrics::MetaProbe {
            node: node.clone(),
            leader: leader.clone(),
        });
        let pages = http::routes(node.clone(), meta_impl.clone());
        let router = cairn_common::metrics::router(probe, pages);
        let stop = workers.token().cancelled_owned();
        workers.spawn(
            "metrics-http",
            cairn_common::metrics::serve(http, router, stop),
        );
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .layer(cairn_common::metrics::RpcMetricsLayer::new("meta"))
        .add_service(raft_svc)
        .add_service(meta_svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = drain_rx.await;
        });
    let mut server_task = tokio::spawn(server.instrument(span.clone()));
    let drain_deadline = config.drain_timeout;
    let task_raft = raft.clone();
    let task = tokio::spawn(
        async move {
            let flatten = |joined: Result<Result<(), tonic::transport::Error>, _>| {
                joined
                    .context("join grpc server")
                    .and_then(|r: Result<(), _>| r.context("serve grpc"))
            };
            let mut raft_failed = None;
            let served = tokio::select! {
                joined = &mut server_task => flatten(joined),
                // A dropped RunningNode counts as a stop request too.
                _ = stop_rx => {
                    let _ = drain_tx.send(());
                    match tokio::time::timeout(drain_deadline, &mut server_task).await {
                        Ok(joined) => flatten(joined),
                        Err(_) => {
                            tracing::warn!(?drain_deadline, "in-flight RPCs did not finish; cutting them off");
                            server_task.abort();
                            Ok(())
                        }
                    }
                }
                // FATAL: Raft stopped by itself (a storage failure in the log or while applying
                // an entry). This node must not go on answering with a state it cannot keep in
                // step with its peers: it stops, and the process exits with an error.
                fatal = raft_failure(&task_raft) => {
                    tracing::error!(error = %fatal, "raft stopped on a fatal error; stopping this meta node");
                    let _ = drain_tx.send(());
                    server_task.abort();
                    raft_failed = Some(fatal);
                    Ok(())
                }
            };
            // Workers stop at their next await; every step they take is one atomic command.
            workers.shutdown(drain_deadline).await;
            if let Some(fatal) = raft_failed {
                // Whatever reached the log before the failure is synced with the WAL (a
                // failed sync is part of the failure already reported).
                let _ = db.flush_wal(true);
                return Err(anyhow::anyhow!(
                    "this meta node stopped because its storage failed: {fatal}. The other \
                     nodes go on without it; once its disk is healthy, restart it and it \
                     replays its log"
                ));
            }
            tracing::info!("grpc server stopped; shutting raft down");
            if let Err(e) = task_raft.shutdown().await {
                tracing::error!(error = %e, "raft shutdown");
            }
            let synced = db.flush_wal(true).context("sync WAL on shutdown");
            tracing::info!("meta node stopped");
            served.and(synced)
        }
        .instrument(span.clone()),
    );

    if !config.peers.is_empty() {
        bootstrap(&raft, &config).instrument(span.clone()).await?;
    }
    span.in_scope(|| tracing::info!(%addr, %advertise, "meta node started"));
    Ok(RunningNode {
        addr,
        node,
        stop: Some(stop_tx),
        task,
    })
}

/// Resolves when `raft`'s core stops on a fatal error, with that error.
async fn raft_failure(raft: &raft::Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft stopped".into();
        }
    }
}

/// Initializes the cluster with `config.peers` if this node has never been initialized. Every
/// node may do this with the same membership: openraft treats identical initial logs as one.
async fn bootstrap(raft: &raft::Raft, config: &Config) -> anyhow::Result<()> {
    if raft.is_initialized().await.context("read raft state")? {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = config
        .peers
        .iter()
        .map(|p| (p.id, BasicNode::new(p.addr.clone())))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(peers = config.peers.len(), "initialized cluster");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::debug!(reason = %e, "cluster already initialized");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("initialize cluster: {e}")),
    }
}

/// Runs a node until `shutdown` resolves, then drains in-flight RPCs and stops cleanly. A node
/// that stops by itself (a fatal storage error) returns that error at once.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut node = start(config).await?;
    cairn_common::systemd::notify_ready();
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
            cairn_common::systemd::notify_stopping();
            node.shutdown().await
        }
        stopped = &mut node.task => {
            stopped.context("join meta node task")??;
            anyhow::bail!("the meta node stopped unexpectedly")
        }
    }
}
