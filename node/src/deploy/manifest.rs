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
    /// `limits.fuel`; `None`: unlimited. Absent from manifests written
    /// before fuel limits, and from those of functions without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<std::num::NonZeroU64>,
    /// `limits.body`; `None`: the serving node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_from_before_fuel_and_body_limits_loads() {
        let old = r#"{"cid":"bafk","http_path":"/api","http_methods":null,"timeout_ms":2000,"memory_bytes":67108864}"#;
        let artifact: FunctionArtifact = serde_json::from_str(old).unwrap();
        assert_eq!(artifact.fuel, None);
        assert_eq!(artifact.body_bytes, None);
        // Unset, they are left out: the manifest (and its CID) is as before.
        assert_eq!(serde_json::to_string(&artifact).unwrap(), old);

        let limited = FunctionArtifact {
            fuel: std::num::NonZeroU64::new(5_000_000),
            body_bytes: Some(1 << 20),
            ..artifact
        };
        let json = serde_json::to_string(&limited).unwrap();
        assert!(
            json.contains(r#""fuel":5000000,"body_bytes":1048576"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<FunctionArtifact>(&json).unwrap(),
            limited
        );
    }
}
