//! Extended attributes (`SetXattr`, `RemoveXattr`, and their reads): the `user.`, `trusted.`
//! and `security.` namespaces, with Linux's limits on names and values and a bound per inode.
use super::schema::{fs_err, named_key, CF_XATTRS};
use super::tx::Tx;
use super::Fsm;
use crate::command::{
    CommandResult, FsError, RemoveXattr, Reply, SetXattr, XATTR_CREATE, XATTR_REPLACE,
};
use crate::error::MetaError;
use cairn_common::error::ErrorKind;

/// Longest attribute name (Linux XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest attribute value (Linux XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Most bytes of names and values one inode may carry.
pub const XATTR_TOTAL_MAX: usize = 1024 * 1024;

/// Checks an attribute name: length, and a namespace Cairn stores. `system.` attributes (POSIX
/// ACLs) would have to be enforced, which the mount does not do, so they are refused rather
/// than stored and ignored.
pub fn check_xattr_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() {
        return Err(fs_err(ErrorKind::InvalidArgument, "empty attribute name"));
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(fs_err(
            ErrorKind::OutOfRange,
            format!("attribute name longer than {XATTR_NAME_MAX} bytes"),
        ));
    }
    if name.contains(&0) {
        return Err(fs_err(
            ErrorKind::InvalidArgument,
            "attribute name contains NUL",
        ));
    }
    const STORED: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];
    if !STORED
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
    {
        return Err(fs_err(
            ErrorKind::NotSupported,
            format!(
                "attribute namespace of {:?} is not supported",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    Ok(())
}

fn no_data(name: &[u8]) -> FsError {
    fs_err(
        ErrorKind::NoData,
        format!("no attribute {:?}", String::from_utf8_lossy(name)),
    )
}

impl Fsm {
    /// The value of attribute `name` of `ino` (`NoData` if it has none; `NotFound` if the inode
    /// does not exist).
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        self.get(ino)?;
        check_xattr_name(name)?;
        self.raw_get(CF_XATTRS, &named_key(ino, name))?
            .ok_or_else(|| no_data(name).into())
    }

    /// The names of `ino`'s attributes, in byte order.
    pub fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError> {
        self.get(ino)?;
        Ok(self
            .scan(CF_XATTRS, &ino.to_be_bytes())?
            .into_keys()
            .map(|k| k[8..].to_vec())
            .collect())
    }
}

impl SetXattr {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        let (ino, name, value, flags) = (self.ino, &self.name, &self.value, self.flags);
        check_xattr_name(name)?;
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(fs_err(
                ErrorKind::InvalidArgument,
                format!("bad setxattr flags {flags:#x}"),
            ));
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(fs_err(
                ErrorKind::TooBig,
                format!("attribute value larger than {XATTR_SIZE_MAX} bytes"),
            ));
        }
        let mut i = tx.must_inode(ino)?;
        let key = named_key(ino, name);
        let exists = tx.kv_get(CF_XATTRS, &key)?.is_some();
        if exists && flags & XATTR_CREATE != 0 {
            return Err(fs_err(
                ErrorKind::AlreadyExists,
                format!("attribute {:?} exists", String::from_utf8_lossy(name)),
            ));
        }
        if !exists && flags & XATTR_REPLACE != 0 {
            return Err(no_data(name));
        }
        let others: usize = tx
            .kv_scan(CF_XATTRS, &ino.to_be_bytes())?
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| k.len() - 8 + v.len())
            .sum();
        if others + name.len() + value.len() > XATTR_TOTAL_MAX {
            return Err(fs_err(
                ErrorKind::NoSpace,
                format!("inode {ino} would carry more than {XATTR_TOTAL_MAX} bytes of attributes"),
            ));
        }
        tx.kv_put(CF_XATTRS, key, Some(value.to_vec()));
        i.ctime = self.now;
        tx.put_inode(i);
        Ok(Reply::Empty)
    }
}

impl RemoveXattr {
    pub(super) fn apply(&self, tx: &mut Tx) -> CommandResult {
        check_xattr_name(&self.name)?;
        let mut i = tx.must_inode(self.ino)?;
        let key = named_key(self.ino, &self.name);
        if tx.kv_get(CF_XATTRS, &key)?.is_none() {
            return Err(no_data(&self.name));
        }
        tx.kv_put(CF_XATTRS, key, None);
        i.ctime = self.now;
        tx.put_inode(i);
        Ok(Reply::Empty)
    }
}

impl Tx<'_> {
    /// Drops every attribute of `ino` (the inode is being deleted).
    pub(super) fn forget_xattrs(&mut self, ino: u64) -> Result<(), FsError> {
        for (k, _) in self.kv_scan(CF_XATTRS, &ino.to_be_bytes())? {
            self.kv_put(CF_XATTRS, k, None);
        }
        Ok(())
    }
}
