//! Inode numbers as the kernel knows them and as the cluster does: [`InoMap`], the one
//! translation between the two.
//!
//! FUSE fixes the number of the mount's root at 1 (`FUSE_ROOT_ID`). A mount of the whole
//! namespace shows Cairn's numbers as they are (Cairn's root is 1 too). A mount of a
//! sub-directory (`subdir=`) shows that directory as its root: FUSE inode 1 is the
//! sub-directory's Cairn inode, and every other number is the same on both sides. Every inode
//! number of a request goes through [`InoMap::to_cairn`] before anything else sees it, and every
//! number the kernel is given goes through [`InoMap::to_fuse`] (or [`InoMap::dotdot`]); the rest
//! of the mount (open files, locks, caches, the cluster) speaks Cairn numbers only.
//!
//! **The Cairn root cannot be reached from a sub-directory mount.** The only number that could
//! address it, 1, means the mount root (the sub-directory) here. Where the cluster names the
//! Cairn root in a reply — the `..` of a directory that another mount moved out to the root —
//! the kernel is given 1 instead, the mount root, as a local file system's root is its own
//! `..`. The sub-directory's own Cairn number is never given to the kernel (it is 1 there); a
//! request naming it anyway still means the sub-directory. No other number is touched: inodes
//! inside the sub-directory keep their Cairn numbers, which are unique across the cluster.
//!
//! Without a sub-directory the mapping is the identity; each translation is one comparison.
use cairn_common::ROOT_INO;
use fuser::FUSE_ROOT_ID;

/// How this mount numbers inodes for the kernel: which Cairn directory is FUSE inode 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InoMap {
    /// The Cairn inode of the mount's root.
    root: u64,
}

impl InoMap {
    /// The mount of the whole namespace: Cairn numbers as they are.
    pub const WHOLE: InoMap = InoMap { root: ROOT_INO };

    /// The mount of the Cairn directory `root` (a sub-directory mount, or [`InoMap::WHOLE`]
    /// when `root` is the Cairn root).
    pub fn rooted_at(root: u64) -> InoMap {
        InoMap { root }
    }

    /// The Cairn inode the mount shows as its root.
    pub fn root(self) -> u64 {
        self.root
    }

    /// The Cairn inode of the kernel's inode `fuse` (a request's `ino`, `parent`, `newparent`).
    #[inline]
    pub fn to_cairn(self, fuse: u64) -> u64 {
        if fuse == FUSE_ROOT_ID {
            self.root
        } else {
            fuse
        }
    }

    /// The kernel's number for Cairn inode `cairn` (a reply's attributes, a listing's entry, an
    /// invalidation). The mount root and the Cairn root are both 1 (see the module doc).
    #[inline]
    pub fn to_fuse(self, cairn: u64) -> u64 {
        if cairn == self.root || cairn == ROOT_INO {
            FUSE_ROOT_ID
        } else {
            cairn
        }
    }

    /// The kernel's number for the `..` of Cairn directory `dir`, whose parent the cluster
    /// gives as `parent` (0 when unknown): the mount root is its own `..`, as a file system's
    /// root is; what is above it is the kernel's business, not this mount's.
    pub fn dotdot(self, dir: u64, parent: u64) -> u64 {
        if dir == self.root {
            FUSE_ROOT_ID
        } else {
            self.to_fuse(parent.max(ROOT_INO))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_namespace_is_the_identity() {
        let m = InoMap::WHOLE;
        for ino in [0, 1, 2, 42, u64::MAX] {
            assert_eq!(m.to_cairn(ino), ino);
            assert_eq!(m.to_fuse(ino), ino);
        }
        assert_eq!(m.dotdot(1, 0), 1, "the root is its own parent");
        assert_eq!(m.dotdot(1, 1), 1);
        assert_eq!(m.dotdot(7, 1), 1);
        assert_eq!(m.dotdot(7, 5), 5);
        assert_eq!(m.dotdot(7, 0), 1, "an unknown parent shows as the root");
        assert_eq!(InoMap::rooted_at(ROOT_INO), InoMap::WHOLE);
    }

    #[test]
    fn a_subdir_is_inode_1_and_everything_else_keeps_its_number() {
        let m = InoMap::rooted_at(42);
        assert_eq!(m.root(), 42);
        assert_eq!(m.to_cairn(1), 42, "the mount root is the sub-directory");
        assert_eq!(m.to_fuse(42), 1);
        for ino in [2, 41, 43, 1000] {
            assert_eq!(m.to_cairn(ino), ino);
            assert_eq!(m.to_fuse(ino), ino);
            assert_eq!(m.to_cairn(m.to_fuse(ino)), ino, "round trip of {ino}");
        }
        assert_eq!(m.to_cairn(m.to_fuse(42)), 42);
    }

    #[test]
    fn the_cairn_root_is_never_reachable_from_a_subdir() {
        let m = InoMap::rooted_at(42);
        // No kernel number leads to the Cairn root.
        for fuse in [0, 1, 2, 42, 43, u64::MAX] {
            assert_ne!(m.to_cairn(fuse), ROOT_INO, "FUSE {fuse}");
        }
        // Named by the cluster, it shows as the mount root, which is the sub-directory.
        assert_eq!(m.to_fuse(ROOT_INO), 1);
        assert_eq!(m.to_cairn(m.to_fuse(ROOT_INO)), 42);
        // The sub-directory's own number, were it sent, still means the sub-directory.
        assert_eq!(m.to_cairn(42), 42);
    }

    #[test]
    fn dotdot_of_the_mount_root_is_itself() {
        let m = InoMap::rooted_at(42);
        assert_eq!(m.dotdot(42, 1), 1, "parent is the Cairn root");
        assert_eq!(m.dotdot(42, 17), 1, "parent is any directory above");
        assert_eq!(m.dotdot(50, 42), 1, "a child of the mount root");
        assert_eq!(m.dotdot(60, 50), 50);
        assert_eq!(
            m.dotdot(60, ROOT_INO),
            1,
            "a directory moved out to the Cairn root by another mount"
        );
        assert_eq!(m.dotdot(60, 0), 1);
    }
}
