//! Paths in a project file: file paths inside the repository, and HTTP route
//! prefixes.

/// What is wrong with a path inside the repository, phrased to follow the
/// path in a message (`` `../x` leads outside the repository ...``).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepoPathProblem {
    #[error("is empty")]
    Empty,
    #[error("is absolute; paths are relative to the repository root")]
    Absolute,
    #[error("contains `\\`; separate directories with `/`")]
    Backslash,
    #[error("contains a NUL character")]
    Nul,
    #[error("leads outside the repository (too many `..`)")]
    OutsideRepository,
    /// Resolved against `base`, it climbs above the repository root.
    #[error("leads outside the repository from `{base}`")]
    OutsideFrom { base: String },
}

/// Normalise a path inside the repository: relative, `/`-separated, no `.`
/// parts, `..` resolved, never above the root. The root itself is `.`.
pub fn normalize_repo_path(text: &str) -> Result<String, RepoPathProblem> {
    if text.is_empty() {
        return Err(RepoPathProblem::Empty);
    }
    if text.starts_with('/') || text.starts_with('\\') || has_drive_prefix(text) {
        return Err(RepoPathProblem::Absolute);
    }
    if text.contains('\\') {
        return Err(RepoPathProblem::Backslash);
    }
    if text.contains('\0') {
        return Err(RepoPathProblem::Nul);
    }
    let parts = resolve(Vec::new(), text).ok_or(RepoPathProblem::OutsideRepository)?;
    Ok(join(&parts))
}

/// Resolve `relative` against the repository path `base` (normalised), and
/// check the result stays inside the repository. Used for a build's
/// `output`, which is relative to the build's `dir`.
pub fn join_repo_path(base: &str, relative: &str) -> Result<String, RepoPathProblem> {
    match normalize_repo_path(relative) {
        // `..` may climb out of `dir` (a workspace's shared `target/`), but
        // not out of the repository: checked below, from `base`.
        Ok(_) | Err(RepoPathProblem::OutsideRepository) => {}
        Err(problem) => return Err(problem),
    }
    let base_parts: Vec<&str> = if base == "." {
        Vec::new()
    } else {
        base.split('/').collect()
    };
    let parts = resolve(base_parts, relative).ok_or_else(|| RepoPathProblem::OutsideFrom {
        base: base.to_owned(),
    })?;
    Ok(join(&parts))
}

fn has_drive_prefix(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

fn resolve<'a>(mut parts: Vec<&'a str>, text: &'a str) -> Option<Vec<&'a str>> {
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts)
}

fn join(parts: &[&str]) -> String {
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// What is wrong with an HTTP route prefix, phrased to follow it in a
/// message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutePathProblem {
    #[error("does not start with `/`")]
    NotAbsolute,
    #[error("contains `{0}`; a route is a path prefix without query or fragment")]
    QueryOrFragment(char),
    #[error(
        "contains `{}`; spaces and control characters are not allowed (percent-encode them)",
        .0.escape_debug()
    )]
    Unencoded(char),
    #[error("has an empty segment (`//`)")]
    EmptySegment,
    #[error("has a `{0}` segment; write the path it means")]
    DotSegment(&'static str),
}

/// Check an HTTP route prefix and return its normal form: starts with `/`,
/// no `?`, `#`, `.`/`..` segments or empty segments, no trailing `/` except
/// for the root `/` itself.
pub fn normalize_http_path(text: &str) -> Result<String, RoutePathProblem> {
    if !text.starts_with('/') {
        return Err(RoutePathProblem::NotAbsolute);
    }
    if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(RoutePathProblem::QueryOrFragment(c));
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(RoutePathProblem::Unencoded(c));
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    for segment in trimmed[1..].split('/') {
        match segment {
            "" => return Err(RoutePathProblem::EmptySegment),
            "." => return Err(RoutePathProblem::DotSegment(".")),
            ".." => return Err(RoutePathProblem::DotSegment("..")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// Whether the route prefix `prefix` (normalised) matches the request path
/// `request_path`: equal, or followed by `/` (`/hello` matches `/hello/x`,
/// not `/hellox`); `/` matches every path. The gateway picks the longest
/// matching prefix.
pub fn path_matches_prefix(prefix: &str, request_path: &str) -> bool {
    debug_assert!(prefix.starts_with('/'), "route prefixes are normalised");
    if prefix == "/" {
        return request_path.starts_with('/');
    }
    match request_path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths() {
        assert_eq!(
            normalize_repo_path("functions/hello.wasm"),
            Ok("functions/hello.wasm".into())
        );
        assert_eq!(normalize_repo_path("./a//b/./c/"), Ok("a/b/c".into()));
        assert_eq!(normalize_repo_path("a/../b"), Ok("b".into()));
        assert_eq!(normalize_repo_path("."), Ok(".".into()));
        for bad in ["", "/etc/passwd", "..", "a/../../b", "C:/x", "a\\b"] {
            assert!(
                normalize_repo_path(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            join_repo_path("functions/api", "target/x.wasm"),
            Ok("functions/api/target/x.wasm".into())
        );
        assert_eq!(
            join_repo_path("functions/api", "../../target/x.wasm"),
            Ok("target/x.wasm".into())
        );
        assert_eq!(join_repo_path(".", "x.wasm"), Ok("x.wasm".into()));
        assert!(join_repo_path("functions/api", "../../../x.wasm").is_err());
        assert!(join_repo_path("functions/api", "/x.wasm").is_err());
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(path_matches_prefix("/", "/anything"));
        assert!(path_matches_prefix("/hello", "/hello"));
        assert!(path_matches_prefix("/hello", "/hello/"));
        assert!(path_matches_prefix("/hello", "/hello/x/y"));
        assert!(!path_matches_prefix("/hello", "/hellox"));
        assert!(!path_matches_prefix("/hello", "/"));
    }

    #[test]
    fn http_paths() {
        assert_eq!(normalize_http_path("/"), Ok("/".into()));
        assert_eq!(normalize_http_path("//"), Ok("/".into()));
        assert_eq!(normalize_http_path("/hello/"), Ok("/hello".into()));
        assert_eq!(normalize_http_path("/api/v1"), Ok("/api/v1".into()));
        for bad in [
            "", "hello", "/a?b", "/a#b", "/a//b", "/a/../b", "/./a", "/a b",
        ] {
            assert!(
                normalize_http_path(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
