//! From the raw shape to a checked [`Project`]: every value rule of
//! `canopy.yaml` (names, paths, units and bounds, methods, route conflicts),
//! each error located through the source map.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::time::Duration;

use super::diagnostic::Diagnostic;
use super::model::*;
use super::names;
use super::paths;
use super::raw::{Humane, RawBuild, RawFunction, RawHttp, RawLimits, RawProject, RawWebsite};
use super::source_map::{Position, SourceMap};
use super::units::{self, UnitError};

/// Where the field reference lives, for help texts.
pub const REFERENCE: &str = "docs/canopy-yaml.md";

/// Turns field paths into located diagnostics.
pub struct Reporter<'a> {
    pub file: &'a str,
    pub map: &'a SourceMap,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a str, map: &'a SourceMap) -> Self {
        Self {
            file,
            map,
            diagnostics: Vec::new(),
        }
    }

    /// A diagnostic at `position`.
    pub fn at(
        &self,
        position: Position,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        Diagnostic::new(self.file, position.line, position.column, message, help)
    }

    /// A diagnostic pointing at the field `path`.
    pub fn diagnostic(
        &self,
        path: &[&str],
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        self.at(self.map.locate(path), message, help)
    }

    /// Record an error about the field `path`; the message is prefixed with
    /// the field's name.
    fn error(&mut self, path: &[&str], problem: impl AsRef<str>, help: impl Into<String>) {
        let message = format!("{}: {}", display_path(path), problem.as_ref());
        let diagnostic = self.diagnostic(path, message, Some(help.into()));
        self.diagnostics.push(diagnostic);
    }

    /// `canopy.yaml:LINE:COLUMN` of `position`, to refer to it in a message.
    fn location(&self, position: Position) -> String {
        format!("{}:{}:{}", self.file, position.line, position.column)
    }
}

/// `functions.hello.http.path`, `domains[1]`, `functions.hello.http.methods[0]`.
pub fn display_path(path: &[&str]) -> String {
    let mut out = String::new();
    for (i, segment) in path.iter().enumerate() {
        let in_list = i > 0 && matches!(path[i - 1], "domains" | "methods");
        if in_list && !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        "canopy.yaml".to_string()
    } else {
        out
    }
}

/// Check every value of `raw`. Returns the project, or all the errors found.
pub fn check(raw: RawProject, reporter: &mut Reporter<'_>) -> Option<Project> {
    let name = check_label(reporter, &["project"], "project name", &raw.project);
    let domains = check_domains(reporter, raw.domains.unwrap_or_default());

    let mut functions = BTreeMap::new();
    for (function_name, raw_function) in raw.functions.unwrap_or_default() {
        let label_ok = check_label(
            reporter,
            &["functions", &function_name],
            "function name",
            &function_name,
        )
        .is_some();
        if let Some(function) = check_function(reporter, &function_name, raw_function)
            && label_ok
        {
            functions.insert(function_name, function);
        }
    }

    let mut websites = BTreeMap::new();
    for (website_name, raw_website) in raw.websites.unwrap_or_default() {
        let label_ok = check_label(
            reporter,
            &["websites", &website_name],
            "website name",
            &website_name,
        )
        .is_some();
        if let Some(website) = check_website(reporter, &website_name, raw_website)
            && label_ok
        {
            websites.insert(website_name, website);
        }
    }

    check_routes(reporter, &functions, &websites);

    let name = name?;
    if !reporter.diagnostics.is_empty() {
        return None;
    }
    Some(Project {
        name,
        domains,
        functions,
        websites,
    })
}

fn check_label(
    reporter: &mut Reporter<'_>,
    path: &[&str],
    what: &str,
    value: &str,
) -> Option<String> {
    if value.is_empty() {
        reporter.error(
            path,
            format!("the {what} is empty"),
            "use a DNS label: 1-63 characters of lowercase letters, digits and `-`, e.g. `shop`",
        );
        return None;
    }
    match names::check_label(value) {
        Ok(()) => Some(value.to_string()),
        Err(problem) => {
            let suggestion = names::suggest_label(value)
                .map(|s| format!(", e.g. `{s}`"))
                .unwrap_or_default();
            // A map key (function or website name): point at the key itself.
            let position = if path.len() == 2 {
                reporter
                    .map
                    .key(path)
                    .unwrap_or_else(|| reporter.map.locate(path))
            } else {
                reporter.map.locate(path)
            };
            let diagnostic = reporter.at(
                position,
                format!("{}: the {what} `{value}` {problem}", display_path(path)),
                Some(format!(
                    "use a DNS label: 1-63 characters of lowercase letters, digits and `-`, not starting or ending with `-`{suggestion}; names become part of hostnames and URLs"
                )),
            );
            reporter.diagnostics.push(diagnostic);
            None
        }
    }
}

fn check_domains(reporter: &mut Reporter<'_>, raw: Vec<String>) -> Vec<String> {
    let mut domains = Vec::new();
    let mut seen: BTreeMap<String, Position> = BTreeMap::new();
    for (i, domain) in raw.iter().enumerate() {
        let index = i.to_string();
        let path = ["domains", index.as_str()];
        match names::normalize_domain(domain) {
            Ok(normal) => {
                let here = reporter.map.locate(&path);
                if let Some(first) = seen.get(&normal) {
                    let first = reporter.location(*first);
                    let case = if *domain != normal {
                        " (domain names are case-insensitive)"
                    } else {
                        ""
                    };
                    reporter.error(
                        &path,
                        format!("`{domain}` is listed twice (first at {first}){case}"),
                        "remove one of them",
                    );
                } else {
                    seen.insert(normal.clone(), here);
                    domains.push(normal);
                }
            }
            Err(problem) => reporter.error(
                &path,
                format!("`{domain}` is not a valid domain: it {problem}"),
                "write a hostname such as `shop.example.com`, or `*.shop.example.com` for every subdomain",
            ),
        }
    }
    domains
}

fn check_function(reporter: &mut Reporter<'_>, name: &str, raw: RawFunction) -> Option<Function> {
    let errors_before = reporter.diagnostics.len();
    let source = match (raw.wasm, raw.build) {
        (Some(_), Some(_)) => {
            reporter.error(
                &["functions", name, "build"],
                format!("function `{name}` has both `wasm` and `build`"),
                "keep one: `wasm` for a component committed in the repository, or `build` to build it on every push",
            );
            None
        }
        (None, None) => {
            reporter.error(
                &["functions", name],
                format!("function `{name}` has neither `wasm` nor `build`"),
                format!(
                    "add `wasm: functions/{name}.wasm` (a prebuilt wasi:http component in the repository) or `build: {{ dir: ..., command: ..., output: ... }}`; see {REFERENCE}"
                ),
            );
            None
        }
        (Some(wasm), None) => check_repo_path(reporter, &["functions", name, "wasm"], &wasm)
            .map(|path| Source::Wasm { path }),
        (None, Some(build)) => check_build(reporter, name, build),
    };
    let http = raw.http.and_then(|http| check_http(reporter, name, http));
    let limits = check_limits(reporter, name, raw.limits);
    if reporter.diagnostics.len() > errors_before {
        return None;
    }
    debug_assert!(source.is_some(), "a missing source is always reported");
    Some(Function {
        source: source?,
        http,
        limits,
    })
}

fn check_repo_path(reporter: &mut Reporter<'_>, path: &[&str], value: &str) -> Option<String> {
    match paths::normalize_repo_path(value) {
        Ok(normal) => Some(normal),
        Err(problem) => {
            reporter.error(
                path,
                format!("`{value}` {problem}"),
                "write a path relative to the repository root that stays inside it, e.g. `functions/hello.wasm`",
            );
            None
        }
    }
}

fn check_build(reporter: &mut Reporter<'_>, name: &str, raw: RawBuild) -> Option<Source> {
    let dir = match &raw.dir {
        Some(dir) => check_repo_path(reporter, &["functions", name, "build", "dir"], dir),
        None => Some(".".to_string()),
    };
    let command = raw.command.trim().to_string();
    if command.is_empty() {
        reporter.error(
            &["functions", name, "build", "command"],
            "is empty",
            "give the shell command that builds the component, e.g. `cargo build --release --target wasm32-wasip2`",
        );
    }
    let output = dir.as_deref().and_then(|dir| {
        let path = ["functions", name, "build", "output"];
        match paths::join_repo_path(dir, &raw.output) {
            Ok(_) => {
                // Keep it relative to `dir`, as written but normalised.
                let relative = paths::normalize_repo_path(&raw.output)
                    .unwrap_or_else(|_| raw.output.trim_end_matches('/').to_string());
                Some(relative)
            }
            Err(problem) => {
                reporter.error(
                    &path,
                    format!("`{}` {problem}", raw.output),
                    "write the built component's path relative to `dir`, e.g. `target/wasm32-wasip2/release/api.wasm`",
                );
                None
            }
        }
    });
    let timeout = check_duration(
        reporter,
        &["functions", name, "build", "timeout"],
        raw.timeout.as_ref(),
        DEFAULT_BUILD_TIMEOUT,
        MIN_BUILD_TIMEOUT..=MAX_BUILD_TIMEOUT,
    );
    let env = check_build_env(reporter, name, raw.env.unwrap_or_default());
    if command.is_empty() {
        return None;
    }
    Some(Source::Build {
        dir: dir?,
        command,
        output: output?,
        timeout: timeout?,
        env: env?,
    })
}

/// `build.env`: variable names a shell accepts, values of bounded length, a
/// bounded count.
fn check_build_env(
    reporter: &mut Reporter<'_>,
    name: &str,
    env: std::collections::BTreeMap<String, String>,
) -> Option<Vec<(String, String)>> {
    let path = ["functions", name, "build", "env"];
    let mut ok = true;
    if env.len() > MAX_BUILD_ENV {
        reporter.error(
            &path,
            format!(
                "has {} variables; at most {MAX_BUILD_ENV} are allowed",
                env.len()
            ),
            "keep the build's settings in a file of the repository instead",
        );
        ok = false;
    }
    for (variable, value) in &env {
        let valid_name = variable
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && variable
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            reporter.error(
                &[&path[..], &[variable.as_str()]].concat(),
                format!("`{variable}` is not a variable name"),
                "use letters, digits and `_`, not starting with a digit, e.g. `CARGO_PROFILE`",
            );
            ok = false;
        }
        if value.len() > MAX_BUILD_ENV_VALUE || value.contains('\0') {
            reporter.error(
                &[&path[..], &[variable.as_str()]].concat(),
                format!("is {} bytes or holds a NUL; values are at most {MAX_BUILD_ENV_VALUE} bytes of text", value.len()),
                "shorten the value",
            );
            ok = false;
        }
    }
    ok.then(|| env.into_iter().collect())
}

fn check_http(reporter: &mut Reporter<'_>, name: &str, raw: RawHttp) -> Option<HttpTrigger> {
    let path = check_http_path(reporter, &["functions", name, "http", "path"], &raw.path);
    let methods = match raw.methods {
        None => Some(None),
        Some(list) if list.is_empty() => {
            reporter.error(
                &["functions", name, "http", "methods"],
                "is an empty list, so no request could reach the function",
                "list the methods to accept, e.g. `[GET, POST]`, or remove `methods` to accept all",
            );
            None
        }
        Some(list) => {
            let mut methods: Vec<http::Method> = Vec::new();
            let mut ok = true;
            for (i, text) in list.iter().enumerate() {
                let index = i.to_string();
                let upper = text.to_ascii_uppercase();
                match http::Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !upper.is_empty() => {
                        if !methods.contains(&method) {
                            methods.push(method);
                        }
                    }
                    _ => {
                        ok = false;
                        reporter.error(
                            &["functions", name, "http", "methods", &index],
                            format!("`{text}` is not an HTTP method"),
                            "use method names such as GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                        );
                    }
                }
            }
            ok.then_some(Some(methods))
        }
    };
    Some(HttpTrigger {
        path: path?,
        methods: methods?,
    })
}

fn check_http_path(reporter: &mut Reporter<'_>, path: &[&str], value: &str) -> Option<String> {
    match paths::normalize_http_path(value) {
        Ok(normal) => Some(normal),
        Err(problem) => {
            let example = format!("/{}", value.trim_matches('/'));
            let example =
                paths::normalize_http_path(&example).unwrap_or_else(|_| "/hello".to_string());
            reporter.error(
                path,
                format!("`{value}` {problem}"),
                format!("write a URL path prefix such as `{example}`; it matches itself and everything below it"),
            );
            None
        }
    }
}

fn check_limits(reporter: &mut Reporter<'_>, name: &str, raw: Option<RawLimits>) -> Limits {
    let Some(raw) = raw else {
        return Limits::default();
    };
    let timeout = check_duration(
        reporter,
        &["functions", name, "limits", "timeout"],
        raw.timeout.as_ref(),
        DEFAULT_TIMEOUT,
        MIN_TIMEOUT..=MAX_TIMEOUT,
    );
    let memory_bytes = check_size(
        reporter,
        &["functions", name, "limits", "memory"],
        raw.memory.as_ref(),
        DEFAULT_MEMORY_BYTES,
        MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES,
    );
    let fuel = check_fuel(
        reporter,
        &["functions", name, "limits", "fuel"],
        raw.fuel.as_ref(),
    );
    let body_bytes = check_body(
        reporter,
        &["functions", name, "limits", "body"],
        raw.body.as_ref(),
    );
    // On error the caller drops the function; the defaults are never used.
    Limits {
        timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        memory_bytes: memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES),
        fuel: fuel.unwrap_or(None),
        body_bytes: body_bytes.unwrap_or(None),
    }
}

/// `limits.fuel`: a whole number; 0 means unlimited, as absent does.
/// `None` on error.
fn check_fuel(
    reporter: &mut Reporter<'_>,
    path: &[&str],
    raw: Option<&Humane>,
) -> Option<Option<NonZeroU64>> {
    let Some(Humane(text)) = raw else {
        return Some(None);
    };
    // `1_000_000` reads better than `1000000`; YAML leaves it a string.
    let digits: String = text.trim().chars().filter(|c| *c != '_').collect();
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !text.trim().starts_with('_')
        && !text.trim().ends_with('_');
    let help = "write a whole number of fuel units (about one per wasm instruction), e.g. `100000000`, or 0 for no limit";
    if !well_formed {
        reporter.error(path, format!("`{text}` is not a whole number"), help);
        return None;
    }
    match digits.parse::<u64>() {
        Ok(fuel) => Some(NonZeroU64::new(fuel)),
        Err(_) => {
            reporter.error(
                path,
                format!("`{text}` is too large: it must be at most {}", u64::MAX),
                help,
            );
            None
        }
    }
}

/// `limits.body`: a size of at least one byte; absent means the node's
/// default. `None` on error.
fn check_body(
    reporter: &mut Reporter<'_>,
    path: &[&str],
    raw: Option<&Humane>,
) -> Option<Option<u64>> {
    let Some(Humane(text)) = raw else {
        return Some(None);
    };
    match units::parse_size(text) {
        Ok(0) => {
            reporter.error(
                path,
                format!("`{text}` would refuse every request with a body"),
                "give the largest request body the function accepts, e.g. `1MiB`, or remove `body` for the node's default (32MiB unless its operator changed limits.wasm.request_body)",
            );
            None
        }
        Ok(size) => Some(Some(size)),
        Err(error) => {
            reporter.error(
                path,
                error.to_string(),
                format!("write {}", units::SIZE_FORMS),
            );
            None
        }
    }
}

fn check_duration(
    reporter: &mut Reporter<'_>,
    path: &[&str],
    raw: Option<&Humane>,
    default: Duration,
    bounds: std::ops::RangeInclusive<Duration>,
) -> Option<Duration> {
    let Some(Humane(text)) = raw else {
        return Some(default);
    };
    let range = format!(
        "from {} to {}",
        units::format_duration(*bounds.start()),
        units::format_duration(*bounds.end())
    );
    match units::parse_duration(text) {
        Ok(duration) if bounds.contains(&duration) => Some(duration),
        Ok(_) => {
            reporter.error(
                path,
                format!("`{text}` is out of bounds: it must be {range}"),
                format!(
                    "pick a duration {range}; the default is {}",
                    units::format_duration(default)
                ),
            );
            None
        }
        Err(error) => {
            let problem = match &error {
                UnitError::DurationWithoutUnit(_) => {
                    format!("{error}; did you mean `{text}s`?")
                }
                _ => error.to_string(),
            };
            reporter.error(path, problem, format!("write {}", units::DURATION_FORMS));
            None
        }
    }
}

fn check_size(
    reporter: &mut Reporter<'_>,
    path: &[&str],
    raw: Option<&Humane>,
    default: u64,
    bounds: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    let Some(Humane(text)) = raw else {
        return Some(default);
    };
    let range = format!(
        "from {} to {}",
        units::format_size(*bounds.start()),
        units::format_size(*bounds.end())
    );
    match units::parse_size(text) {
        Ok(size) if bounds.contains(&size) => Some(size),
        Ok(_) => {
            reporter.error(
                path,
                format!("`{text}` is out of bounds: it must be {range}"),
                format!(
                    "pick a size {range}; the default is {}",
                    units::format_size(default)
                ),
            );
            None
        }
        Err(error) => {
            reporter.error(
                path,
                error.to_string(),
                format!("write {}", units::SIZE_FORMS),
            );
            None
        }
    }
}

fn check_website(reporter: &mut Reporter<'_>, name: &str, raw: RawWebsite) -> Option<Website> {
    let dir = check_repo_path(reporter, &["websites", name, "dir"], &raw.dir);
    let path = check_http_path(reporter, &["websites", name, "path"], &raw.path);
    Some(Website {
        dir: dir?,
        path: path?,
    })
}

/// One route, for conflict checks.
struct Route {
    /// `functions.hello` or `websites.www`.
    owner: String,
    /// The field path of the route's `path` value.
    field: Vec<String>,
    path: String,
    /// `None`: every method.
    methods: Option<BTreeSet<String>>,
    at: Position,
}

/// Two routes with the same path conflict unless their methods are disjoint;
/// the later one in the file is the error.
fn check_routes(
    reporter: &mut Reporter<'_>,
    functions: &BTreeMap<String, Function>,
    websites: &BTreeMap<String, Website>,
) {
    let mut routes = Vec::new();
    for (name, function) in functions {
        if let Some(http) = &function.http {
            let field = ["functions", name.as_str(), "http", "path"];
            routes.push(Route {
                owner: format!("functions.{name}"),
                field: field.iter().map(|s| s.to_string()).collect(),
                path: http.path.clone(),
                methods: http
                    .methods
                    .as_ref()
                    .map(|m| m.iter().map(|m| m.as_str().to_string()).collect()),
                at: reporter.map.locate(&field),
            });
        }
    }
    for (name, website) in websites {
        let field = ["websites", name.as_str(), "path"];
        routes.push(Route {
            owner: format!("websites.{name}"),
            field: field.iter().map(|s| s.to_string()).collect(),
            path: website.path.clone(),
            methods: Some(
                Website::methods()
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ),
            at: reporter.map.locate(&field),
        });
    }
    routes.sort_by_key(|route| route.at);
    for (i, route) in routes.iter().enumerate() {
        let clash = routes[..i].iter().find(|earlier| {
            earlier.path == route.path
                && match (&earlier.methods, &route.methods) {
                    (Some(a), Some(b)) => !a.is_disjoint(b),
                    _ => true,
                }
        });
        if let Some(earlier) = clash {
            let field: Vec<&str> = route.field.iter().map(String::as_str).collect();
            let location = reporter.location(earlier.at);
            reporter.error(
                &field,
                format!(
                    "route `{}` is also used by {} at {location}",
                    route.path, earlier.owner
                ),
                "give one of them another path, or split the methods between them (`methods: [...]`; a website answers GET and HEAD)",
            );
        }
    }
}
