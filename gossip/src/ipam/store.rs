//! Persistence of a node's IPAM state: a JSON snapshot written atomically on every change of
//! ownership, plus an append-only journal of single allocations and releases between
//! snapshots (so an allocation costs one small append, not a rewrite of the whole table).
//!
//! Durability: snapshots (ownership: what this node gave away or took) are fsynced before
//! anyone is told, because a lost snapshot could make this node reuse space it gave away.
//! Journal lines reach the kernel before `allocate` returns but are not fsynced: they survive
//! a crash of the daemon, and after a power loss the containers they describe are gone too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// One line of the allocation journal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum JournalOp {
    Allocate { container: String, offset: u32 },
    Release { container: String },
}

/// Where the IPAM core keeps its state. Calls are synchronous: the core only tells others
/// about a change after `save` returned.
pub trait Store {
    /// The last snapshot and the journal written after it, or `None` for a fresh node.
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp>)>>;
    /// Replace the snapshot atomically and durably, and empty the journal.
    fn save(&mut self, state: &PersistedState) -> Result<()>;
    /// Append one allocation or release.
    fn append(&mut self, op: &JournalOp) -> Result<()>;
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
    journal: Vec<JournalOp>,
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
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp>)>> {
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

    fn append(&mut self, op: &JournalOp) -> Result<()> {
        self.inner().journal.push(op.clone());
        Ok(())
    }
}

/// A store in the node's state directory: `ipam.json` and `ipam.journal`.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    journal: Option<File>,
}

impl FileStore {
    pub const SNAPSHOT: &'static str = "ipam.json";
    pub const JOURNAL: &'static str = "ipam.journal";

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            journal: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn journal(&mut self) -> Result<&mut File> {
        if self.journal.is_none() {
            let path = self.path(Self::JOURNAL);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(Self::io(&path))?;
            self.journal = Some(file);
        }
        self.journal.as_mut().ok_or_else(|| Error::State {
            path: "journal".into(),
            reason: "not open".into(),
        })
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<(PersistedState, Vec<JournalOp>)>> {
        let snap = self.path(Self::SNAPSHOT);
        let text = match fs::read_to_string(&snap) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io {
                    path: snap,
                    source: e,
                })
            }
        };
        let state: PersistedState = serde_json::from_str(&text).map_err(|e| Error::State {
            path: snap.clone(),
            reason: e.to_string(),
        })?;
        if state.format != STATE_FORMAT {
            return Err(Error::State {
                path: snap,
                reason: format!("unknown format {}", state.format),
            });
        }
        let jpath = self.path(Self::JOURNAL);
        let mut ops = Vec::new();
        match File::open(&jpath) {
            Ok(file) => {
                let lines: Vec<String> = BufReader::new(file)
                    .lines()
                    .collect::<std::io::Result<_>>()
                    .map_err(Self::io(&jpath))?;
                let last = lines.len().saturating_sub(1);
                for (i, line) in lines.iter().enumerate() {
                    match serde_json::from_str::<JournalOp>(line) {
                        Ok(op) => ops.push(op),
                        // A torn last line is an append the daemon died in: `allocate` never
                        // returned that address, so dropping it is safe.
                        Err(_) if i == last => {}
                        Err(e) => {
                            return Err(Error::State {
                                path: jpath,
                                reason: format!("line {}: {e}", i + 1),
                            });
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    path: jpath,
                    source: e,
                })
            }
        }
        Ok(Some((state, ops)))
    }

    fn save(&mut self, state: &PersistedState) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let snap = self.path(Self::SNAPSHOT);
        let tmp = self.path("ipam.json.tmp");
        let json = serde_json::to_vec(state).map_err(|e| Error::State {
            path: snap.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = File::create(&tmp).map_err(Self::io(&tmp))?;
            f.write_all(&json).map_err(Self::io(&tmp))?;
            f.sync_all().map_err(Self::io(&tmp))?;
        }
        fs::rename(&tmp, &snap).map_err(Self::io(&snap))?;
        if let Ok(dir) = File::open(&self.dir) {
            // Make the rename itself durable; failure here only weakens power-loss safety.
            let _ = dir.sync_all();
        }
        // The snapshot holds every allocation now: start a fresh journal.
        self.journal = None;
        let jpath = self.path(Self::JOURNAL);
        File::create(&jpath).map_err(Self::io(&jpath))?;
        Ok(())
    }

    fn append(&mut self, op: &JournalOp) -> Result<()> {
        let mut line = serde_json::to_vec(op).map_err(|e| Error::State {
            path: Self::JOURNAL.into(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let jpath = self.path(Self::JOURNAL);
        self.journal()?.write_all(&line).map_err(Self::io(&jpath))
    }
}
