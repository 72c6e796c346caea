//! The cluster secret: only its holders may join. Never logged, zeroized on drop.

use std::fmt;
use std::path::Path;

use base64::Engine;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::keyfile::{self, Symlinks};
use crate::{Error, Result};

/// Bytes in a secret made by [`ClusterSecret::generate`] (256 bits).
pub const GENERATED_LEN: usize = 32;
/// The least entropy a secret may have.
pub const MIN_BITS: u32 = 128;
/// A secret file is one line; anything larger is not one.
const SECRET_FILE_MAX_LEN: u64 = 4096;

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

    /// Read a secret file. Refuses a file that group or others may access (it may be a symbolic
    /// link, as in a Kubernetes secret volume; the target is checked), and a weak secret
    /// ([`Error::InFile`] wrapping [`Error::WeakSecret`]). Errors name the file, never the secret.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = keyfile::read_private(path, SECRET_FILE_MAX_LEN, Symlinks::Follow)?;
        let secret = Self::from_text(&text).map_err(|e| Error::in_file(path, e))?;
        tracing::debug!(path = %path.display(), ?secret, "cluster secret loaded");
        Ok(secret)
    }

    /// Write this secret to a new file at `path` (mode 0600, atomically: the file appears
    /// complete or not at all). Refuses to overwrite an existing file ([`Error::AlreadyExists`]).
    pub fn write_new(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut line = Zeroizing::new(String::with_capacity(self.0.len() * 2 + 8));
        line.push_str(&self.to_text());
        line.push('\n');
        keyfile::write_new_private(path, line.as_bytes())
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
        hk.expand(label, &mut out[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
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
        for weak in [
            "",
            "password",
            "hunter2hunter2",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let err = ClusterSecret::from_text(weak).expect_err(weak);
            assert!(matches!(err, Error::WeakSecret { .. }), "{weak}: {err}");
        }
        // 96 random bits in base64 is too little.
        assert!(ClusterSecret::from_text("q83vEjRWeJq8").is_err());
    }

    #[test]
    fn long_passphrase_is_accepted() {
        ClusterSecret::from_text("correct-Horse-battery-staple-7-violet-Anchor-drift")
            .expect("strong enough");
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() {
        let s = ClusterSecret::generate();
        assert!(!format!("{s:?}").contains(s.to_text().as_str()));
        let err = ClusterSecret::from_text("weak-but-secret").expect_err("weak");
        assert!(!err.to_string().contains("weak-but-secret"));
    }

    fn write_file(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn write_new_then_load_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let secret = ClusterSecret::generate();
        secret.write_new(&path).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{}\n", secret.to_text().as_str())
        );
        assert_eq!(
            ClusterSecret::load(&path).expect("load").expose(),
            secret.expose()
        );
    }

    #[test]
    fn write_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        let first = ClusterSecret::generate();
        first.write_new(&path).expect("write");
        let err = ClusterSecret::generate()
            .write_new(&path)
            .expect_err("exists");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(
            ClusterSecret::load(&path).expect("load").expose(),
            first.expose()
        );
    }

    #[test]
    fn load_refuses_weak_and_exposed_secrets_without_showing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_file(&path, "hunter2hunter2\n", 0o600);
        let err = ClusterSecret::load(&path).expect_err("weak");
        assert!(matches!(err.root(), Error::WeakSecret { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("too weak") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");

        let strong = ClusterSecret::generate();
        for mode in [0o644, 0o640, 0o604] {
            write_file(&path, &strong.to_text(), mode);
            let msg = ClusterSecret::load(&path).expect_err("exposed").to_string();
            assert!(
                msg.contains(&format!("{mode:04o}")) && msg.contains(&path.display().to_string()),
                "{msg}"
            );
            assert!(!msg.contains(strong.to_text().as_str()), "{msg}");
        }
        write_file(&path, &strong.to_text(), 0o400);
        assert_eq!(
            ClusterSecret::load(&path).expect("0400 is fine").expose(),
            strong.expose()
        );
    }

    #[test]
    fn load_follows_symlinks_and_checks_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        let link = dir.path().join("link");
        let secret = ClusterSecret::generate();
        write_file(&target, &secret.to_text(), 0o600);
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(
            ClusterSecret::load(&link).expect("load").expose(),
            secret.expose()
        );
        write_file(&target, &secret.to_text(), 0o644);
        assert!(ClusterSecret::load(&link).is_err());
    }

    #[test]
    fn missing_secret_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope");
        let msg = ClusterSecret::load(&path).expect_err("missing").to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let s = ClusterSecret::generate();
        assert_ne!(*s.derive(b"a"), *s.derive(b"b"));
        assert_eq!(*s.derive(b"a"), *s.derive(b"a"));
    }
}
