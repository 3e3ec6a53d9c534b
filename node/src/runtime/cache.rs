//! The on-disk cache of compiled functions, so a restarted node does not
//! recompile what it already compiled.
//!
//! One entry per (CID, engine): `<cid>-<engine>.cwasm` holds the output of
//! `Component::serialize`, `<cid>-<engine>.sha256` the hex SHA-256 of those
//! bytes. `<engine>` is a digest of wasmtime's
//! `precompile_compatibility_hash`, so a wasmtime upgrade or a different
//! engine configuration misses the cache and recompiles. Entries are written
//! atomically (temp file, fsync, rename) and verified before use: loading
//! compiled code is `unsafe`, so a torn or corrupted file is deleted and
//! the function recompiled, never loaded.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};
use wasmtime::Engine;

use super::RuntimeError;
use crate::durable::write_atomically;

/// Compiled code on disk, keyed by CID and engine.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// Hex digest naming the engine's compatibility (wasmtime version,
    /// target, compiler settings).
    engine_tag: String,
}

impl DiskCache {
    /// Open (creating if needed) the cache in `dir` for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::CacheDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut hasher = CollectingHasher::default();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = sha256(&hasher.bytes);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_tag: hex(&digest[..8]),
        })
    }

    /// The path of the compiled code for `cid` (exposed so tests can damage it).
    pub fn code_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(format!("{cid}-{}.cwasm", self.engine_tag))
    }

    fn digest_path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(format!("{cid}-{}.sha256", self.engine_tag))
    }

    /// The cached compiled bytes for `cid`, if present and intact. A damaged
    /// entry is logged and removed.
    pub fn read(&self, cid: &Cid) -> Option<Vec<u8>> {
        let code_path = self.code_path(cid);
        let code = match std::fs::read(&code_path) {
            Ok(code) => code,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(target: "canopy::runtime", path = %code_path.display(), %error,
                    "cannot read compiled function; recompiling");
                return None;
            }
        };
        let expected = std::fs::read_to_string(self.digest_path(cid)).unwrap_or_default();
        if expected.trim() != hex(&sha256(&code)) {
            tracing::warn!(target: "canopy::runtime", path = %code_path.display(),
                "compiled function is damaged (its SHA-256 does not match); recompiling");
            self.remove(cid);
            return None;
        }
        Some(code)
    }

    /// Store compiled bytes for `cid`, atomically.
    pub fn write(&self, cid: &Cid, code: &[u8]) -> std::io::Result<()> {
        // Code first, digest second: a crash in between leaves a digest that
        // does not match, which `read` treats as damage.
        write_atomically(&self.code_path(cid), code, None)?;
        write_atomically(&self.digest_path(cid), hex(&sha256(code)).as_bytes(), None)
    }

    /// Drop the entry for `cid` (a damaged or unloadable one, or one
    /// garbage collection freed); returns the bytes freed.
    pub fn remove(&self, cid: &Cid) -> u64 {
        let mut freed = 0;
        for path in [self.code_path(cid), self.digest_path(cid)] {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => freed += size,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(target: "canopy::runtime", path = %path.display(), %error,
                        "cannot remove a compiled function");
                }
            }
        }
        freed
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Code::Sha2_256.digest(bytes).digest().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Collects what a `Hash` impl feeds it, so it can be digested with a hash
/// that is stable across Rust releases (std's `DefaultHasher` is not).
#[derive(Default)]
struct CollectingHasher {
    bytes: Vec<u8>,
}

impl Hasher for CollectingHasher {
    fn finish(&self) -> u64 {
        let digest = sha256(&self.bytes);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(epoch_interruption: bool) -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(epoch_interruption);
        Engine::new(&config).unwrap()
    }

    fn cid_of(bytes: &[u8]) -> Cid {
        Cid::new_v1(0x55, Code::Sha2_256.digest(bytes))
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), &engine(false)).unwrap();
        let cid = cid_of(b"component");
        assert_eq!(cache.read(&cid), None);

        cache.write(&cid, b"compiled code").unwrap();
        assert_eq!(cache.read(&cid).as_deref(), Some(&b"compiled code"[..]));

        // A flipped byte is caught and the entry removed.
        std::fs::write(cache.code_path(&cid), b"compiled codE").unwrap();
        assert_eq!(cache.read(&cid), None);
        assert!(!cache.code_path(&cid).exists());
    }

    #[test]
    fn a_missing_digest_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), &engine(false)).unwrap();
        let cid = cid_of(b"x");
        std::fs::write(cache.code_path(&cid), b"torn").unwrap();
        assert_eq!(cache.read(&cid), None);
    }

    #[test]
    fn entries_are_named_by_cid_and_engine() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), &engine(false)).unwrap();
        let cid = cid_of(b"x");
        let name = cache
            .code_path(&cid)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(&cid.to_string()), "{name}");
        assert!(name.ends_with(".cwasm"), "{name}");
        // Another engine configuration gets other names.
        let other = DiskCache::open(dir.path(), &engine(true)).unwrap();
        assert_ne!(other.code_path(&cid), cache.code_path(&cid));
    }
}
