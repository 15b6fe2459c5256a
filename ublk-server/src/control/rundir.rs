//! The run directory as an open directory: checked once to be the caller's
//! own (theirs, a real directory, writable by no one else), then every
//! state, lock and log file is opened relative to it with `O_NOFOLLOW`
//! and mode 0600. So a directory or a link another user planted, in a
//! shared runtime directory, is refused before anything is written, and
//! no file outside it is ever opened for writing.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::control::state::{run_dir, ControlError};

/// Every file rdm makes in its run directory.
const FILE_MODE: u32 = 0o600;

/// The caller's run directory, open and checked.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl RunDir {
    /// The run directory, made 0700 (with any missing parent) if it does
    /// not exist.
    pub fn create() -> Result<RunDir, ControlError> {
        let path = run_dir();
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
        {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(ControlError::Io { path, cause: e });
            }
            _ => {}
        }
        RunDir::open(path)
    }

    /// The run directory if it exists, for the verbs that only read.
    pub fn existing() -> Result<Option<RunDir>, ControlError> {
        match RunDir::open(run_dir()) {
            Err(ControlError::Io { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    fn open(path: PathBuf) -> Result<RunDir, ControlError> {
        let refused = |why: String| ControlError::UnsafeRunDir {
            path: path.clone(),
            why,
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&path, flags, Mode::empty()) {
            Ok(fd) => fd,
            // A link fails O_NOFOLLOW | O_DIRECTORY with either.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
                let why = if link {
                    "it is a symlink"
                } else {
                    "not a directory"
                };
                return Err(refused(why.into()));
            }
            Err(e) => {
                return Err(ControlError::Io {
                    path,
                    cause: e.into(),
                })
            }
        };
        // Checked on the open directory: what is checked is what is used.
        let st = rustix::fs::fstat(&fd).map_err(|e| ControlError::Io {
            path: path.clone(),
            cause: e.into(),
        })?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(refused(format!(
                "owned by uid {}, not by you (uid {me}); remove it, or use a runtime directory of your own (XDG_RUNTIME_DIR)",
                st.st_uid
            )));
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(refused(format!(
                "mode {mode:04o}: others can write in it, and so plant files where rdm writes; chmod 0700 it"
            )));
        }
        Ok(RunDir { path, fd })
    }

    /// The path of `file` in the directory, for messages and `bind`.
    pub fn join(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `file` with `flags` (`O_CREAT` makes it 0600), never through
    /// a symlink.
    pub fn open_file(&self, file: &str, flags: OFlags) -> Result<File, ControlError> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, file, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => Ok(File::from(fd)),
            Err(rustix::io::Errno::LOOP) => Err(ControlError::Untrusted {
                path: self.join(file),
                why: "a symlink (planted?): rdm writes only its own files",
            }),
            Err(e) => Err(ControlError::Io {
                path: self.join(file),
                cause: e.into(),
            }),
        }
    }

    /// Renames `from` to `to` within the directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), ControlError> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| ControlError::Io {
            path: self.join(to),
            cause: e.into(),
        })
    }

    /// Removes `file` (a link, not what it points to); a missing one is fine.
    pub fn remove(&self, file: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, file, AtFlags::empty());
    }

    /// Makes the directory's entries durable (after a rename).
    pub fn sync(&self) -> Result<(), ControlError> {
        rustix::fs::fsync(&self.fd).map_err(|e| ControlError::Io {
            path: self.path.clone(),
            cause: e.into(),
        })
    }
}

impl AsFd for RunDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn files_are_0600_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = RunDir::open(dir.path().to_path_buf()).unwrap();
        let f = d
            .open_file("a.log", OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)
            .unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, dir.path().join("b.log")).unwrap();
        let e = d
            .open_file("b.log", OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)
            .unwrap_err();
        assert!(matches!(e, ControlError::Untrusted { .. }), "{e}");
        assert!(!target.exists());
        // Nor is a run directory that is a link, or that others can write.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        let e = RunDir::open(dir.path().join("link")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = RunDir::open(open).unwrap_err();
        assert!(e.to_string().contains("others can write"), "{e}");
    }
}
