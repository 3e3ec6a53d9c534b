//! A release's manifest: every artifact of one commit of one environment,
//! by CID. Stored in the blob store itself, so a release is one CID.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub project: String,
    pub branch: String,
    pub commit: String,
    pub domains: Vec<String>,
    pub functions: BTreeMap<String, FunctionArtifact>,
    pub websites: BTreeMap<String, WebsiteArtifact>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionArtifact {
    /// CID of the component.
    pub cid: String,
    /// The HTTP route prefix, if the function has an HTTP trigger.
    pub http_path: Option<String>,
    /// Allowed methods (upper case); `None` allows every method.
    pub http_methods: Option<Vec<String>>,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebsiteArtifact {
    pub path: String,
    /// Path inside the site directory → file.
    pub files: BTreeMap<String, FileArtifact>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileArtifact {
    pub cid: String,
    pub size_bytes: u64,
}
