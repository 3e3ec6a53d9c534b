//! The checks of a project that need its files: components exist and are
//! wasi:http components, directories exist and are directories.

use std::fs;
use std::path::Path;

use super::check::{Reporter, display_path};
use super::component::check_component;
use super::model::{Project, Source};

/// A component larger than this is refused before it is read.
pub const MAX_COMPONENT_SIZE_BYTES: u64 = 256 << 20;

/// Check every file the project names, relative to `root`.
pub fn check_files(project: &Project, root: &Path, reporter: &mut Reporter<'_>) {
    // Symlinks must not lead outside the repository; compare canonical paths.
    let canonical_root = fs::canonicalize(root).ok();
    for (name, function) in &project.functions {
        match &function.source {
            Source::Wasm { path } => check_component_file(
                reporter,
                root,
                canonical_root.as_deref(),
                &["functions", name, "wasm"],
                path,
            ),
            Source::Build { dir, .. } => check_dir(
                reporter,
                root,
                canonical_root.as_deref(),
                &["functions", name, "build", "dir"],
                dir,
            ),
        }
    }
    for (name, website) in &project.websites {
        check_dir(
            reporter,
            root,
            canonical_root.as_deref(),
            &["websites", name, "dir"],
            &website.dir,
        );
    }
}

fn error(reporter: &mut Reporter<'_>, field: &[&str], problem: String, help: Option<String>) {
    let message = format!("{}: {problem}", display_path(field));
    let diagnostic = reporter.diagnostic(field, message, help);
    reporter.diagnostics.push(diagnostic);
}

/// Whether `full` resolves (through symbolic links) outside the repository.
fn escapes(canonical_root: Option<&Path>, full: &Path) -> bool {
    match (canonical_root, fs::canonicalize(full)) {
        (Some(root), Ok(target)) => !target.starts_with(root),
        _ => false,
    }
}

fn check_component_file(
    reporter: &mut Reporter<'_>,
    root: &Path,
    canonical_root: Option<&Path>,
    field: &[&str],
    path: &str,
) {
    let full = root.join(path);
    let metadata = match fs::metadata(&full) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(
                reporter,
                field,
                format!("`{path}` does not exist"),
                Some(
                    "build the component and commit it at that path, or correct the path (it is relative to the repository root)"
                        .to_string(),
                ),
            );
        }
        Err(e) => {
            return error(
                reporter,
                field,
                format!("`{path}` cannot be read: {e}"),
                Some("check the file's permissions".to_string()),
            );
        }
    };
    if metadata.is_dir() {
        return error(
            reporter,
            field,
            format!("`{path}` is a directory, not a file"),
            Some("point `wasm` at the component's `.wasm` file inside it".to_string()),
        );
    }
    if !metadata.is_file() {
        return error(
            reporter,
            field,
            format!("`{path}` is not a regular file"),
            Some("point `wasm` at a `.wasm` file committed in the repository".to_string()),
        );
    }
    if escapes(canonical_root, &full) {
        return error(
            reporter,
            field,
            format!("`{path}` is a symbolic link that leads outside the repository"),
            Some("commit the component itself instead of a link to it".to_string()),
        );
    }
    if metadata.len() > MAX_COMPONENT_SIZE_BYTES {
        return error(
            reporter,
            field,
            format!(
                "`{path}` is {} bytes; the limit is {MAX_COMPONENT_SIZE_BYTES} bytes",
                metadata.len()
            ),
            Some(
                "strip debug information (`wasm-tools strip`) or build in release mode".to_string(),
            ),
        );
    }
    match fs::read(&full) {
        Ok(bytes) => {
            if let Err(problem) = check_component(&bytes) {
                error(
                    reporter,
                    field,
                    format!("`{path}` {problem}"),
                    problem.help(),
                );
            }
        }
        Err(e) => error(
            reporter,
            field,
            format!("`{path}` cannot be read: {e}"),
            Some("check the file's permissions".to_string()),
        ),
    }
}

fn check_dir(
    reporter: &mut Reporter<'_>,
    root: &Path,
    canonical_root: Option<&Path>,
    field: &[&str],
    dir: &str,
) {
    let full = root.join(dir);
    match fs::metadata(&full) {
        Ok(metadata) if metadata.is_dir() => {
            if escapes(canonical_root, &full) {
                error(
                    reporter,
                    field,
                    format!("`{dir}` is a symbolic link that leads outside the repository"),
                    Some("commit the directory itself instead of a link to it".to_string()),
                );
            }
        }
        Ok(_) => error(
            reporter,
            field,
            format!("`{dir}` is a file, not a directory"),
            Some("point it at a directory of the repository".to_string()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => error(
            reporter,
            field,
            format!("directory `{dir}` does not exist"),
            Some(
                "create and commit it (git does not keep empty directories: add a file), or correct the path (it is relative to the repository root)"
                    .to_string(),
            ),
        ),
        Err(e) => error(
            reporter,
            field,
            format!("`{dir}` cannot be read: {e}"),
            Some("check the directory's permissions".to_string()),
        ),
    }
}
