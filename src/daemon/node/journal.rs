//! The members journal's decisions: which member changes to write, when to rewrite the file
//! whole, and whether every write asked for has been done (the IPAM core waits for that).
//! The file itself is `members::MembersJournal`, written by the IO loop.

use std::collections::{HashMap, HashSet, VecDeque};

use tracing::warn;
use weft_gossip::{Membership, NodeId};

use crate::daemon::members::{compaction_due, JournalEntry, JournalWrite, Liveness};

#[derive(Debug)]
pub(super) struct Journal {
    /// The record version and liveness of each member as written, or queued to be.
    journaled: HashMap<NodeId, (u64, Liveness)>,
    queue: VecDeque<JournalWrite>,
    /// Writes handed out and not answered yet, oldest first: true for a rewrite.
    in_flight: VecDeque<bool>,
    /// Writes appended since the file was last written whole.
    appended: usize,
    /// A write failed: the file may end in a partial frame, so it is rewritten whole.
    broken: bool,
    /// A rewrite is queued or in flight.
    rewriting: bool,
    /// The last write failed (warned once until one succeeds).
    failing: bool,
}

impl Journal {
    /// What the journal gave back (restored into `core`) is on disk already.
    pub(super) fn new(core: &Membership) -> Self {
        let journaled = core
            .members()
            .map(|m| (m.record.node_id, (m.record.version, Liveness::of(m.state))))
            .collect();
        Journal {
            journaled,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            appended: 0,
            broken: false,
            rewriting: false,
            failing: false,
        }
    }

    /// Queue a write for every member whose record or liveness changed since it was last
    /// journaled, drop the forgotten ones, and a rewrite when one is due.
    pub(super) fn plan(&mut self, core: &Membership) {
        let mut seen = HashSet::with_capacity(core.num_members());
        for m in core.members() {
            let id = m.record.node_id;
            seen.insert(id);
            let (version, liveness) = (m.record.version, Liveness::of(m.state));
            let old = self.journaled.insert(id, (version, liveness));
            if old == Some((version, liveness)) {
                continue;
            }
            let same_record = old.is_some_and(|(v, _)| v == version);
            let record = if !same_record || liveness == Liveness::Live {
                match core.verified_record(&id) {
                    Some(r) => Some(r),
                    None => continue,
                }
            } else {
                None
            };
            let leave = if liveness == Liveness::Left {
                core.signed_leave(&id).cloned()
            } else {
                None
            };
            self.queue.push_back(JournalWrite::Member {
                id,
                record,
                liveness,
                leave,
            });
        }
        let forgotten: Vec<NodeId> = self
            .journaled
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in forgotten {
            self.journaled.remove(&id);
            self.queue.push_back(JournalWrite::Gone(id));
        }
        if !self.rewriting && (self.broken || compaction_due(self.appended, self.journaled.len())) {
            let members = self
                .journaled
                .iter()
                .filter_map(|(id, &(_, liveness))| {
                    Some(JournalEntry {
                        record: core.verified_record(id)?,
                        live: liveness == Liveness::Live,
                        leave: core.signed_leave(id).cloned(),
                    })
                })
                .collect();
            self.rewriting = true;
            self.queue.push_back(JournalWrite::Rewrite(members));
        }
    }

    pub(super) fn poll(&mut self) -> Option<JournalWrite> {
        let write = self.queue.pop_front()?;
        self.in_flight
            .push_back(matches!(write, JournalWrite::Rewrite(_)));
        Some(write)
    }

    /// The oldest write in flight was done, or failed. A journal that cannot be written costs
    /// only the view after a restart: warn once, rewrite it whole at the next scan.
    pub(super) fn result(&mut self, result: Result<(), String>) {
        let Some(rewrite) = self.in_flight.pop_front() else {
            warn!("members journal: a write result without a write (ignored)");
            return;
        };
        if rewrite {
            self.rewriting = false;
        }
        match result {
            Ok(()) if rewrite => {
                self.appended = 0;
                self.broken = false;
                self.failing = false;
            }
            Ok(()) => {
                self.appended += 1;
                self.failing = false;
            }
            Err(e) => {
                self.broken = true;
                if !self.failing {
                    self.failing = true;
                    warn!(error = %e, "cannot write the members journal");
                }
            }
        }
    }

    /// Every write asked for was done (or failed): what the members say may be acted on.
    pub(super) fn settled(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }
}
