//! The one mapping from Cairn errors to the errno a FUSE reply carries.
//!
//! Internal helpers return `Result<T, Errno>`; only the reply helper of the mount
//! (`fs::reply::FuseReply`) turns one into `reply.error(..)`. A `tonic::Status` becomes an errno
//! through the `cairn-error` kind it carries (`ErrorKind::from_status(..).errno()`), nowhere
//! else.
use cairn_common::ErrorKind;
use tonic::Status;

/// A POSIX errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ESHUTDOWN: Errno = Errno(libc::ESHUTDOWN);

    pub fn code(self) -> i32 {
        self.0
    }
}

impl From<ErrorKind> for Errno {
    fn from(k: ErrorKind) -> Errno {
        Errno(k.errno())
    }
}

impl From<&Status> for Errno {
    fn from(s: &Status) -> Errno {
        Errno::from(ErrorKind::from_status(s))
    }
}

impl From<Status> for Errno {
    fn from(s: Status) -> Errno {
        Errno::from(&s)
    }
}

/// A failed metadata call of the mount as its errno: `.or_errno("lookup")`, logged at debug
/// level with the operation (the kernel's caller sees only the errno).
pub trait OrErrno<T> {
    fn or_errno(self, op: &'static str) -> Result<T, Errno>;
}

impl<T> OrErrno<T> for Result<T, Status> {
    fn or_errno(self, op: &'static str) -> Result<T, Errno> {
        self.map_err(|s| {
            tracing::debug!(op, error = %s.message(), "meta call failed");
            Errno::from(&s)
        })
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::error::status;

    #[test]
    fn statuses_map_to_the_errno_of_their_kind() {
        let cases = [
            (ErrorKind::NotFound, libc::ENOENT),
            (ErrorKind::Stale, libc::ESTALE),
            (ErrorKind::AlreadyExists, libc::EEXIST),
            (ErrorKind::NotEmpty, libc::ENOTEMPTY),
            (ErrorKind::NameTooLong, libc::ENAMETOOLONG),
            (ErrorKind::NoSpace, libc::ENOSPC),
            (ErrorKind::Conflict, libc::EIO),
            (ErrorKind::Corrupt, libc::EIO),
        ];
        for (kind, errno) in cases {
            assert_eq!(Errno::from(status(kind, "x")), Errno(errno), "{kind}");
        }
    }

    #[test]
    fn transport_failures_are_eio() {
        let s = Status::unavailable("connection refused");
        assert_eq!(Errno::from(&s), Errno::EIO);
        assert_eq!(Errno::from(Status::not_found("gone")), Errno::ENOENT);
    }
}
