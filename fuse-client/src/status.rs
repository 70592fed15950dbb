//! `cairn status [--json]`: the leader's view of the cluster
//! ([`cairn_common::cluster_report::ClusterReport`], with its health verdict), fetched, and
//! shown as tables.
use crate::meta::Meta;
use cairn_common::health;
use cairn_common::time::unix_ms;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use std::time::Duration;

pub use cairn_common::cluster_report::{
    ago_secs, ChunkServer, ClusterReport, MetaNode, Named, Repair, Scrub,
};
pub use cairn_common::units::{human, human_secs};

/// Asks the leader for the cluster status, giving up after `timeout`.
pub async fn fetch(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<ClusterReport> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    let list = addrs.join(",");
    let meta = Meta::with_timeouts(addrs, timeout, timeout.min(Duration::from_secs(3)));
    let reply = meta.cluster_status().await.map_err(|s| {
        anyhow::anyhow!("cannot reach the Cairn cluster at {list}: {}", s.message())
    })?;
    Ok(health::report(reply, unix_ms()))
}

fn new_table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

/// Right-aligns the numeric columns `cols` of `t`.
fn align_right(t: &mut Table, cols: &[usize]) {
    for &i in cols {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Indents every line of a rendered table by two spaces.
fn indented(t: &Table) -> String {
    t.lines().map(|l| format!("  {}\n", l.trim_end())).collect()
}

/// The human-readable report: the verdict and its reasons, then the tables.
pub fn table(s: &ClusterReport) -> String {
    let mut out = String::new();
    out.push_str(s.health.status.name());
    out.push('\n');
    for r in &s.health.reasons {
        out.push_str(&format!(
            "  [{}] {}\n",
            r.level.name().trim_start_matches("HEALTH_"),
            r.message
        ));
    }
    if let Some(c) = &s.cluster {
        out.push_str(&format!("cluster {} (from {})\n", c.meta, c.source));
    }
    out.push_str(&format!(
        "meta nodes (leader {}, replication {}, writes need {})\n",
        s.leader_id, s.replication, s.commit_quorum
    ));
    let mut t = new_table(&["ID", "ADDR", "ROLE", "TERM", "APPLIED", "LOG", "LAG"]);
    for m in &s.meta {
        t.add_row(vec![
            m.id.to_string(),
            m.addr.clone(),
            m.role.clone(),
            m.term.to_string(),
            m.last_applied.to_string(),
            m.last_log_index.to_string(),
            m.lag.to_string(),
        ]);
    }
    align_right(&mut t, &[0, 3, 4, 5, 6]);
    out.push_str(&indented(&t));
    out.push_str("chunk servers\n");
    let mut t = new_table(&[
        "ID",
        "ADDR",
        "STATE",
        "HEARTBEAT",
        "CAPACITY",
        "USED",
        "FREE",
        "CHUNKS",
        "LISTED",
        "SCRUB",
    ]);
    let now = unix_ms();
    for c in &s.chunk_servers {
        let state = if c.draining {
            format!("{}/drain", c.state)
        } else {
            c.state.clone()
        };
        t.add_row(vec![
            c.id.to_string(),
            c.addr.clone(),
            state,
            if c.heartbeat_age_ms == 0 {
                "-".into()
            } else {
                format!("{:.1}s ago", c.heartbeat_age_ms as f64 / 1000.0)
            },
            human(c.capacity_bytes),
            format!("{} {}", human(c.used_bytes), capacity_bar(c)),
            human(c.free_bytes),
            c.chunk_count.to_string(),
            c.listed_replicas.to_string(),
            scrub_summary(c.scrub.as_ref(), now),
        ]);
    }
    align_right(&mut t, &[0, 3, 4, 5, 6, 7, 8]);
    out.push_str(&indented(&t));
    let r = &s.repair;
    out.push_str(&format!(
        "repair: {} under-replicated ({} missing), {} over-replicated; copied {} replicas ({}), removed {}, {} failures",
        r.under_replicated,
        r.missing,
        r.over_replicated,
        r.replicas_copied,
        human(r.bytes_copied),
        r.replicas_removed,
        r.failures
    ));
    if r.last_scan_unix_ms == 0 {
        out.push_str("; no scan yet\n");
    } else {
        out.push_str(&format!(
            "; last scan {} ago\n",
            ago(now, r.last_scan_unix_ms)
        ));
    }
    out.push_str(&format!(
        "gc: {} unreferenced chunks pending, {} collected\n",
        r.gc_pending, r.gc_collected
    ));
    out
}

/// `[####------]`: the used share of a server's disk as `df` counts it, ten cells.
fn capacity_bar(c: &ChunkServer) -> String {
    let Some(free) = health::free_percent(c) else {
        return String::new();
    };
    let cells = ((100 - free.min(100)) / 10) as usize;
    format!("[{}{}]", "#".repeat(cells), "-".repeat(10 - cells))
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = ago_secs(now_ms, then_ms);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// "verified 120 chunks (480.0 MiB), 1 corrupt, last full pass 5m ago, oldest check 5m ago".
fn scrub_summary(s: Option<&Scrub>, now: u64) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let mut out = format!(
        "{}verified {} chunks ({}), {} corrupt",
        if s.running { "running; " } else { "" },
        s.chunks_verified,
        human(s.bytes_verified),
        s.corruptions
    );
    if s.last_full_pass_unix_ms == 0 {
        out.push_str(", no full pass yet");
    } else {
        out.push_str(&format!(
            ", last full pass {} ago",
            ago(now, s.last_full_pass_unix_ms)
        ));
    }
    if s.oldest_verified_unix_ms != 0 {
        out.push_str(&format!(
            ", oldest check {} ago",
            ago(now, s.oldest_verified_unix_ms)
        ));
    }
    if s.unverified_chunks > 0 {
        out.push_str(&format!(
            ", {} never verified (oldest arrived {} ago)",
            s.unverified_chunks,
            ago(now, s.oldest_unverified_unix_ms)
        ));
    }
    if let Some(age) = health::scrub_overdue(s, now) {
        out.push_str(&format!(", OVERDUE ({} unchecked)", human_secs(age)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::cluster_report::example_reply;

    fn sample() -> ClusterReport {
        health::report(example_reply(), unix_ms())
    }

    #[test]
    fn table_lists_every_node() {
        let t = table(&sample());
        assert!(t.contains("127.0.0.1:7001"), "{t}");
        assert!(t.contains("leader"));
        assert!(t.contains("3.0 MiB"));
        assert!(t.contains("5.0 GiB"));
        assert!(t.contains("up/drain"), "{t}");
        assert!(t.contains("1 corrupt, last full pass 5m ago"), "{t}");
        assert!(
            t.contains("2 never verified (oldest arrived 60s ago)"),
            "{t}"
        );
        assert!(t.starts_with("HEALTH_ERR\n"), "{t}");
        assert!(t.contains("[ERR] 1 chunk(s) have no intact replica"), "{t}");
        assert!(t.contains("repair: 2 under-replicated (1 missing)"), "{t}");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_an_error() {
        let r = fetch(vec!["127.0.0.1:1".into()], Duration::from_millis(300)).await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("cannot reach"), "{e}");
    }
}
