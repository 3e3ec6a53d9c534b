//! From live releases to the gateway's route table.
//!
//! Hostnames: branch `main` answers at `<project>.localhost` and at each of
//! the project's `domains`; any other branch `B` answers at
//! `<label(B)>.<project>.localhost`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::manifest::Manifest;
use super::{EnvKey, PRODUCTION_BRANCH};
use crate::body::Body;
use crate::gateway::{FunctionTarget, Route, RouteTable, Site, StaticSite, Target};
use crate::git;
use crate::runtime::{Function, FunctionLimits};
use crate::store::BlobStore;

/// The zone every environment gets a name in.
pub const LOCAL_ZONE: &str = "localhost";

/// The hostnames an environment answers at.
pub fn hosts_of(key: &EnvKey, domains: &[String]) -> Vec<String> {
    if key.branch == PRODUCTION_BRANCH {
        let mut hosts = vec![format!("{}.{LOCAL_ZONE}", key.project)];
        hosts.extend(domains.iter().map(|d| d.to_ascii_lowercase()));
        hosts
    } else {
        vec![format!(
            "{}.{}.{LOCAL_ZONE}",
            git::branch_label(&key.branch),
            key.project
        )]
    }
}

/// A function behind a route: the compiled component and its limits.
struct FunctionRoute {
    name: String,
    function: Arc<Function>,
    limits: FunctionLimits,
}

impl FunctionTarget for FunctionRoute {
    fn call(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> BoxFuture<'static, http::Response<Body>> {
        let function = self.function.clone();
        let limits = self.limits;
        let name = self.name.clone();
        Box::pin(async move { function.handle(req, &limits, &name).await })
    }
}

pub(super) fn route_table<'a>(
    releases: impl Iterator<
        Item = (
            &'a EnvKey,
            &'a Manifest,
            &'a BTreeMap<String, Arc<Function>>,
        ),
    >,
    domain_owners: &super::domains::Owners,
    store: &Arc<BlobStore>,
) -> RouteTable {
    let mut table = RouteTable::new();
    let mut owners: BTreeMap<String, EnvKey> = BTreeMap::new();
    for (key, manifest, functions) in releases {
        let mut routes = Vec::new();
        for (name, artifact) in &manifest.functions {
            let (Some(path), Some(function)) = (&artifact.http_path, functions.get(name)) else {
                continue;
            };
            let methods = artifact.http_methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            });
            routes.push(Route::new(
                path,
                methods,
                Target::Function(Arc::new(FunctionRoute {
                    name: name.clone(),
                    function: function.clone(),
                    limits: FunctionLimits {
                        timeout: std::time::Duration::from_millis(artifact.timeout_ms),
                        memory_bytes: artifact.memory_bytes,
                        fuel: artifact.fuel,
                        body_bytes: artifact.body_bytes,
                    },
                })),
            ));
        }
        for website in manifest.websites.values() {
            let files = website
                .files
                .iter()
                .filter_map(|(path, file)| {
                    let cid = cid::Cid::try_from(file.cid.as_str()).ok()?;
                    Some((path.clone(), (cid, file.size_bytes)))
                })
                .collect();
            routes.push(Route::new(
                &website.path,
                None,
                Target::Website(Arc::new(StaticSite::from_files(files, store.clone()))),
            ));
        }
        let site = Arc::new(Site::new(
            &key.project,
            &key.branch,
            &manifest.commit,
            routes,
        ));
        // Another project's domain is not served for this one (it owns it
        // now, or won it where two claimed it at once).
        let domains: Vec<String> = manifest
            .domains
            .iter()
            .filter(|d| {
                domain_owners
                    .get(*d)
                    .is_none_or(|owner| *owner == key.project)
            })
            .cloned()
            .collect();
        for host in hosts_of(key, &domains) {
            if let Some(owner) = owners.get(&host) {
                tracing::warn!(%host, owner = %owner, ignored = %key, "two environments claim one host; the first keeps it");
                continue;
            }
            owners.insert(host.clone(), key.clone());
            table.insert_host(&host, site.clone());
        }
    }
    table
}
