//! The kernel mount of a Cairn file system, as root: `mount(2)` of type `fuse.cairn` with the
//! cluster as its source, so `mount`, `df`, `findmnt` and `/proc/self/mountinfo` name both
//! (fuser's own mount as root uses the bare type `fuse`). Without root, the mount goes through
//! `fusermount3` (fuser), which sets the same type from the subtype option.
use crate::mount_cli::MountOptions;
use fuser::{BackgroundSession, Filesystem, MountOption, Session, SessionACL};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The kernel file system type of a Cairn mount.
pub const FS_TYPE: &str = "fuse.cairn";

/// A mounted session, unmounted by the caller (`umount2`) when it ends.
pub struct Mounted {
    pub session: BackgroundSession,
    /// fuser owns the kernel mount (the `fusermount3` path): dropping the session unmounts.
    pub owned_by_fuser: bool,
}

/// The `mount(2)` data string: the FUSE channel, the root's mode, the owner, and the options
/// the kernel checks itself.
fn data(fd: i32, root_mode: u32, allow_other: bool) -> String {
    let mut d = format!(
        "fd={fd},rootmode={:o},user_id={},group_id={},default_permissions",
        root_mode & libc::S_IFMT,
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if allow_other {
        d.push_str(",allow_other");
    }
    d
}

/// The `mount(2)` flags of `o`: `nosuid` and `nodev` unless asked otherwise (as fuse does),
/// no atime updates, read-only with `ro`.
fn flags(o: &MountOptions) -> libc::c_ulong {
    let has = |k: &str| o.kernel.iter().any(|x| x == k);
    let mut f = libc::MS_NOATIME;
    if !has("suid") {
        f |= libc::MS_NOSUID;
    }
    if !has("dev") {
        f |= libc::MS_NODEV;
    }
    if has("noexec") {
        f |= libc::MS_NOEXEC;
    }
    if has("sync") {
        f |= libc::MS_SYNCHRONOUS;
    }
    if has("dirsync") {
        f |= libc::MS_DIRSYNC;
    }
    if o.read_only {
        f |= libc::MS_RDONLY;
    }
    f
}

/// Mounts `fs` at `mountpoint` with `cluster` as its source: directly as root, else through
/// fuser (`fusermount3`) with `fallback` options.
pub fn mount<FS: Filesystem + Send + 'static>(
    fs: FS,
    mountpoint: &Path,
    cluster: &str,
    o: &MountOptions,
    allow_other: bool,
    fallback: &[MountOption],
) -> std::io::Result<Mounted> {
    if !nix::unistd::geteuid().is_root() {
        return fuser::spawn_mount2(fs, mountpoint, fallback).map(|session| Mounted {
            session,
            owned_by_fuser: true,
        });
    }
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let root_mode = std::fs::metadata(mountpoint)?.mode();
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let source = CString::new(cluster).map_err(invalid)?;
    let target = CString::new(mountpoint.as_os_str().as_encoded_bytes()).map_err(invalid)?;
    let fstype = CString::new(FS_TYPE).map_err(invalid)?;
    let data = CString::new(data(dev.as_raw_fd(), root_mode, allow_other)).map_err(invalid)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags(o),
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    match Session::from_fd(fs, dev, acl).spawn() {
        Ok(session) => Ok(Mounted {
            session,
            owned_by_fuser: false,
        }),
        Err(e) => {
            // Do not leave a mount nobody serves.
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            Err(e)
        }
    }
}

/// Changes the flags of the Cairn mount at `mountpoint` in place (`mount -o remount,ro`): the
/// kernel enforces `ro` itself, so the mount process needs no word of it.
pub fn remount(mountpoint: &Path, o: &MountOptions) -> std::io::Result<()> {
    let target = CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `target` is a valid NUL-terminated string; the other pointers may be null for a
    // remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags(o),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_follow_the_options() {
        let mut o = MountOptions::default();
        let f = flags(&o);
        assert_eq!(
            f & (libc::MS_NOSUID | libc::MS_NODEV),
            libc::MS_NOSUID | libc::MS_NODEV
        );
        assert_eq!(f & libc::MS_RDONLY, 0);
        o.read_only = true;
        o.kernel = vec!["suid".into(), "noexec".into()];
        let f = flags(&o);
        assert_ne!(f & libc::MS_RDONLY, 0);
        assert_ne!(f & libc::MS_NOEXEC, 0);
        assert_eq!(f & libc::MS_NOSUID, 0);
        let d = data(7, libc::S_IFDIR | 0o755, true);
        assert!(d.starts_with("fd=7,rootmode=40000,"), "{d}");
        assert!(d.ends_with(",default_permissions,allow_other"), "{d}");
    }
}
