//! The `subdir=` mount option: a directory of the Cairn namespace mounted as the root of the
//! mount, like NFS exports and CephFS's `-r`/`subdir=`.
//!
//! [`Subdir`] is the path as the user gives it (`-o subdir=/projects/a`, `--subdir`, an fstab
//! line), checked when the options are parsed; [`Subdir::resolve`] turns it into the directory's
//! inode once the cluster is reached, before anything is mounted, so a missing path or a file
//! fails the mount with a message naming it. From then on the mount knows the directory only by
//! its inode (`fs::InoMap`): renaming it elsewhere in the namespace does not change what is
//! mounted.
use crate::meta::Meta;
use cairn_common::{ErrorKind, Kind, ROOT_INO};
use cairn_proto as pb;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use tonic::Status;

/// A directory of the Cairn namespace, relative to its root: names without `.`, `..` or empty
/// components. No names at all is the root itself (`subdir=/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subdir {
    names: Vec<String>,
}

/// Why a sub-directory cannot be mounted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubdirError {
    #[error("subdir {path:?}: {why}")]
    Invalid { path: String, why: String },
    #[error("subdir {subdir}: {missing} does not exist in the Cairn file system")]
    Missing { subdir: Subdir, missing: Subdir },
    #[error("subdir {subdir}: {path} is not a directory")]
    NotADirectory { subdir: Subdir, path: Subdir },
    #[error("subdir {subdir}: lookup of {path} failed: {message}")]
    Lookup {
        subdir: Subdir,
        path: Subdir,
        message: String,
    },
}

impl Subdir {
    /// Parses a path relative to the Cairn root. The leading `/` is optional and one trailing
    /// `/` is allowed; `/` alone is the root. Empty components (`a//b`), `.`, `..` and names
    /// Cairn refuses are errors: `..` could only climb out of the namespace or be a roundabout
    /// way of naming a directory, and a mount should be named plainly.
    pub fn parse(path: &str) -> Result<Subdir, SubdirError> {
        let invalid = |why: String| SubdirError::Invalid {
            path: path.to_owned(),
            why,
        };
        if path.is_empty() {
            return Err(invalid(
                "an empty path (use / for the whole file system)".into(),
            ));
        }
        if path == "/" {
            return Ok(Subdir::default());
        }
        let inner = path.strip_prefix('/').unwrap_or(path);
        let inner = inner.strip_suffix('/').unwrap_or(inner);
        let mut names = Vec::new();
        for name in inner.split('/') {
            match name {
                "" => return Err(invalid("empty path component (//)".into())),
                "." | ".." => {
                    return Err(invalid(format!(
                        "{name:?} is not allowed; name the directory from the root of the \
                         Cairn file system"
                    )))
                }
                _ => {}
            }
            cairn_common::name::validate_name(name.as_bytes())
                .map_err(|k| invalid(format!("bad name {name:?} ({k})")))?;
            names.push(name.to_owned());
        }
        Ok(Subdir { names })
    }

    /// Whether this is the root of the namespace (`subdir=/`).
    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }

    /// The first `n` names of the path.
    fn prefix(&self, n: usize) -> Subdir {
        Subdir {
            names: self.names[..n].to_vec(),
        }
    }

    /// The inode of this directory in the cluster, looked up name by name from the root.
    pub async fn resolve(&self, meta: &Meta) -> Result<u64, SubdirError> {
        self.resolve_with(|parent, name| async move { meta.lookup(parent, &name).await })
            .await
    }

    /// [`Subdir::resolve`] with `lookup(parent, name)` as the metadata call.
    async fn resolve_with<F, Fut>(&self, lookup: F) -> Result<u64, SubdirError>
    where
        F: Fn(u64, Vec<u8>) -> Fut,
        Fut: Future<Output = Result<pb::Attr, Status>>,
    {
        let mut ino = ROOT_INO;
        for (i, name) in self.names.iter().enumerate() {
            let here = self.prefix(i + 1);
            let attr = match lookup(ino, name.as_bytes().to_vec()).await {
                Ok(a) => a,
                Err(s) => {
                    return Err(match ErrorKind::from_status(&s) {
                        ErrorKind::NotFound | ErrorKind::Stale => SubdirError::Missing {
                            subdir: self.clone(),
                            missing: here,
                        },
                        ErrorKind::NotDir => SubdirError::NotADirectory {
                            subdir: self.clone(),
                            path: self.prefix(i),
                        },
                        _ => SubdirError::Lookup {
                            subdir: self.clone(),
                            path: here,
                            message: s.message().to_owned(),
                        },
                    })
                }
            };
            if Kind::from_wire(attr.kind) != Some(Kind::Directory) {
                return Err(SubdirError::NotADirectory {
                    subdir: self.clone(),
                    path: here,
                });
            }
            ino = attr.ino;
        }
        Ok(ino)
    }
}

/// The path from the root, as `/projects/a` (`/` for the root).
impl fmt::Display for Subdir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            return f.write_str("/");
        }
        for n in &self.names {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

impl FromStr for Subdir {
    type Err = SubdirError;

    fn from_str(s: &str) -> Result<Subdir, SubdirError> {
        Subdir::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::error::status;

    fn sub(s: &str) -> Subdir {
        Subdir::parse(s).unwrap()
    }

    #[test]
    fn paths_are_relative_to_the_root_with_an_optional_leading_slash() {
        assert_eq!(sub("/projects/a"), sub("projects/a"));
        assert_eq!(sub("/projects/a/"), sub("projects/a"));
        assert_eq!(sub("projects/a").to_string(), "/projects/a");
        assert_eq!(sub("ünï cødé").to_string(), "/ünï cødé");
        assert!(sub("/").is_root());
        assert_eq!(sub("/").to_string(), "/");
        assert!(!sub("a").is_root());
        assert_eq!("x/y".parse::<Subdir>(), Ok(sub("/x/y")));
    }

    #[test]
    fn dot_dot_and_empty_components_are_refused() {
        for bad in [
            "", "//", "a//b", "/a/../b", "..", "/..", "a/.", "./a", "/a//",
        ] {
            let e = Subdir::parse(bad).unwrap_err();
            assert!(
                matches!(&e, SubdirError::Invalid { path, .. } if path == bad),
                "{bad:?}: {e:?}"
            );
        }
        let e = Subdir::parse("/a/../b").unwrap_err().to_string();
        assert!(
            e.contains("\"/a/../b\"") && e.contains("\"..\" is not allowed"),
            "{e}"
        );
        let e = Subdir::parse(&format!("/{}", "x".repeat(256)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad name"), "{e}");
    }

    fn attr(ino: u64, kind: pb::FileKind) -> pb::Attr {
        pb::Attr {
            ino,
            kind: kind as i32,
            ..Default::default()
        }
    }

    /// `/projects` (2) → `/projects/a` (3) → `/projects/a/file` (4, a regular file); a lookup of
    /// `down` fails as an unreachable cluster does.
    async fn resolve(path: &str) -> Result<u64, SubdirError> {
        sub(path)
            .resolve_with(|parent, name| async move {
                match (parent, name.as_slice()) {
                    (1, b"projects") => Ok(attr(2, pb::FileKind::Directory)),
                    (2, b"a") => Ok(attr(3, pb::FileKind::Directory)),
                    (3, b"file") => Ok(attr(4, pb::FileKind::Regular)),
                    (_, b"down") => Err(Status::unavailable("connection refused")),
                    _ => Err(status(ErrorKind::NotFound, "no such entry")),
                }
            })
            .await
    }

    #[tokio::test]
    async fn resolving_walks_the_names_from_the_root() {
        assert_eq!(resolve("/").await, Ok(ROOT_INO));
        assert_eq!(resolve("/projects").await, Ok(2));
        assert_eq!(resolve("projects/a").await, Ok(3));
    }

    #[tokio::test]
    async fn a_missing_path_or_a_file_is_a_clear_error() {
        let e = resolve("/projects/zz/q").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "subdir /projects/zz/q: /projects/zz does not exist in the Cairn file system"
        );
        let e = resolve("/projects/a/file").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "subdir /projects/a/file: /projects/a/file is not a directory"
        );
        let e = resolve("/projects/a/file/x").await.unwrap_err();
        assert!(
            matches!(&e, SubdirError::NotADirectory { path, .. } if path.to_string() == "/projects/a/file"),
            "{e}"
        );
        let e = resolve("/projects/down").await.unwrap_err().to_string();
        assert!(
            e.starts_with("subdir /projects/down: lookup of /projects/down failed:"),
            "{e}"
        );
    }
}
