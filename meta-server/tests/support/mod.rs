//! What the meta-server tests share: a real one-node cluster, started in-process.
use std::time::Duration;

/// Starts (or restarts) the one-node cluster whose data is in `dir`, serving on listener `l`.
pub async fn start_node(
    dir: &std::path::Path,
    l: tokio::net::TcpListener,
) -> cairn_meta_server::RunningNode {
    use cairn_meta_server::config::{Config, Peer};
    let addr = l.local_addr().unwrap().to_string();
    let mut cfg = Config::new(1, addr.clone(), dir);
    cfg.peers = vec![Peer { id: 1, addr }];
    cfg.drain_timeout = Duration::from_secs(2);
    cairn_meta_server::start_with_listener(cfg, l)
        .await
        .unwrap()
}
