//! The error type of weft-mesh.

#![forbid(unsafe_code)]

/// Errors of weft-mesh. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration request was refused; nothing of it was applied.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The device has no peer with this key (for changes marked `update_only`, this is not an error).
    #[error("no such peer: {0}")]
    NoSuchPeer(String),
    /// Opening or configuring the TUN device failed.
    #[error("TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Any other system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent a netlink answer that could not be read.
    #[error("netlink: {0}")]
    Netlink(String),
    /// The interface exists but is not a WireGuard device of the expected kind.
    #[error("interface {0} is not a WireGuard device")]
    NotWireGuard(String),
    /// The device was closed (interface deleted or shut down).
    #[error("device closed")]
    Closed,
    /// Something to be created exists already (an interface name taken in a container).
    #[error("{0}")]
    Exists(String),
    /// A NetworkPolicy (or the input it came in) was refused whole: `field` is the path to
    /// what is wrong (`spec.ingress[0].ports[1].endPort`), `document` counts from 0.
    #[error("{}{}", policy_context(*.document, .policy.as_deref()), field_reason(.field, .reason))]
    InvalidPolicy {
        document: usize,
        policy: Option<String>,
        field: String,
        reason: String,
    },
}

fn field_reason(field: &str, reason: &str) -> String {
    if field.is_empty() {
        reason.to_owned()
    } else {
        format!("{field}: {reason}")
    }
}

fn policy_context(document: usize, policy: Option<&str>) -> String {
    match policy {
        Some(p) => format!("document {}, policy {p}: ", document + 1),
        None => format!("document {}: ", document + 1),
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno the configuration protocol answers with (`errno=-N`).
    pub fn errno(&self) -> i32 {
        match self {
            Self::InvalidConfig(_) => libc::EINVAL,
            Self::NoSuchPeer(_) => libc::ENOENT,
            Self::Tun { source, .. } | Self::Io { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Self::Closed => libc::ENODEV,
            Self::Netlink(_) => libc::EPROTO,
            Self::NotWireGuard(_) => libc::ENODEV,
            Self::Exists(_) => libc::EEXIST,
            Self::InvalidPolicy { .. } => libc::EINVAL,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
