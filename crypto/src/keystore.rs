//! The node's keys in its state directory: created on first start, reused after, and refused
//! (never replaced) when a file is unsafe or damaged.
//!
//! Layout: `STATE_DIR/` (mode 0700) holds `identity.key` (ed25519 seed) and `wireguard.key`
//! (x25519 private key), each one line of base64, mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keyfile::{self, Symlinks};
use crate::{Error, IdentityKey, NodeId, Result, WgPrivateKey, WgPublicKey};

/// Where the node keeps its keys and state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// File name of the identity key in the state directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// File name of the WireGuard private key in the state directory.
pub const WIREGUARD_KEY_FILE: &str = "wireguard.key";

/// A key file is one line of 44 base64 characters; allow generous trailing whitespace.
const KEY_FILE_MAX_LEN: u64 = 256;

/// The node's identity key and WireGuard private key, as loaded from its state directory.
pub struct KeyStore {
    dir: PathBuf,
    identity: IdentityKey,
    wireguard: WgPrivateKey,
    created: bool,
}

impl KeyStore {
    /// Load the keys from `state_dir`, creating the directory (0700) and any missing key file
    /// (0600) first. A directory or key file that others may access, or a key file that does not
    /// hold a valid key, is refused with an error naming it; nothing is changed then.
    pub fn open_or_create(state_dir: impl AsRef<Path>) -> Result<KeyStore> {
        let dir = state_dir.as_ref();
        keyfile::create_private_dir(dir)?;
        Self::load(dir, true)
    }

    /// Load existing keys from `state_dir`; never creates anything. A missing file is an error.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<KeyStore> {
        let dir = state_dir.as_ref();
        keyfile::check_private_dir(dir)?;
        Self::load(dir, false)
    }

    fn load(dir: &Path, create: bool) -> Result<KeyStore> {
        // Check both files before creating either, so that a damaged identity key is
        // reported without a fresh WireGuard key appearing beside it (and vice versa).
        let identity_path = dir.join(IDENTITY_KEY_FILE);
        let wireguard_path = dir.join(WIREGUARD_KEY_FILE);
        let identity = read_key(&identity_path, IdentityKey::from_base64)?;
        let wireguard = read_key(&wireguard_path, WgPrivateKey::from_base64)?;
        let mut created = false;
        let identity = match identity {
            Some(key) => key,
            None if create => {
                created = true;
                create_key(
                    &identity_path,
                    IdentityKey::generate,
                    IdentityKey::to_base64_secret,
                    IdentityKey::from_base64,
                )?
            }
            None => return Err(missing(&identity_path)),
        };
        let wireguard = match wireguard {
            Some(key) => key,
            None if create => {
                created = true;
                create_key(
                    &wireguard_path,
                    WgPrivateKey::generate,
                    WgPrivateKey::to_base64_secret,
                    WgPrivateKey::from_base64,
                )?
            }
            None => return Err(missing(&wireguard_path)),
        };
        let store = KeyStore {
            dir: dir.to_path_buf(),
            identity,
            wireguard,
            created,
        };
        tracing::debug!(?store, "keys loaded");
        Ok(store)
    }

    /// The state directory the keys live in.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The node's identity key, which signs its gossip records.
    pub fn identity(&self) -> &IdentityKey {
        &self.identity
    }

    /// The node's WireGuard static private key.
    pub fn wireguard(&self) -> &WgPrivateKey {
        &self.wireguard
    }

    /// The node's id (the public half of its identity key).
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The node's WireGuard public key.
    pub fn wireguard_public_key(&self) -> WgPublicKey {
        self.wireguard.public_key()
    }

    /// The keys themselves, for handing each to the part of the node that uses it (identity
    /// to gossip, WireGuard key to the datapath).
    pub fn into_keys(self) -> (IdentityKey, WgPrivateKey) {
        (self.identity, self.wireguard)
    }

    /// Whether this call created a key file (the node's first start, or a key file was missing).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("node_id", &self.node_id())
            .field("wireguard_public_key", &self.wireguard_public_key())
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Read and parse one key file; `None` if it does not exist.
fn read_key<K>(path: &Path, parse: fn(&str) -> Result<K>) -> Result<Option<K>> {
    match keyfile::read_private(path, KEY_FILE_MAX_LEN, Symlinks::Refuse) {
        Ok(text) => parse(&text).map(Some).map_err(|e| Error::in_file(path, e)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Generate a key and publish its file. If another process published one first, use theirs,
/// so that two racing first starts agree on one key.
fn create_key<K>(
    path: &Path,
    generate: fn() -> K,
    encode: fn(&K) -> Zeroizing<String>,
    parse: fn(&str) -> Result<K>,
) -> Result<K> {
    let key = generate();
    let mut line = Zeroizing::new(String::with_capacity(64));
    line.push_str(&encode(&key));
    line.push('\n');
    match keyfile::write_new_private(path, line.as_bytes()) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created key file");
            Ok(key)
        }
        Err(Error::AlreadyExists { .. }) => read_key(path, parse)?.ok_or_else(|| missing(path)),
        Err(e) => Err(e),
    }
}

fn missing(path: &Path) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: "key file is missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A fresh state dir whose keys exist, and the identity of those keys.
    fn initialised() -> (tempfile::TempDir, PathBuf, NodeId, WgPublicKey) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        let store = KeyStore::open_or_create(&dir).expect("create");
        (root, dir, store.node_id(), store.wireguard_public_key())
    }

    #[test]
    fn first_start_creates_private_files_and_later_starts_reuse_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("var/lib/weft");
        let first = KeyStore::open_or_create(&dir).expect("create");
        assert!(first.created());
        assert_eq!(first.state_dir(), dir);
        assert_eq!(mode_of(&dir), 0o700);
        for name in [IDENTITY_KEY_FILE, WIREGUARD_KEY_FILE] {
            let path = dir.join(name);
            assert_eq!(mode_of(&path), 0o600, "{name}");
            let text = fs::read_to_string(&path).expect("read");
            assert_eq!(text.len(), 45, "{name}: one line of 44 base64 characters");
            assert!(text.ends_with('\n'));
        }
        assert_eq!(
            fs::read_dir(&dir).expect("ls").count(),
            2,
            "no temporary files left"
        );

        let second = KeyStore::open_or_create(&dir).expect("reuse");
        assert!(!second.created());
        assert_eq!(second.node_id(), first.node_id());
        assert_eq!(second.wireguard_public_key(), first.wireguard_public_key());
        assert_eq!(second.identity().sign(b"m"), first.identity().sign(b"m"));
        let third = KeyStore::open(&dir).expect("open");
        assert_eq!(third.node_id(), first.node_id());
        let (identity, wireguard) = third.into_keys();
        assert_eq!(identity.node_id(), first.node_id());
        assert_eq!(wireguard.public_key(), first.wireguard_public_key());
    }

    #[test]
    fn files_hold_the_keys_in_wireguard_text_form() {
        let (_root, dir, node_id, wg_public) = initialised();
        let wg_text = fs::read_to_string(dir.join(WIREGUARD_KEY_FILE)).expect("read");
        assert_eq!(
            WgPrivateKey::from_base64(&wg_text)
                .expect("parses")
                .public_key(),
            wg_public
        );
        let id_text = fs::read_to_string(dir.join(IDENTITY_KEY_FILE)).expect("read");
        assert_eq!(
            IdentityKey::from_base64(&id_text)
                .expect("parses")
                .node_id(),
            node_id
        );
    }

    #[test]
    fn keys_written_by_hand_are_used() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o700);
        let wg = WgPrivateKey::generate();
        let wg_path = dir.join(WIREGUARD_KEY_FILE);
        fs::write(&wg_path, format!("{}\n", wg.to_base64_secret().as_str())).expect("write");
        chmod(&wg_path, 0o600);
        let store = KeyStore::open_or_create(&dir).expect("open");
        assert!(store.created(), "the missing identity key was created");
        assert_eq!(store.wireguard_public_key(), wg.public_key());
        assert_eq!(mode_of(&dir.join(IDENTITY_KEY_FILE)), 0o600);
    }

    /// Each damage to a key file is refused with a message naming the file and the problem,
    /// and the file is left exactly as it was.
    #[test]
    fn damaged_or_exposed_key_files_are_refused_and_left_alone() {
        let b64_31 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n"; // decodes to 31 bytes
        let cases: &[(&str, Option<&str>, u32, &str)] = &[
            (WIREGUARD_KEY_FILE, None, 0o644, "0644"),
            (IDENTITY_KEY_FILE, None, 0o640, "0640"),
            (WIREGUARD_KEY_FILE, None, 0o606, "0606"),
            (
                WIREGUARD_KEY_FILE,
                Some("not base64 at all!!\n"),
                0o600,
                "not valid base64",
            ),
            (IDENTITY_KEY_FILE, Some(b64_31), 0o600, "32 bytes"),
            (WIREGUARD_KEY_FILE, Some(""), 0o600, "32 bytes"),
            (
                IDENTITY_KEY_FILE,
                Some("\u{0}\u{1}"),
                0o600,
                "not valid base64",
            ),
        ];
        for (name, content, mode, expected) in cases {
            let (_root, dir, node_id, wg_public) = initialised();
            let path = dir.join(name);
            if let Some(content) = content {
                fs::write(&path, content).expect("write");
            }
            chmod(&path, *mode);
            let before = fs::read(&path).expect("read");
            let err = KeyStore::open_or_create(&dir).expect_err("must refuse");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
            assert!(msg.contains(expected), "{name}: {msg}");
            let key_text = String::from_utf8_lossy(&before).trim().to_string();
            if !key_text.is_empty() {
                assert!(
                    !msg.contains(&key_text),
                    "{name}: message shows the key: {msg}"
                );
            }
            assert_eq!(fs::read(&path).expect("read"), before, "{name}: changed");
            assert_eq!(mode_of(&path), *mode, "{name}: mode changed");
            // Fixing the mode of an intact file brings the same keys back.
            if content.is_none() {
                chmod(&path, 0o600);
                let store = KeyStore::open_or_create(&dir).expect("fixed");
                assert_eq!(
                    (store.node_id(), store.wireguard_public_key()),
                    (node_id, wg_public)
                );
            }
        }
    }

    #[test]
    fn a_damaged_key_stops_creation_of_the_other() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o700);
        let path = dir.join(IDENTITY_KEY_FILE);
        fs::write(&path, "garbage\n").expect("write");
        chmod(&path, 0o600);
        KeyStore::open_or_create(&dir).expect_err("damaged");
        assert!(!dir.join(WIREGUARD_KEY_FILE).exists());
    }

    #[test]
    fn symlinked_key_file_is_refused() {
        let (root, dir, ..) = initialised();
        let path = dir.join(WIREGUARD_KEY_FILE);
        let elsewhere = root.path().join("elsewhere.key");
        fs::rename(&path, &elsewhere).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        let err = KeyStore::open_or_create(&dir).expect_err("symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn exposed_state_dir_is_refused() {
        for mode in [0o755, 0o750, 0o701, 0o770] {
            let (_root, dir, ..) = initialised();
            chmod(&dir, mode);
            let err = KeyStore::open_or_create(&dir).expect_err("open dir");
            let msg = err.to_string();
            assert!(
                msg.contains(&dir.display().to_string()) && msg.contains(&format!("{mode:04o}")),
                "{msg}"
            );
            assert_eq!(mode_of(&dir), mode);
            assert!(KeyStore::open(&dir).is_err());
        }
        // A path that is a file, not a directory.
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("file");
        fs::write(&file, "").expect("write");
        assert!(KeyStore::open_or_create(&file)
            .expect_err("file")
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn open_never_creates() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        assert!(KeyStore::open(&dir).is_err());
        assert!(!dir.exists());
        fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o700);
        let err = KeyStore::open(&dir).expect_err("no keys");
        assert!(err.to_string().contains(IDENTITY_KEY_FILE), "{err}");
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 0);
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_identity() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("state");
        let ids: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let store = KeyStore::open_or_create(&dir).expect("open");
                        (store.node_id(), store.wireguard_public_key())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn debug_shows_public_parts_only() {
        let (_root, dir, node_id, wg_public) = initialised();
        let store = KeyStore::open(&dir).expect("open");
        let debug = format!("{store:?}");
        assert!(
            debug.contains(&wg_public.to_string()) && debug.contains(&node_id.short()),
            "{debug}"
        );
        for name in [IDENTITY_KEY_FILE, WIREGUARD_KEY_FILE] {
            let secret = fs::read_to_string(dir.join(name)).expect("read");
            assert!(!debug.contains(secret.trim()), "{debug}");
        }
    }
}
