//! The checked project: what a `canopy.yaml` means once every rule holds.
//!
//! These types are what the rest of the node uses (and stores in the JSON
//! deployment manifest). They hold only valid values: names are DNS labels,
//! paths are normalised and inside the repository, limits are in bounds.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::paths;

/// Default `limits.timeout` of a function.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Smallest `limits.timeout`.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Largest `limits.timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default `limits.memory` of a function.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Smallest `limits.memory`.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// Largest `limits.memory` (a 32-bit linear memory's reach).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Default `build.timeout`.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Smallest `build.timeout`.
pub const MIN_BUILD_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `build.timeout`.
pub const MAX_BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Most variables in a `build.env`.
pub const MAX_BUILD_ENV: usize = 64;
/// Longest value of a `build.env` variable.
pub const MAX_BUILD_ENV_VALUE: usize = 4096;

/// A project: the contents of one `canopy.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The `project:` name, a DNS label.
    pub name: String,
    /// Production hostnames, lowercase; may start with `*.`.
    pub domains: Vec<String>,
    pub functions: BTreeMap<String, Function>,
    pub websites: BTreeMap<String, Website>,
}

/// One function: where its component comes from, what triggers it, its limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub source: Source,
    /// `None`: no HTTP route (it may have other triggers later).
    pub http: Option<HttpTrigger>,
    pub limits: Limits,
}

/// Where a function's component comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Source {
    /// A prebuilt component committed in the repository.
    Wasm {
        /// Normalised path from the repository root.
        path: String,
    },
    /// A component built on push.
    Build {
        /// Normalised directory from the repository root (`.` for the root)
        /// where `command` runs.
        dir: String,
        /// A shell command line.
        command: String,
        /// The built component, relative to `dir`, normalised; may start with
        /// `..` (a workspace's shared `target/`) but stays in the repository.
        output: String,
        /// How long the build may take.
        timeout: Duration,
        /// The build's environment beyond `PATH` and `HOME` (sorted by name).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
    },
}

impl Source {
    /// The component's path from the repository root: `path` for a prebuilt
    /// component, `dir` + `output` for a build.
    pub fn component_path(&self) -> String {
        match self {
            Source::Wasm { path } => path.clone(),
            Source::Build { dir, output, .. } => {
                // Checked when parsed; the fallback only guards hand-made values.
                paths::join_repo_path(dir, output).unwrap_or_else(|_| output.clone())
            }
        }
    }
}

/// An HTTP route to a function: a path prefix and, optionally, methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpTrigger {
    /// Normalised prefix: starts with `/`, no trailing `/` unless it is `/`.
    /// It matches itself and everything below it (`/hello`, `/hello/x`).
    pub path: String,
    /// Uppercase methods; `None` accepts every method.
    #[serde(with = "method_list")]
    pub methods: Option<Vec<http::Method>>,
}

impl HttpTrigger {
    /// Whether this route serves `method`.
    pub fn allows(&self, method: &http::Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// What one call of a function may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time for one request.
    pub timeout: Duration,
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wasm fuel (about one unit per instruction) one request may use;
    /// `None` (`fuel: 0` or absent): unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<NonZeroU64>,
    /// The largest request body, in bytes; `None`: the node's default
    /// (`limits.wasm.request_body`). Never 0. Whether the node allows this
    /// much is checked at deploy, not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            fuel: None,
            body_bytes: None,
        }
    }
}

/// A static website: a directory of the repository served at a path prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Website {
    /// Normalised directory from the repository root.
    pub dir: String,
    /// Normalised prefix, like [`HttpTrigger::path`].
    pub path: String,
}

impl Website {
    /// The methods a website answers; used to decide whether a function may
    /// share its path (only with disjoint methods).
    pub fn methods() -> [http::Method; 2] {
        [http::Method::GET, http::Method::HEAD]
    }
}

/// `Option<Vec<http::Method>>` as a list of strings (http has no serde support).
mod method_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        methods: &Option<Vec<http::Method>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>())
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<http::Method>>, D::Error> {
        let names: Option<Vec<String>> = Option::deserialize(deserializer)?;
        names
            .map(|names| {
                names
                    .iter()
                    .map(|name| {
                        http::Method::from_bytes(name.as_bytes()).map_err(|_| {
                            serde::de::Error::custom(format!("`{name}` is not an HTTP method"))
                        })
                    })
                    .collect()
            })
            .transpose()
    }
}
