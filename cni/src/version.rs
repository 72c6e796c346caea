//! The CNI protocol versions weft-cni speaks and what each allows.

use std::fmt;

use crate::error::{code, CniError, Result};

/// A spec version the plugin speaks. Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version, oldest first (the VERSION answer).
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// The version of the spec this plugin implements.
pub const CURRENT: Version = Version::V1_1_0;

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// The config's `cniVersion`: a version the plugin speaks, else error 1 naming the ones it does.
    pub fn parse(text: &str) -> Result<Version> {
        SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "incompatible CNI versions",
                    format!(
                        "config is {:?}, weft-cni supports {}",
                        text.chars().take(32).collect::<String>(),
                        supported_list()
                    ),
                )
            })
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 give each IP's family (`"version": "4"`).
    pub fn ips_have_family(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// True for a version string of the form `MAJOR.MINOR.PATCH` (digits), as VERSION echoes.
pub fn is_semver(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v.as_str()), Ok(v));
        }
        for bad in ["", "0.2.0", "1.2.0", "1.0", "v1.0.0", "1.0.0 "] {
            let e = Version::parse(bad).expect_err(bad);
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
            assert!(e.details.contains("1.1.0"), "{e}");
        }
        assert!(!Version::V0_3_1.has_check() && Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status() && Version::V1_1_0.has_gc_and_status());
        assert!(Version::V0_4_0.ips_have_family() && !Version::V1_0_0.ips_have_family());
        assert!(is_semver("1.0.0") && is_semver("10.20.30"));
        assert!(!is_semver("1.0") && !is_semver("1.0.x") && !is_semver("1..0"));
    }
}
