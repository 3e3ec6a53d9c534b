//! One user-facing error about a project file, located by line and column.
//!
//! The first line of the rendering is a contract that tools and tests rely on:
//! `FILE:LINE:COLUMN: MESSAGE`, optionally followed by `  help: WHAT TO DO`.

use std::fmt;

/// An error in a project file: where it is, what is wrong, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// The file name as the user knows it, e.g. `canopy.yaml`.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What went wrong, naming the field (`functions.hello.http.path: ...`).
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `line:column` (both 1-based) of `file`.
    pub fn new(
        file: impl Into<String>,
        line: usize,
        column: usize,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        debug_assert!(line >= 1 && column >= 1, "positions are 1-based");
        Self {
            file: file.into(),
            line,
            column,
            message: message.into(),
            help,
        }
    }

    /// `FILE:LINE:COLUMN`, the form used to refer to another place in a message.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file, self.line, self.column)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), Printable(&self.message))?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {}", Printable(help))?;
        }
        Ok(())
    }
}

/// Text with control characters escaped (`\n`, `\0`, `\u{1b}`): messages
/// quote user input, and one diagnostic must stay one line (plus its help)
/// whatever a value holds.
struct Printable<'a>(&'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Every error found in one project file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sort by position so output follows the file from top to bottom.
    pub(crate) fn sorted(mut diagnostics: Vec<Diagnostic>) -> Self {
        // Stable sort: two errors at one place keep the order they were found in.
        diagnostics.sort_by_key(|d| (d.line, d.column));
        Self(diagnostics)
    }

    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Self {
        Self(vec![diagnostic])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_line_plus_help_whatever_the_message_holds() {
        let d = Diagnostic::new(
            "canopy.yaml",
            2,
            7,
            "project: `a\nb\u{1b}`",
            Some("fix\tit".into()),
        );
        assert_eq!(
            d.to_string(),
            "canopy.yaml:2:7: project: `a\\nb\\u{1b}`\n  help: fix\\tit"
        );
        let none = Diagnostic::new("canopy.yaml", 1, 1, "empty", None);
        assert_eq!(
            Diagnostics(vec![d.clone(), none])
                .to_string()
                .lines()
                .count(),
            3
        );
    }
}
