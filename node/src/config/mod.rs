//! The project schema: `canopy.yaml`, its checks and its errors.
//!
//! Owns: reading a project file into a checked [`Project`], locating every
//! error at `canopy.yaml:LINE:COLUMN` with a message naming the field and a
//! help line saying what to do ([`Diagnostic`]), the file checks behind
//! `canopy validate` ([`load_dir`]), and the "is this a wasi:http component"
//! check ([`check_component`]). It does not build, store or run anything.
//!
//! How: saphyr-parser builds a source map (field
//! path → line:column) and finds syntax errors and duplicate keys;
//! serde_yaml_ng reads the shape (unknown keys are errors); `check.rs`
//! checks the values; `files.rs` checks the repository's files. The reference
//! for users is `docs/canopy-yaml.md`.

mod check;
mod component;
mod diagnostic;
mod files;
mod model;
pub(crate) mod names;
mod paths;
mod raw;
mod source_map;
mod units;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use component::{ComponentError, HTTP_HANDLER_INTERFACE, check_component};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use files::MAX_COMPONENT_SIZE_BYTES;
pub use model::*;
pub use paths::path_matches_prefix;
pub use units::{SIZE_FORMS, UnitError, format_duration, format_size, parse_duration, parse_size};

use check::{REFERENCE, Reporter, display_path};
use source_map::{Position, RootKind, SourceMap, SourceMapError};

/// The project file's name at the repository root.
pub const FILE_NAME: &str = "canopy.yaml";

/// A `canopy.yaml` larger than this is refused (a project file is a few KiB).
pub const MAX_FILE_SIZE_BYTES: u64 = 1 << 20;

/// A parsed and checked project file, with what is needed to point at its
/// fields in later errors.
#[derive(Clone, Debug)]
pub struct ProjectFile {
    pub project: Project,
    /// The name errors are reported under, e.g. `canopy.yaml`.
    pub file_name: String,
    source_map: SourceMap,
}

/// Parse `text` (the contents of `file_name`) and apply every check that
/// needs no files. All errors are returned, in file order.
pub fn parse(file_name: &str, text: &str) -> Result<ProjectFile, Diagnostics> {
    let map = SourceMap::build(text).map_err(|error| source_map_diagnostic(file_name, error))?;
    let reporter = Reporter::new(file_name, &map);
    match map.root() {
        RootKind::Mapping => {}
        RootKind::Empty => {
            return Err(reporter
                .at(
                    Position::START,
                    format!("{file_name} is empty"),
                    Some(format!(
                        "a project needs at least a name: write `project: NAME` (e.g. `project: shop`); see {REFERENCE}"
                    )),
                )
                .into());
        }
        kind @ (RootKind::Sequence | RootKind::Scalar) => {
            let what = if kind == RootKind::Sequence {
                "a list"
            } else {
                "a single value"
            };
            return Err(reporter
                .at(
                    Position::START,
                    format!("{file_name} is {what}, not a mapping of keys to values"),
                    Some(format!(
                        "write keys at the start of lines: `project: NAME`, then `functions:`, `websites:`...; see {REFERENCE}"
                    )),
                )
                .into());
        }
    }
    if !map.duplicates().is_empty() {
        let diagnostics = map
            .duplicates()
            .iter()
            .map(|duplicate| {
                let mut path: Vec<&str> = duplicate.parent.iter().map(String::as_str).collect();
                path.push(&duplicate.key);
                reporter.at(
                    duplicate.second,
                    format!(
                        "{}: the key `{}` appears twice (first at {file_name}:{}:{})",
                        display_path(&path),
                        duplicate.key,
                        duplicate.first.line,
                        duplicate.first.column
                    ),
                    Some(
                        "remove or rename one of them; each key may appear once in a mapping"
                            .to_string(),
                    ),
                )
            })
            .collect();
        return Err(Diagnostics::sorted(diagnostics));
    }
    let raw: raw::RawProject =
        serde_yaml_ng::from_str(text).map_err(|error| serde_diagnostic(&reporter, &error))?;
    let mut reporter = reporter;
    match check::check(raw, &mut reporter) {
        Some(project) if reporter.diagnostics.is_empty() => Ok(ProjectFile {
            project,
            file_name: file_name.to_string(),
            source_map: map.clone(),
        }),
        _ => {
            debug_assert!(
                !reporter.diagnostics.is_empty(),
                "a rejected project has a reason"
            );
            Err(Diagnostics::sorted(reporter.diagnostics))
        }
    }
}

/// What `canopy validate DIR` runs: read `DIR/canopy.yaml`, parse it, and
/// check the files it names. Blocking file IO: from async code, call it in
/// `spawn_blocking`.
pub fn load_dir(root: &Path) -> Result<ProjectFile, Diagnostics> {
    let path = root.join(FILE_NAME);
    let at_start = |message: String, help: String| -> Diagnostics {
        Diagnostic::new(FILE_NAME, 1, 1, message, Some(help)).into()
    };
    let text = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_file() && metadata.len() > MAX_FILE_SIZE_BYTES => {
            return Err(at_start(
                format!(
                    "is {} bytes; the limit is {MAX_FILE_SIZE_BYTES} bytes",
                    metadata.len()
                ),
                "a project file holds configuration only; keep data in other files".to_string(),
            ));
        }
        Ok(metadata) if !metadata.is_file() => {
            return Err(at_start(
                format!("is not a regular file in {}", root.display()),
                format!("{FILE_NAME} must be a file at the repository root"),
            ));
        }
        Ok(_) => match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
                at_start(
                    format!(
                        "is not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                    "save the file as UTF-8".to_string(),
                )
            })?,
            Err(e) => {
                return Err(at_start(
                    format!("cannot be read: {e}"),
                    "check the file's permissions".to_string(),
                ));
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(at_start(
                format!("not found in {}", root.display()),
                format!(
                    "run `canopy validate DIR` with the project's root directory, or create {FILE_NAME} there with at least `project: NAME`; see {REFERENCE}"
                ),
            ));
        }
        Err(e) => {
            return Err(at_start(
                format!("cannot be read in {}: {e}", root.display()),
                "check the directory's permissions".to_string(),
            ));
        }
    };
    let file = parse(FILE_NAME, &text)?;
    let problems = file.check_files(root);
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(Diagnostics::sorted(problems))
    }
}

impl ProjectFile {
    /// Check the files the project names, relative to the repository root
    /// `root`: `wasm` files exist, are regular files inside the repository
    /// and are wasi:http components; build and website directories exist.
    /// Blocking file IO.
    pub fn check_files(&self, root: &Path) -> Vec<Diagnostic> {
        let mut reporter = Reporter::new(&self.file_name, &self.source_map);
        files::check_files(&self.project, root, &mut reporter);
        Diagnostics::sorted(reporter.diagnostics).0
    }

    /// Check a build's output after the build ran; the error points at
    /// `functions.NAME.build.output`.
    pub fn check_built_component(&self, function: &str, bytes: &[u8]) -> Result<(), Diagnostic> {
        let output_field = ["functions", function, "build", "output"];
        let output_path = match self.project.functions.get(function).map(|f| &f.source) {
            Some(source @ Source::Build { .. }) => source.component_path(),
            Some(Source::Wasm { .. }) => {
                return Err(self.diagnostic(
                    &["functions", function],
                    format!("function `{function}` has no `build`, so it has no build output"),
                    None,
                ));
            }
            None => {
                return Err(self.diagnostic(
                    &["functions"],
                    format!("there is no function `{function}`"),
                    None,
                ));
            }
        };
        check_component(bytes).map_err(|problem| {
            self.diagnostic(
                &output_field,
                format!("`{output_path}` {problem}"),
                problem.help(),
            )
        })
    }

    /// A diagnostic pointing at the field `field_path` (e.g.
    /// `["functions", "api", "build", "command"]`), for errors found later
    /// (a failing build). The message is prefixed with the field's dotted
    /// name unless it already starts with it. A field that is not in the
    /// file points at its nearest ancestor.
    pub fn diagnostic(
        &self,
        field_path: &[&str],
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let message = message.into();
        let name = display_path(field_path);
        let message = if message.starts_with(&name) {
            message
        } else {
            format!("{name}: {message}")
        };
        Reporter::new(&self.file_name, &self.source_map).diagnostic(field_path, message, help)
    }

    /// A one-line summary for `canopy validate` on success.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}: project `{}` is valid ({}, {})",
            self.file_name,
            self.project.name,
            plural(self.project.functions.len(), "function"),
            plural(self.project.websites.len(), "website"),
        )
    }
}

fn source_map_diagnostic(file_name: &str, error: SourceMapError) -> Diagnostics {
    let diagnostic = match error {
        SourceMapError::Syntax { info, at } => Diagnostic::new(
            file_name,
            at.line,
            at.column,
            format!("invalid YAML: {info}"),
            Some(
                "fix the YAML syntax here: indent with spaces (not tabs), consistently; close every `[`, `{` and quote"
                    .to_string(),
            ),
        ),
        SourceMapError::TooDeep { at } => Diagnostic::new(
            file_name,
            at.line,
            at.column,
            "values are nested too deeply",
            Some(format!("a project file nests a few levels at most; see {REFERENCE}")),
        ),
    };
    diagnostic.into()
}

/// Keys that the design plans but this version does not implement yet.
const PLANNED_KEYS: &[&str] = &[
    "databases",
    "storages",
    "channels",
    "pubsub",
    "timer",
    "storage",
];

/// serde_yaml_ng's error, located, with its position suffix removed and a
/// help line added.
fn serde_diagnostic(reporter: &Reporter<'_>, error: &serde_yaml_ng::Error) -> Diagnostics {
    let mut message = error.to_string();
    let position = match error.location() {
        Some(location) => {
            // The position is in our own `LINE:COLUMN` prefix already.
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            if let Some(index) = message.find(&suffix) {
                message.replace_range(index..index + suffix.len(), "");
            }
            Position {
                line: location.line().max(1),
                column: location.column().max(1),
            }
        }
        None => Position::START,
    };
    let help = serde_help(&message);
    reporter.at(position, message, Some(help)).into()
}

fn serde_help(message: &str) -> String {
    let quoted = |after: &str| -> Option<String> {
        let start = message.find(after)? + after.len();
        let end = message[start..].find('`')?;
        Some(message[start..start + end].to_string())
    };
    if let Some(key) = quoted("unknown field `") {
        if PLANNED_KEYS.contains(&key.as_str()) {
            return format!(
                "`{key}` is planned but not supported by this version of Canopy; remove it"
            );
        }
        return format!(
            "remove `{key}` or correct its spelling (the keys allowed here are named above; see {REFERENCE})"
        );
    }
    if let Some(key) = quoted("missing field `") {
        return match key.as_str() {
            "project" => {
                "add the project's name at the top: `project: NAME` (a DNS label, e.g. `shop`)"
                    .to_string()
            }
            other => format!("add `{other}:`; see {REFERENCE}"),
        };
    }
    if message.contains("more than one document") {
        return "keep a single YAML document: remove the extra `---` lines".to_string();
    }
    if message.contains("expected a sequence") {
        return format!("write a list, e.g. `[a, b]` or one `- item` per line; see {REFERENCE}");
    }
    if message.contains("invalid type") {
        return format!("give this field a value of the expected type; see {REFERENCE}");
    }
    format!("see {REFERENCE}")
}

/// `project:` of a `canopy.yaml`, read leniently (the rest may be broken),
/// if it is there and a valid name: what the Git remote compares with the
/// repository a push goes to.
pub fn declared_project(bytes: &[u8]) -> Option<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_slice(bytes).ok()?;
    let name = value.get("project")?.as_str()?;
    names::check_label(name).ok()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod declared_project_tests {
    use super::declared_project;

    #[test]
    fn the_declared_project_is_read_from_broken_files() {
        assert_eq!(
            declared_project(b"project: shop\nfunctions: 3\n").as_deref(),
            Some("shop")
        );
        assert_eq!(declared_project(b"project: Shop!\n"), None);
        assert_eq!(declared_project(b"{{{"), None);
    }
}
