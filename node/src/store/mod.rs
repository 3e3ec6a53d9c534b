//! Content-addressed blobs on this node's disk.
//!
//! The store owns everything under its root directory:
//!
//! ```text
//! root/blobs/<shard>/<cid>   one file per blob, named by its CID (base32)
//! root/tmp/                  writes in progress (same filesystem as blobs/)
//! root/quarantine/<cid>      blobs that failed verification, kept for inspection
//! ```
//!
//! A CID is CIDv1, codec raw (0x55), multihash sha2-256. `<shard>` is the
//! next-to-last two characters of the CID string (as IPFS's flatfs does: the
//! leading characters are the same for every CID, the last one carries few
//! bits).
//!
//! Guarantees:
//! - **Atomic**: a blob is written to `tmp/`, synced, renamed into place and
//!   its directory synced; after a crash a blob is either whole or absent.
//!   Every such write goes through the store's [`Disk`] (the OS disk in
//!   production, [`BlobStore::open_on`] takes the simulator's), so a
//!   simulated crash can take what was not synced.
//! - **Deduplicated**: putting content that is already stored does not rewrite it.
//! - **Verified on every read**: [`BlobStore::get`] hashes what it read;
//!   [`BlobReader`] hashes as it streams and fails its last read on a
//!   mismatch. A corrupt blob is moved to `quarantine/` so that it is never
//!   served again and a later `put` of the real content heals the store.
//!
//! The store does not replicate or fetch from peers, and does not decide
//! what is garbage: [`crate::gc`] knows which blobs are referenced and asks
//! the store to remove the others ([`BlobStore::remove_untouched`]). The
//! store keeps what that needs to be safe: the set of blobs stored (or
//! stored again) since the collector last looked, which it never removes.
//! Its API is blocking (plain file IO); call it from `spawn_blocking` on an
//! async path.

mod collect;
mod error;
mod hash;
mod reader;
mod writer;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cid::Cid;

pub use collect::StoreHold;
pub use error::StoreError;
pub use hash::{RAW_CODEC, SHA2_256_CODE, cid_of};
pub use reader::BlobReader;
pub use writer::BlobWriter;

use hash::{CidHasher, check_supported};

use crate::bugs::{self, Bug};
use crate::env::{Disk, DiskFile, os_disk};

/// Size of the buffer used when copying streamed content.
const COPY_CHUNK_BYTES: usize = 64 * 1024;
/// How much of a blob `get` reads before hashing it (fits in L2 cache).
const GET_CHUNK_BYTES: u64 = 256 * 1024;

/// A content-addressed blob store rooted at one directory.
#[derive(Debug)]
pub struct BlobStore {
    /// Every write, rename, removal and sync goes through it.
    disk: Arc<dyn Disk>,
    root: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    /// Names temp files uniquely within this process.
    next_tmp: AtomicU64,
    /// Serialises "publish into place" against "move to quarantine", so a
    /// reader that found an old corrupt copy never quarantines a fresh good
    /// copy that a concurrent `put` just renamed into place.
    publish_lock: Mutex<()>,
    /// Blobs stored, or stored again, since the collector last took them:
    /// they may belong to a deploy in flight that nothing references yet,
    /// so they are not removed ([`BlobStore::remove_untouched`]).
    touched: Mutex<collect::Touched>,
}

impl BlobStore {
    /// Open (creating if needed) the store rooted at `root`, on the OS disk.
    ///
    /// Leftover temp files of writes interrupted by a crash are removed.
    pub fn open(root: impl AsRef<Path>) -> Result<BlobStore, StoreError> {
        Self::open_on(os_disk(), root)
    }

    /// Open the store rooted at `root`, writing through `disk` (a node's
    /// [`Env::disk`](crate::env::Env::disk)).
    pub fn open_on(disk: Arc<dyn Disk>, root: impl AsRef<Path>) -> Result<BlobStore, StoreError> {
        let root = root.as_ref().to_path_buf();
        let store = BlobStore {
            disk,
            blobs_dir: root.join("blobs"),
            tmp_dir: root.join("tmp"),
            quarantine_dir: root.join("quarantine"),
            root,
            next_tmp: AtomicU64::new(0),
            publish_lock: Mutex::new(()),
            touched: Mutex::new(collect::Touched::default()),
        };
        for dir in [&store.blobs_dir, &store.tmp_dir, &store.quarantine_dir] {
            store
                .disk
                .create_dir_all(dir)
                .map_err(|e| StoreError::io("create directory", dir, e))?;
        }
        // Nothing in tmp/ was ever visible as a blob: it is safe to drop.
        // In name order, not the filesystem's: the simulator's disk journals
        // each removal, and a replay must see them in the same order.
        let mut stale = fs::read_dir(&store.tmp_dir)
            .and_then(|entries| {
                entries
                    .map(|entry| entry.map(|e| e.path()))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .map_err(|e| StoreError::io("list directory", &store.tmp_dir, e))?;
        stale.sort();
        for path in stale {
            store
                .disk
                .remove_file(&path)
                .map_err(|e| StoreError::io("remove stale temp file", &path, e))?;
        }
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `cid` lives on disk (whether or not it exists).
    pub fn blob_path(&self, cid: &Cid) -> PathBuf {
        let name = cid.to_string();
        self.blobs_dir.join(shard_of(&name)).join(name)
    }

    /// Store `bytes`; returns their CID. A no-op if they are already stored.
    pub fn put(&self, bytes: &[u8]) -> Result<Cid, StoreError> {
        let cid = cid_of(bytes);
        // Before the check: a collection that runs between the check and
        // the caller's use sees the touch and keeps the blob.
        self.touch(&cid);
        if self.holds_intact_size(&cid, bytes.len() as u64)? {
            return Ok(cid);
        }
        let (tmp_path, mut file) = self.create_tmp()?;
        let written = file
            .write_all(bytes)
            .map_err(|e| StoreError::io("write temp file", &tmp_path, e));
        if let Err(e) = written {
            self.remove_quietly(&tmp_path);
            return Err(e);
        }
        self.publish(&cid, &tmp_path, file)?;
        Ok(cid)
    }

    /// Store the contents of the file at `path`, streaming (never holding the
    /// whole file in memory); returns its CID.
    pub fn put_file(&self, path: &Path) -> Result<Cid, StoreError> {
        let file = File::open(path).map_err(|e| StoreError::io("open file to store", path, e))?;
        self.put_reader(file)
    }

    /// Store everything `reader` yields, streaming; returns its CID.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<Cid, StoreError> {
        let (tmp_path, mut file) = self.create_tmp()?;
        let copied = copy_hashing(&mut reader, &mut file, &tmp_path);
        let (cid, size_bytes) = match copied {
            Ok(done) => done,
            Err(e) => {
                self.remove_quietly(&tmp_path);
                return Err(e);
            }
        };
        self.touch(&cid);
        if self.holds_intact_size(&cid, size_bytes)? {
            drop(file);
            self.remove_quietly(&tmp_path);
            return Ok(cid);
        }
        self.publish(&cid, &tmp_path, file)?;
        Ok(cid)
    }

    /// The blob's bytes, verified against its CID.
    ///
    /// On a mismatch the blob is quarantined and [`StoreError::Corrupt`] is
    /// returned; the bad bytes are never handed out.
    pub fn get(&self, cid: &Cid) -> Result<Bytes, StoreError> {
        check_supported(cid)?;
        let path = self.blob_path(cid);
        let mut file = self.open_existing(cid, &path)?;
        let size_bytes = file
            .metadata()
            .map_err(|e| StoreError::io("read metadata of", &path, e))?
            .len();
        // One pass: hash each chunk while it is still in cache, into a
        // buffer sized once (no regrowth copies of large blobs).
        let mut bytes = Vec::with_capacity(usize::try_from(size_bytes).unwrap_or(0));
        let mut hasher = CidHasher::new();
        loop {
            let start = bytes.len();
            let read = (&mut file)
                .take(GET_CHUNK_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| StoreError::io("read blob", &path, e))?;
            if read == 0 {
                break;
            }
            hasher.update(&bytes[start..]);
        }
        if hasher.finish() != *cid {
            return Err(self.quarantine(cid, &file));
        }
        Ok(Bytes::from(bytes))
    }

    /// A streaming reader over the blob, verified as it goes.
    ///
    /// A consumer must not act on the streamed bytes until the reader has
    /// returned end-of-file: only then is the content known to match `cid`.
    /// If it does not, the last read fails with an `io::Error` carrying
    /// [`StoreError::Corrupt`] (see [`StoreError::from_io_error`]).
    pub fn open_blob(&self, cid: &Cid) -> Result<BlobReader<&BlobStore>, StoreError> {
        let (path, file, size_bytes) = self.open_for_reading(cid)?;
        Ok(BlobReader::new(self, *cid, path, file, size_bytes))
    }

    /// [`BlobStore::open_blob`], for a reader that owns its way to the
    /// store (it can move to the blocking pool for each read and back).
    pub fn open_blob_shared(
        self: &Arc<Self>,
        cid: &Cid,
    ) -> Result<BlobReader<Arc<BlobStore>>, StoreError> {
        let (path, file, size_bytes) = self.open_for_reading(cid)?;
        Ok(BlobReader::new(self.clone(), *cid, path, file, size_bytes))
    }

    fn open_for_reading(&self, cid: &Cid) -> Result<(PathBuf, File, u64), StoreError> {
        check_supported(cid)?;
        let path = self.blob_path(cid);
        let file = self.open_existing(cid, &path)?;
        let size_bytes = file
            .metadata()
            .map_err(|e| StoreError::io("read metadata of", &path, e))?
            .len();
        Ok((path, file, size_bytes))
    }

    /// Whether the store holds a blob named `cid` (not verified).
    pub fn contains(&self, cid: &Cid) -> bool {
        check_supported(cid).is_ok() && self.blob_path(cid).is_file()
    }

    /// The size of the stored blob in bytes (not verified).
    pub fn size(&self, cid: &Cid) -> Result<u64, StoreError> {
        check_supported(cid)?;
        let path = self.blob_path(cid);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { cid: *cid })
            }
            Err(e) => Err(StoreError::io("read metadata of", &path, e)),
        }
    }

    /// Re-hash the stored blob; quarantines it and returns
    /// [`StoreError::Corrupt`] if it does not match.
    pub fn verify(&self, cid: &Cid) -> Result<(), StoreError> {
        let mut reader = self.open_blob(cid)?;
        let mut sink = io::sink();
        match io::copy(&mut reader, &mut sink) {
            Ok(_) => Ok(()),
            Err(e) => match StoreError::from_io_error(&e) {
                Some(StoreError::Corrupt { cid, path }) => Err(StoreError::Corrupt {
                    cid: *cid,
                    path: path.clone(),
                }),
                _ => Err(StoreError::io("read blob", self.blob_path(cid), e)),
            },
        }
    }

    /// Every blob in the store, in CID order. Files whose name is not a CID
    /// are skipped with a warning.
    pub fn list(&self) -> Result<Vec<Cid>, StoreError> {
        let mut cids = BTreeSet::new();
        let shards = fs::read_dir(&self.blobs_dir)
            .map_err(|e| StoreError::io("list directory", &self.blobs_dir, e))?;
        for shard in shards {
            let shard = shard.map_err(|e| StoreError::io("list directory", &self.blobs_dir, e))?;
            let shard_path = shard.path();
            if !shard_path.is_dir() {
                continue;
            }
            let entries = fs::read_dir(&shard_path)
                .map_err(|e| StoreError::io("list directory", &shard_path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::io("list directory", &shard_path, e))?;
                let name = entry.file_name();
                match name.to_str().map(Cid::try_from) {
                    Some(Ok(cid)) => {
                        cids.insert(cid);
                    }
                    _ => {
                        tracing::warn!(path = %entry.path().display(), "blob store: skipping a file whose name is not a CID")
                    }
                }
            }
        }
        Ok(cids.into_iter().collect())
    }

    /// Open the blob file, mapping "absent" to [`StoreError::NotFound`].
    fn open_existing(&self, cid: &Cid, path: &Path) -> Result<File, StoreError> {
        match File::open(path) {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { cid: *cid })
            }
            Err(e) => Err(StoreError::io("open blob", path, e)),
        }
    }

    /// Whether a blob named `cid` with the expected size is already in place.
    ///
    /// A stored copy with the wrong size is certainly corrupt: it is
    /// quarantined here so the caller's write replaces it.
    fn holds_intact_size(&self, cid: &Cid, size_bytes: u64) -> Result<bool, StoreError> {
        let path = self.blob_path(cid);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io("open blob", &path, e)),
        };
        let stored_bytes = file
            .metadata()
            .map_err(|e| StoreError::io("read metadata of", &path, e))?
            .len();
        if stored_bytes == size_bytes {
            return Ok(true);
        }
        let _ = self.quarantine(cid, &file);
        Ok(false)
    }

    fn create_tmp(&self) -> Result<(PathBuf, DiskFile), StoreError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir.join(format!("put-{}-{n}", std::process::id()));
        let file = self
            .disk
            .create_new(&path)
            .map_err(|e| StoreError::io("create temp file", &path, e))?;
        Ok((path, file))
    }

    /// Make a fully written temp file the blob `cid`: sync, rename, fsync dir.
    fn publish(&self, cid: &Cid, tmp_path: &Path, file: DiskFile) -> Result<(), StoreError> {
        let synced = if bugs::active(Bug::SkipFsync) {
            Ok(())
        } else {
            self.disk
                .sync(&file)
                .map_err(|e| StoreError::io("sync temp file", tmp_path, e))
        };
        drop(file);
        if let Err(e) = synced {
            self.remove_quietly(tmp_path);
            return Err(e);
        }
        let dest = self.blob_path(cid);
        let shard_dir = dest.parent().unwrap_or(&self.blobs_dir).to_path_buf();
        let result = self.publish_locked(tmp_path, &dest, &shard_dir);
        if result.is_err() {
            self.remove_quietly(tmp_path);
        }
        result
    }

    fn publish_locked(
        &self,
        tmp_path: &Path,
        dest: &Path,
        shard_dir: &Path,
    ) -> Result<(), StoreError> {
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Durable on return: the shard's entry in blobs/ is synced.
        self.disk
            .create_dir_all(shard_dir)
            .map_err(|e| StoreError::io("create directory", shard_dir, e))?;
        self.disk
            .rename(tmp_path, dest)
            .map_err(|e| StoreError::io("move temp file into", dest, e))?;
        if bugs::active(Bug::SkipFsync) {
            return Ok(());
        }
        self.sync_dir(shard_dir)
    }

    /// Move the blob file that `opened` was read from into quarantine and
    /// return the error to report. Only moves it if the path still names the
    /// same file (a concurrent `put` may have healed it meanwhile).
    fn quarantine(&self, cid: &Cid, opened: &File) -> StoreError {
        let path = self.blob_path(cid);
        let target = self.quarantine_dir.join(cid.to_string());
        let _guard = self.publish_lock.lock().unwrap_or_else(|p| p.into_inner());
        let same_file = match (opened.metadata(), fs::metadata(&path)) {
            (Ok(a), Ok(b)) => same_inode(&a, &b),
            _ => false,
        };
        if same_file {
            match self.disk.rename(&path, &target) {
                Ok(()) => {
                    // The quarantined copy first: it is the evidence, and
                    // without it a crash could leave the blob neither in
                    // quarantine nor in place — gone, as if collected. Then
                    // the blob's name, which must not come back.
                    let _ = self.sync_dir(&self.quarantine_dir);
                    if let Some(dir) = path.parent() {
                        let _ = self.sync_dir(dir);
                    }
                }
                Err(e) => {
                    tracing::error!(cid = %cid, path = %path.display(), error = %e, "blob store: could not move a corrupt blob to quarantine")
                }
            }
        }
        let err = StoreError::Corrupt {
            cid: *cid,
            path: target,
        };
        tracing::error!(cid = %cid, "{err}");
        err
    }
}

/// The shard directory name of a CID string: its next-to-last two characters.
fn shard_of(cid_string: &str) -> &str {
    let len = cid_string.len();
    debug_assert!(
        len >= 3 && cid_string.is_ascii(),
        "CID strings are long ASCII"
    );
    cid_string
        .get(len.saturating_sub(3)..len.saturating_sub(1))
        .unwrap_or("__")
}

/// Copy `reader` into `file` while hashing; returns the CID and byte count.
fn copy_hashing(
    reader: &mut impl Read,
    file: &mut DiskFile,
    tmp_path: &Path,
) -> Result<(Cid, u64), StoreError> {
    let mut hasher = CidHasher::new();
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut size_bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io("read content to store for", tmp_path, e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| StoreError::io("write temp file", tmp_path, e))?;
        size_bytes += n as u64;
    }
    Ok((hasher.finish(), size_bytes))
}

#[cfg(unix)]
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.len() == b.len()
}

impl BlobStore {
    /// fsync a directory so a rename into it survives a crash.
    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        self.disk
            .sync_dir(dir)
            .map_err(|e| StoreError::io("sync directory", dir, e))
    }

    /// Remove a temp file that will never be published. Not synced: after a
    /// crash it may come back, and [`BlobStore::open`] removes it then.
    fn remove_quietly(&self, path: &Path) {
        if let Err(e) = self.disk.remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "blob store: could not remove temp file");
        }
    }
}

#[cfg(test)]
mod tests;
