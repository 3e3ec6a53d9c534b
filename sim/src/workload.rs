//! The workload: pushes of new deployments to random nodes and requests to
//! random nodes. (Joins and leaves are driven by the harness, drawn from
//! the run's [`crate::faults::Params`].)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use canopy_node::cluster::{ClusterHandle, Deployment, DeploymentUpdate};
use canopy_node::deploy::state::EnvKey;
use canopy_node::env::Rng;
use canopy_node::store::{BlobStore, cid_of};

use crate::faults::uniform;
use crate::trace::{Event, NodeIx, Version};

/// The project every push deploys to.
pub const PROJECT: &str = "shop";
/// The environments pushes go to.
pub const BRANCHES: [&str; 2] = ["main", "dev"];

pub fn env_key(branch: &str) -> EnvKey {
    EnvKey {
        project: PROJECT.into(),
        branch: branch.into(),
    }
}

/// How the trace names a deployment.
pub fn version(env: &EnvKey, d: &Deployment) -> Version {
    Version {
        env: env.to_string(),
        commit: d.commit.clone(),
        seq: d.pushed_at_seq,
        by: d.pushed_by.to_string(),
    }
}

/// The blobs of push number `n`: a manifest and one or two artifacts of
/// random content and size.
pub fn push_blobs(rng: &Rng, seed: u64, n: u64, branch: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let artifacts = (0..uniform(rng, 1, 2))
        .map(|_| {
            let mut bytes = vec![0u8; uniform(rng, 512, 48 * 1024) as usize];
            rng.fill_bytes(&mut bytes);
            bytes
        })
        .collect::<Vec<_>>();
    let manifest = format!(
        "manifest seed={seed} push={n} branch={branch} artifacts={}",
        artifacts
            .iter()
            .map(|a| cid_of(a).to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    (manifest, artifacts)
}

/// Push: store the blobs on the node, then record the deployment in its
/// cluster state (the node's own push path until the deployer does it).
pub fn push(
    store: &BlobStore,
    cluster: &ClusterHandle,
    env: &EnvKey,
    commit: String,
    manifest: &[u8],
    artifacts: &[Vec<u8>],
) -> anyhow::Result<(Deployment, Vec<String>)> {
    let manifest_cid = store.put(manifest)?;
    let mut cids = vec![manifest_cid.to_string()];
    let mut artifact_cids = Vec::new();
    for a in artifacts {
        let cid = store.put(a)?;
        cids.push(cid.to_string());
        artifact_cids.push(cid);
    }
    let deployment = cluster.update(|s| {
        s.apply_deployment(
            env,
            DeploymentUpdate {
                commit,
                manifest_cid,
                artifacts: artifact_cids,
            },
        )
    })?;
    Ok((deployment, cids))
}

/// A request to `node` for `env`: answered by the live version's code,
/// read (verified) from the node's store.
pub fn request(
    node: NodeIx,
    env: &EnvKey,
    live: &Arc<Mutex<BTreeMap<EnvKey, Deployment>>>,
    store: &BlobStore,
) -> Event {
    let current = live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(env)
        .cloned();
    let Some(d) = current else {
        return Event::Served {
            node,
            env: env.to_string(),
            served: None,
            blobs_ok: true,
        };
    };
    let mut blobs_ok = true;
    for cid in std::iter::once(&d.manifest_cid).chain(d.artifacts.iter()) {
        match store.get(cid) {
            Ok(bytes) => blobs_ok &= cid_of(&bytes) == *cid,
            // A corrupt copy is refused (and quarantined): a 503, no
            // response from that version.
            Err(_) => {
                return Event::Served {
                    node,
                    env: env.to_string(),
                    served: None,
                    blobs_ok: true,
                };
            }
        }
    }
    Event::Served {
        node,
        env: env.to_string(),
        served: Some(version(env, &d)),
        blobs_ok,
    }
}
