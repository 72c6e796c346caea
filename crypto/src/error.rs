use std::path::PathBuf;

/// Errors of weft-crypto. Messages name the file and the problem, never the secret itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what}: {reason}")]
    KeyEncoding {
        what: &'static str,
        reason: &'static str,
    },
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
    /// The content of a file was refused (bad key encoding, weak secret): `source` says why.
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// A new secret file was not written because one is already there.
    #[error("{path}: already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
}

impl Error {
    /// The innermost weft-crypto error: for an [`Error::InFile`], what was wrong with the content.
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.root(),
            other => other,
        }
    }

    pub(crate) fn in_file(path: &std::path::Path, source: Error) -> Error {
        Error::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
