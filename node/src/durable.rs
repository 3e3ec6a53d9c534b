//! Durable file replacement: the one way node code writes a small file that
//! must survive a crash whole (state, keys, certificates, compiled code).
//!
//! Write a temporary file beside the target, set its mode, flush it to disk,
//! rename it into place, then flush the directory so the rename itself is
//! durable: readers see the old file or the whole new one, never a torn one.
//!
//! [`write_atomically_on`] does it through a node's [`Disk`] (the OS disk in
//! production, the simulator's crash-consistent disk in `canopy-sim`);
//! [`write_atomically`] through the OS disk, for files the simulator does
//! not crash (the node key and the local CA — in the data directory, but
//! written once before anything depends on them —, the CLI's files, the
//! compiled-code cache).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bugs::{self, Bug};
use crate::env::{Disk, OsDisk};

/// Replace `path` with `bytes` atomically and durably, on the OS disk.
/// `mode` (Unix permission bits) is applied before any byte is written, so
/// a secret is never readable by others, not even in the temporary file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_atomically_on(&OsDisk, path, bytes, mode)
}

/// Replace `path` with `bytes` atomically and durably through `disk`; see
/// [`write_atomically`].
pub fn write_atomically_on(
    disk: &dyn Disk,
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    disk.create_dir_all(dir)?;
    let (tmp_path, mut tmp) = create_tmp(disk, path)?;
    let written = (|| {
        if let Some(mode) = mode {
            set_mode(tmp.as_file(), mode)?;
        }
        tmp.write_all(bytes)?;
        // The bug switch `skip-fsync`: the data and the rename stay in the
        // page cache, where a crash may lose or tear them.
        let skip_sync = bugs::active(Bug::SkipFsync);
        if !skip_sync {
            disk.sync(&tmp)?;
        }
        drop(tmp);
        disk.rename(&tmp_path, path)?;
        if !skip_sync {
            disk.sync_dir(dir)?;
        }
        Ok(())
    })();
    if written.is_err() && tmp_path.exists() {
        let _ = disk.remove_file(&tmp_path);
    }
    written
}

/// A new temporary file beside `path`: `.<name>.tmp`, or `.<name>.<n>.tmp`
/// with the first `n` free if another writer (or a crash) holds that name.
/// Named from the directory's contents alone — no random suffix, no
/// process-wide counter — so the simulator's journal of a node's disk is
/// the same whatever else runs in the process.
fn create_tmp(disk: &dyn Disk, path: &Path) -> std::io::Result<(PathBuf, crate::env::DiskFile)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0u64.. {
        let tmp_name = match n {
            0 => format!(".{name}.tmp"),
            n => format!(".{name}.{n}.tmp"),
        };
        let tmp_path = path.with_file_name(tmp_name);
        match disk.create_new(&tmp_path) {
            Ok(file) => return Ok((tmp_path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("u64 names run out")
}

#[cfg(unix)]
fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &std::fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        write_atomically(&path, b"one", Some(0o600)).unwrap();
        write_atomically(&path, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the target is left behind: no temporary files.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn a_temporary_name_in_use_is_skipped_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        // A temporary file another writer (or a crash) left under the
        // first name.
        std::fs::write(dir.path().join(".state.tmp"), b"someone else's").unwrap();
        write_atomically(&path, b"mine", None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"mine");
        assert_eq!(
            std::fs::read(dir.path().join(".state.tmp")).unwrap(),
            b"someone else's"
        );
        assert!(!dir.path().join(".state.1.tmp").exists());
    }
}
