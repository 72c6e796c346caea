//! IP address management without a datastore (sans-IO). Design notes: see below (written
//! after the code settles).

mod core;
mod error;
mod pool;
mod record;
mod statement;
mod store;
mod view;
mod wire;

pub mod sim;

pub use self::core::{Event, Ipam, IpamConfig, Transmit};
pub use error::{Error, GenesisConflict, GenesisSide, Result};
pub use record::{Claim, Message, Record, Status, MAX_RECORD_BYTES};
pub use statement::{Genesis, GenesisId, Piece, Reclaim, Transfer};
pub use store::{
    Accepted, FileStore, JournalOp, MemoryStore, PersistedState, PersistedStatus, Store,
};
pub use view::{ClashReport, GenesisReport, IpamReport, NodeReport, PieceReport, RingEntry};
