//! The `MetaService` gRPC implementation. STUB — signatures fixed.
use crate::node::MetaNode;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the client-facing service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Replicas per chunk (default 3).
    pub replication: u32,
    /// Fewest acknowledged replicas a write may commit with when servers are down (default 2).
    pub min_replication: u32,
    /// A chunk server with no heartbeat for this long is down (default 5 s).
    pub heartbeat_timeout: Duration,
}

pub struct MetaServiceImpl {
    node: Arc<MetaNode>,
    cfg: ServiceConfig,
}

impl MetaServiceImpl {
    pub fn new(node: Arc<MetaNode>, cfg: ServiceConfig) -> MetaServiceImpl {
        MetaServiceImpl { node, cfg }
    }
}
