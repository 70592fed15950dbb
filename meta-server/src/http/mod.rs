//! The status page a meta node serves on its HTTP port next to `/metrics`: `/` is a small
//! read-only page (health, meta nodes, chunk servers with capacity bars, scrub, repair and GC
//! figures) that refreshes itself from `/status.json` — the same report as
//! `cairn status --json`, built from the same `ClusterStatus` answer. Only the leader has the
//! cluster's figures: another node's `status.json` answers 503 with the leader's page address.
use crate::node::MetaNode;
use crate::service::MetaServiceImpl;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_common::health;
use cairn_common::time::unix_ms;
use std::sync::Arc;

const PAGE: &str = include_str!("status_page.html");

#[derive(Clone)]
struct Pages {
    node: Arc<MetaNode>,
    service: Arc<MetaServiceImpl>,
}

/// `/` and `/status.json`.
pub fn routes(node: Arc<MetaNode>, service: Arc<MetaServiceImpl>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .with_state(Pages { node, service })
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn status_json(State(p): State<Pages>) -> Response {
    let served_by = format!("{} ({})", p.node.id, p.node.addr);
    match p.service.cluster_status().await {
        Ok(reply) => {
            let status = health::report(reply, unix_ms());
            Json(serde_json::json!({ "served_by": served_by, "status": status })).into_response()
        }
        Err(s) => {
            let leader = p.node.leader().map(|(id, addr)| format!("{id} ({addr})"));
            let error = match &leader {
                Some(l) if !p.node.is_leader() => {
                    format!("this meta node is not the leader; ask meta node {l}")
                }
                _ => format!("no cluster status: {}", s.message()),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "served_by": served_by, "error": error })),
            )
                .into_response()
        }
    }
}
