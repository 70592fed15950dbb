//! Advisory locks (fcntl and flock): FUSE lock requests as the wire's, and waiting for a lock
//! (F_SETLKW, blocking flock). The locks live in the cluster, held by this mount's session, so
//! they hold across mounts.
use super::reply::LockInfo;
use super::state::Core;
use crate::errno::Errno;
use cairn_proto as pb;
use std::time::Duration;

/// A FUSE lock request as the wire's lock.
pub fn lock_arg(typ: i32, start: u64, end: u64, pid: u32) -> Result<pb::FileLock, Errno> {
    let typ = match typ {
        libc::F_RDLCK => pb::LockType::Read,
        libc::F_WRLCK => pb::LockType::Write,
        libc::F_UNLCK => pb::LockType::Unlock,
        _ => return Err(Errno::EINVAL),
    };
    if start > end {
        return Err(Errno::EINVAL);
    }
    Ok(pb::FileLock {
        typ: typ as i32,
        start,
        end,
        pid,
    })
}

impl Core {
    /// F_GETLK: the first lock that would block `want`, or `F_UNLCK` when none would.
    pub async fn getlk(&self, ino: u64, owner: u64, want: pb::FileLock) -> Result<LockInfo, Errno> {
        let l = self.session.get_lock(ino, owner, want).await?;
        let typ = match pb::LockType::try_from(l.typ) {
            Ok(pb::LockType::Read) => libc::F_RDLCK,
            Ok(pb::LockType::Write) => libc::F_WRLCK,
            _ => libc::F_UNLCK,
        };
        Ok(LockInfo {
            start: l.start,
            end: l.end,
            typ,
            pid: l.pid,
        })
    }

    /// F_SETLK, or with `sleep` F_SETLKW / blocking flock for kernel task `waiter`.
    pub async fn setlk(
        &self,
        ino: u64,
        owner: u64,
        want: pb::FileLock,
        sleep: bool,
        waiter: u32,
    ) -> Result<(), Errno> {
        // F_SETLKW / blocking flock: the cluster answers at once, so wait here by retrying,
        // giving up with EINTR when the waiting process is killed or gets a signal.
        let mut pause = Duration::from_millis(2);
        loop {
            match self.session.set_lock(ino, owner, want).await {
                Err(e) if sleep && e.0 == libc::EAGAIN => {
                    if crate::procs::interrupted(waiter) {
                        return Err(Errno(libc::EINTR));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_requests_are_checked() {
        let l = lock_arg(libc::F_WRLCK, 0, 9, 42).unwrap();
        assert_eq!(l.typ, pb::LockType::Write as i32);
        assert_eq!((l.start, l.end, l.pid), (0, 9, 42));
        assert_eq!(lock_arg(libc::F_RDLCK, 5, 4, 1), Err(Errno::EINVAL));
        assert_eq!(lock_arg(99, 0, 1, 1), Err(Errno::EINVAL));
    }
}
