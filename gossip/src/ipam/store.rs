//! Persistence of a node's IPAM state: a JSON snapshot written atomically on every change of
//! ownership, plus an append-only journal of single allocations and releases between
//! snapshots (so an allocation costs one small append, not a rewrite of the whole table).
//!
//! Durability, and what each kind of crash can do:
//! * Snapshots (ownership: what this node gave away or took) are fsynced, and the directory
//!   after the rename, before anyone is told: a lost snapshot could make this node reuse
//!   space it gave away.
//! * Each allocation or release is one `write(2)` of one journal line, to the journal kept
//!   open in append mode, before it is answered (the core hands the lines out with
//!   `Ipam::poll_persist`; the daemon answers once they are written). From then on the line is in the
//!   kernel: a crash or `kill -9` of the daemon loses nothing (no user-space buffer), and the
//!   same container gets the same address back after the restart.
//! * Journal lines are not fsynced (a disk flush per container would cap allocations at the
//!   disk's flush rate). A power loss or kernel crash can therefore lose journal lines written
//!   since the last snapshot, or leave them damaged (zeros, a hole) at any place. That reuses
//!   no address in use: the containers those lines describe did not survive the machine
//!   going down. The snapshot records the boot it was written in (Linux's `boot_id`; the
//!   journal that extends it is written in the same boot, since every start writes a new
//!   snapshot). A journal damaged in the middle is cut at the damage, with a warning, only if
//!   it was written in an earlier boot; within the same boot only a torn last line (an append
//!   the daemon died in: never returned) is dropped, and any other damage is an error, since
//!   no crash of the daemon can cause it.
//! * The journal's header names the snapshot generation it extends: a journal left over from
//!   an older snapshot (a crash between the snapshot's rename and emptying the journal) is
//!   ignored, its entries are all in the snapshot.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::error::{Error, Result};
use super::statement::Piece;

pub const STATE_FORMAT: u32 = 1;

/// Everything a node must remember across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedState {
    pub format: u32,
    /// The node this state belongs to (base64 node id).
    pub node: String,
    /// The adopted genesis, in its wire encoding (hex).
    pub genesis: Option<String>,
    /// Bumped at every start: the high half of the record sequence number.
    pub epoch: u32,
    pub status: PersistedStatus,
    pub owned: Vec<Piece>,
    /// Container id -> offset in the range.
    pub allocations: BTreeMap<String, u32>,
    /// Unacknowledged transfers made by this node (wire encoding, hex).
    pub outgoing: Vec<String>,
    /// Next transfer sequence number per receiver (base64 node id).
    pub next_seq: BTreeMap<String, u64>,
    /// Transfers applied, per giver: every seq <= floor, and those in `above`.
    pub accepted: BTreeMap<String, Accepted>,
    /// Reclaims of forgotten nodes (wire encoding with `by`, hex).
    pub tombstones: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PersistedStatus {
    #[default]
    Active,
    Left,
    Forgotten {
        by: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub floor: u64,
    pub above: BTreeSet<u64>,
}

impl Accepted {
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.contains(&seq)
    }

    pub fn insert(&mut self, seq: u64) {
        self.above.insert(seq);
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
    }
}

/// One entry of the allocation journal. Borrowed when written (an allocation costs no copy
/// of the container id), owned when loaded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum JournalOp<'a> {
    Allocate {
        container: Cow<'a, str>,
        offset: u32,
    },
    Release {
        container: Cow<'a, str>,
    },
}

impl JournalOp<'_> {
    pub fn into_owned(self) -> JournalOp<'static> {
        match self {
            JournalOp::Allocate { container, offset } => JournalOp::Allocate {
                container: Cow::Owned(container.into_owned()),
                offset,
            },
            JournalOp::Release { container } => JournalOp::Release {
                container: Cow::Owned(container.into_owned()),
            },
        }
    }
}

/// What the IPAM core asks its driver to persist ([`crate::ipam::Ipam::poll_persist`]).
/// The driver writes it (a [`Store::write`], off the async runtime's workers), then tells
/// the core [`crate::ipam::Ipam::persisted`] with its `version`; until then the core holds
/// back every output that depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    /// Everything the core changed up to this version is in it (with what came before).
    pub version: u64,
    pub op: PersistOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// Ownership changed: replace the snapshot, durably (it supersedes the journal).
    Snapshot(Box<PersistedState>),
    /// Allocations and releases since the last snapshot or batch, in order.
    Journal(Vec<JournalOp<'static>>),
}

/// Where a node keeps its IPAM state: the driver loads it for [`crate::ipam::Ipam::open`]
/// and writes what the core asks for ([`Store::write`]).
pub trait Store {
    /// The last snapshot and the journal written after it, or `None` for a fresh node.
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp<'static>>)>>;
    /// Replace the snapshot atomically and durably, and empty the journal.
    fn save(&mut self, state: &PersistedState) -> Result<()>;
    /// Append one allocation or release.
    fn append(&mut self, op: &JournalOp<'_>) -> Result<()>;
    /// Carry out one [`Persist`] of the core.
    fn write(&mut self, persist: &Persist) -> Result<()> {
        match &persist.op {
            PersistOp::Snapshot(state) => self.save(state),
            PersistOp::Journal(ops) => ops.iter().try_for_each(|op| self.append(op)),
        }
    }
}

/// A store in memory, for tests and the simulator. Clones share the same contents, so a
/// simulated node can "crash" (drop its core) and restart from what it had persisted.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    snapshot: Option<String>,
    journal: Vec<JournalOp<'static>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A poisoned lock only means another test thread panicked; the data is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp<'static>>)>> {
        let inner = self.inner();
        match &inner.snapshot {
            None => Ok(None),
            Some(json) => {
                let state = serde_json::from_str(json).map_err(|e| Error::State {
                    path: "<memory>".into(),
                    reason: e.to_string(),
                })?;
                Ok(Some((state, inner.journal.clone())))
            }
        }
    }

    fn save(&mut self, state: &PersistedState) -> Result<()> {
        let json = serde_json::to_string(state).map_err(|e| Error::State {
            path: "<memory>".into(),
            reason: e.to_string(),
        })?;
        let mut inner = self.inner();
        inner.snapshot = Some(json);
        inner.journal.clear();
        Ok(())
    }

    fn append(&mut self, op: &JournalOp<'_>) -> Result<()> {
        self.inner().journal.push(op.clone().into_owned());
        Ok(())
    }
}

/// A store in the node's state directory: `ipam.json` (the snapshot) and `ipam.journal`.
///
/// The journal starts with a header line naming the snapshot it extends (its generation) and
/// the boot it was written in; then one JSON line per allocation or release, each written by
/// one `write(2)` to the file kept open in append mode, from a reused buffer.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    snapshot_path: PathBuf,
    journal_path: PathBuf,
    journal: Option<File>,
    /// Generation of the snapshot on disk; the journal's header repeats it.
    generation: u64,
    boot_id: String,
    line: Vec<u8>,
}

/// The first line of the journal.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct JournalHeader {
    generation: u64,
}

/// The snapshot file: the core's state plus the store's generation counter and the boot it
/// was written in (the journal that extends it is written in the same boot: every start of
/// the daemon writes a new snapshot).
#[derive(serde::Serialize)]
struct SnapshotOut<'a> {
    generation: u64,
    boot: &'a str,
    #[serde(flatten)]
    state: &'a PersistedState,
}

#[derive(serde::Deserialize)]
struct SnapshotIn {
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    boot: String,
    #[serde(flatten)]
    state: PersistedState,
}

impl FileStore {
    pub const SNAPSHOT: &'static str = "ipam.json";
    pub const JOURNAL: &'static str = "ipam.journal";
    /// Where Linux names the running boot (a random id, new at every boot).
    const BOOT_ID: &'static str = "/proc/sys/kernel/random/boot_id";

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let boot_id = fs::read_to_string(Self::BOOT_ID)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self::with_boot_id(dir, boot_id)
    }

    /// A store that takes `boot_id` as the id of the running boot (tests simulate a reboot
    /// with it). An empty id means "unknown": every journal counts as written in this boot.
    pub fn with_boot_id(dir: impl Into<PathBuf>, boot_id: impl Into<String>) -> Self {
        let dir = dir.into();
        Self {
            snapshot_path: dir.join(Self::SNAPSHOT),
            journal_path: dir.join(Self::JOURNAL),
            dir,
            journal: None,
            generation: 0,
            boot_id: boot_id.into(),
            line: Vec::with_capacity(256),
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn state_error(path: &Path, reason: impl Into<String>) -> Error {
        Error::State {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The journal's entries that extend the snapshot of `generation`, written in `boot`.
    fn read_journal(&self, generation: u64, boot: &str) -> Result<Vec<JournalOp<'static>>> {
        let path = &self.journal_path;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(path)(e)),
        };
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // A file that ends with a newline splits into a last, empty piece: not a line.
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let count = lines.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut lines = lines.into_iter();
        let header = lines
            .next()
            .and_then(|l| serde_json::from_slice::<JournalHeader>(l).ok());
        let mut ops = Vec::new();
        let damaged_at = match header {
            Some(h) if h.generation != generation => {
                if h.generation < generation {
                    // The snapshot was replaced but the old journal not yet emptied: its
                    // entries are all in the snapshot.
                    return Ok(Vec::new());
                }
                return Err(Self::state_error(
                    path,
                    format!(
                        "journal extends snapshot generation {}, but the snapshot is generation {generation}",
                        h.generation
                    ),
                ));
            }
            Some(_) => {
                let mut damaged = None;
                for (i, line) in lines.enumerate() {
                    match serde_json::from_slice::<JournalOp<'_>>(line) {
                        Ok(op) => ops.push(op.into_owned()),
                        Err(e) => {
                            damaged = Some((i + 2, e.to_string()));
                            break;
                        }
                    }
                }
                damaged
            }
            None => Some((1, "not a journal header".to_owned())),
        };
        let Some((line, reason)) = damaged_at else {
            return Ok(ops);
        };
        if line == count {
            // A torn last line is an append the daemon died in (or the header of a journal
            // it was starting): `allocate` never returned that address, so dropping it is safe.
            return Ok(ops);
        }
        if !boot.is_empty() && !self.boot_id.is_empty() && boot != self.boot_id {
            // Written in an earlier boot and damaged: the machine went down before the page
            // cache reached the disk. The containers those lines describe died with it.
            warn!(
                path = %path.display(),
                line,
                "journal damaged by a power loss or kernel crash: dropping it from here on (the containers it describes did not survive the reboot)"
            );
            return Ok(ops);
        }
        Err(Self::state_error(path, format!("line {line}: {reason}")))
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp<'static>>)>> {
        let snap = &self.snapshot_path;
        let bytes = match fs::read(snap) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(snap)(e)),
        };
        let file: SnapshotIn =
            serde_json::from_slice(&bytes).map_err(|e| Self::state_error(snap, e.to_string()))?;
        if file.state.format != STATE_FORMAT {
            return Err(Self::state_error(
                snap,
                format!("unknown format {}", file.state.format),
            ));
        }
        let ops = self.read_journal(file.generation, &file.boot)?;
        self.generation = file.generation;
        Ok(Some((file.state, ops)))
    }

    fn save(&mut self, state: &PersistedState) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let generation = self.generation + 1;
        let tmp = self.dir.join("ipam.json.tmp");
        let json = serde_json::to_vec(&SnapshotOut {
            generation,
            boot: &self.boot_id,
            state,
        })
        .map_err(|e| Self::state_error(&self.snapshot_path, e.to_string()))?;
        {
            let mut f = File::create(&tmp).map_err(Self::io(&tmp))?;
            f.write_all(&json).map_err(Self::io(&tmp))?;
            f.sync_all().map_err(Self::io(&tmp))?;
        }
        fs::rename(&tmp, &self.snapshot_path).map_err(Self::io(&self.snapshot_path))?;
        if let Ok(dir) = File::open(&self.dir) {
            // Make the rename itself durable; failure here only weakens power-loss safety.
            let _ = dir.sync_all();
        }
        self.generation = generation;
        // The snapshot holds every allocation now: start a fresh journal that says so. Should
        // we die before the header is written, the old journal (an older generation) is
        // ignored at load.
        self.journal = None;
        let path = &self.journal_path;
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(Self::io(path))?;
        self.line.clear();
        serde_json::to_writer(&mut self.line, &JournalHeader { generation })
            .map_err(|e| Self::state_error(path, e.to_string()))?;
        self.line.push(b'\n');
        file.write_all(&self.line).map_err(Self::io(path))?;
        // Appends go to the end whatever the offset: reopen in append mode.
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(Self::io(path))?;
        self.journal = Some(file);
        Ok(())
    }

    fn append(&mut self, op: &JournalOp<'_>) -> Result<()> {
        let path = &self.journal_path;
        let Some(file) = self.journal.as_mut() else {
            return Err(Self::state_error(path, "journal not open: save first"));
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, op)
            .map_err(|e| Self::state_error(path, e.to_string()))?;
        self.line.push(b'\n');
        // One write: once it returns the line is in the kernel, and survives our death.
        file.write_all(&self.line).map_err(Self::io(path))
    }
}
