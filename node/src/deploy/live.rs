//! A release ready to serve: its manifest and its compiled functions, and
//! loading one back from the store by its manifest's CID.
//!
//! Loading reads every blob through the store, which verifies it against its
//! CID, so nothing of a release serves before all of it checked out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::runtime::{Function, Runtime};
use crate::store::BlobStore;

use super::Precedence;
use super::error::{InvalidCid, LoadError};
use super::manifest::Manifest;

/// A loaded release: its manifest and the compiled functions it serves.
pub(super) struct LiveRelease {
    pub manifest_cid: cid::Cid,
    pub manifest: Manifest,
    pub functions: BTreeMap<String, Arc<Function>>,
    /// Its rank in cluster state (`None`: not recorded there).
    pub precedence: Option<Precedence>,
}

/// Load a stored release: manifest and components, verified.
pub(super) async fn load(
    store: &BlobStore,
    runtime: &Runtime,
    manifest_cid: &str,
    precedence: Option<Precedence>,
) -> Result<LiveRelease, LoadError> {
    let cid = parse_cid(manifest_cid)?;
    let manifest: Manifest = serde_json::from_slice(&store.get(&cid)?)?;
    let mut functions = BTreeMap::new();
    for (name, artifact) in &manifest.functions {
        let cid = parse_cid(&artifact.cid)?;
        let bytes = store.get(&cid)?;
        let loaded = runtime.load(&cid, &bytes).await?;
        functions.insert(name.clone(), loaded);
    }
    Ok(LiveRelease {
        manifest_cid: cid,
        manifest,
        functions,
        precedence,
    })
}

/// Every blob a release needs: the manifest, every component and every file.
pub fn release_blobs(
    manifest_cid: cid::Cid,
    manifest: &Manifest,
) -> Result<Vec<cid::Cid>, InvalidCid> {
    let mut out = BTreeSet::from([manifest_cid]);
    for artifact in manifest.functions.values() {
        out.insert(parse_cid(&artifact.cid)?);
    }
    for site in manifest.websites.values() {
        for file in site.files.values() {
            out.insert(parse_cid(&file.cid)?);
        }
    }
    Ok(out.into_iter().collect())
}

pub(super) fn parse_cid(text: &str) -> Result<cid::Cid, InvalidCid> {
    cid::Cid::try_from(text).map_err(|source| InvalidCid {
        text: text.to_owned(),
        source,
    })
}
