//! Extended attributes: get, set, list and remove, with `security.capability` of open files
//! answered from a cache ([`CapsCache`]).
use super::reply::Xattr;
use super::state::Core;
use crate::errno::{Errno, OrErrno};
use cairn_proto as pb;
use std::collections::HashMap;
use std::sync::Mutex;

/// The attribute the kernel reads before every write.
const CAPS_XATTR: &[u8] = b"security.capability";

/// `security.capability` of files open on this mount (`None`: it has none). The kernel asks for
/// it before *every* write (to drop file capabilities on write), which would otherwise cost a
/// metadata round trip per write.
#[derive(Default)]
pub(super) struct CapsCache {
    map: Mutex<HashMap<u64, Option<Vec<u8>>>>,
}

impl CapsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Vec<u8>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what is known of `ino` (its attributes changed, or it is no longer open).
    pub(super) fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    /// Notes that open file `ino` has no `security.capability`: it was just created by this
    /// mount (an `O_EXCL` create that succeeded made a new inode, which has no attributes), so
    /// its first write needs no round trip to learn that.
    pub(super) fn note_new_file(&self, ino: u64) {
        self.lock().insert(ino, None);
    }
}

/// Answers getxattr/listxattr: the size when asked for it (size 0), ERANGE when the caller's
/// buffer is too small, else the bytes.
fn sized(size: u32, value: Vec<u8>) -> Result<Xattr, Errno> {
    if size == 0 {
        Ok(Xattr::Size(value.len() as u32))
    } else if value.len() > size as usize {
        Err(Errno(libc::ERANGE))
    } else {
        Ok(Xattr::Data(value))
    }
}

impl Core {
    /// getxattr, with `security.capability` of open files answered from [`CapsCache`]; `size`
    /// is the caller's buffer.
    pub async fn getxattr(&self, ino: u64, name: Vec<u8>, size: u32) -> Result<Xattr, Errno> {
        let cacheable = name == CAPS_XATTR && self.files.get(ino).is_some();
        if cacheable {
            if let Some(v) = self.caps.lock().get(&ino) {
                return sized(size, v.clone().ok_or(Errno(libc::ENODATA))?);
            }
        }
        let r = self.meta().get_xattr(ino, &name).await.or_errno("getxattr");
        if cacheable {
            match &r {
                Ok(v) => self.caps.lock().insert(ino, Some(v.clone())),
                Err(e) if e.0 == libc::ENODATA => self.caps.lock().insert(ino, None),
                Err(_) => None,
            };
        }
        sized(size, r?)
    }

    pub async fn setxattr(&self, req: pb::SetXattrRequest) -> Result<(), Errno> {
        let ino = req.ino;
        let r = self.meta().set_xattr(req).await.or_errno("setxattr");
        self.caps.forget(ino);
        r
    }

    /// The names of `ino`'s extended attributes, each followed by a NUL; `size` is the caller's
    /// buffer.
    pub async fn listxattr(&self, ino: u64, size: u32) -> Result<Xattr, Errno> {
        let names = self.meta().list_xattr(ino).await.or_errno("listxattr")?;
        let mut list = Vec::new();
        for n in names {
            list.extend_from_slice(&n);
            list.push(0);
        }
        sized(size, list)
    }

    pub async fn removexattr(&self, ino: u64, name: Vec<u8>) -> Result<(), Errno> {
        let r = self
            .meta()
            .remove_xattr(ino, &name)
            .await
            .or_errno("removexattr");
        self.caps.forget(ino);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sized_to_the_callers_buffer() {
        assert!(matches!(sized(0, b"abc".to_vec()), Ok(Xattr::Size(3))));
        assert!(matches!(sized(3, b"abc".to_vec()), Ok(Xattr::Data(d)) if d == b"abc"));
        assert!(matches!(
            sized(2, b"abc".to_vec()),
            Err(Errno(libc::ERANGE))
        ));
    }
}
