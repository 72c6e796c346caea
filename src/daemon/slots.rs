//! Connection slots for the local servers (the API socket and the metrics endpoint), so that
//! no client can starve another.
//!
//! Every connection is accepted and served in its own task. A connection with no request in
//! progress is *idle*; one whose request has begun (its first byte arrived) is *busy* until
//! its answer is written. At most `cap` connections hold a slot:
//!
//! - a new connection at the cap sheds the connection that has been idle the longest (it is
//!   closed: it had nothing in flight), never the new one, so idle clients cannot lock out
//!   `weft status` or a liveness probe;
//! - if every slot is busy, the new connection gets a "busy" answer at once and is closed
//!   (it does not wait: busy slots free up within the servers' request deadlines, a couple of
//!   seconds, and a client can retry).
//!
//! [`SlotTable`] is the decision, without IO; [`Slots`] wraps it for tokio tasks.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// A connection's number in a [`SlotTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// What [`SlotTable::admit`] decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it under `id`; first close `shed` (idle the longest) if there is one.
    Admitted { id: ConnId, shed: Option<ConnId> },
    /// Every slot has a request in progress: answer "busy" and close.
    Busy,
}

/// Which connections hold a slot and which of them are idle: the sans-IO core of [`Slots`].
#[derive(Debug)]
pub struct SlotTable {
    cap: usize,
    next_id: u64,
    next_seq: u64,
    /// Every connection holding a slot; `Some(seq)` while idle (the order it became idle in).
    conns: HashMap<ConnId, Option<u64>>,
    /// Idle connections by the order they became idle in: the first is shed first.
    idle: BTreeMap<u64, ConnId>,
}

impl SlotTable {
    pub fn new(cap: usize) -> Self {
        SlotTable {
            cap: cap.max(1),
            next_id: 0,
            next_seq: 0,
            conns: HashMap::new(),
            idle: BTreeMap::new(),
        }
    }

    /// A new connection. It starts idle (it has sent nothing yet), as the newest idle one.
    pub fn admit(&mut self) -> Admission {
        let shed = if self.conns.len() >= self.cap {
            let Some((_, oldest)) = self.idle.pop_first() else {
                return Admission::Busy;
            };
            self.conns.remove(&oldest);
            Some(oldest)
        } else {
            None
        };
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.conns.insert(id, None);
        self.make_idle(id);
        Admission::Admitted { id, shed }
    }

    /// `id`'s request has begun: it is busy and not shed until [`SlotTable::end`]. False if
    /// `id` holds no slot (it was shed): the caller closes it.
    #[must_use]
    pub fn begin(&mut self, id: ConnId) -> bool {
        match self.conns.get_mut(&id) {
            Some(state) => {
                if let Some(seq) = state.take() {
                    self.idle.remove(&seq);
                }
                true
            }
            None => false,
        }
    }

    /// `id`'s answer is written: it is idle again, as the newest idle connection.
    pub fn end(&mut self, id: ConnId) {
        if matches!(self.conns.get(&id), Some(None)) {
            self.make_idle(id);
        }
    }

    /// `id` is closed: its slot is free.
    pub fn close(&mut self, id: ConnId) {
        if let Some(Some(seq)) = self.conns.remove(&id) {
            self.idle.remove(&seq);
        }
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Connections holding a slot with no request in progress.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.len()
    }

    fn make_idle(&mut self, id: ConnId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.conns.insert(id, Some(seq));
        self.idle.insert(seq, id);
    }
}

/// A [`SlotTable`] shared by a server's connection tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    table: SlotTable,
    /// Dropping a connection's sender wakes its [`Slot::wait_idle`]: it was shed.
    shed: HashMap<ConnId, oneshot::Sender<()>>,
}

/// How a [`Slot::wait_idle`] ended.
#[derive(Debug)]
pub enum Wake<T> {
    /// The client's next request began (what `ready` returned); the slot is busy.
    Ready(T),
    /// The connection was shed for a newer one, or `ready` was too late for it: close it.
    Shed,
    /// Nothing came within the idle limit: close it.
    Idle,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        Slots {
            inner: Arc::new(Mutex::new(Inner {
                table: SlotTable::new(cap),
                shed: HashMap::new(),
            })),
        }
    }

    /// A slot for a new connection, shedding the connection idle the longest if all are
    /// taken; `None` if every slot is busy.
    pub fn admit(&self) -> Option<Slot> {
        let mut inner = lock(&self.inner);
        let Admission::Admitted { id, shed } = inner.table.admit() else {
            return None;
        };
        if let Some(old) = shed {
            // Dropping the sender wakes the shed connection's task, which closes it.
            inner.shed.remove(&old);
            tracing::debug!("all client slots taken: closing the connection idle the longest");
        }
        let (tx, rx) = oneshot::channel();
        inner.shed.insert(id, tx);
        Some(Slot {
            id,
            slots: self.clone(),
            shed: rx,
        })
    }

    /// Connections holding a slot, and how many of them are idle.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.table.len(), inner.table.idle())
    }
}

/// One connection's slot; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    id: ConnId,
    slots: Slots,
    shed: oneshot::Receiver<()>,
}

impl Slot {
    /// Wait, idle, for the client's next request to begin (`ready`, e.g. the first byte
    /// becoming readable), for at most `limit`. On [`Wake::Ready`] the slot is busy until
    /// [`Slot::end`].
    pub async fn wait_idle<T>(
        &mut self,
        limit: Duration,
        ready: impl Future<Output = T>,
    ) -> Wake<T> {
        tokio::select! {
            biased;
            _ = &mut self.shed => Wake::Shed,
            got = tokio::time::timeout(limit, ready) => match got {
                Ok(value) if lock(&self.slots.inner).table.begin(self.id) => Wake::Ready(value),
                // Shed while `ready` completed.
                Ok(_) => Wake::Shed,
                Err(_) => Wake::Idle,
            },
        }
    }

    /// The answer is written: the connection is idle again.
    pub fn end(&mut self) {
        lock(&self.slots.inner).table.end(self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = lock(&self.slots.inner);
        inner.table.close(self.id);
        inner.shed.remove(&self.id);
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every update of the table is a single call that cannot panic half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> (ConnId, Option<ConnId>) {
        match a {
            Admission::Admitted { id, shed } => (id, shed),
            Admission::Busy => panic!("refused as busy"),
        }
    }

    #[test]
    fn below_the_cap_nothing_is_shed() {
        let mut t = SlotTable::new(3);
        for _ in 0..3 {
            assert_eq!(admitted(t.admit()).1, None);
        }
        assert_eq!((t.len(), t.idle()), (3, 3));
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_is_shed_never_the_new_one() {
        let mut t = SlotTable::new(3);
        let (a, _) = admitted(t.admit());
        let (b, _) = admitted(t.admit());
        let (c, _) = admitted(t.admit());
        // a asks something and is answered: it is now idle more recently than b and c.
        assert!(t.begin(a));
        t.end(a);
        let (d, shed) = admitted(t.admit());
        assert_eq!(shed, Some(b));
        assert!(!t.begin(b), "a shed connection holds no slot");
        let (_, shed) = admitted(t.admit());
        assert_eq!(shed, Some(c));
        let (_, shed) = admitted(t.admit());
        assert_eq!(shed, Some(a));
        // d is next: the new connections were admitted after it.
        let (_, shed) = admitted(t.admit());
        assert_eq!(shed, Some(d));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn busy_connections_are_never_shed_and_a_full_house_of_them_is_busy() {
        let mut t = SlotTable::new(2);
        let (a, _) = admitted(t.admit());
        let (b, _) = admitted(t.admit());
        assert!(t.begin(a));
        let (c, shed) = admitted(t.admit());
        assert_eq!(shed, Some(b), "the idle one goes, the busy one stays");
        assert!(t.begin(c));
        assert_eq!(t.admit(), Admission::Busy);
        assert_eq!((t.len(), t.idle()), (2, 0));
        // One answer written: that connection is idle and may be shed again.
        t.end(c);
        assert_eq!(admitted(t.admit()).1, Some(c));
        // A closed connection frees its slot.
        t.close(a);
        assert_eq!(admitted(t.admit()).1, None);
    }

    #[test]
    fn closing_and_ending_unknown_or_shed_ids_changes_nothing() {
        let mut t = SlotTable::new(1);
        let (a, _) = admitted(t.admit());
        let (b, shed) = admitted(t.admit());
        assert_eq!(shed, Some(a));
        t.end(a);
        t.close(a);
        assert_eq!((t.len(), t.idle()), (1, 1));
        assert!(t.begin(b));
        t.close(b);
        assert_eq!((t.len(), t.idle()), (0, 0));
    }

    #[test]
    fn a_cap_of_zero_is_one() {
        let mut t = SlotTable::new(0);
        let (a, _) = admitted(t.admit());
        assert!(t.begin(a));
        assert_eq!(t.admit(), Admission::Busy);
    }

    #[tokio::test]
    async fn a_shed_slot_wakes_its_task_and_a_dropped_one_frees_its_place() {
        let slots = Slots::new(1);
        let mut first = slots.admit().expect("slot");
        let second = slots.admit().expect("the idle first one is shed");
        let wake = first
            .wait_idle(Duration::from_secs(30), std::future::pending::<()>())
            .await;
        assert!(matches!(wake, Wake::Shed), "{wake:?}");
        drop(first);
        assert_eq!(slots.counts(), (1, 1));
        drop(second);
        assert_eq!(slots.counts(), (0, 0));

        let mut busy = slots.admit().expect("slot");
        assert!(matches!(
            busy.wait_idle(Duration::from_secs(1), async { 7 }).await,
            Wake::Ready(7)
        ));
        assert!(slots.admit().is_none(), "the only slot is busy");
        busy.end();
        let mut idle = slots.admit().expect("busy one is idle again, and shed");
        assert!(matches!(
            idle.wait_idle(Duration::from_millis(10), std::future::pending::<()>())
                .await,
            Wake::Idle
        ));
    }
}
