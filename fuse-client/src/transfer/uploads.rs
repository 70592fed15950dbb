//! `cairn uploads list [--json]`, `cairn uploads abort <id>`: the upload sessions the cluster
//! holds, and dropping one.
//!
//! The upload sessions the cluster holds (from `cairn put` and from mounts), and dropping one:
//! its chunks become garbage unless something else references them.
use super::{list_uploads, meta_client, meta_error, unix_ms};
use crate::status::human;
use anyhow::anyhow;
use cairn_common::ErrorKind;
use cairn_proto as pb;
use serde::Serialize;

/// One upload session as `cairn uploads list --json` prints it.
#[derive(Debug, Serialize, PartialEq)]
pub struct UploadRow {
    pub id: u64,
    /// The target's path when it resolves, else `ino <n>` or `<parent ino>/<name>`.
    pub target: String,
    pub path: String,
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub base_version: u64,
    pub label: String,
    pub host: String,
    pub created_unix_ms: u64,
    pub touched_unix_ms: u64,
    /// Seconds since the upload was opened.
    pub age_secs: u64,
    /// Seconds since a chunk was last recorded (expiry counts from here).
    pub idle_secs: u64,
    pub slots: u64,
    pub bytes: u64,
}

impl UploadRow {
    pub fn from_info(u: pb::UploadInfo, now_ms: u64) -> UploadRow {
        let name = String::from_utf8_lossy(&u.name).into_owned();
        let target = if !u.path.is_empty() {
            u.path.clone()
        } else if u.ino != 0 {
            format!("ino {}", u.ino)
        } else {
            format!("{}/{name}", u.parent)
        };
        let created = unix_ms(u.created.as_ref());
        let touched = unix_ms(u.touched.as_ref()).max(created);
        UploadRow {
            id: u.upload,
            target,
            path: u.path,
            ino: u.ino,
            parent: u.parent,
            name,
            base_version: u.base_version,
            label: u.label,
            host: u.host,
            created_unix_ms: created,
            touched_unix_ms: touched,
            age_secs: now_ms.saturating_sub(created) / 1000,
            idle_secs: now_ms.saturating_sub(touched) / 1000,
            slots: u.slots,
            bytes: u.bytes,
        }
    }
}

pub use cairn_common::units::human_secs;

pub fn table(rows: &[UploadRow]) -> String {
    if rows.is_empty() {
        return "no uploads in progress\n".into();
    }
    let tw = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let hw = rows
        .iter()
        .map(|r| r.host.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:>6}  {:<tw$}  {:>6}  {:>10}  {:>7}  {:>7}  {:<hw$}  LABEL\n",
        "ID", "TARGET", "SLOTS", "BYTES", "AGE", "IDLE", "HOST"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>6}  {:<tw$}  {:>6}  {:>10}  {:>7}  {:>7}  {:<hw$}  {}\n",
            r.id,
            r.target,
            r.slots,
            human(r.bytes),
            human_secs(r.age_secs),
            human_secs(r.idle_secs),
            r.host,
            r.label
        ));
    }
    out
}

/// `cairn uploads list`: every upload session, oldest first.
pub async fn list(addrs: Vec<String>) -> anyhow::Result<Vec<UploadRow>> {
    let meta = meta_client(addrs)?;
    let now = unix_ms(Some(&cairn_common::time::now()));
    let mut rows: Vec<UploadRow> = list_uploads(&meta, true)
        .await?
        .into_iter()
        .map(|u| UploadRow::from_info(u, now))
        .collect();
    rows.sort_by_key(|r| (r.created_unix_ms, r.id));
    Ok(rows)
}

/// `cairn uploads abort <id>`.
pub async fn abort(addrs: Vec<String>, id: u64) -> anyhow::Result<()> {
    let meta = meta_client(addrs)?;
    meta.abort_upload(id).await.map_err(|s| {
        if ErrorKind::from_status(&s) == ErrorKind::NotFound {
            anyhow!("no upload {id} (already committed, aborted or expired)")
        } else {
            meta_error(&format!("aborting upload {id}"), &s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = cairn_common::CHUNK_SIZE as u64;
    #[test]
    fn upload_rows_name_their_target_and_ages() {
        let ts = |secs| pb::Timestamp { secs, nanos: 0 };
        let info = pb::UploadInfo {
            upload: 7,
            ino: 0,
            parent: 1,
            name: b"big".to_vec(),
            base_version: 0,
            label: "put /src size=1 mtime=2 -> /big".into(),
            host: "h".into(),
            created: Some(ts(1000)),
            touched: Some(ts(1090)),
            slots: 3,
            bytes: 3 * CHUNK,
            path: String::new(),
        };
        let r = UploadRow::from_info(info.clone(), 1_100_000);
        assert_eq!(r.target, "1/big");
        assert_eq!((r.age_secs, r.idle_secs), (100, 10));
        let r = UploadRow::from_info(
            pb::UploadInfo {
                path: "/big".into(),
                ..info
            },
            1_100_000,
        );
        assert_eq!(r.target, "/big");
        let t = table(&[r]);
        assert!(
            t.lines().nth(1).unwrap().contains("/big") && t.contains("12.0 MiB"),
            "{t}"
        );
    }
}
