//! Releases the daemon could not take when they happened (DEL while it was down), kept as
//! files in `STATE_DIR/cni-releases/` until it applies them. The daemon holds the address
//! until then, so it is not handed out again early.
//!
//! One file per attachment, `CONTAINERID@HEX(IFNAME).release`, holding the attachment as
//! JSON. The plugin writes them; the daemon applies and removes them at start and
//! periodically. Both take an exclusive `flock` on the directory around their work: an ADD
//! that takes back a pending release of its own attachment (the same id is attached again)
//! cannot race the daemon applying it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::env::AttachmentId;

/// The directory under the daemon's state directory.
pub const DIR: &str = "cni-releases";
const SUFFIX: &str = ".release";
/// A spool file is a few dozen bytes; anything much bigger is not ours.
const MAX_FILE_LEN: u64 = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    container: String,
    ifname: String,
}

/// The spool of one state directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The directory's lock, held until dropped.
#[derive(Debug)]
pub struct Locked {
    _lock: Flock<File>,
    dir: PathBuf,
}

impl Spool {
    pub fn new(state_dir: &Path) -> Spool {
        Spool {
            dir: state_dir.join(DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the lock; creates the directory (0700) if `create`. `None` if the directory
    /// does not exist and was not to be created: then nothing is pending.
    pub fn lock(&self, create: bool) -> io::Result<Option<Locked>> {
        self.lock_with(create, FlockArg::LockExclusive)
    }

    /// Like [`Spool::lock`] without waiting: `None` also when someone else holds it.
    pub fn try_lock(&self) -> io::Result<Option<Locked>> {
        match self.lock_with(false, FlockArg::LockExclusiveNonblock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            other => other,
        }
    }

    fn lock_with(&self, create: bool, how: FlockArg) -> io::Result<Option<Locked>> {
        if create {
            match fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let dir = match File::open(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let lock = Flock::lock(dir, how).map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(Some(Locked {
            _lock: lock,
            dir: self.dir.clone(),
        }))
    }
}

impl Locked {
    fn path(&self, id: &AttachmentId) -> PathBuf {
        let hex: String = id.ifname.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{}@{hex}{SUFFIX}", id.container_id))
    }

    /// Keeps a release of `id` (mode 0600, written whole or not at all).
    pub fn add(&self, id: &AttachmentId) -> io::Result<()> {
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(&Entry {
            container: id.container_id.clone(),
            ifname: id.ifname.clone(),
        })
        .map_err(io::Error::other)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&body).and_then(|()| file.sync_all())?;
        fs::rename(&tmp, &path)
    }

    /// Drops a pending release of `id`; true if there was one.
    pub fn take(&self, id: &AttachmentId) -> io::Result<bool> {
        match fs::remove_file(self.path(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every pending release. A file that does not hold one (damaged, foreign) is renamed to
    /// `*.invalid` and reported in the second list, so it is looked at once, not every time.
    pub fn pending(&self) -> io::Result<(Vec<AttachmentId>, Vec<PathBuf>)> {
        let mut found = Vec::new();
        let mut invalid = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !path.to_str().is_some_and(|p| p.ends_with(SUFFIX)) {
                continue;
            }
            match read_entry(&path) {
                Some(id) if self.path(&id) == path => found.push(id),
                _ => {
                    let aside = path.with_extension("invalid");
                    fs::rename(&path, &aside)?;
                    invalid.push(aside);
                }
            }
        }
        found.sort();
        Ok((found, invalid))
    }

    /// Removes the release of `id` once the daemon applied it.
    pub fn done(&self, id: &AttachmentId) -> io::Result<()> {
        self.take(id).map(drop)
    }
}

fn read_entry(path: &Path) -> Option<AttachmentId> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_LEN {
        return None;
    }
    let entry: Entry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    AttachmentId::new(&entry.container, &entry.ifname).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn releases_are_kept_taken_back_and_listed() {
        let state = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(state.path());
        assert!(
            spool.lock(false).expect("lock").is_none(),
            "no directory yet"
        );
        let a = AttachmentId::new("c1", "eth0").expect("id");
        let b = AttachmentId::new("c2", "net1").expect("id");
        {
            let locked = spool.lock(true).expect("lock").expect("created");
            locked.add(&a).expect("add");
            locked.add(&b).expect("add");
            locked.add(&b).expect("add twice is one release");
            assert!(spool.try_lock().expect("try").is_none(), "locked by us");
        }
        let mode = fs::metadata(spool.dir()).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let locked = spool.try_lock().expect("try").expect("free again");
        assert_eq!(
            locked.pending().expect("pending").0,
            vec![a.clone(), b.clone()]
        );
        assert!(locked.take(&a).expect("take"));
        assert!(!locked.take(&a).expect("take twice"));
        locked.done(&b).expect("done");
        assert!(locked.pending().expect("pending").0.is_empty());
        assert_eq!(
            fs::read_dir(spool.dir()).expect("dir").count(),
            0,
            "no file left"
        );
    }

    #[test]
    fn damaged_files_are_set_aside() {
        let state = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(state.path());
        let locked = spool.lock(true).expect("lock").expect("created");
        let ok = AttachmentId::new("c1", "eth0").expect("id");
        locked.add(&ok).expect("add");
        fs::write(spool.dir().join("junk.release"), b"{nope").expect("write");
        // Content naming another attachment than the file name: not trusted.
        fs::write(
            spool.dir().join("c9@65746830.release"),
            br#"{"container":"c8","ifname":"eth0"}"#,
        )
        .expect("write");
        fs::write(spool.dir().join("unrelated.txt"), b"x").expect("write");
        let (found, invalid) = locked.pending().expect("pending");
        assert_eq!(found, vec![ok]);
        assert_eq!(invalid.len(), 2);
        assert!(invalid
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "invalid")));
        assert_eq!(locked.pending().expect("again").1.len(), 0, "reported once");
    }
}
