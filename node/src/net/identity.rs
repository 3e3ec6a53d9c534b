//! A node's identity: its ed25519 key, kept in the data directory.
//!
//! This module owns `node.key` (creating it from the node's RNG, writing it
//! atomically with mode 0600, reading it back) and the conversions between
//! [`NodeId`] (the public key bytes, what protocol code sees) and libp2p's
//! `PeerId`. It does not decide who is trusted: that is admission's job.

use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::{self, ed25519};

use super::NodeId;
use crate::env::Rng;

/// The file in the data directory that holds the node's secret key.
pub const NODE_KEY_FILE: &str = "node.key";

/// Size of the secret key on disk: the raw 32-byte ed25519 seed.
const SECRET_KEY_BYTES: usize = 32;

/// Size of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the node key {path}: {source}; check the data directory's permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the node key {path}: {source}; check that the data directory exists and is writable"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the node key {path} is corrupt ({reason}); restore it from a backup, or delete it to give this node a new identity (it will need a new invite)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// A node's ed25519 keypair. Its public half is the node's [`NodeId`].
#[derive(Clone)]
pub struct NodeKey {
    keypair: ed25519::Keypair,
}

impl std::fmt::Debug for NodeKey {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

impl NodeKey {
    /// A new key drawn from the node's RNG (seeded in the simulator, so the
    /// same seed gives the same identity).
    pub fn generate(rng: &Rng) -> Self {
        let mut seed = [0u8; SECRET_KEY_BYTES];
        rng.fill_bytes(&mut seed);
        Self::from_secret_bytes(seed)
    }

    /// The key whose secret seed is `seed`.
    pub fn from_secret_bytes(mut seed: [u8; SECRET_KEY_BYTES]) -> Self {
        // `try_from_bytes` only fails on a wrong length, which the array type rules out.
        let secret = match ed25519::SecretKey::try_from_bytes(&mut seed) {
            Ok(secret) => secret,
            Err(_) => unreachable!("a 32-byte array is always a valid ed25519 seed"),
        };
        Self {
            keypair: ed25519::Keypair::from(secret),
        }
    }

    /// Read `DATA_DIR/node.key`, or create it from `rng` if there is none.
    pub fn load_or_create(data_dir: &Path, rng: &Rng) -> Result<Self, IdentityError> {
        let path = data_dir.join(NODE_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(rng);
                key.save(&path)?;
                tracing::info!(node = %key.node_id(), path = %path.display(), "created a new node key");
                Ok(key)
            }
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    /// Read a key file written by [`NodeKey::save`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::decode(path, &bytes)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Self, IdentityError> {
        let seed: [u8; SECRET_KEY_BYTES] =
            bytes.try_into().map_err(|_| IdentityError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "expected {SECRET_KEY_BYTES} bytes, found {} bytes",
                    bytes.len()
                ),
            })?;
        warn_if_readable_by_others(path);
        Ok(Self::from_secret_bytes(seed))
    }

    /// Write the key to `path` atomically (temporary file, fsync, rename),
    /// readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let write_err = |source| IdentityError::Write {
            path: path.to_owned(),
            source,
        };
        // Owner-only from before the first byte: the mode does not rest on a
        // library default.
        crate::durable::write_atomically(path, self.keypair.secret().as_ref(), Some(0o600))
            .map_err(write_err)
    }

    /// This node's identity.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.keypair.public().to_bytes())
    }

    /// Sign `msg` with the node's key.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_BYTES] {
        let sig = self.keypair.sign(msg);
        debug_assert_eq!(sig.len(), SIGNATURE_BYTES);
        let mut out = [0u8; SIGNATURE_BYTES];
        out.copy_from_slice(&sig);
        out
    }

    /// The same key as a libp2p keypair (for the swarm, noise and gossipsub signing).
    pub fn to_libp2p(&self) -> identity::Keypair {
        identity::Keypair::from(self.keypair.clone())
    }
}

impl NodeId {
    /// Whether `sig` is this node's signature of `msg`. False for an id that
    /// is not a valid ed25519 point.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match ed25519::PublicKey::try_from_bytes(&self.0) {
            Ok(public) => public.verify(msg, sig),
            Err(_) => false,
        }
    }

    /// The libp2p peer id of this node, or `None` when the bytes are not an
    /// ed25519 public key.
    pub fn to_peer_id(&self) -> Option<PeerId> {
        let public = ed25519::PublicKey::try_from_bytes(&self.0).ok()?;
        Some(identity::PublicKey::from(public).to_peer_id())
    }

    /// The node behind a libp2p peer id, or `None` for a peer whose key is not
    /// ed25519 (no Canopy node has one).
    pub fn from_peer_id(peer: &PeerId) -> Option<NodeId> {
        let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
        // ed25519 peer ids inline the public key (identity multihash, code 0).
        if multihash.code() != 0 {
            return None;
        }
        let public = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
        let ed = public.try_into_ed25519().ok()?;
        Some(NodeId(ed.to_bytes()))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the node key is readable by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_key() {
        let a = NodeKey::generate(&Rng::seeded(42));
        let b = NodeKey::generate(&Rng::seeded(42));
        let c = NodeKey::generate(&Rng::seeded(43));
        assert_eq!(a.node_id(), b.node_id());
        assert_ne!(a.node_id(), c.node_id());
    }

    #[test]
    fn node_id_peer_id_round_trip() {
        let key = NodeKey::generate(&Rng::seeded(1));
        let id = key.node_id();
        let peer = id.to_peer_id().unwrap();
        assert_eq!(peer, key.to_libp2p().public().to_peer_id());
        assert_eq!(NodeId::from_peer_id(&peer), Some(id));
    }

    #[test]
    fn sign_and_verify() {
        let key = NodeKey::generate(&Rng::seeded(2));
        let sig = key.sign(b"hello");
        assert!(key.node_id().verify(b"hello", &sig));
        assert!(!key.node_id().verify(b"hellO", &sig));
        let other = NodeKey::generate(&Rng::seeded(3));
        assert!(!other.node_id().verify(b"hello", &sig));
    }

    #[test]
    fn load_or_create_persists_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let created = NodeKey::load_or_create(dir.path(), &Rng::seeded(5)).unwrap();
        // A different RNG must not matter once the file exists.
        let loaded = NodeKey::load_or_create(dir.path(), &Rng::seeded(6)).unwrap();
        assert_eq!(created.node_id(), loaded.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(NODE_KEY_FILE)]);
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_KEY_FILE), b"short").unwrap();
        let err = NodeKey::load_or_create(dir.path(), &Rng::seeded(1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("expected 32 bytes, found 5 bytes"), "{msg}");
        assert!(msg.contains("delete it"), "{msg}");
    }
}
