//! The cluster secret: only its holders may join. Never logged, zeroized on drop.

use std::fmt;

use base64::Engine;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Error, Result};

/// Bytes in a secret made by [`ClusterSecret::generate`] (256 bits).
pub const GENERATED_LEN: usize = 32;
/// The least entropy a secret may have.
pub const MIN_BITS: u32 = 128;

#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// A new random 256-bit secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; GENERATED_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parse the text of a secret file: base64 (as `weft secret new` writes it) or a passphrase.
    /// Refuses anything with less than [`MIN_BITS`] of estimated entropy.
    pub fn from_text(text: &str) -> Result<Self> {
        let text = text.trim();
        let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text).ok());
        let bytes = match decoded.as_ref() {
            // Base64 that decodes to at least 16 bytes is taken as random bytes.
            Some(bytes) if bytes.len() >= 16 => {
                let bits = random_bytes_entropy(bytes);
                if bits < MIN_BITS {
                    return Err(Error::WeakSecret { bits });
                }
                bytes.clone()
            }
            _ => {
                let bits = passphrase_entropy(text);
                if bits < MIN_BITS {
                    return Err(Error::WeakSecret { bits });
                }
                text.as_bytes().to_vec()
            }
        };
        Ok(Self(bytes))
    }

    /// The text form written to a secret file.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0))
    }

    /// Raw bytes, for key derivation only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Derive a 32-byte key for one purpose (HKDF-SHA256 with `label` as info), so the secret
    /// itself is never used directly as a key.
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"weft cluster secret v1"), &self.0);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
        hk.expand(label, &mut out[..]).expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Entropy of bytes taken as random: 8 bits a byte, but not more than the byte values they
/// use allow (so 32 zero bytes or a repeated pattern counts for little).
fn random_bytes_entropy(bytes: &[u8]) -> u32 {
    let distinct = distinct_count(bytes.iter().copied());
    let per_symbol = (distinct as f64).log2().min(8.0);
    (per_symbol * bytes.len() as f64) as u32
}

/// A conservative estimate for a typed passphrase: length times log2 of the character pool its
/// classes span, capped by how many distinct characters it actually uses.
fn passphrase_entropy(text: &str) -> u32 {
    let (mut lower, mut upper, mut digit, mut other) = (false, false, false, false);
    for c in text.chars() {
        match c {
            'a'..='z' => lower = true,
            'A'..='Z' => upper = true,
            '0'..='9' => digit = true,
            _ => other = true,
        }
    }
    let pool = 26 * lower as u32 + 26 * upper as u32 + 10 * digit as u32 + 33 * other as u32;
    let distinct = distinct_count(text.chars());
    let per_char = (pool.min(distinct as u32 * 4).max(1) as f64).log2();
    (per_char * text.chars().count() as f64) as u32
}

fn distinct_count<T: Ord>(items: impl Iterator<Item = T>) -> usize {
    items.collect::<std::collections::BTreeSet<_>>().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_round_trips() {
        let s = ClusterSecret::generate();
        let back = ClusterSecret::from_text(&s.to_text()).expect("strong");
        assert_eq!(back.expose(), s.expose());
        assert_eq!(s.expose().len() * 8, 256);
    }

    #[test]
    fn weak_secrets_are_refused() {
        for weak in ["", "password", "hunter2hunter2", "AAAAAAAAAAAAAAAAAAAAAA==", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
            let err = ClusterSecret::from_text(weak).expect_err(weak);
            assert!(matches!(err, Error::WeakSecret { .. }), "{weak}: {err}");
        }
        // 96 random bits in base64 is too little.
        assert!(ClusterSecret::from_text("q83vEjRWeJq8").is_err());
    }

    #[test]
    fn long_passphrase_is_accepted() {
        ClusterSecret::from_text("correct-Horse-battery-staple-7-violet-Anchor-drift").expect("strong enough");
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let s = ClusterSecret::generate();
        assert!(!format!("{s:?}").contains(s.to_text().as_str()));
        let err = ClusterSecret::from_text("weak-but-secret").expect_err("weak");
        assert!(!err.to_string().contains("weak-but-secret"));
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let s = ClusterSecret::generate();
        assert_ne!(*s.derive(b"a"), *s.derive(b"b"));
        assert_eq!(*s.derive(b"a"), *s.derive(b"a"));
    }
}
