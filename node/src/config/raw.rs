//! The shape of `canopy.yaml` as serde reads it: the keys, their nesting and
//! their types, unknown keys rejected. Values are checked afterwards (see
//! `check.rs`), where the source map can point at each one.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `project` and optionally `domains`, `functions`, `websites`"
)]
pub struct RawProject {
    pub project: String,
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    #[serde(default)]
    pub functions: Option<BTreeMap<String, RawFunction>>,
    #[serde(default)]
    pub websites: Option<BTreeMap<String, RawWebsite>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a function: a mapping with `wasm` or `build`, and optionally `http` and `limits`"
)]
pub struct RawFunction {
    #[serde(default)]
    pub wasm: Option<String>,
    #[serde(default)]
    pub build: Option<RawBuild>,
    #[serde(default)]
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a build: a mapping with `command`, `output` and optionally `dir`, `timeout`, `env`"
)]
pub struct RawBuild {
    #[serde(default)]
    pub dir: Option<String>,
    pub command: String,
    pub output: String,
    #[serde(default)]
    pub timeout: Option<Humane>,
    #[serde(default)]
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an HTTP trigger: a mapping with `path` and optionally `methods`"
)]
pub struct RawHttp {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "limits: a mapping with any of `timeout`, `memory`, `fuel`, `body`"
)]
pub struct RawLimits {
    #[serde(default)]
    pub timeout: Option<Humane>,
    #[serde(default)]
    pub memory: Option<Humane>,
    /// A whole number; read as text so its errors can name the field.
    #[serde(default)]
    pub fuel: Option<Humane>,
    #[serde(default)]
    pub body: Option<Humane>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a website: a mapping with `dir` and `path`"
)]
pub struct RawWebsite {
    pub dir: String,
    pub path: String,
}

/// A duration or size as written: `2s`, `64MiB`, or a bare number. Parsed
/// later so its errors can say which field and what forms are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Humane(pub String);

impl<'de> Deserialize<'de> for Humane {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HumaneVisitor;

        impl Visitor<'_> for HumaneVisitor {
            type Value = Humane;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like `2s` or a size like `64MiB`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }

            // YAML integers past 64 bits (a fuel limit too large, say):
            // kept as written, so the check can say it is too large.
            fn visit_u128<E: de::Error>(self, value: u128) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }

            fn visit_i128<E: de::Error>(self, value: i128) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Humane, E> {
                Ok(Humane(value.to_string()))
            }
        }

        deserializer.deserialize_any(HumaneVisitor)
    }
}
