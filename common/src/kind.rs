//! The kind of an inode, and its one conversion to each encoding: the wire
//! (`cairn_proto::FileKind`), the byte stored in a directory entry, and the `S_IFMT` bits of a
//! mode (mknod).
use cairn_proto::FileKind as Wire;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Every kind, in the order of their directory-entry bytes (1..=7).
const ALL: [Kind; 7] = [
    Kind::Regular,
    Kind::Directory,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
    Kind::CharDevice,
    Kind::BlockDevice,
];

impl Kind {
    /// The kind a wire `FileKind` names; `None` for `UNSPECIFIED` and unknown values.
    pub fn from_wire(k: i32) -> Option<Kind> {
        Some(match Wire::try_from(k).ok()? {
            Wire::Unspecified => return None,
            Wire::Regular => Kind::Regular,
            Wire::Directory => Kind::Directory,
            Wire::Symlink => Kind::Symlink,
            Wire::Fifo => Kind::Fifo,
            Wire::Socket => Kind::Socket,
            Wire::CharDevice => Kind::CharDevice,
            Wire::BlockDevice => Kind::BlockDevice,
        })
    }

    pub fn to_wire(self) -> Wire {
        match self {
            Kind::Regular => Wire::Regular,
            Kind::Directory => Wire::Directory,
            Kind::Symlink => Wire::Symlink,
            Kind::Fifo => Wire::Fifo,
            Kind::Socket => Wire::Socket,
            Kind::CharDevice => Wire::CharDevice,
            Kind::BlockDevice => Wire::BlockDevice,
        }
    }

    /// The byte a directory entry stores for this kind (1..=7; part of the on-disk format).
    pub fn to_byte(self) -> u8 {
        ALL.iter()
            .position(|k| *k == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The kind of a directory entry's byte; `None` for a byte no kind has.
    pub fn from_byte(b: u8) -> Option<Kind> {
        ALL.get(usize::from(b).checked_sub(1)?).copied()
    }

    /// The kind named by the `S_IFMT` bits of `mode` (no bits: a regular file, as mknod(2)
    /// reads them); `None` for bits no kind has.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::Regular,
            libc::S_IFDIR => Kind::Directory,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips() {
        for k in ALL {
            assert_eq!(Kind::from_wire(k.to_wire() as i32), Some(k));
            assert_eq!(Kind::from_byte(k.to_byte()), Some(k));
        }
        assert_eq!(Kind::Regular.to_byte(), 1);
        assert_eq!(Kind::BlockDevice.to_byte(), 7);
        assert_eq!(Kind::from_byte(0), None);
        assert_eq!(Kind::from_byte(8), None);
        assert_eq!(Kind::from_wire(0), None);
        assert_eq!(Kind::from_wire(99), None);
        assert_eq!(Kind::from_mode(0o644), Some(Kind::Regular));
        assert_eq!(Kind::from_mode(libc::S_IFIFO | 0o600), Some(Kind::Fifo));
        assert_eq!(Kind::from_mode(libc::S_IFDIR), Some(Kind::Directory));
        assert_eq!(Kind::from_mode(0o170000), None);
    }
}
