//! Durable file replacement: the one way node code writes a small file that
//! must survive a crash whole (state, keys, certificates, compiled code).
//!
//! Write a temporary file beside the target, set its mode, flush it to disk,
//! rename it into place, then flush the directory so the rename itself is
//! durable: readers see the old file or the whole new one, never a torn one.

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically and durably. `mode` (Unix
/// permission bits) is applied before any byte is written, so a secret is
/// never readable by others, not even in the temporary file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    if let Some(mode) = mode {
        set_mode(tmp.as_file(), mode)?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
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
}
