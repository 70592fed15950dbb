//! The mount's shared state, [`Core`]: what every request needs (the data plane, the open
//! files, the mount session) and the small caches each area keeps. The operations themselves
//! are `impl Core` blocks in the sibling modules, one per area.
use super::dirs::DirHandles;
use super::files::SeenVersions;
use super::ino_map::InoMap;
use super::namespace::FreshDirs;
use super::xattrs::CapsCache;
use crate::data::open_file::{FileState, OpenFiles};
use crate::data::DataPlane;
use crate::errno::Errno;
use crate::meta::Meta;
use crate::mount_session::MountSession;
use fuser::Notifier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Everything a request needs; shared by all in-flight requests.
pub struct Core {
    pub dp: Arc<DataPlane>,
    pub files: OpenFiles,
    pub session: Arc<MountSession>,
    /// The kernel's inode numbers and the cluster's (see [`InoMap`]): requests are translated
    /// in `CairnFs`, replies where attributes and listings are made for the kernel.
    pub(super) inos: InoMap,
    pub(super) dirs: DirHandles,
    next_fh: AtomicU64,
    /// Tells the kernel to drop cached attributes (set once mounted).
    pub(super) notifier: OnceLock<Notifier>,
    pub(super) seen: SeenVersions,
    pub(super) caps: CapsCache,
    pub(super) fresh_dirs: FreshDirs,
}

impl Core {
    /// The state of a mount whose root is `inos`' (the whole namespace, or a `subdir=`).
    pub fn new(dp: Arc<DataPlane>, session: Arc<MountSession>, inos: InoMap) -> Arc<Core> {
        Arc::new(Core {
            dp,
            files: OpenFiles::default(),
            session,
            inos,
            dirs: DirHandles::default(),
            next_fh: AtomicU64::new(1),
            notifier: OnceLock::new(),
            seen: SeenVersions::default(),
            caps: CapsCache::default(),
            fresh_dirs: FreshDirs::default(),
        })
    }

    /// Hands over the mounted session's notifier (see [`Core::open`]).
    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    /// A new file or directory handle.
    pub(super) fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn meta(&self) -> &Meta {
        &self.dp.meta
    }

    /// The state of open file `ino` (EBADF when it is not open here).
    pub(super) fn file(&self, ino: u64) -> Result<Arc<FileState>, Errno> {
        self.files.get(ino).ok_or(Errno::EBADF)
    }
}
