//! This mount's session in the metadata cluster: the owner of its advisory locks and of the
//! files it keeps open after their last name was removed (orphans).
//!
//! The session is opened at mount time and renewed every quarter of its TTL by the [`Renewal`]
//! worker. If the mount dies, the cluster ends the session after the TTL, which releases its
//! locks (so other mounts are not blocked forever) and deletes its orphans. A clean unmount
//! closes it at once.
//!
//! Lock and orphan bookkeeping here is only an index of what to release, so that the common
//! close of an unlocked, linked file costs no metadata round trip.
use crate::errno::{Errno, OrErrno};
use crate::meta::Meta;
use cairn_common::worker::{Worker, WorkerState};
use cairn_proto as pb;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub struct MountSession {
    meta: Meta,
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

impl MountSession {
    /// Opens a session for the mount at `mountpoint`.
    pub async fn open(meta: Meta, mountpoint: &str) -> Result<Arc<MountSession>, tonic::Status> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let s = Arc::new(MountSession {
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
        let r = self
            .meta
            .open_session(pb::OpenSessionRequest {
                host: self.host.clone(),
                mountpoint: self.mountpoint.clone(),
                pid: std::process::id(),
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

    /// This machine's host name, as the session shows it (empty when unknown).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How often the session is renewed: a quarter of its TTL.
    fn renew_every(&self) -> Duration {
        *lock(&self.ttl) / 4
    }

    /// Renews the session once. A session the cluster already ended (the mount was cut off for
    /// longer than the TTL) is replaced by a new one; the locks and orphans of the old one are
    /// gone, which is logged loudly.
    async fn renew(&self) {
        let session = self.id();
        match self.meta.renew_session(session).await {
            Ok(()) => {}
            Err(e) if Errno::from(&e) == Errno::ENOENT => {
                tracing::error!(
                    session,
                    "mount session expired (cut off from the cluster for longer than its \
                     TTL): its locks were released and files unlinked while open are gone"
                );
                lock(&self.locks).clear();
                lock(&self.orphans).clear();
                if let Err(e) = self.reopen().await {
                    tracing::error!(error = %e.message(), "cannot open a new session");
                }
            }
            Err(e) => {
                tracing::warn!(session, error = %e.message(), "session renewal failed")
            }
        }
    }

    /// Ends the session (clean unmount): its locks and orphans go at once.
    pub async fn close(&self) {
        let session = self.id();
        if let Err(e) = self.meta.close_session(session).await {
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
        self.meta
            .set_lock(pb::SetLockRequest {
                ino,
                session: self.id(),
                owner,
                lock: Some(lk),
            })
            .await
            .or_errno("setlk")
    }

    /// The first lock that would block `lk` (type UNLOCK when none).
    pub async fn get_lock(
        &self,
        ino: u64,
        owner: u64,
        lk: pb::FileLock,
    ) -> Result<pb::FileLock, Errno> {
        self.meta
            .get_lock(pb::GetLockRequest {
                ino,
                session: self.id(),
                owner,
                lock: Some(lk),
            })
            .await
            .or_errno("getlk")
    }

    /// Drops every lock `owner` holds on `ino` (close of a descriptor), if it may hold any.
    pub async fn release_locks(&self, ino: u64, owner: u64) -> Result<(), Errno> {
        if !lock(&self.locks).remove(&(ino, owner)) {
            return Ok(());
        }
        self.meta
            .release_locks(pb::ReleaseLocksRequest {
                ino,
                session: self.id(),
                owner,
            })
            .await
            .or_errno("release locks")
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
        self.meta
            .release_orphan(self.id(), ino)
            .await
            .or_errno("release orphan")
    }
}

/// Renews a [`MountSession`] every quarter of its TTL, the first time a quarter TTL after it
/// was opened.
///
/// Interruption (see `cairn_common::worker`): a renewal is one idempotent RPC; a replacement
/// session opened by a round dropped at shutdown is simply never used and expires.
pub struct Renewal {
    session: Arc<MountSession>,
    /// When the next renewal is due.
    due: Instant,
}

impl Renewal {
    pub fn new(session: Arc<MountSession>) -> Renewal {
        let due = Instant::now() + session.renew_every();
        Renewal { session, due }
    }
}

impl Worker for Renewal {
    /// A failed renewal is logged by the worker itself and retried at the next period.
    type Error = Infallible;

    fn name(&self) -> String {
        "mount session renewal".into()
    }

    async fn work(&mut self) -> Result<WorkerState, Infallible> {
        if Instant::now() >= self.due {
            self.session.renew().await;
            // The period of a replacement session is its own.
            self.due = Instant::now() + self.session.renew_every();
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.due).await
    }
}
