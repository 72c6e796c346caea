use std::path::PathBuf;

/// Errors of weft-crypto. Messages name the file and the problem, never the secret itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what}: {reason}")]
    KeyEncoding { what: &'static str, reason: &'static str },
    #[error("signature does not verify")]
    BadSignature,
    #[error("invalid node id: {0}")]
    BadNodeId(&'static str),
    #[error("cluster secret is too weak: about {bits} bits of entropy, need at least 128 (make one with `weft secret new`)")]
    WeakSecret { bits: u32 },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
