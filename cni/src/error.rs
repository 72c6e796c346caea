//! The plugin's error: a CNI error code with a short message and details, printed as the
//! spec's error result (`{"cniVersion","code","msg","details"}`) on stdout.

use serde::Serialize;

/// Codes 0-99 are the spec's; 100 and up are weft's own.
pub mod code {
    /// The config's `cniVersion` is not one the plugin speaks, or the command needs a newer one.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field the plugin does not support; the message names key and value.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (its network namespace or interface) does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A missing or invalid `CNI_*` variable; the message names it.
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or writing a file failed.
    pub const IO: u32 = 5;
    /// stdin (or a delegated plugin's output) is not the JSON expected.
    pub const DECODE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// The weft daemon is not reachable or has no address space yet: retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (the daemon is not running or not ready).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing pods may have limited connectivity (no address space).
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// A kernel (netlink) operation failed.
    pub const KERNEL: u32 = 100;
    /// `CNI_IFNAME` already exists in the container's namespace.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// CHECK: the attachment is not what prevResult says.
    pub const CHECK_FAILED: u32 = 102;
    /// The weft daemon refused the request.
    pub const DAEMON_REFUSED: u32 = 103;
    /// A delegated (IPAM) plugin could not be run or gave no usable result.
    pub const DELEGATE: u32 = 104;
}

/// A CNI error. `Display` is `msg: details`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg, details)
    }

    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg, details)
    }

    pub fn decode(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg, details)
    }

    pub fn io(msg: impl Into<String>, e: &std::io::Error) -> Self {
        Self::new(code::IO, msg, e.to_string())
    }

    pub fn kernel(msg: impl Into<String>, e: &weft_mesh::Error) -> Self {
        Self::new(code::KERNEL, msg, e.to_string())
    }

    /// The error result the spec defines, in protocol version `version`.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        // A struct of strings and a number always serialises.
        .unwrap_or(serde_json::Value::Null)
    }

    /// Parses the error result a delegated plugin printed (passed on as it is).
    pub fn from_plugin_output(out: &[u8]) -> Option<CniError> {
        #[derive(serde::Deserialize)]
        struct Wire {
            code: u32,
            #[serde(default)]
            msg: String,
            #[serde(default)]
            details: String,
        }
        let wire: Wire = serde_json::from_slice(out).ok()?;
        Some(CniError::new(wire.code, wire.msg, wire.details))
    }
}
