//! Admin commands: `cairn fsck`, `cairn scrub`, `cairn chunk drain`.
use crate::meta::Meta;
use crate::status;
use cairn_common::ChunkClients;
use cairn_proto as pb;
use serde::Serialize;
use std::time::{Duration, Instant};

fn client(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<Meta> {
    anyhow::ensure!(!addrs.is_empty(), "no meta server addresses given (--meta)");
    Ok(Meta::with_timeouts(
        addrs,
        timeout,
        timeout.max(Duration::from_secs(1)),
    ))
}

/// What `cairn fsck` found (also its `--json` shape).
#[derive(Debug, Serialize, PartialEq)]
pub struct FsckReport {
    pub files: u64,
    pub directories: u64,
    pub chunks: u64,
    pub healthy: u64,
    pub under_replicated: u64,
    pub missing: u64,
    /// Chunks whose only reachable copies are suspect (reported bad, being re-verified).
    pub suspect: u64,
    pub corrupt_reported: u64,
    pub replication: u32,
    pub affected: Vec<AffectedFile>,
    pub affected_not_listed: u64,
    /// Each meta node's digest of its applied state at one log index.
    pub meta_digests: Vec<MetaDigest>,
    /// Two meta nodes' states differ at the same index.
    pub meta_diverged: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct MetaDigest {
    pub id: u64,
    pub addr: String,
    pub index: u64,
    /// Hex; empty when the node could not tell (see `note`).
    pub digest: String,
    pub note: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AffectedFile {
    pub path: String,
    pub ino: u64,
    pub problem: String,
}

impl FsckReport {
    /// True when some referenced chunk has no healthy replica: data is lost (or unreachable).
    pub fn data_lost(&self) -> bool {
        self.missing > 0
    }

    /// True when the report shows damage: lost data, or meta nodes whose states differ.
    pub fn damaged(&self) -> bool {
        self.data_lost() || self.meta_diverged
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{} files, {} directories, {} chunks (replication {})\n  healthy:          {}\n  under-replicated: {}\n  suspect only:     {}\n  missing:          {}\n  corrupt copies awaiting repair: {}\n",
            self.files,
            self.directories,
            self.chunks,
            self.replication,
            self.healthy,
            self.under_replicated,
            self.suspect,
            self.missing,
            self.corrupt_reported
        );
        if !self.affected.is_empty() {
            out.push_str("affected files:\n");
            for f in &self.affected {
                out.push_str(&format!("  {:<17} {}\n", f.problem, f.path));
            }
            if self.affected_not_listed > 0 {
                out.push_str(&format!("  ... and {} more\n", self.affected_not_listed));
            }
        }
        if !self.meta_digests.is_empty() {
            let index = self.meta_digests[0].index;
            out.push_str(&format!("metadata replicas at log index {index}:\n"));
            for d in &self.meta_digests {
                let what = if d.digest.is_empty() {
                    format!("unknown ({})", d.note)
                } else {
                    d.digest.chars().take(16).collect()
                };
                out.push_str(&format!("  meta {:<3} {:<22} {}\n", d.id, d.addr, what));
            }
        }
        if self.meta_diverged {
            out.push_str(
                "status: METADATA REPLICAS DIVERGED (meta nodes' states differ at the same log \
                 index; see their logs)\n",
            );
        }
        out.push_str(if self.data_lost() {
            "status: DATA LOST OR UNREACHABLE (chunks with no healthy replica)\n"
        } else if self.suspect > 0 {
            "status: no data known lost; some chunks have only copies reported bad, which their \
             servers are re-verifying (repair)\n"
        } else if self.under_replicated > 0 {
            "status: no data lost; some chunks are under-replicated (repair is running)\n"
        } else {
            "status: healthy\n"
        });
        out
    }
}

impl From<pb::FsckReply> for FsckReport {
    fn from(r: pb::FsckReply) -> FsckReport {
        FsckReport {
            files: r.files,
            directories: r.directories,
            chunks: r.chunks,
            healthy: r.healthy,
            under_replicated: r.under_replicated,
            missing: r.missing,
            suspect: r.suspect,
            corrupt_reported: r.corrupt_reported,
            replication: r.replication,
            affected: r
                .affected
                .into_iter()
                .map(|f| AffectedFile {
                    path: f.path,
                    ino: f.ino,
                    problem: f.problem,
                })
                .collect(),
            affected_not_listed: r.affected_not_listed,
            meta_diverged: r.meta_diverged,
            meta_digests: r
                .meta_digests
                .into_iter()
                .map(|d| MetaDigest {
                    id: d.id,
                    addr: d.addr,
                    index: d.index,
                    digest: d.digest.iter().map(|b| format!("{b:02x}")).collect(),
                    note: d.note,
                })
                .collect(),
        }
    }
}

pub async fn fsck(
    addrs: Vec<String>,
    max_files: u32,
    timeout: Duration,
) -> anyhow::Result<FsckReport> {
    let meta = client(addrs, timeout)?;
    let reply = meta
        .fsck(max_files)
        .await
        .map_err(|s| anyhow::anyhow!("fsck failed: {}", s.message()))?;
    Ok(FsckReport::from(reply))
}

/// Starts a scrub pass on every chunk server that is up; returns one line per server.
pub async fn scrub_now(addrs: Vec<String>, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let st = status::fetch(addrs, timeout).await?;
    let clients = ChunkClients::new();
    let mut lines = Vec::new();
    let mut failed = 0;
    for c in st.chunk_servers.iter().filter(|c| c.state == "up") {
        let started = match clients.get(&c.addr) {
            Ok(mut cl) => cl.scrub_now(pb::ScrubNowRequest {}).await,
            Err(e) => Err(e),
        };
        lines.push(match started {
            Ok(r) if r.get_ref().started => {
                format!("chunk server {} ({}): scrub started", c.id, c.addr)
            }
            Ok(_) => format!(
                "chunk server {} ({}): a scrub pass is already running",
                c.id, c.addr
            ),
            Err(e) => {
                failed += 1;
                format!(
                    "chunk server {} ({}): FAILED: {}",
                    c.id,
                    c.addr,
                    e.message()
                )
            }
        });
    }
    for c in st.chunk_servers.iter().filter(|c| c.state != "up") {
        lines.push(format!(
            "chunk server {} ({}): {}, skipped",
            c.id, c.addr, c.state
        ));
    }
    anyhow::ensure!(failed == 0, "{}", lines.join("\n"));
    Ok(lines)
}

/// Marks `server` draining (or not, with `undo`); with `wait`, returns once no replica is listed
/// on it any more.
pub async fn drain(
    addrs: Vec<String>,
    server: String,
    undo: bool,
    wait: Option<Duration>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let meta = client(addrs.clone(), timeout)?;
    let reply = meta
        .drain(&server, !undo)
        .await
        .map_err(|s| anyhow::anyhow!("drain {server}: {}", s.message()))?;
    let id = reply.server_id;
    if undo {
        return Ok(format!("chunk server {id} is no longer draining"));
    }
    let Some(limit) = wait else {
        return Ok(format!(
            "chunk server {id} is draining ({} replicas listed at the last scan); watch `cairn status`",
            reply.listed_replicas
        ));
    };
    let deadline = Instant::now() + limit;
    loop {
        let st = status::fetch(addrs.clone(), timeout).await?;
        let listed = st
            .chunk_servers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.listed_replicas)
            .unwrap_or(0);
        // A scan that finished after the drain started is needed to trust "0".
        if listed == 0 && st.repair.last_scan_unix_ms > 0 && st.repair.under_replicated == 0 {
            return Ok(format!(
                "chunk server {id} is drained: no replicas left on it; it can be retired"
            ));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "chunk server {id} still holds {listed} replicas after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_whether_data_is_lost() {
        let mut r = FsckReport::from(pb::FsckReply {
            files: 3,
            directories: 1,
            chunks: 10,
            healthy: 9,
            under_replicated: 1,
            missing: 0,
            suspect: 0,
            corrupt_reported: 0,
            affected: vec![pb::FsckFile {
                path: "/a/b".into(),
                ino: 7,
                problem: "under-replicated".into(),
            }],
            affected_not_listed: 0,
            replication: 3,
            meta_digests: vec![],
            meta_diverged: false,
        });
        assert!(!r.data_lost());
        let t = r.text();
        assert!(
            t.lines()
                .any(|l| l.contains("under-replicated") && l.ends_with(" /a/b")),
            "{t}"
        );
        assert!(t.contains("no data lost"), "{t}");
        // Copies reported bad but perhaps intact are not lost data.
        r.suspect = 1;
        assert!(!r.data_lost());
        let t = r.text();
        assert!(t.contains("re-verifying") && !t.contains("LOST"), "{t}");
        r.missing = 1;
        assert!(r.data_lost());
        assert!(r.text().contains("DATA LOST"));
        r.missing = 0;
        r.meta_diverged = true;
        assert!(r.damaged() && !r.data_lost());
        assert!(r.text().contains("METADATA REPLICAS DIVERGED"));
    }
}
