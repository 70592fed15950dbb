//! Attribute conversion between Cairn and FUSE: an inode's attributes as the kernel gets them
//! ([`to_file_attr`], and [`Core::to_fuse`] with this mount's view of files being written), the
//! one mapping of a [`Kind`] to a FUSE file type, and a setattr request as the wire's.
use super::state::Core;
use cairn_common::time::{from_wire, to_wire};
use cairn_common::Kind;
use cairn_proto as pb;
use fuser::{FileAttr, FileType, TimeOrNow};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache attributes and entries.
pub const TTL: Duration = Duration::from_secs(1);

/// The FUSE file type of a Cairn kind.
pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Regular => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// The FUSE file type of a wire kind; an unknown kind shows as a regular file.
pub fn wire_file_type(kind: i32) -> FileType {
    Kind::from_wire(kind).map_or(FileType::RegularFile, file_type)
}

fn ts(t: &Option<pb::Timestamp>) -> SystemTime {
    t.as_ref().map(from_wire).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The FUSE attributes of a Cairn inode, under its Cairn number ([`Core::to_fuse`] gives the
/// kernel's).
pub fn to_file_attr(a: &pb::Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        // Sparse files: only stored data counts (holes take no space).
        blocks: a.stored_bytes.div_ceil(512),
        atime: ts(&a.atime),
        mtime: ts(&a.mtime),
        ctime: ts(&a.ctime),
        crtime: ts(&a.ctime),
        kind: wire_file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 128 * 1024,
        flags: 0,
    }
}

impl Core {
    /// `attr` with this mount's view: the kernel's inode number (see [`super::InoMap`]) and
    /// the dirty size of a file being written. The version of a regular file is remembered as
    /// the one the kernel now has (see [`Core::open`]). Every attribute the kernel gets (entry,
    /// attr, create and readdirplus replies) is made here.
    pub(super) fn to_fuse(&self, a: &pb::Attr) -> FileAttr {
        if Kind::from_wire(a.kind) == Some(Kind::Regular) {
            self.seen.note(a.ino, a.version);
        }
        let mut attr = to_file_attr(a);
        attr.ino = self.inos.to_fuse(a.ino);
        if let Some(f) = self.files.get(a.ino) {
            if let Some(size) = f.dirty_size() {
                attr.size = size;
                attr.blocks = size.div_ceil(512);
            }
        }
        attr
    }
}

/// The changes of a setattr (a field is `None` when it does not change).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl SetAttr {
    /// The change of `ino` as the wire's request.
    pub fn request(self, ino: u64) -> pb::SetAttrRequest {
        let (atime, atime_now) = time_arg(self.atime);
        let (mtime, mtime_now) = time_arg(self.mtime);
        pb::SetAttrRequest {
            ino,
            mode: self.mode.map(|m| m & 0o7777),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime,
            mtime,
            atime_now,
            mtime_now,
        }
    }
}

fn time_arg(t: Option<TimeOrNow>) -> (Option<pb::Timestamp>, bool) {
    match t {
        None => (None, false),
        Some(TimeOrNow::Now) => (None, true),
        Some(TimeOrNow::SpecificTime(t)) => (Some(to_wire(t)), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_file_type_and_unknown_ones_are_regular() {
        assert_eq!(
            wire_file_type(pb::FileKind::Fifo as i32),
            FileType::NamedPipe
        );
        assert_eq!(
            wire_file_type(pb::FileKind::Directory as i32),
            FileType::Directory
        );
        assert_eq!(wire_file_type(0), FileType::RegularFile);
        assert_eq!(wire_file_type(99), FileType::RegularFile);
    }

    #[test]
    fn times_before_1970_survive_a_setattr() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(750);
        let req = SetAttr {
            mtime: Some(TimeOrNow::SpecificTime(before)),
            atime: Some(TimeOrNow::Now),
            mode: Some(0o100644),
            ..SetAttr::default()
        }
        .request(7);
        assert_eq!(req.mode, Some(0o644));
        assert!(req.atime_now && req.atime.is_none());
        let attr = to_file_attr(&pb::Attr {
            mtime: req.mtime,
            ..Default::default()
        });
        assert_eq!(attr.mtime, before);
    }
}
