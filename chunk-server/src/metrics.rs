//! What a chunk server serves on its HTTP port (`--metrics-listen`, see
//! [`cairn_common::metrics`]).
//!
//! Counters where things happen: `cairn_chunk_bytes_written_total`,
//! `cairn_chunk_bytes_read_total`, `cairn_chunk_puts_total{outcome}` (the service), and every
//! RPC (`cairn_rpc_*{service="chunk"}`). Gauges set at each scrape ([`ChunkProbe::refresh`]):
//! `cairn_store_capacity_bytes`, `cairn_store_used_bytes`, `cairn_store_free_bytes`,
//! `cairn_store_chunks`; the scrub's `cairn_scrub_running`, `cairn_scrub_passes`,
//! `cairn_scrub_chunks_verified`, `cairn_scrub_bytes_verified`, `cairn_scrub_corruptions`,
//! `cairn_scrub_unverified_chunks`, `cairn_scrub_oldest_unverified_age_seconds`,
//! `cairn_scrub_oldest_verified_age_seconds`, `cairn_scrub_last_full_pass_timestamp_seconds`.
//!
//! `/readyz` answers 200 once the server is registered with the metadata cluster (or runs
//! standalone) and its store answers.
use crate::scrub::Scrub;
use crate::store::{ChunkStore, FileStore};
use cairn_common::metrics::{age_secs, Probe};
use metrics::gauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct ChunkProbe {
    pub store: Arc<FileStore>,
    pub scrub: Arc<Scrub>,
    pub server_id: Arc<AtomicU64>,
    /// False when running standalone (no metadata cluster to register with).
    pub registers: bool,
}

impl ChunkProbe {
    async fn stats(&self) -> Result<crate::store::StoreStats, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.stats()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("the store does not answer: {e}")),
            Err(e) => Err(format!("store stats task failed: {e}")),
        }
    }
}

impl Probe for ChunkProbe {
    fn describe(&self) {
        use metrics::{describe_counter as c, describe_gauge as d};
        c!(
            "cairn_chunk_bytes_written_total",
            metrics::Unit::Bytes,
            "Chunk bytes stored by puts"
        );
        c!(
            "cairn_chunk_bytes_read_total",
            metrics::Unit::Bytes,
            "Chunk bytes served by gets"
        );
        c!(
            "cairn_chunk_puts_total",
            "Chunk puts, by outcome (stored, already_present)"
        );
        d!("cairn_store_capacity_bytes", "Size of the data disk");
        d!("cairn_store_used_bytes", "Used bytes of the data disk");
        d!("cairn_store_free_bytes", "Bytes available on the data disk");
        d!("cairn_store_chunks", "Chunks stored");
        d!("cairn_scrub_running", "1 while a scrub pass runs");
        d!("cairn_scrub_passes", "Full scrub passes since start-up");
        d!(
            "cairn_scrub_chunks_verified",
            "Chunks the scrub verified since start-up"
        );
        d!(
            "cairn_scrub_bytes_verified",
            "Bytes the scrub verified since start-up"
        );
        d!(
            "cairn_scrub_corruptions",
            "Corrupt copies the scrub found since start-up"
        );
        d!(
            "cairn_scrub_unverified_chunks",
            "Chunks not read back by a scrub since they arrived"
        );
        d!(
            "cairn_scrub_oldest_unverified_age_seconds",
            "Age of the oldest chunk not verified yet (0: none)"
        );
        d!(
            "cairn_scrub_oldest_verified_age_seconds",
            "Age of the least recent scrub read-back (0: none)"
        );
        d!(
            "cairn_scrub_last_full_pass_timestamp_seconds",
            "Unix time the last full pass ended (0: none)"
        );
    }

    async fn refresh(&self) {
        let held = match self.stats().await {
            Ok(s) => {
                gauge!("cairn_store_capacity_bytes").set(s.capacity_bytes as f64);
                gauge!("cairn_store_used_bytes").set(s.used_bytes as f64);
                gauge!("cairn_store_free_bytes").set(s.free_bytes as f64);
                gauge!("cairn_store_chunks").set(s.chunk_count as f64);
                s.chunk_count
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: store figures unavailable");
                0
            }
        };
        let s = self.scrub.stats(held);
        gauge!("cairn_scrub_running").set(f64::from(u8::from(s.running)));
        gauge!("cairn_scrub_passes").set(s.passes as f64);
        gauge!("cairn_scrub_chunks_verified").set(s.chunks_verified as f64);
        gauge!("cairn_scrub_bytes_verified").set(s.bytes_verified as f64);
        gauge!("cairn_scrub_corruptions").set(s.corruptions as f64);
        gauge!("cairn_scrub_unverified_chunks").set(s.unverified_chunks as f64);
        gauge!("cairn_scrub_oldest_unverified_age_seconds")
            .set(age_secs(s.oldest_unverified_unix_ms));
        gauge!("cairn_scrub_oldest_verified_age_seconds").set(age_secs(s.oldest_verified_unix_ms));
        gauge!("cairn_scrub_last_full_pass_timestamp_seconds")
            .set(s.last_full_pass_unix_ms as f64 / 1000.0);
    }

    async fn ready(&self) -> Result<(), String> {
        if self.registers && self.server_id.load(Ordering::Relaxed) == 0 {
            return Err("not registered with the metadata cluster yet".into());
        }
        self.stats().await.map(|_| ())
    }
}
