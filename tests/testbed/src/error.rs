//! The one error type of the test bed.

use std::io;

/// Everything that can go wrong while building or driving a test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, as run.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// A command could not be started at all (missing binary, ...).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        #[source]
        source: io::Error,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A capture file could not be parsed.
    #[error("bad pcap data: {0}")]
    Pcap(String),
    /// The caller asked for something the test bed cannot do (bad index, ...).
    #[error("invalid test bed request: {0}")]
    Invalid(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Result alias of the test bed.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
