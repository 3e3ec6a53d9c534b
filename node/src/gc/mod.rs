//! Garbage collection: a node's disk and memory hold what its deployments
//! need, and what they stop needing goes, without anyone asking.
//!
//! Every [`GcConfig::interval`] a pass:
//!
//! 1. takes the blobs stored since the last pass ([`BlobStore::take_touched`]);
//! 2. computes the blobs *kept*: every blob of every release this node keeps
//!    (each environment's live release and its history, [`GcConfig::history`]
//!    deep) and every blob of every release cluster state says should serve
//!    (what this node installs or holds for others);
//! 3. removes the stored blobs that have been neither kept nor stored again
//!    for a whole [`GcConfig::grace`] ([`grace`]), each one only if no
//!    deploy stored it meanwhile ([`BlobStore::remove_untouched`]), and
//!    takes this node off their holder records in cluster state;
//! 4. removes the compiled code of collected components and unloads from
//!    memory every component no live release serves;
//! 5. reports what it freed and what each project uses ([`GcReport`], shown
//!    by `canopy status`).
//!
//! Deleting a branch drops its environment with its history, so the next
//! passes free what only it used. A deploy in flight never loses a blob: it
//! holds the store while it runs, so nothing stored meanwhile is removed,
//! and what it stored then waits a whole grace period more; a removal races
//! no store (see [`crate::store`]).
//! Another node never loses a blob it is about to serve: what cluster state
//! names is kept on every node that holds it.

mod grace;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterHandle;
use crate::deploy::manifest::Manifest;
use crate::deploy::{Deployer, EnvKey, release_blobs};
use crate::env::Clock;
use crate::git::RepackPolicy;
use crate::net::NodeId;
use crate::runtime::Runtime;
use crate::store::{BlobStore, StoreError};

pub use grace::Grace;

/// How garbage collection runs (`gc:` in the node config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    /// Time between passes.
    pub interval: Duration,
    /// How long a blob stays after nothing references it and nothing stored
    /// it: longer than any deploy takes from storing its first blob to
    /// going live.
    pub grace: Duration,
    /// Replaced releases kept per environment (what a rollback can reach).
    pub history: usize,
    /// Remove collected components' compiled code. Off where nodes share one
    /// compiled-code directory (the simulator).
    pub compiled_code: bool,
    /// A live function that took no request for this long has its code
    /// unloaded from memory (it comes back from the compiled-code cache
    /// with the next request).
    pub unload_idle: Duration,
    /// When a push merges its repository's packs and drops what no branch
    /// or tag reaches ([`RepackPolicy`]); `None`: never (the simulator,
    /// whose pushes are few).
    pub git_repack: Option<RepackPolicy>,
}

/// The default [`GcConfig::unload_idle`].
pub const DEFAULT_UNLOAD_IDLE: Duration = Duration::from_secs(15 * 60);

/// The default [`GcConfig::interval`].
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// The default [`GcConfig::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);
/// The default [`GcConfig::history`].
pub const DEFAULT_HISTORY: usize = 10;

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            grace: DEFAULT_GRACE,
            history: DEFAULT_HISTORY,
            compiled_code: true,
            unload_idle: DEFAULT_UNLOAD_IDLE,
            git_repack: Some(RepackPolicy::default()),
        }
    }
}

/// What one pass did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// When the pass finished (Unix milliseconds, the node's clock).
    pub finished_unix_ms: u64,
    pub duration_ms: u64,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    /// Compiled components removed from disk, and their bytes.
    pub compiled_removed: usize,
    pub compiled_bytes_freed: u64,
    /// Components unloaded from memory (no live release serves them).
    pub functions_unloaded: usize,
    /// Live components whose code left memory because they were idle
    /// (`gc.unload_idle`).
    #[serde(default)]
    pub functions_idle_unloaded: usize,
    /// Blobs stored after the pass, and their bytes.
    pub blobs_stored: usize,
    pub store_bytes: u64,
    /// Unreferenced blobs still within their grace period.
    pub blobs_waiting: usize,
    /// Use per project.
    pub projects: BTreeMap<String, ProjectUsage>,
    /// Why the pass removed nothing, if it could not tell what is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one project's kept releases use on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectUsage {
    /// Releases kept (live and history, every environment).
    pub releases: usize,
    /// Distinct blobs those releases use, and their bytes on disk.
    pub blobs: usize,
    pub disk_bytes: u64,
    /// Compiled code of its live components, mapped in memory.
    pub memory_bytes: u64,
}

/// Why a pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("cannot list the blob store: {0}")]
    List(#[source] Box<StoreError>),
    #[error(
        "the live release of {env} cannot be read (manifest {manifest}: {reason}); nothing removed until it can"
    )]
    LiveUnreadable {
        env: EnvKey,
        manifest: String,
        reason: String,
    },
}

/// The cluster side a collector consults: what cluster state keeps, and
/// this node's holder records.
#[derive(Clone)]
pub struct ClusterView {
    pub handle: ClusterHandle,
    pub local: NodeId,
}

/// Runs passes; keeps what it needs between them (the grace clocks, the
/// manifests already read) and the last report.
pub struct Collector {
    config: GcConfig,
    store: Arc<BlobStore>,
    runtime: Arc<Runtime>,
    deployer: Arc<Deployer>,
    cluster: Option<ClusterView>,
    grace: Grace,
    /// Manifests are immutable (named by their content): each is read once
    /// while a release keeps it.
    manifests: BTreeMap<Cid, Arc<ManifestBlobs>>,
    /// Per loaded function: its request count at the last pass that saw it
    /// change, and when that was.
    idle: BTreeMap<Cid, (u64, Instant)>,
    last: Arc<Mutex<Option<GcReport>>>,
}

/// A manifest and every blob of its release.
struct ManifestBlobs {
    manifest: Manifest,
    blobs: Vec<Cid>,
}

impl Collector {
    pub fn new(
        config: GcConfig,
        store: Arc<BlobStore>,
        runtime: Arc<Runtime>,
        deployer: Arc<Deployer>,
        cluster: Option<ClusterView>,
    ) -> Self {
        Self {
            config,
            store,
            runtime,
            deployer,
            cluster,
            grace: Grace::new(),
            manifests: BTreeMap::new(),
            idle: BTreeMap::new(),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Where the last report is kept (for status).
    pub fn reports(&self) -> GcReports {
        GcReports(self.last.clone())
    }

    /// One pass (blocking: file IO), timed by the node's `clock`.
    pub fn pass(&mut self, clock: &Clock) -> GcReport {
        let started = clock.now();
        let now = started.into_std();
        let mut report = match self.collect(now) {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%error, "garbage collection: pass skipped");
                GcReport {
                    error: Some(error.to_string()),
                    ..GcReport::default()
                }
            }
        };
        report.finished_unix_ms = clock.unix_now().as_millis().try_into().unwrap_or(u64::MAX);
        report.duration_ms = (clock.now() - started)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
        if report.blobs_removed > 0
            || report.functions_unloaded > 0
            || report.functions_idle_unloaded > 0
        {
            tracing::info!(
                blobs = report.blobs_removed,
                bytes = report.bytes_freed,
                compiled = report.compiled_removed,
                unloaded = report.functions_unloaded,
                idle_unloaded = report.functions_idle_unloaded,
                "garbage collection freed"
            );
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(report.clone());
        report
    }

    fn collect(&mut self, now: Instant) -> Result<GcReport, GcError> {
        // First: a blob stored after this point is touched in the next set.
        let touched = self.store.take_touched();
        let (kept, projects) = self.kept()?;
        let stored: BTreeMap<Cid, u64> = self
            .store
            .list()
            .map_err(|e| GcError::List(Box::new(e)))?
            .into_iter()
            .map(|cid| (cid, self.store.size(&cid).unwrap_or(0)))
            .collect();
        let unreferenced: BTreeSet<Cid> = stored
            .keys()
            .filter(|cid| !kept.contains(cid))
            .copied()
            .collect();
        let due = self
            .grace
            .due(now, self.config.grace, &unreferenced, &touched);

        let mut report = GcReport::default();
        let mut removed = Vec::new();
        for cid in due {
            debug_assert!(!kept.contains(&cid), "a kept blob is never due");
            match self.store.remove_untouched(&cid) {
                Ok(Some(bytes)) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += bytes;
                    removed.push(cid);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%cid, %error, "garbage collection: cannot remove"),
            }
        }
        self.forget_holdings(&removed);
        if self.config.compiled_code {
            for cid in &removed {
                let bytes = self.runtime.remove_compiled(cid);
                if bytes > 0 {
                    report.compiled_removed += 1;
                    report.compiled_bytes_freed += bytes;
                }
            }
        }
        let live_functions = self.deployer.live_functions();
        report.functions_unloaded = self.runtime.retain_loaded(&live_functions);
        report.functions_idle_unloaded = self.unload_idle(now);

        let removed_set: BTreeSet<Cid> = removed.iter().copied().collect();
        for (cid, size) in &stored {
            if !removed_set.contains(cid) {
                report.blobs_stored += 1;
                report.store_bytes += size;
            }
        }
        report.blobs_waiting = self.grace.waiting();
        let resident: BTreeSet<Cid> = self
            .runtime
            .loaded_functions()
            .into_iter()
            .filter(|(_, f)| f.is_resident())
            .map(|(cid, _)| cid)
            .collect();
        report.projects = projects
            .into_iter()
            .map(|(project, (releases, blobs, functions))| {
                let usage = ProjectUsage {
                    releases,
                    blobs: blobs.len(),
                    disk_bytes: blobs.iter().filter_map(|c| stored.get(c)).sum(),
                    memory_bytes: functions
                        .iter()
                        .filter(|c| resident.contains(c))
                        .map(|c| self.runtime.compiled_bytes(c))
                        .sum(),
                };
                (project, usage)
            })
            .collect();
        Ok(report)
    }

    /// Unload the code of every function that took no request for
    /// `unload_idle`; returns how many.
    fn unload_idle(&mut self, now: Instant) -> usize {
        let functions = self.runtime.loaded_functions();
        self.idle.retain(|cid, _| functions.contains_key(cid));
        let mut unloaded = 0;
        for (cid, function) in functions {
            let uses = function.uses();
            let (seen, since) = self.idle.entry(cid).or_insert((uses, now));
            if *seen != uses {
                (*seen, *since) = (uses, now);
                continue;
            }
            if now.saturating_duration_since(*since) >= self.config.unload_idle
                && function.unload_code()
            {
                unloaded += 1;
            }
        }
        unloaded
    }

    /// Every blob kept, and per project: (releases, blobs, components).
    #[allow(clippy::type_complexity)]
    fn kept(
        &mut self,
    ) -> Result<
        (
            BTreeSet<Cid>,
            BTreeMap<String, (usize, BTreeSet<Cid>, BTreeSet<Cid>)>,
        ),
        GcError,
    > {
        let releases = self.deployer.kept_releases();
        let mut kept = BTreeSet::new();
        let mut projects: BTreeMap<String, (usize, BTreeSet<Cid>, BTreeSet<Cid>)> = BTreeMap::new();
        let mut wanted = BTreeSet::new();
        for (env, manifests) in releases {
            for (i, text) in manifests.iter().enumerate() {
                let read = Cid::try_from(text.as_str())
                    .map_err(|e| e.to_string())
                    .and_then(|cid| {
                        wanted.insert(cid);
                        self.manifest(cid).map_err(|e| e.to_string())
                    });
                match read {
                    Ok(release) => {
                        let usage = projects.entry(env.project.clone()).or_default();
                        usage.0 += 1;
                        usage.1.extend(release.blobs.iter().copied());
                        usage.2.extend(
                            release
                                .manifest
                                .functions
                                .values()
                                .filter_map(|f| Cid::try_from(f.cid.as_str()).ok()),
                        );
                        kept.extend(release.blobs.iter().copied());
                    }
                    // The live release (first): its blobs cannot be told,
                    // so nothing may go.
                    Err(reason) if i == 0 => {
                        return Err(GcError::LiveUnreadable {
                            env,
                            manifest: text.clone(),
                            reason,
                        });
                    }
                    // An old release whose manifest is gone cannot be rolled
                    // back to: it leaves the history.
                    Err(reason) => {
                        tracing::warn!(env = %env, manifest = %text, %reason,
                            "garbage collection: a release in the history cannot be read; dropping it");
                        self.deployer.drop_from_history(&env, text);
                    }
                }
            }
        }
        self.manifests.retain(|cid, _| wanted.contains(cid));
        // What serves is the live map; the state catches up just after a
        // swap (and may decline an older record): keep both.
        kept.extend(self.deployer.live_blobs().into_values().flatten());
        if let Some(cluster) = &self.cluster {
            kept.extend(cluster.handle.read(|s| s.referenced_blobs()));
        }
        Ok((kept, projects))
    }

    /// The manifest `cid` and its blobs, read once.
    fn manifest(&mut self, cid: Cid) -> Result<Arc<ManifestBlobs>, String> {
        if let Some(known) = self.manifests.get(&cid) {
            return Ok(known.clone());
        }
        let bytes = self.store.get(&cid).map_err(|e| e.to_string())?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let blobs = release_blobs(cid, &manifest).map_err(|e| e.to_string())?;
        let read = Arc::new(ManifestBlobs { manifest, blobs });
        self.manifests.insert(cid, read.clone());
        Ok(read)
    }

    /// Take this node off the holder records of the blobs it removed.
    fn forget_holdings(&self, removed: &[Cid]) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if removed.is_empty() {
            return;
        }
        let local = cluster.local;
        let result = cluster.handle.update(|s| {
            let recorded: Vec<&Cid> = removed
                .iter()
                .filter(|cid| s.holders(cid).contains(&local))
                .collect();
            recorded
                .into_iter()
                .try_for_each(|cid| s.remove_holder(cid, local))
        });
        if let Err(error) = result {
            tracing::error!(%error, "garbage collection: cannot update the holder records");
        }
    }
}

/// The last pass's report, shared with status.
#[derive(Clone, Debug, Default)]
pub struct GcReports(Arc<Mutex<Option<GcReport>>>);

impl GcReports {
    pub fn last(&self) -> Option<GcReport> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Run a pass every `interval` of `clock`'s time, for as long as the node
/// runs.
pub async fn run(collector: Collector, clock: Clock) {
    let interval = collector.config.interval;
    let collector = Arc::new(Mutex::new(collector));
    loop {
        tokio::time::sleep(interval).await;
        let (collector, clock) = (collector.clone(), clock.clone());
        let pass = crate::env::spawn_blocking(move || {
            collector
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pass(&clock)
        })
        .await;
        if let Err(error) = pass {
            tracing::error!(%error, "garbage collection: a pass did not finish");
        }
    }
}
