//! Admin commands: `cairn fsck`, `cairn scrub`, `cairn chunk drain`.
use crate::meta::Meta;
use crate::status;
use cairn_common::ChunkClients;
use cairn_proto as pb;
use serde::Serialize;
use std::time::{Duration, Instant};

/// A progress bar on stderr for a `--wait` (hidden when stderr is not a terminal or with -q);
/// log lines are printed above it (see [`crate::out`]).
fn wait_bar(len: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if quiet || !std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{wide_bar}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    crate::out::set_progress_bar(&bar);
    bar
}

/// Ends a `--wait` bar.
fn finish_bar(bar: &indicatif::ProgressBar) {
    bar.finish_and_clear();
    crate::out::clear_progress_bar();
}

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

/// Starts a scrub pass on every chunk server that is up; returns one line per server. With
/// `wait`, returns once every server that started one has finished it (at most `wait`),
/// showing the chunks verified so far (unless `quiet`).
pub async fn scrub_now(
    addrs: Vec<String>,
    timeout: Duration,
    wait: Option<Duration>,
    quiet: bool,
) -> anyhow::Result<Vec<String>> {
    let st = status::fetch(addrs.clone(), timeout).await?;
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
    if let Some(limit) = wait {
        lines.push(wait_for_passes(&addrs, &st, timeout, limit, quiet).await?);
    }
    Ok(lines)
}

/// Waits until every chunk server up in `before` has completed one more pass than it had.
async fn wait_for_passes(
    addrs: &[String],
    before: &status::ClusterReport,
    timeout: Duration,
    limit: Duration,
    quiet: bool,
) -> anyhow::Result<String> {
    // (id, passes, chunks verified) before the pass, per server that is up.
    let start: Vec<(u64, u64, u64)> = before
        .chunk_servers
        .iter()
        .filter(|c| c.state == "up")
        .map(|c| {
            let s = c.scrub.as_ref();
            (
                c.id,
                s.map_or(0, |s| s.passes),
                s.map_or(0, |s| s.chunks_verified),
            )
        })
        .collect();
    let total: u64 = before
        .chunk_servers
        .iter()
        .filter(|c| c.state == "up")
        .map(|c| c.chunk_count)
        .sum();
    let bar = wait_bar(total, quiet, "scrubbing");
    let deadline = Instant::now() + limit;
    let done = loop {
        let st = match status::fetch(addrs.to_vec(), timeout).await {
            Ok(st) => st,
            Err(e) => break Err(e),
        };
        let mut verified = 0;
        let mut finished = 0;
        for &(id, passes, chunks) in &start {
            let Some(s) = st
                .chunk_servers
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.scrub.as_ref())
            else {
                continue;
            };
            verified += s.chunks_verified.saturating_sub(chunks);
            if s.passes > passes {
                finished += 1;
            }
        }
        bar.set_position(verified.min(total));
        if finished == start.len() {
            let corrupt: u64 = st
                .chunk_servers
                .iter()
                .filter_map(|c| c.scrub.as_ref())
                .map(|s| s.corruptions)
                .sum();
            break Ok(format!(
                "scrub finished on {finished} chunk server(s): {verified} chunks verified; \
                 {corrupt} corrupt copies found since the servers started"
            ));
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "the scrub finished on {finished} of {} chunk servers within {limit:?}",
                start.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    finish_bar(&bar);
    done
}

/// Marks `server` draining (or not, with `undo`); with `wait`, returns once no replica is listed
/// on it any more, showing the replicas moved so far (unless `quiet`).
pub async fn drain(
    addrs: Vec<String>,
    server: String,
    undo: bool,
    wait: Option<Duration>,
    timeout: Duration,
    quiet: bool,
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
    let bar = wait_bar(
        reply.listed_replicas,
        quiet,
        &format!("draining chunk server {id}"),
    );
    let done = loop {
        let st = match status::fetch(addrs.clone(), timeout).await {
            Ok(st) => st,
            Err(e) => break Err(e),
        };
        let listed = st
            .chunk_servers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.listed_replicas)
            .unwrap_or(0);
        bar.set_length(bar.length().unwrap_or(0).max(listed));
        bar.set_position(bar.length().unwrap_or(0).saturating_sub(listed));
        // A scan that finished after the drain started is needed to trust "0".
        if listed == 0 && st.repair.last_scan_unix_ms > 0 && st.repair.under_replicated == 0 {
            break Ok(format!(
                "chunk server {id} is drained: no replicas left on it; it can be retired"
            ));
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "chunk server {id} still holds {listed} replicas after {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    finish_bar(&bar);
    done
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
