//! State shared by a test bed and the processes and captures it hands out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Weak};

use tempfile::TempDir;

use crate::error::{Error, Result};
use crate::proc::ChildSlot;

#[derive(Debug)]
pub(crate) struct Shared {
    dir: TempDir,
    files: AtomicU32,
    procs: Mutex<Vec<Weak<Mutex<ChildSlot>>>>,
}

impl Shared {
    pub(crate) fn new(prefix: &str) -> Result<Shared> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-testbed-{prefix}-"))
            .tempdir()
            .map_err(|e| Error::io("creating the test bed's temporary directory", e))?;
        Ok(Shared {
            dir,
            files: AtomicU32::new(0),
            procs: Mutex::new(Vec::new()),
        })
    }

    /// A fresh path in the temporary directory.
    pub(crate) fn path(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{stem}-{n}.{ext}"))
    }

    /// A number unique within this test bed.
    pub(crate) fn next_id(&self) -> u32 {
        self.files.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn output_paths(&self, stem: &str) -> (PathBuf, PathBuf) {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        (
            self.dir.path().join(format!("{stem}-{n}.stdout")),
            self.dir.path().join(format!("{stem}-{n}.stderr")),
        )
    }

    pub(crate) fn register(&self, slot: Weak<Mutex<ChildSlot>>) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs.retain(|w| w.strong_count() > 0);
        procs.push(slot);
    }

    pub(crate) fn take_procs(&self) -> Vec<Weak<Mutex<ChildSlot>>> {
        std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
