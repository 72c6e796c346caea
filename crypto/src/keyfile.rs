//! Files that hold secrets: read only those nobody else can access, and publish new ones
//! atomically without ever replacing an existing file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

/// Mode of every file that holds a secret.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of the state directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Permission bits that give group or others any access.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Whether `read_private` opens a symbolic link. Key files in the state directory must be
/// regular files; a secret file may be a link (Kubernetes mounts secrets through links).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Symlinks {
    Refuse,
    Follow,
}

/// Read a small secret text file. Refuses a file that is not a regular file, that group or
/// others may access, that is larger than `max_len` bytes, or that is not UTF-8. The error
/// names the file and the problem, never the content.
pub(crate) fn read_private(
    path: &Path,
    max_len: u64,
    symlinks: Symlinks,
) -> Result<Zeroizing<String>> {
    let mut flags = libc::O_NONBLOCK; // a FIFO planted in place of the file must not hang us
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) && symlinks == Symlinks::Refuse {
                file_error(path, "is a symbolic link; it must be a regular file")
            } else {
                io_error(path, source)
            }
        })?;
    // Check what was opened rather than the path, so a swap between check and read can't fool us.
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(file_error(path, "is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(file_error(
            path,
            format!(
                "has mode {mode:04o}, which lets group or others access it; \
                 it must be readable by its owner only (chmod 600)"
            ),
        ));
    }
    if meta.len() > max_len {
        return Err(file_error(
            path,
            format!(
                "is {} bytes, too large to be a valid file of its kind",
                meta.len()
            ),
        ));
    }
    // Capacity for the whole file up front: a reallocation would leave an unzeroized copy.
    let mut bytes = Zeroizing::new(Vec::with_capacity(max_len as usize + 1));
    (&mut file)
        .take(max_len + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > max_len {
        return Err(file_error(
            path,
            "grew while being read; too large to be a valid file of its kind",
        ));
    }
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(err) => {
            err.into_bytes().zeroize();
            Err(file_error(path, "is not UTF-8 text"))
        }
    }
}

/// Write `contents` to a new file at `path` with mode 0600, atomically: a temporary file in the
/// same directory is written and synced, then linked into place, then the directory is synced.
/// Linking (unlike rename) fails if `path` exists, so an existing file is never replaced, not
/// even by a concurrent writer; that case returns [`Error::AlreadyExists`].
pub(crate) fn write_new_private(path: &Path, contents: &[u8]) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let dir = parent_dir(path);
    let Some(name) = path.file_name() else {
        return Err(file_error(path, "is not a file name"));
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        OsRng.next_u64()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, e))?;
    let published = (|| {
        // The umask can only clear bits; set the mode exactly anyway.
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(|e| io_error(&tmp, e))?;
        file.write_all(contents).map_err(|e| io_error(&tmp, e))?;
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => io_error(path, e),
        })
    })();
    // Linked or not, the temporary name goes away.
    let removed = fs::remove_file(&tmp).map_err(|e| io_error(&tmp, e));
    published?;
    removed?;
    sync_dir(&dir)
}

/// Create `dir` (and missing parents) with mode 0700 if it does not exist, then check it.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(dir)
                .map_err(|e| io_error(dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(&parent_dir_of(parent))?;
            }
        }
        Err(e) => return Err(io_error(dir, e)),
    }
    check_private_dir(dir)
}

/// Refuse a directory that group or others may access: the keys inside would be exposed to
/// listing, or replaceable by anyone who can write there.
pub(crate) fn check_private_dir(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|e| io_error(dir, e))?;
    if !meta.is_dir() {
        return Err(file_error(dir, "is not a directory"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(file_error(
            dir,
            format!(
                "state directory has mode {mode:04o}, which lets group or others access it; \
                 it must be accessible by its owner only (chmod 700)"
            ),
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn parent_dir(path: &Path) -> PathBuf {
    parent_dir_of(path.parent().unwrap_or(Path::new(".")))
}

fn parent_dir_of(parent: &Path) -> PathBuf {
    if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn write_new_creates_a_0600_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_new_private(&path, b"hello\n").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"hello\n");
        assert_eq!(mode_of(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    }

    #[test]
    fn write_new_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        fs::write(&path, b"original").expect("write");
        let err = write_new_private(&path, b"new").expect_err("must refuse");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&path).expect("read"), b"original");
        // Not even a dangling symlink is replaced.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).expect("symlink");
        assert!(matches!(
            write_new_private(&link, b"x"),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn read_private_refuses_open_modes_and_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        fs::write(&path, b"content").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_private(&path, 100, Symlinks::Refuse).expect_err("open mode");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(!msg.contains("content"), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_private(&path, 100, Symlinks::Refuse)
                .expect("private")
                .as_str(),
            "content"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(
            read_private(&path, 100, Symlinks::Refuse)
                .expect("read-only")
                .as_str(),
            "content"
        );
    }

    #[test]
    fn read_private_refuses_large_binary_symlinked_and_special_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        fs::write(&big, vec![b'a'; 101]).expect("write");
        fs::set_permissions(&big, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(read_private(&big, 100, Symlinks::Refuse)
            .expect_err("big")
            .to_string()
            .contains("too large"));

        let binary = dir.path().join("binary");
        fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(read_private(&binary, 100, Symlinks::Refuse)
            .expect_err("binary")
            .to_string()
            .contains("UTF-8"));

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&binary, &link).expect("symlink");
        let err = read_private(&link, 100, Symlinks::Refuse).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Followed when allowed, and then the target is checked.
        assert!(read_private(&link, 100, Symlinks::Follow)
            .expect_err("binary")
            .to_string()
            .contains("UTF-8"));

        let err = read_private(dir.path(), 100, Symlinks::Refuse).expect_err("directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn private_dir_is_created_0700_and_open_dirs_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b/state");
        create_private_dir(&dir).expect("create");
        assert_eq!(mode_of(&dir), 0o700);
        create_private_dir(&dir).expect("exists and private");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = create_private_dir(&dir).expect_err("open dir");
        assert!(err.to_string().contains("0755"), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        assert_eq!(
            mode_of(&dir),
            0o755,
            "a refused directory is left as it was"
        );
    }
}
