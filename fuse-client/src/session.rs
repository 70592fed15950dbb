//! This mount's session in the metadata cluster: the owner of its advisory locks and of the
//! files it keeps open after their last name was removed (orphans).
//!
//! The session is opened at mount time and renewed every quarter of its TTL. If the mount dies,
//! the cluster ends the session after the TTL, which releases its locks (so other mounts are not
//! blocked forever) and deletes its orphans. A clean unmount closes it at once.
//!
//! Lock and orphan bookkeeping here is only an index of what to release, so that the common
//! close of an unlocked, linked file costs no metadata round trip.
use crate::errno::Errno;
use cairn_common::MetaClient;
use cairn_proto as pb;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Session {
    meta: MetaClient,
    id: AtomicU64,
    ttl: Mutex<Duration>,
    host: String,
    mountpoint: String,
    /// (inode, kernel lock owner) pairs that may hold locks.
    locks: Mutex<HashSet<(u64, u64)>>,
    /// Inodes kept alive by this session after their last unlink.
    orphans: Mutex<HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(op: &'static str, s: tonic::Status) -> Errno {
    tracing::debug!(op, error = %s.message(), "session call failed");
    Errno::from(&s)
}

impl Session {
    /// Opens a session for the mount at `mountpoint`.
    pub async fn open(meta: MetaClient, mountpoint: &str) -> Result<Arc<Session>, tonic::Status> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let s = Arc::new(Session {
            meta,
            id: AtomicU64::new(0),
            ttl: Mutex::new(Duration::from_secs(60)),
            host,
            mountpoint: mountpoint.to_owned(),
            locks: Mutex::default(),
            orphans: Mutex::default(),
        });
        s.reopen().await?;
        Ok(s)
    }

    async fn reopen(&self) -> Result<(), tonic::Status> {
        let req = pb::OpenSessionRequest {
            host: self.host.clone(),
            mountpoint: self.mountpoint.clone(),
            pid: std::process::id(),
        };
        let r = self
            .meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.open_session(req).await }
            })
            .await?;
        self.id.store(r.session, Ordering::Release);
        *lock(&self.ttl) = Duration::from_millis(r.ttl_ms.max(1000));
        tracing::info!(
            session = r.session,
            ttl_ms = r.ttl_ms,
            "mount session opened"
        );
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Renews the session every quarter of its TTL until the task is aborted. A session the
    /// cluster already ended (the mount was cut off for longer than the TTL) is replaced by a
    /// new one; the locks and orphans of the old one are gone, which is logged loudly.
    pub fn spawn_renewal(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let s = self.clone();
        tokio::spawn(async move {
            loop {
                let every = *lock(&s.ttl) / 4;
                tokio::time::sleep(every).await;
                let session = s.id();
                let r = s
                    .meta
                    .call(|mut c| async move {
                        c.renew_session(pb::RenewSessionRequest { session }).await
                    })
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if Errno::from(&e) == Errno::ENOENT => {
                        tracing::error!(
                            session,
                            "mount session expired (cut off from the cluster for longer than its \
                             TTL): its locks were released and files unlinked while open are gone"
                        );
                        lock(&s.locks).clear();
                        lock(&s.orphans).clear();
                        if let Err(e) = s.reopen().await {
                            tracing::error!(error = %e.message(), "cannot open a new session");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(session, error = %e.message(), "session renewal failed")
                    }
                }
            }
        })
    }

    /// Ends the session (clean unmount): its locks and orphans go at once.
    pub async fn close(&self) {
        let session = self.id();
        let r = self
            .meta
            .call(|mut c| async move { c.close_session(pb::CloseSessionRequest { session }).await })
            .await;
        if let Err(e) = r {
            tracing::warn!(session, error = %e.message(), "closing the mount session failed; it will expire");
        }
    }

    /// Takes, changes or drops a lock; `WouldBlock` (EAGAIN) when another owner holds a
    /// conflicting one.
    pub async fn set_lock(&self, ino: u64, owner: u64, lk: pb::FileLock) -> Result<(), Errno> {
        let unlock = lk.typ == pb::LockType::Unlock as i32;
        if !unlock {
            // Recorded before the call: a lock granted by a call whose reply is lost must still
            // be released at close.
            lock(&self.locks).insert((ino, owner));
        }
        let session = self.id();
        self.meta
            .call(|mut c| async move {
                c.set_lock(pb::SetLockRequest {
                    ino,
                    session,
                    owner,
                    lock: Some(lk),
                })
                .await
            })
            .await
            .map(|_| ())
            .map_err(|e| errno("setlk", e))
    }

    /// The first lock that would block `lk` (type UNLOCK when none).
    pub async fn get_lock(
        &self,
        ino: u64,
        owner: u64,
        lk: pb::FileLock,
    ) -> Result<pb::FileLock, Errno> {
        let session = self.id();
        let r = self
            .meta
            .call(|mut c| async move {
                c.get_lock(pb::GetLockRequest {
                    ino,
                    session,
                    owner,
                    lock: Some(lk),
                })
                .await
            })
            .await
            .map_err(|e| errno("getlk", e))?;
        r.lock.ok_or(Errno::EIO)
    }

    /// Drops every lock `owner` holds on `ino` (close of a descriptor), if it may hold any.
    pub async fn release_locks(&self, ino: u64, owner: u64) -> Result<(), Errno> {
        if !lock(&self.locks).remove(&(ino, owner)) {
            return Ok(());
        }
        let session = self.id();
        self.meta
            .call(|mut c| async move {
                c.release_locks(pb::ReleaseLocksRequest {
                    ino,
                    session,
                    owner,
                })
                .await
            })
            .await
            .map(|_| ())
            .map_err(|e| errno("release locks", e))
    }

    pub fn note_orphan(&self, ino: u64) {
        if ino != 0 {
            lock(&self.orphans).insert(ino);
        }
    }

    /// The last handle of `ino` closed: if it is an orphan of this session, delete it now.
    pub async fn release_orphan(&self, ino: u64) -> Result<(), Errno> {
        if !lock(&self.orphans).remove(&ino) {
            return Ok(());
        }
        let session = self.id();
        self.meta
            .call(|mut c| async move {
                c.release_orphan(pb::ReleaseOrphanRequest { session, ino })
                    .await
            })
            .await
            .map(|_| ())
            .map_err(|e| errno("release orphan", e))
    }
}
