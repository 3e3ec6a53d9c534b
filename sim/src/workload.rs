//! The workload: pushes of new deployments to random nodes and requests to
//! random nodes. (Joins and leaves are driven by the harness, drawn from
//! the run's [`crate::faults::Params`].)

use std::collections::BTreeMap;

use canopy_node::cluster::{ClusterHandle, Deployment, DeploymentUpdate};
use canopy_node::deploy::hosts_of;
use canopy_node::deploy::manifest::{FileArtifact, Manifest, WebsiteArtifact};
use canopy_node::deploy::state::EnvKey;
use canopy_node::env::Rng;
use canopy_node::gateway::Gateway;
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

/// Every acknowledged push by (env, seq, pushed_by): its version and the
/// CIDs of its blobs (manifest first).
pub type Pushes = BTreeMap<(String, u64, String), (Version, Vec<String>)>;

/// The files of push number `n`: a website of one or two files of random
/// content and size.
pub fn push_files(rng: &Rng, seed: u64, n: u64, branch: &str) -> Vec<(String, Vec<u8>)> {
    (0..uniform(rng, 1, 2))
        .map(|i| {
            let mut bytes = format!("seed={seed} push={n} branch={branch} file={i}\n").into_bytes();
            let start = bytes.len();
            bytes.resize(start + uniform(rng, 512, 48 * 1024) as usize, 0);
            rng.fill_bytes(&mut bytes[start..]);
            (format!("file{i}.bin"), bytes)
        })
        .collect()
}

/// Push: store the release's blobs (its files and its manifest) on the node,
/// then record it in the node's cluster state as the deployer's ledger does
/// after a `git push` (the node holds the blobs; the deployment is the push
/// of greatest precedence this node has seen, plus one). The node's
/// follower installs it through its deployer.
pub fn push(
    store: &BlobStore,
    cluster: &ClusterHandle,
    env: &EnvKey,
    commit: &str,
    files: &[(String, Vec<u8>)],
) -> anyhow::Result<(Deployment, Vec<String>)> {
    let mut artifacts = Vec::new();
    let mut site = BTreeMap::new();
    for (name, bytes) in files {
        let cid = store.put(bytes)?;
        artifacts.push(cid);
        site.insert(
            name.clone(),
            FileArtifact {
                cid: cid.to_string(),
                size_bytes: bytes.len() as u64,
            },
        );
    }
    let manifest = Manifest {
        project: env.project.clone(),
        branch: env.branch.clone(),
        commit: commit.to_string(),
        domains: vec![],
        functions: BTreeMap::new(),
        websites: BTreeMap::from([(
            "www".to_string(),
            WebsiteArtifact {
                path: "/".into(),
                files: site,
            },
        )]),
    };
    let manifest_cid = store.put(&serde_json::to_vec(&manifest)?)?;
    let local = cluster.read(|s| s.local_id());
    let deployment = cluster.update(|s| {
        for cid in &artifacts {
            s.add_holder(cid, local)?;
        }
        s.apply_deployment(
            env,
            DeploymentUpdate {
                commit: commit.to_string(),
                manifest_cid,
                artifacts: artifacts.clone(),
            },
        )
    })?;
    let mut cids = vec![manifest_cid.to_string()];
    cids.extend(artifacts.iter().map(|c| c.to_string()));
    Ok((deployment, cids))
}

/// A request to `node` for `env`: the gateway's route table picks the site
/// for the environment's host; its release's blobs are read (verified) from
/// the node's store.
pub fn request(
    node: NodeIx,
    env: &EnvKey,
    gateway: &Gateway,
    store: &BlobStore,
    pushes: &Pushes,
) -> Event {
    let none = || Event::Served {
        node,
        env: env.to_string(),
        served: None,
        blobs_ok: true,
    };
    let routes = gateway.routes();
    let Some(site) = hosts_of(env, &[]).iter().find_map(|h| routes.site(h)) else {
        return none();
    };
    let found = pushes
        .values()
        .find(|(v, _)| v.env == env.to_string() && v.commit == site.commit);
    let Some((version, blobs)) = found else {
        return Event::Served {
            node,
            env: env.to_string(),
            served: Some(Version {
                env: env.to_string(),
                commit: site.commit.clone(),
                seq: 0,
                by: "(no such push)".into(),
            }),
            blobs_ok: true,
        };
    };
    let mut blobs_ok = true;
    for cid in blobs {
        let Ok(cid) = cid::Cid::try_from(cid.as_str()) else {
            blobs_ok = false;
            continue;
        };
        match store.get(&cid) {
            Ok(bytes) => blobs_ok &= cid_of(&bytes) == cid,
            // A corrupt copy is refused (and quarantined): a 503.
            Err(_) => return none(),
        }
    }
    Event::Served {
        node,
        env: env.to_string(),
        served: Some(version.clone()),
        blobs_ok,
    }
}
