//! The members journal: every member record this node accepts, kept in the state directory
//! so that a restart begins with the view it had, not with nobody.
//!
//! Why: the gossip core relays the records of failed members, and the IPAM view is computed
//! from records. If every node that held the last record of a node that is down restarted
//! with an empty view, that record would exist nowhere, and live nodes would disagree about
//! that node's address space until it came back (the IPAM simulator found this). Serf keeps
//! a snapshot journal for the same reason (rejoining); here it also carries the records.
//!
//! Format (`members.journal`, mode 0600): a magic line, then frames appended by one
//! `write(2)` each, *before* the record is handed to the IPAM core, so a `kill -9` loses
//! nothing the node acted on:
//! * `1` u16-BE body length, body, 64-byte signature: a member's signed record (live);
//! * `2` 32-byte node id: that member is down (failed, stopped or left);
//! * `3` 32-byte node id: that member was forgotten (drop it);
//! * `4` 32-byte node id, u64-BE version, reason byte, 64-byte signature: that member left,
//!   in its own signed words (so a node that stopped shows as stopped, not failed).
//!
//! Reading stops at the first incomplete or unknown frame (a torn tail after a crash) and
//! the file is cut there; every record is verified again, so a damaged or planted record is
//! dropped, never trusted. The file is rewritten (compacted) from the live view when the
//! journal has grown to a few times the number of members ([`compaction_due`]), and after a
//! failed write (which may have left a partial frame that would garble every frame after it).
//!
//! What to write is the node's decision (`node::Node::poll_journal` yields [`JournalWrite`]s);
//! this module only does the file IO ([`MembersJournal::apply`]), driven by the daemon's loop,
//! which hands the result back to the node before the node lets the IPAM core act.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tracing::warn;
use weft_crypto::{NodeId, Signature};
use weft_gossip::{
    LeaveReason, MemberState, SignedLeave, SignedRecord, VerifiedRecord, MAX_BODY_LEN,
};

use super::state::write_atomically;

pub const JOURNAL_FILE: &str = "members.journal";
const MAGIC: &[u8] = b"weft members journal 1\n";
const RECORD: u8 = 1;
const DOWN: u8 = 2;
const GONE: u8 = 3;
const LEFT: u8 = 4;
const LEFT_LEN: usize = 32 + 8 + 1 + SIGNATURE_LEN;
const SIGNATURE_LEN: usize = 64;
/// Compact once this many writes beyond twice the members were appended.
const COMPACT_SLACK: usize = 256;
/// The most read back at start (a compacted journal of 10,000 members is ~12 MiB); what lies
/// beyond is treated like a torn tail.
const MAX_JOURNAL_LEN: u64 = 64 << 20;

/// What the journal says of a member besides its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Alive or suspect.
    Live,
    /// Failed.
    Down,
    /// Left (stopping or for good), in its own signed words.
    Left,
}

impl Liveness {
    pub fn of(state: MemberState) -> Self {
        match state {
            MemberState::Alive | MemberState::Suspect => Liveness::Live,
            MemberState::Dead => Liveness::Down,
            MemberState::Left => Liveness::Left,
        }
    }
}

/// A member as the journal describes it: read back at start, or written whole by a rewrite.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub record: Arc<VerifiedRecord>,
    pub live: bool,
    /// Its signed leave, if it left (not yet verified when read back:
    /// `Membership::restore_leaves` does).
    pub leave: Option<SignedLeave>,
}

/// One write to the journal, as the node decided it.
#[derive(Debug, Clone)]
pub enum JournalWrite {
    /// What changed about a member: its newer record (`None` when only its liveness
    /// changed), and whether it is live, down, or left (with its signed leave; a member that
    /// left without one is noted down).
    Member {
        id: NodeId,
        record: Option<Arc<VerifiedRecord>>,
        liveness: Liveness,
        leave: Option<SignedLeave>,
    },
    /// The member was forgotten: drop it.
    Gone(NodeId),
    /// Replace the whole file with exactly these members (compaction, or after a failed
    /// write).
    Rewrite(Vec<JournalEntry>),
}

/// Whether a journal that had `appended` writes since it was last written whole should be
/// rewritten from a view of `members` members.
pub fn compaction_due(appended: usize, members: usize) -> bool {
    appended > 2 * members + COMPACT_SLACK
}

#[derive(Debug)]
pub struct MembersJournal {
    path: PathBuf,
    file: File,
    /// A write failed: the file may end in a partial frame, and what follows it would be
    /// misread. Nothing more is appended until the caller rewrites the file whole.
    broken: bool,
}

impl MembersJournal {
    /// Open (or create) the journal in `state_dir` and read back what it holds: the latest
    /// verified record of each member and whether it was live.
    pub fn open(state_dir: &Path) -> anyhow::Result<(Self, Vec<JournalEntry>)> {
        let path = state_dir.join(JOURNAL_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(f) => {
                f.take(MAX_JOURNAL_LEN)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let parsed = parse(&bytes);
        if parsed.bad_records > 0 {
            warn!(
                dropped = parsed.bad_records,
                file = %path.display(),
                "members journal: records that do not verify were dropped"
            );
        }
        if parsed.valid_len < bytes.len() && !bytes.is_empty() {
            warn!(
                kept = parsed.valid_len,
                total = bytes.len(),
                file = %path.display(),
                "members journal: damaged or torn tail cut off"
            );
        }
        let restored: Vec<JournalEntry> = parsed.members.into_values().collect();
        let mut journal = Self {
            file: open_append(&path)?,
            path,
            broken: false,
        };
        // Start from a clean file holding exactly what was read: drops a torn tail and
        // superseded frames in one go.
        journal.rewrite(&restored)?;
        Ok((journal, restored))
    }

    /// Do one write the node decided on.
    pub fn apply(&mut self, write: &JournalWrite) -> anyhow::Result<()> {
        match write {
            JournalWrite::Member {
                id,
                record,
                liveness,
                leave,
            } => {
                match record {
                    Some(r) => self.record(r.signed(), *liveness == Liveness::Live)?,
                    None if *liveness == Liveness::Down => self.down(id)?,
                    None => {}
                }
                if *liveness == Liveness::Left {
                    match leave {
                        Some(leave) => self.left(leave)?,
                        None => self.down(id)?,
                    }
                }
                Ok(())
            }
            JournalWrite::Gone(id) => self.gone(id),
            JournalWrite::Rewrite(members) => self.rewrite(members),
        }
    }

    /// Note a member's (newer) record; `live` false also notes it down.
    fn record(&mut self, signed: &SignedRecord, live: bool) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(3 + signed.body().len() + SIGNATURE_LEN + 33);
        encode_record(&mut frame, signed);
        if !live {
            if let Ok((id, _)) = signed.peek() {
                frame.push(DOWN);
                frame.extend_from_slice(&id.0);
            }
        }
        self.append(&frame)
    }

    /// Note that a member is down (its record unchanged).
    fn down(&mut self, id: &NodeId) -> anyhow::Result<()> {
        let mut frame = vec![DOWN];
        frame.extend_from_slice(&id.0);
        self.append(&frame)
    }

    /// Note that a member left, with its signed leave.
    fn left(&mut self, leave: &SignedLeave) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(1 + LEFT_LEN);
        encode_leave(&mut frame, leave);
        self.append(&frame)
    }

    /// Note that a member was forgotten.
    fn gone(&mut self, id: &NodeId) -> anyhow::Result<()> {
        let mut frame = vec![GONE];
        frame.extend_from_slice(&id.0);
        self.append(&frame)
    }

    /// Replace the file with exactly `members` (atomically: temporary file, sync, rename).
    pub fn rewrite(&mut self, members: &[JournalEntry]) -> anyhow::Result<()> {
        let mut bytes = MAGIC.to_vec();
        for m in members {
            let signed = m.record.signed();
            encode_record(&mut bytes, signed);
            if !m.live {
                if let Ok((id, _)) = signed.peek() {
                    bytes.push(DOWN);
                    bytes.extend_from_slice(&id.0);
                }
            }
            if let Some(leave) = &m.leave {
                encode_leave(&mut bytes, leave);
            }
        }
        self.broken = true;
        write_atomically(&self.path, &bytes)?;
        self.file = open_append(&self.path)?;
        self.broken = false;
        Ok(())
    }

    fn append(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        if self.broken {
            anyhow::bail!(
                "{}: not appended to until it is rewritten after a failed write",
                self.path.display()
            );
        }
        if let Err(e) = self.file.write_all(frame) {
            self.broken = true;
            return Err(e).with_context(|| format!("appending to {}", self.path.display()));
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

fn encode_leave(out: &mut Vec<u8>, leave: &SignedLeave) {
    out.push(LEFT);
    out.extend_from_slice(&leave.node_id.0);
    out.extend_from_slice(&leave.version.to_be_bytes());
    out.push(leave.reason.to_byte());
    out.extend_from_slice(&leave.signature.0);
}

fn encode_record(out: &mut Vec<u8>, signed: &SignedRecord) {
    // Bodies are at most MAX_BODY_LEN (1 KiB) by construction of a SignedRecord we accepted.
    let len = u16::try_from(signed.body().len()).unwrap_or(u16::MAX);
    out.push(RECORD);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&signed.body()[..usize::from(len)]);
    out.extend_from_slice(&signed.signature().0);
}

#[derive(Debug, Default)]
struct Parsed {
    members: HashMap<NodeId, JournalEntry>,
    /// Bytes up to the end of the last complete, known frame.
    valid_len: usize,
    bad_records: usize,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return out;
    };
    out.valid_len = MAGIC.len();
    while let Some((&kind, tail)) = rest.split_first() {
        let consumed = match kind {
            RECORD => {
                let Some((len, tail)) = tail.split_first_chunk::<2>() else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes(*len));
                if len > MAX_BODY_LEN || tail.len() < len + SIGNATURE_LEN {
                    break;
                }
                let body = tail[..len].to_vec();
                let mut sig = [0u8; SIGNATURE_LEN];
                sig.copy_from_slice(&tail[len..len + SIGNATURE_LEN]);
                let signed = SignedRecord::from_parts(body, Signature(sig));
                match VerifiedRecord::verify(signed, None) {
                    Ok(v) => {
                        let id = *v.node_id();
                        let newer = out
                            .members
                            .get(&id)
                            .is_none_or(|r| r.record.version() <= v.version());
                        if newer {
                            out.members.insert(
                                id,
                                JournalEntry {
                                    record: Arc::new(v),
                                    live: true,
                                    leave: None,
                                },
                            );
                        }
                    }
                    Err(_) => out.bad_records += 1,
                }
                1 + 2 + len + SIGNATURE_LEN
            }
            DOWN | GONE => {
                let Some((id, _)) = tail.split_first_chunk::<32>() else {
                    break;
                };
                let id = NodeId(*id);
                if kind == DOWN {
                    if let Some(r) = out.members.get_mut(&id) {
                        r.live = false;
                    }
                } else {
                    out.members.remove(&id);
                }
                1 + 32
            }
            LEFT => {
                let Some((frame, _)) = tail.split_first_chunk::<LEFT_LEN>() else {
                    break;
                };
                let (id, rest) = frame.split_at(32);
                let (version, rest) = rest.split_at(8);
                let mut node = [0u8; 32];
                node.copy_from_slice(id);
                let mut v = [0u8; 8];
                v.copy_from_slice(version);
                let mut sig = [0u8; SIGNATURE_LEN];
                sig.copy_from_slice(&rest[1..]);
                let Ok(reason) = LeaveReason::from_byte(rest[0]) else {
                    break;
                };
                if let Some(r) = out.members.get_mut(&NodeId(node)) {
                    r.live = false;
                    r.leave = Some(SignedLeave {
                        node_id: NodeId(node),
                        version: u64::from_be_bytes(v),
                        reason,
                        signature: Signature(sig),
                    });
                }
                1 + LEFT_LEN
            }
            _ => break,
        };
        rest = &rest[consumed..];
        out.valid_len += consumed;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use weft_crypto::{IdentityKey, WgPublicKey};
    use weft_gossip::NodeRecord;

    use super::*;

    fn signed(seed: u8, version: u64) -> (NodeId, SignedRecord) {
        let key = IdentityKey::from_seed(&[seed; 32]);
        let record = NodeRecord::new(
            key.node_id(),
            version,
            format!("node{seed}"),
            WgPublicKey([seed; 32]),
            "192.0.2.1:6783".parse().expect("an address"),
        );
        (key.node_id(), record.sign(&key).expect("signs"))
    }

    fn by_id(restored: &[JournalEntry]) -> HashMap<NodeId, (u64, bool)> {
        restored
            .iter()
            .map(|r| (*r.record.node_id(), (r.record.version(), r.live)))
            .collect()
    }

    #[test]
    fn a_reopened_journal_gives_back_the_latest_record_and_liveness_of_each_member() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, a1) = signed(1, 1);
        let (_, a2) = signed(1, 2);
        let (b, b1) = signed(2, 7);
        let (c, c1) = signed(3, 3);
        {
            let (mut j, restored) = MembersJournal::open(dir.path()).expect("opens");
            assert!(restored.is_empty());
            j.record(&a1, true).expect("append");
            j.record(&b1, true).expect("append");
            j.record(&a2, true).expect("append");
            j.record(&a1, true).expect("an older record arriving late");
            j.down(&b).expect("append");
            j.record(&c1, true).expect("append");
            j.gone(&c).expect("append");
        }
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        let got = by_id(&restored);
        assert_eq!(got.len(), 2, "the forgotten member is dropped: {got:?}");
        assert_eq!(got[&a], (2, true));
        assert_eq!(got[&b], (7, false));
        let mode = std::fs::metadata(dir.path().join(JOURNAL_FILE))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_signed_leave_comes_back_until_a_newer_record_supersedes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = IdentityKey::from_seed(&[1; 32]);
        let (a, a1) = signed(1, 4);
        let (_, a2) = signed(1, 9);
        let leave = SignedLeave::sign(&key, 4, LeaveReason::Stopping);
        {
            let (mut j, _) = MembersJournal::open(dir.path()).expect("opens");
            j.record(&a1, false).expect("append");
            j.left(&leave).expect("append");
        }
        let (mut j, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(restored.len(), 1);
        assert!(!restored[0].live);
        assert_eq!(
            restored[0].leave.as_ref(),
            Some(&leave),
            "kept across compaction too"
        );
        // Back with a newer record: live again, the leave is history.
        j.record(&a2, true).expect("append");
        drop(j);
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(by_id(&restored), HashMap::from([(a, (9, true))]));
        assert_eq!(restored[0].leave, None);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_frames_before_it_are_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, a1) = signed(1, 5);
        let (_, b1) = signed(2, 6);
        {
            let (mut j, _) = MembersJournal::open(dir.path()).expect("opens");
            j.record(&a1, true).expect("append");
            j.record(&b1, true).expect("append");
        }
        let path = dir.path().join(JOURNAL_FILE);
        let bytes = std::fs::read(&path).expect("reads");
        // A crash in the middle of the second frame.
        std::fs::write(&path, &bytes[..bytes.len() - 20]).expect("writes");
        let (mut j, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(by_id(&restored), HashMap::from([(a, (5, true))]));
        // Appending after the cut works and is read back.
        j.down(&a).expect("append");
        drop(j);
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(by_id(&restored), HashMap::from([(a, (5, false))]));
    }

    #[test]
    fn records_that_do_not_verify_are_dropped_and_garbage_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, a1) = signed(1, 5);
        let (_, b1) = signed(2, 6);
        {
            let (mut j, _) = MembersJournal::open(dir.path()).expect("opens");
            j.record(&a1, true).expect("append");
            // b's body under a's signature: a planted record.
            let forged = SignedRecord::from_parts(b1.body().to_vec(), *a1.signature());
            j.record(&forged, true).expect("append");
        }
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(by_id(&restored), HashMap::from([(a, (5, true))]));

        // A file that is not a journal at all is started over, not misread.
        let path = dir.path().join(JOURNAL_FILE);
        std::fs::write(&path, b"\x01\xff\xffnot a journal").expect("writes");
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert!(restored.is_empty());
    }

    fn entry(signed: SignedRecord, live: bool, leave: Option<SignedLeave>) -> JournalEntry {
        JournalEntry {
            record: Arc::new(VerifiedRecord::verify(signed, None).expect("verifies")),
            live,
            leave,
        }
    }

    #[test]
    fn compaction_keeps_exactly_the_view_it_is_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, a1) = signed(1, 1);
        let (b, b1) = signed(2, 2);
        let (mut j, _) = MembersJournal::open(dir.path()).expect("opens");
        for _ in 0..(3 + COMPACT_SLACK) {
            j.record(&a1, true).expect("append");
        }
        assert!(compaction_due(3 + COMPACT_SLACK, 1));
        assert!(!compaction_due(2 + COMPACT_SLACK, 1));
        j.apply(&JournalWrite::Rewrite(vec![
            entry(a1, true, None),
            entry(b1, false, None),
        ]))
        .expect("rewrite");
        let len = std::fs::metadata(dir.path().join(JOURNAL_FILE))
            .expect("exists")
            .len();
        assert!(len < 2 * 1024, "compacted to two records, {len} bytes");
        drop(j);
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(
            by_id(&restored),
            HashMap::from([(a, (1, true)), (b, (2, false))])
        );
    }

    #[test]
    fn member_writes_read_back_as_the_node_decided_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = IdentityKey::from_seed(&[1; 32]);
        let (a, a1) = signed(1, 4);
        let (b, b1) = signed(2, 5);
        let (c, c1) = signed(3, 6);
        let (d, d1) = signed(4, 7);
        let record = |s: SignedRecord| Some(entry(s, true, None).record);
        let leave = SignedLeave::sign(&key, 4, LeaveReason::Stopping);
        {
            let (mut j, _) = MembersJournal::open(dir.path()).expect("opens");
            for write in [
                JournalWrite::Member {
                    id: a,
                    record: record(a1),
                    liveness: Liveness::Left,
                    leave: Some(leave.clone()),
                },
                JournalWrite::Member {
                    id: b,
                    record: record(b1),
                    liveness: Liveness::Live,
                    leave: None,
                },
                // Only its liveness changed.
                JournalWrite::Member {
                    id: b,
                    record: None,
                    liveness: Liveness::Down,
                    leave: None,
                },
                JournalWrite::Member {
                    id: c,
                    record: record(c1),
                    liveness: Liveness::Live,
                    leave: None,
                },
                JournalWrite::Gone(c),
                // Left without a signed leave at hand: down.
                JournalWrite::Member {
                    id: d,
                    record: record(d1),
                    liveness: Liveness::Left,
                    leave: None,
                },
            ] {
                j.apply(&write).expect("write");
            }
        }
        let (_, restored) = MembersJournal::open(dir.path()).expect("reopens");
        assert_eq!(
            by_id(&restored),
            HashMap::from([(a, (4, false)), (b, (5, false)), (d, (7, false))])
        );
        let of = |id: NodeId| {
            restored
                .iter()
                .find(|r| *r.record.node_id() == id)
                .expect("restored")
        };
        assert_eq!(of(a).leave.as_ref(), Some(&leave));
        assert_eq!(of(d).leave, None);
    }
}
