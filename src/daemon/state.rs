//! The record version persisted in the state directory, so that a restarted node publishes
//! a record newer than anything it published before (peers ignore records that are not).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// File in the state directory holding the last published record version, in decimal.
pub const VERSION_FILE: &str = "gossip.version";

#[derive(Debug)]
pub struct VersionFile {
    path: PathBuf,
    saved: u64,
}

impl VersionFile {
    /// Open the version file in `state_dir` (which must exist); missing means version 0.
    /// A damaged file is refused rather than guessed at.
    pub fn open(state_dir: &Path) -> anyhow::Result<VersionFile> {
        let path = state_dir.join(VERSION_FILE);
        let saved = match std::fs::read_to_string(&path) {
            Ok(text) if text.len() <= 32 => match text.trim().parse::<u64>() {
                Ok(v) => v,
                Err(_) => bail!(
                    "{}: not a record version; remove it to start over",
                    path.display()
                ),
            },
            Ok(_) => bail!("{}: too large to be a record version", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(VersionFile { path, saved })
    }

    /// The last saved version.
    pub fn saved(&self) -> u64 {
        self.saved
    }

    /// The version to start this run with: above the saved one and, so that a lost state
    /// file does not send us back in time, at least the wall clock in microseconds.
    pub fn next_start(&self) -> u64 {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64);
        self.saved.saturating_add(1).max(clock)
    }

    /// Save `version` (atomically: write a temporary file, sync, rename). No-op if unchanged.
    pub fn save(&mut self, version: u64) -> anyhow::Result<()> {
        if version == self.saved() {
            return Ok(());
        }
        write_atomically(&self.path, format!("{version}\n").as_bytes())?;
        self.saved = version;
        Ok(())
    }
}

/// Replace the file at `path` with `bytes`, mode 0600, so that a crash leaves the old file
/// or the new one, never a mix: write a temporary file beside it, sync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_survive_a_restart_and_only_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = VersionFile::open(dir.path()).expect("open");
        assert_eq!(f.saved(), 0);
        let start = f.next_start();
        assert!(start > 1_600_000_000_000_000, "not clock based: {start}");
        f.save(u64::MAX - 5).expect("save");
        let again = VersionFile::open(dir.path()).expect("reopen");
        assert_eq!(again.saved(), u64::MAX - 5);
        assert_eq!(again.next_start(), u64::MAX - 4);
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(VERSION_FILE), "twelve\n").expect("write");
        let err = VersionFile::open(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("not a record version"), "{err}");
    }
}
