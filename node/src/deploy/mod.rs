//! Deployments: turning a pushed commit into a live release, atomically.
//!
//! The deployer owns the path from "the push is acknowledged" (the git seam
//! has stored the commit and moved the ref) to "the new version serves": check
//! out the tree, parse and check `canopy.yaml`, build or read every function,
//! store every artifact by CID, compile and verify every component, store the
//! manifest, then swap the gateway's routes in one step. Any failure on the
//! way leaves the previous release serving and records the error where
//! `canopy status` shows it.
//!
//! It must not touch the network or the gateway's connections; it only
//! replaces the route table.
//!
//! This module is the deploy driver (pushes in through a bounded queue,
//! [`queue`], each started deploy a task of its own, so one project's slow
//! build never holds up another's deploy), restoring releases at start,
//! installing what cluster state chose, and the events and status it
//! reports; building a release is [`release`], loading a stored one is
//! [`live`].
//!
//! Deploys of different environments run at once: everything they share is
//! behind a lock (the state, the live releases and the route table, the
//! store's holds) or atomic on its own (a domain claim, a ledger record).

pub mod build;
pub mod domains;
mod error;
mod live;
pub mod manifest;
mod queue;
mod release;
mod routes;
pub mod state;

pub use error::{DeployError, InvalidCid, LedgerError, LoadError, RecordError};
pub use live::release_blobs;
pub use queue::{BuildLimits, DeployQueue, QueueFull, Target};
pub use routes::hosts_of;
pub use state::{EnvKey, Precedence};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{Notify, broadcast};

use crate::env::Env;
use crate::gateway::Gateway;
use crate::git::{self, PushEvent};
use crate::runtime::Runtime;
use crate::status::EnvironmentStatus;
use crate::store::BlobStore;

use live::{LiveRelease, parse_cid};
use release::ReleaseBuilder;
use state::{DeploymentState, Failure, Release};

/// The branch that is the production environment.
pub const PRODUCTION_BRANCH: &str = "main";

/// What happened to a push, for people watching (`canopy dream` prints these).
#[derive(Clone, Debug)]
pub enum DeployEvent {
    Started {
        key: EnvKey,
        commit: String,
    },
    Live {
        key: EnvKey,
        commit: String,
        elapsed_ms: u128,
        /// The precedence cluster state gave the release (`None`: no
        /// cluster). A push made here gets it from the ledger as it goes live.
        precedence: Option<Precedence>,
    },
    Failed {
        key: EnvKey,
        commit: String,
        error: String,
    },
    Removed {
        key: EnvKey,
    },
}

/// Where a node records the releases pushed to it, so that every other node
/// follows: the cluster state. A node outside any cluster has none.
pub trait Ledger: Send + Sync + 'static {
    /// The node that writes the records: what pushers' warrants name
    /// (see [`crate::auth::push_statement`]).
    fn author(&self) -> crate::net::NodeId;

    /// A push of `key` was built and verified here: record it and return its
    /// precedence. The deployer serves it only if nothing of greater
    /// precedence is installed by then. `warrant` is the pusher's (other
    /// nodes follow no push without one).
    fn record_push(
        &self,
        key: &EnvKey,
        commit: &str,
        manifest_cid: cid::Cid,
        artifacts: Vec<cid::Cid>,
        warrant: Option<&crate::auth::Warrant>,
    ) -> Result<Precedence, LedgerError>;

    /// The branch of `key` was deleted here, by the holder of `warrant`.
    fn record_removal(
        &self,
        key: &EnvKey,
        warrant: Option<&crate::auth::Warrant>,
    ) -> Result<(), LedgerError>;
}

/// A release that cluster state says should serve: what the follower hands
/// to [`Deployer::install`] once every blob is local and verified.
#[derive(Clone, Debug)]
pub struct WantedRelease {
    pub commit: String,
    pub manifest_cid: cid::Cid,
    pub precedence: Precedence,
}

/// What [`Deployer::install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    Installed,
    /// A release of equal or greater precedence already serves.
    AlreadyCurrent,
}

/// Where the Git remote hands acknowledged pushes: each branch a push moved
/// shows as deploying in status before `git push` returns (so `canopy
/// status` never shows a quiet environment with a push still queued), then
/// the push waits in the deploy queue for [`Deployer::run`]. A push the
/// queue has no room for is refused before anything of it is stored
/// ([`git::PushListener::admit`]).
#[derive(Clone)]
pub struct PushQueue {
    deployer: Arc<Deployer>,
    inbox: Arc<Inbox>,
}

/// The deploy queue, shared by the Git remote and the driver.
#[derive(Debug)]
struct Inbox {
    queue: Mutex<DeployQueue>,
    /// Something was pushed: the driver looks for deploys to start.
    pushed: Notify,
}

impl Inbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, DeployQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The driver's end of the deploy queue: what [`Deployer::run`] takes.
#[derive(Debug)]
pub struct Pushes {
    inbox: Arc<Inbox>,
}

/// Room in the deploy queue held for a push being received; dropping it
/// gives it back (see [`git::PushListener::admit`]).
struct Reservation {
    inbox: Arc<Inbox>,
    project: String,
    branches: Vec<String>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inbox.queue().release(&self.project, &self.branches);
    }
}

impl std::fmt::Debug for PushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushQueue").finish_non_exhaustive()
    }
}

impl git::PushListener for PushQueue {
    fn admit(&self, repo: &str, branches: &[String]) -> Result<git::Admission, String> {
        // One repository per project: its name is the project's.
        self.inbox
            .queue()
            .reserve(repo, branches)
            .map_err(|full| full.to_string())?;
        Ok(git::Admission::holding(Reservation {
            inbox: self.inbox.clone(),
            project: repo.to_owned(),
            branches: branches.to_vec(),
        }))
    }

    fn pushed(&self, event: PushEvent) -> bool {
        // Pending before queued: a deploy that starts at once and fails
        // must find its commit pending, or a stale mark would stay.
        self.deployer.mark_queued(&event);
        let mut refused = Vec::new();
        {
            let mut queue = self.inbox.queue();
            for update in &event.updates {
                let Some(branch) = &update.branch else {
                    continue;
                };
                let key = EnvKey {
                    project: event.repo.clone(),
                    branch: branch.clone(),
                };
                let target = update.new.map_or(Target::Delete, Target::Commit);
                // Never refused after an admission; only pushes queued again
                // at a restart can find the queue full.
                if let Err(full) = queue.push(&key, target) {
                    refused.push((key, update.new, full));
                }
            }
        }
        self.inbox.pushed.notify_one();
        for (key, commit, full) in refused {
            match commit {
                Some(commit) => {
                    self.deployer
                        .fail(&key, &commit.to_string(), DeployError::NotQueued(full));
                }
                None => {
                    tracing::error!(env = %key, %full, "branch deletion not queued; delete the branch again")
                }
            }
        }
        true
    }
}

pub struct Deployer {
    env: Env,
    store: Arc<BlobStore>,
    runtime: Arc<Runtime>,
    gateway: Arc<Gateway>,
    repos: git::Repos,
    work_dir: PathBuf,
    sandbox: build::Sandbox,
    state_path: PathBuf,
    state: Mutex<DeploymentState>,
    live: Mutex<BTreeMap<EnvKey, LiveRelease>>,
    events: broadcast::Sender<DeployEvent>,
    ledger: OnceLock<Arc<dyn Ledger>>,
    /// Who owns which domain: a file here until the node joins a cluster.
    domains: std::sync::RwLock<Arc<dyn domains::DomainBook>>,
    /// Replaced releases kept per environment (`gc.history`).
    history_depth: usize,
}

impl Deployer {
    pub fn new(
        env: Env,
        store: Arc<BlobStore>,
        runtime: Arc<Runtime>,
        gateway: Arc<Gateway>,
        repos: git::Repos,
        sandbox: build::SandboxMode,
        history_depth: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let state_path = env.data_dir.join("deployments.json");
        let work_dir = env.data_dir.join("work");
        // Checkouts of a previous run are garbage: nothing refers to them.
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir)?;
        let mut state = DeploymentState::load(&state_path)?;
        // What was pending at the stop is queued again from the branch heads
        // (`unfinished_pushes`); a stale mark would say "deploying" forever.
        for environment in state.environments.values_mut() {
            environment.pending = None;
        }
        let (events, _) = broadcast::channel(256);
        let sandbox = build::Sandbox::new(sandbox, env.data_dir.clone());
        let domain_book: Arc<dyn domains::DomainBook> = Arc::new(domains::LocalDomains::open(
            env.disk.clone(),
            env.data_dir.join("domains.json"),
        )?);
        Ok(Arc::new(Self {
            env,
            store,
            runtime,
            gateway,
            repos,
            work_dir,
            sandbox,
            state_path,
            state: Mutex::new(state),
            live: Mutex::new(BTreeMap::new()),
            events,
            ledger: OnceLock::new(),
            domains: std::sync::RwLock::new(domain_book),
            history_depth,
        }))
    }

    /// Record every push that goes live from now on in `ledger` (the node
    /// joined a cluster). Set once.
    pub fn set_ledger(&self, ledger: Arc<dyn Ledger>) {
        if self.ledger.set(ledger).is_err() {
            debug_assert!(false, "the ledger is set once");
        }
    }

    /// Keep domain ownership in `book` from now on (the node joined a
    /// cluster), and serve domains by it.
    pub fn set_domain_book(&self, book: Arc<dyn domains::DomainBook>) {
        *self
            .domains
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = book;
        self.publish_routes();
    }

    fn domain_book(&self) -> Arc<dyn domains::DomainBook> {
        self.domains
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every claimed domain and its owner.
    pub fn domain_owners(&self) -> domains::Owners {
        self.domain_book().owners()
    }

    /// Give `domain` to `project` (an admin's decision) and serve it by the
    /// new owner at once: the old owner's release stops answering for it.
    pub fn transfer_domain(
        &self,
        domain: &str,
        project: &str,
        warrantor: &crate::auth::Token,
    ) -> Result<(), domains::DomainError> {
        self.domain_book().transfer(domain, project, warrantor)?;
        tracing::info!(domain, project, "domain transferred");
        self.publish_routes();
        Ok(())
    }

    /// Follow what happens to pushes.
    pub fn subscribe(&self) -> broadcast::Receiver<DeployEvent> {
        self.events.subscribe()
    }

    /// Serve every release that was live before the node stopped, from the
    /// store and the compiled-code cache, without a push.
    pub async fn restore(&self) {
        let releases: Vec<(EnvKey, Release)> = {
            let state = self.state.lock().expect("state lock");
            state
                .environments
                .iter()
                .filter_map(|(k, e)| e.live.clone().map(|r| (k.clone(), r)))
                .collect()
        };
        for (key, release) in releases {
            match self
                .load_release(&release.manifest, release.precedence)
                .await
            {
                Ok(live) => {
                    self.live
                        .lock()
                        .expect("live lock")
                        .insert(key.clone(), live);
                    tracing::info!(env = %key, commit = %release.commit, "restored live release");
                }
                Err(error) => {
                    tracing::error!(env = %key, %error, "cannot restore live release");
                    self.update_state(&key, |e| {
                        e.failed = Some(Failure {
                            commit: release.commit.clone(),
                            error: format!(
                                "restoring the live release failed: {error}; push again to redeploy"
                            ),
                        })
                    });
                }
            }
        }
        self.publish_routes();
    }

    /// Deploy pushes that were acknowledged but never finished (the node
    /// stopped mid-deploy): every branch head no environment has handled.
    pub fn unfinished_pushes(&self) -> Vec<PushEvent> {
        let handled: std::collections::BTreeSet<String> = {
            let state = self.state.lock().expect("state lock");
            state
                .environments
                .values()
                .flat_map(|e| {
                    e.live
                        .as_ref()
                        .map(|r| r.commit.clone())
                        .into_iter()
                        .chain(e.failed.as_ref().map(|f| f.commit.clone()))
                })
                .collect()
        };
        let mut events = Vec::new();
        for repo in self.repos.list().unwrap_or_default() {
            let Ok(heads) = self.repos.branches(&repo) else {
                continue;
            };
            let updates: Vec<git::RefUpdate> = heads
                .into_iter()
                .filter(|(_, id)| !handled.contains(&id.to_string()))
                .map(|(branch, id)| git::RefUpdate {
                    refname: format!("refs/heads/{branch}"),
                    branch: Some(branch),
                    old: None,
                    new: Some(id),
                })
                .collect();
            if !updates.is_empty() {
                events.push(PushEvent {
                    repo,
                    pusher: None,
                    updates,
                });
            }
        }
        events
    }

    /// The deployer's inbox for the Git remote, a deploy queue within
    /// `limits`, and the end that [`Deployer::run`] drives.
    pub fn queue(self: &Arc<Self>, limits: BuildLimits) -> (PushQueue, Pushes) {
        let inbox = Arc::new(Inbox {
            queue: Mutex::new(DeployQueue::new(limits)),
            pushed: Notify::new(),
        });
        (
            PushQueue {
                deployer: self.clone(),
                inbox: inbox.clone(),
            },
            Pushes { inbox },
        )
    }

    /// Show every branch `event` moved as deploying at once, though the
    /// deploy loop may still be busy with an earlier push.
    fn mark_queued(&self, event: &PushEvent) {
        for update in &event.updates {
            let Some(branch) = &update.branch else {
                continue;
            };
            let key = EnvKey {
                project: event.repo.clone(),
                branch: branch.clone(),
            };
            let commit = update.new.map(|id| id.to_string());
            // The pusher's warrant, kept (it is a signature, not the token)
            // until the push is recorded, across restarts too.
            let warrant = match (&event.pusher, self.ledger.get()) {
                (Some(pusher), Some(ledger)) => Some(state::PushWarrant {
                    commit: commit.clone(),
                    warrant: pusher.warrant(&crate::auth::push_statement(
                        &key.project,
                        &key.branch,
                        commit.as_deref(),
                        &ledger.author(),
                    )),
                }),
                _ => None,
            };
            if commit.is_none() && warrant.is_none() {
                continue;
            }
            self.update_state(&key, |e| {
                if commit.is_some() {
                    e.pending = commit.clone();
                }
                if warrant.is_some() {
                    e.push_warrant = warrant;
                }
            });
        }
    }

    /// The warrant of the push of `commit` to `key` (`None`: a deletion),
    /// if its pusher gave one.
    fn push_warrant(&self, key: &EnvKey, commit: Option<&str>) -> Option<crate::auth::Warrant> {
        let state = self.state.lock().expect("state lock");
        let stored = state.environments.get(key)?.push_warrant.as_ref()?;
        (stored.commit.as_deref() == commit).then(|| stored.warrant.clone())
    }

    /// Deploy pushes as the queue lets them start, each in a task of its
    /// own; when several pushes of a branch wait only the newest deploys.
    /// Runs until aborted; aborting it abandons the deploys in flight (their
    /// pushes deploy again at the next start, see
    /// [`Deployer::unfinished_pushes`]).
    pub async fn run(self: Arc<Self>, pushes: Pushes) {
        let inbox = pushes.inbox;
        // Dropped with this future: the deploys in flight end with it.
        let mut tasks = tokio::task::JoinSet::new();
        let mut running: BTreeMap<tokio::task::Id, EnvKey> = BTreeMap::new();
        loop {
            // In the queue's order: the simulator replays the spawns.
            loop {
                let next = inbox.queue().poll_start();
                let Some((key, target)) = next else {
                    break;
                };
                let deployer = self.clone();
                let env = key.clone();
                let task = tasks.spawn(async move {
                    match target {
                        Target::Commit(commit) => {
                            deployer.deploy(&env.project, &env.branch, commit).await
                        }
                        Target::Delete => deployer.remove_branch(&env.project, &env.branch),
                    }
                });
                running.insert(task.id(), key);
            }
            debug_assert_eq!(running.len(), inbox.queue().running());
            // Biased, not random: the simulator replays the driver's choices.
            tokio::select! {
                biased;
                Some(done) = tasks.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(error) => {
                            tracing::error!(%error, "a deploy task failed");
                            error.id()
                        }
                    };
                    let key = running.remove(&id).expect("every deploy task is tracked");
                    inbox.queue().finished(&key);
                }
                () = inbox.pushed.notified() => {}
            }
        }
    }

    /// Deploy one pushed commit; on any failure the live release stays.
    pub async fn deploy(&self, repo: &str, branch: &str, commit: gix::ObjectId) {
        let started = self.env.clock.now();
        // What the build stores is referenced by nothing until it is live.
        let _hold = self.store.hold();
        let repo_dir = match self.repos.dir(repo) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::error!(repo, error = %e, "push names a repository that cannot exist");
                return;
            }
        };
        // One repository per project: its name is the project's (the Git
        // remote refused a push whose canopy.yaml names another).
        let key = EnvKey {
            project: repo.to_owned(),
            branch: branch.to_owned(),
        };
        let commit_hex = commit.to_string();
        // A push queued behind this one already shows as pending; keep it.
        self.update_state(&key, |e| {
            e.pending.get_or_insert_with(|| commit_hex.clone());
        });
        let _ = self.events.send(DeployEvent::Started {
            key: key.clone(),
            commit: commit_hex.clone(),
        });
        tracing::info!(env = %key, commit = %commit_hex, "deploying");

        let built = self.builder().build(&repo_dir, &key, commit).await;
        // A domain belongs to the first project that deploys it.
        let claimed = built.and_then(|(cid, live)| {
            self.domain_book()
                .claim(&key.project, &live.manifest.domains)
                .map_err(DeployError::Domain)
                .map(|()| (cid, live))
        });
        let live = claimed.and_then(|(manifest_cid, live)| {
            let release = Release {
                commit: commit_hex.clone(),
                manifest: manifest_cid.to_string(),
                repo: repo.to_owned(),
                precedence: None,
            };
            self.go_live(&key, live, release)
        });
        match live {
            Ok(precedence) => {
                let elapsed_ms = (self.env.clock.now() - started).as_millis();
                tracing::info!(env = %key, commit = %commit_hex, elapsed_ms, "live");
                let _ = self.events.send(DeployEvent::Live {
                    key,
                    commit: commit_hex,
                    elapsed_ms,
                    precedence,
                });
            }
            Err(error) => self.fail(&key, &commit_hex, error),
        }
    }

    /// What building a release needs of this deployer.
    fn builder(&self) -> ReleaseBuilder<'_> {
        ReleaseBuilder {
            store: &self.store,
            runtime: &self.runtime,
            work_dir: &self.work_dir,
            sandbox: &self.sandbox,
        }
    }

    /// Record that the push of `commit_hex` did not go live, and why.
    fn fail(&self, key: &EnvKey, commit_hex: &str, error: DeployError) {
        let error = error.to_string();
        tracing::warn!(env = %key, commit = %commit_hex, %error, "push not deployed");
        self.update_state(key, |e| {
            // A newer push may be queued behind this one: it is still pending.
            if e.pending.as_deref() == Some(commit_hex) {
                e.pending = None;
            }
            e.failed = Some(Failure {
                commit: commit_hex.to_owned(),
                error: error.clone(),
            });
        });
        let _ = self.events.send(DeployEvent::Failed {
            key: key.clone(),
            commit: commit_hex.to_owned(),
            error,
        });
    }

    /// Serve a push built here: record it in deployments.json, then in the
    /// ledger (cluster state), and swap it in. A push recorded here ranks
    /// above every release this node has seen, so it always goes live.
    /// Returns the precedence the ledger gave it (`None`: no ledger).
    fn go_live(
        &self,
        key: &EnvKey,
        live: LiveRelease,
        mut release: Release,
    ) -> Result<Option<Precedence>, DeployError> {
        // Read before the live lock: `status` takes the state lock, then
        // the live lock; the other order here could deadlock with it.
        let warrant = self.push_warrant(key, Some(&release.commit));
        // On disk before it serves or is recorded anywhere: a release that
        // served but is missing from deployments.json would be forgotten at
        // a restart. A full disk fails the push here, with nothing changed.
        // (Recorded without a precedence; a crash before the ledger records
        // it is what `record_unrecorded` finishes at the next start.)
        let before = self
            .try_update_state(key, |e| e.replace_live(release.clone(), self.history_depth))
            .map_err(DeployError::Save)?;
        let recorded = self.record_and_swap(key, live, &mut release, warrant.as_ref());
        if let Err(e) = recorded {
            self.unrecord_live(key, &release, before);
            return Err(DeployError::Record(e));
        }
        let precedence = release.precedence;
        self.record_live(key, release);
        Ok(precedence)
    }

    /// Record `release` in the ledger and swap it in, both under the live
    /// lock, so the follower cannot install the same release a second time
    /// in between.
    fn record_and_swap(
        &self,
        key: &EnvKey,
        mut live: LiveRelease,
        release: &mut Release,
        warrant: Option<&crate::auth::Warrant>,
    ) -> Result<(), RecordError> {
        {
            let mut all = self.live.lock().expect("live lock");
            if let Some(ledger) = self.ledger.get() {
                let precedence =
                    record_push(ledger.as_ref(), key, release, &live.manifest, warrant)?;
                // Checked in release builds too: installing a push that ranks
                // below the installed release would roll this node back.
                assert!(
                    all.get(key)
                        .and_then(|r| r.precedence)
                        .is_none_or(|current| current < precedence),
                    "a local push ranks above everything installed"
                );
                live.precedence = Some(precedence);
                release.precedence = Some(precedence);
            }
            all.insert(key.clone(), live);
            self.publish_routes_locked(&all);
        }
        Ok(())
    }

    /// Take back what [`Deployer::go_live`] wrote ahead for `release`,
    /// which did not go live: the environment's live release and history
    /// are what they were `before`.
    fn unrecord_live(&self, key: &EnvKey, release: &Release, before: Option<state::Environment>) {
        let mut state = self.state.lock().expect("state lock");
        let Some(e) = state.environments.get_mut(key) else {
            return;
        };
        // An install may have replaced it since: then that one stands.
        if e.live.as_ref() != Some(release) {
            return;
        }
        let before = before.unwrap_or_default();
        e.live = before.live;
        e.history = before.history;
        self.save(&state);
    }

    /// Record `release` as `key`'s live release (after its routes swapped).
    fn record_live(&self, key: &EnvKey, release: Release) {
        self.update_state(key, |e| {
            // Another install may have swapped in a newer release since.
            if let (Some(newer), Some(this)) = (
                e.live.as_ref().and_then(|r| r.precedence),
                release.precedence,
            ) && newer > this
            {
                return;
            }
            if e.pending.as_deref() == Some(release.commit.as_str()) {
                e.pending = None;
            }
            if e.failed
                .as_ref()
                .is_some_and(|f| f.commit == release.commit)
                || e.pending.is_none()
            {
                e.failed = None;
            }
            e.replace_live(release, self.history_depth);
        });
    }

    /// The manifest CIDs of every release this node keeps, by environment:
    /// each live release and its history (what garbage collection keeps).
    pub fn kept_releases(&self) -> BTreeMap<EnvKey, Vec<String>> {
        let state = self.state.lock().expect("state lock");
        state
            .environments
            .iter()
            .map(|(k, e)| (k.clone(), e.kept_manifests().map(str::to_owned).collect()))
            .filter(|(_, kept): &(EnvKey, Vec<String>)| !kept.is_empty())
            .collect()
    }

    /// Forget the release of manifest `manifest` from `key`'s history (it
    /// can no longer be read, so never rolled back to).
    pub fn drop_from_history(&self, key: &EnvKey, manifest: &str) {
        let mut state = self.state.lock().expect("state lock");
        let Some(e) = state.environments.get_mut(key) else {
            return;
        };
        let before = e.history.len();
        e.history.retain(|r| r.manifest != manifest);
        if e.history.len() != before {
            self.save(&state);
        }
    }

    /// Every blob of every release serving here, by environment.
    pub fn live_blobs(&self) -> BTreeMap<EnvKey, Vec<cid::Cid>> {
        let live = self.live.lock().expect("live lock");
        live.iter()
            .filter_map(|(k, r)| {
                Some((k.clone(), release_blobs(r.manifest_cid, &r.manifest).ok()?))
            })
            .collect()
    }

    /// The components of every release serving here, by CID.
    pub fn live_functions(&self) -> std::collections::BTreeSet<cid::Cid> {
        let live = self.live.lock().expect("live lock");
        live.values()
            .flat_map(|r| r.functions.values().map(|f| *f.cid()))
            .collect()
    }

    /// Serve `live` for `key` unless a release of equal or greater precedence
    /// already serves there; record it as the environment's live release.
    /// Releases without precedence (no cluster) always replace.
    fn swap_in(&self, key: &EnvKey, live: LiveRelease, release: Release) -> InstallOutcome {
        {
            let mut all = self.live.lock().expect("live lock");
            if let (Some(new), Some(current)) =
                (live.precedence, all.get(key).and_then(|r| r.precedence))
                && current >= new
            {
                return InstallOutcome::AlreadyCurrent;
            }
            all.insert(key.clone(), live);
            // Routes are rebuilt under the live lock so two swaps cannot
            // publish their tables in the opposite order.
            self.publish_routes_locked(&all);
        }
        self.record_live(key, release);
        InstallOutcome::Installed
    }

    /// Serve a release that cluster state chose, once its blobs are local:
    /// every blob is read back and verified against its CID before anything
    /// of it serves. Never replaces a release of equal or greater precedence.
    pub async fn install(
        &self,
        key: &EnvKey,
        wanted: WantedRelease,
    ) -> Result<InstallOutcome, LoadError> {
        if self
            .installed_precedence(key)
            .is_some_and(|current| current >= wanted.precedence)
        {
            return Ok(InstallOutcome::AlreadyCurrent);
        }
        let started = self.env.clock.now();
        let live = self
            .load_release(&wanted.manifest_cid.to_string(), Some(wanted.precedence))
            .await?;
        if live.manifest.project != key.project || live.manifest.branch != key.branch {
            return Err(LoadError::WrongEnvironment {
                manifest_cid: wanted.manifest_cid,
                project: live.manifest.project,
                branch: live.manifest.branch,
                key: key.clone(),
            });
        }
        let repo = self
            .state
            .lock()
            .expect("state lock")
            .environments
            .get(key)
            .and_then(|e| e.live.as_ref().map(|r| r.repo.clone()))
            .unwrap_or_default();
        let release = Release {
            commit: wanted.commit.clone(),
            manifest: wanted.manifest_cid.to_string(),
            repo,
            precedence: Some(wanted.precedence),
        };
        let outcome = self.swap_in(key, live, release);
        if outcome == InstallOutcome::Installed {
            let elapsed_ms = (self.env.clock.now() - started).as_millis();
            tracing::info!(env = %key, commit = %wanted.commit, elapsed_ms, "live (from cluster state)");
            let _ = self.events.send(DeployEvent::Live {
                key: key.clone(),
                commit: wanted.commit,
                elapsed_ms,
                precedence: Some(wanted.precedence),
            });
        }
        Ok(outcome)
    }

    /// Take `key` down because cluster state says its branch was deleted with
    /// `precedence`; a release of greater precedence keeps serving.
    pub fn retire(&self, key: &EnvKey, precedence: Precedence) {
        {
            let mut all = self.live.lock().expect("live lock");
            match all.get(key) {
                Some(r) if r.precedence.is_none_or(|p| p < precedence) => {
                    all.remove(key);
                    self.publish_routes_locked(&all);
                }
                Some(_) => return,
                None => {}
            }
        }
        let existed = {
            let mut state = self.state.lock().expect("state lock");
            let existed = state.environments.remove(key).is_some();
            self.save(&state);
            existed
        };
        if existed {
            tracing::info!(env = %key, "branch deleted elsewhere; environment removed");
            let _ = self.events.send(DeployEvent::Removed { key: key.clone() });
        }
    }

    /// The precedence of what serves for every environment (`None`: a
    /// release not recorded in cluster state).
    pub fn installed(&self) -> BTreeMap<EnvKey, Option<Precedence>> {
        let live = self.live.lock().expect("live lock");
        live.iter()
            .map(|(k, r)| (k.clone(), r.precedence))
            .collect()
    }

    fn installed_precedence(&self, key: &EnvKey) -> Option<Precedence> {
        self.live
            .lock()
            .expect("live lock")
            .get(key)
            .and_then(|r| r.precedence)
    }

    /// Releases serving here that cluster state does not know yet (the node
    /// served them before it joined): record them, so the cluster follows.
    pub fn record_unrecorded(&self) {
        let Some(ledger) = self.ledger.get() else {
            return;
        };
        let unrecorded: Vec<(EnvKey, Release)> = {
            let state = self.state.lock().expect("state lock");
            state
                .environments
                .iter()
                .filter_map(|(k, e)| e.live.clone().map(|r| (k.clone(), r)))
                .filter(|(_, r)| r.precedence.is_none())
                .collect()
        };
        for (key, mut release) in unrecorded {
            // Before the live lock (see `go_live`).
            let warrant = self.push_warrant(&key, Some(&release.commit));
            let mut all = self.live.lock().expect("live lock");
            let Some(live) = all.get_mut(&key) else {
                continue;
            };
            let recorded = record_push(
                ledger.as_ref(),
                &key,
                &release,
                &live.manifest,
                warrant.as_ref(),
            );
            match recorded {
                Ok(precedence) => {
                    live.precedence = Some(precedence);
                    drop(all);
                    release.precedence = Some(precedence);
                    self.update_state(&key, |e| e.live = Some(release));
                }
                Err(error) => {
                    tracing::error!(env = %key, %error, "cannot record a live release in cluster state")
                }
            }
        }
    }

    /// A deleted branch takes its environment down.
    fn remove_branch(&self, repo: &str, branch: &str) {
        let keys: Vec<EnvKey> = {
            let state = self.state.lock().expect("state lock");
            state
                .environments
                .iter()
                .filter(|(k, e)| {
                    k.branch == branch && e.live.as_ref().is_some_and(|r| r.repo == repo)
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        if let Some(ledger) = self.ledger.get() {
            for key in &keys {
                let warrant = self.push_warrant(key, None);
                if let Err(error) = ledger.record_removal(key, warrant.as_ref()) {
                    tracing::error!(env = %key, %error, "cannot record the branch deletion in cluster state");
                }
            }
        }
        // Routes first, then state: once status no longer lists the
        // environment, its hosts no longer answer.
        {
            let mut all = self.live.lock().expect("live lock");
            for key in &keys {
                all.remove(key);
            }
            self.publish_routes_locked(&all);
        }
        for key in keys {
            {
                let mut state = self.state.lock().expect("state lock");
                state.environments.remove(&key);
                self.save(&state);
            }
            tracing::info!(env = %key, "branch deleted; environment removed");
            let _ = self.events.send(DeployEvent::Removed { key });
        }
    }

    /// Load a stored release: manifest and components, verified.
    async fn load_release(
        &self,
        manifest_cid: &str,
        precedence: Option<Precedence>,
    ) -> Result<LiveRelease, LoadError> {
        live::load(&self.store, &self.runtime, manifest_cid, precedence).await
    }

    /// Rebuild the gateway's route table from every live release and swap it
    /// in: requests see the old table or the new one, never a mix. A domain
    /// serves only for the project that owns it.
    pub fn publish_routes(&self) {
        let live = self.live.lock().expect("live lock");
        self.publish_routes_locked(&live);
    }

    fn publish_routes_locked(&self, live: &BTreeMap<EnvKey, LiveRelease>) {
        let table = routes::route_table(
            live.iter().map(|(k, r)| (k, &r.manifest, &r.functions)),
            &self.domain_owners(),
            &self.store,
        );
        self.gateway.replace_routes(table);
    }

    /// Every environment, for `canopy status` and the admin API.
    pub fn status(&self) -> Vec<EnvironmentStatus> {
        let state = self.state.lock().expect("state lock");
        state
            .environments
            .iter()
            // An entry that only keeps a deletion's warrant is no environment.
            .filter(|(_, e)| e.live.is_some() || e.pending.is_some() || e.failed.is_some())
            .map(|(key, e)| {
                let hosts = self
                    .live
                    .lock()
                    .expect("live lock")
                    .get(key)
                    .map(|r| routes::hosts_of(key, &r.manifest.domains))
                    .unwrap_or_default();
                let state = match (&e.live, &e.pending, &e.failed) {
                    (_, Some(_), _) => "deploying",
                    (Some(_), None, Some(_)) => "degraded",
                    (Some(_), None, None) => "live",
                    (None, None, _) => "failed",
                };
                EnvironmentStatus {
                    project: key.project.clone(),
                    branch: key.branch.clone(),
                    state: state.to_owned(),
                    hosts,
                    live_commit: e.live.as_ref().map(|r| r.commit.clone()),
                    pending_commit: e.pending.clone(),
                    failed_commit: e.failed.as_ref().map(|f| f.commit.clone()),
                    error: e.failed.as_ref().map(|f| f.error.clone()),
                }
            })
            .collect()
    }

    /// The project a commit belongs to: its `canopy.yaml`'s `project` if that
    /// can be read at all, else the project this repo and branch deployed
    /// before, else the repository's name — so even a push whose YAML is
    /// broken shows up in status under a name the user recognises.
    /// Change `key`'s environment and save, or change nothing: on a failed
    /// save the change is undone in memory too, and the error returned.
    /// Returns the environment as it was before.
    fn try_update_state(
        &self,
        key: &EnvKey,
        change: impl FnOnce(&mut state::Environment),
    ) -> Result<Option<state::Environment>, state::StateError> {
        let mut state = self.state.lock().expect("state lock");
        let before = state.environments.get(key).cloned();
        change(state.environments.entry(key.clone()).or_default());
        if let Err(e) = state.save(self.env.disk.as_ref(), &self.state_path) {
            match before {
                Some(before) => state.environments.insert(key.clone(), before),
                None => state.environments.remove(key),
            };
            return Err(e);
        }
        Ok(before)
    }

    fn update_state(&self, key: &EnvKey, change: impl FnOnce(&mut state::Environment)) {
        let mut state = self.state.lock().expect("state lock");
        change(state.environments.entry(key.clone()).or_default());
        self.save(&state);
    }

    fn save(&self, state: &DeploymentState) {
        if let Err(e) = state.save(self.env.disk.as_ref(), &self.state_path) {
            // The release still serves; only its memory across a restart is at risk.
            tracing::error!(error = %e, "cannot persist deployment state");
        }
    }
}

/// Record the push of `release` (of `key`) in `ledger`, with every blob it
/// needs, and return the precedence the ledger gave it.
fn record_push(
    ledger: &dyn Ledger,
    key: &EnvKey,
    release: &Release,
    manifest: &manifest::Manifest,
    warrant: Option<&crate::auth::Warrant>,
) -> Result<Precedence, RecordError> {
    let cid = parse_cid(&release.manifest)?;
    let blobs = release_blobs(cid, manifest)?;
    Ok(ledger.record_push(key, &release.commit, cid, blobs, warrant)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{PushListener, RefUpdate};

    fn deployer(dir: &std::path::Path) -> Arc<Deployer> {
        let env = Env::production(dir);
        let store = Arc::new(BlobStore::open(dir.join("store")).unwrap());
        let runtime =
            Runtime::new(crate::runtime::RuntimeConfig::new(dir.join("compiled"))).unwrap();
        let repos = git::Repos::new(dir.join("git")).unwrap();
        Deployer::new(
            env,
            store,
            runtime,
            Gateway::new(),
            repos,
            build::SandboxMode::Preferred,
            10,
        )
        .unwrap()
    }

    fn push(repo: &str, branch: &str, new: Option<gix::ObjectId>) -> PushEvent {
        PushEvent {
            repo: repo.into(),
            pusher: None,
            updates: vec![RefUpdate {
                refname: format!("refs/heads/{branch}"),
                branch: Some(branch.into()),
                old: None,
                new,
            }],
        }
    }

    fn commit(byte: u8) -> gix::ObjectId {
        gix::ObjectId::from_bytes_or_panic(&[byte; 20])
    }

    fn shop(status: &[EnvironmentStatus]) -> &EnvironmentStatus {
        status
            .iter()
            .find(|e| e.project == "shop" && e.branch == "main")
            .expect("shop@main in status")
    }

    #[tokio::test]
    async fn a_queued_push_shows_as_deploying_before_the_deploy_loop_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let deployer = deployer(dir.path());
        let (queue, pushes) = deployer.queue(BuildLimits::default());
        assert!(queue.pushed(push("shop", "main", Some(commit(1)))));
        // Nothing drained the queue, yet status already says so.
        let status = deployer.status();
        assert_eq!(shop(&status).state, "deploying");
        assert_eq!(shop(&status).pending_commit, Some(commit(1).to_string()));
        assert_eq!(
            pushes.inbox.queue().waiting(),
            1,
            "the push waits for the deploy driver"
        );
        // A deletion is not a deploy.
        assert!(queue.pushed(push("shop", "gone", None)));
        assert!(deployer.status().iter().all(|e| e.branch != "gone"));
    }

    #[tokio::test]
    async fn a_push_the_queue_has_no_room_for_is_not_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let deployer = deployer(dir.path());
        let limits = BuildLimits {
            max_queued_per_project: 1,
            ..BuildLimits::default()
        };
        let (queue, _pushes) = deployer.queue(limits);
        let main = queue.admit("shop", &["main".into()]).unwrap();
        let refused = queue.admit("shop", &["preview".into()]).unwrap_err();
        assert!(
            refused.starts_with(
                "deploy queue full: project shop has 1 environments waiting to build \
                 (limits.builds.max_queued_per_project = 1)"
            ),
            "{refused}"
        );
        // A second push of main takes no more room.
        let main_again = queue.admit("shop", &["main".into()]).unwrap();
        assert!(queue.pushed(push("shop", "main", Some(commit(1)))));
        drop((main, main_again));
        assert!(
            queue.admit("shop", &["preview".into()]).is_err(),
            "main waits"
        );
        // Queued again at a restart without room: it fails where status shows it.
        assert!(queue.pushed(push("shop", "preview", Some(commit(2)))));
        let status = deployer.status();
        let preview = status.iter().find(|e| e.branch == "preview").unwrap();
        assert_eq!(preview.state, "failed");
        assert!(
            preview
                .error
                .as_deref()
                .unwrap()
                .starts_with("not deployed after the node restarted: deploy queue full"),
            "{preview:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_push_leaves_a_newer_queued_push_pending() {
        let dir = tempfile::tempdir().unwrap();
        let deployer = deployer(dir.path());
        let (queue, _pushes) = deployer.queue(BuildLimits::default());
        // The loop works on commit 1 while commit 2 is queued behind it.
        assert!(queue.pushed(push("shop", "main", Some(commit(1)))));
        assert!(queue.pushed(push("shop", "main", Some(commit(2)))));
        deployer.deploy("shop", "main", commit(1)).await;
        let status = deployer.status();
        let shop = shop(&status);
        assert_eq!(shop.failed_commit, Some(commit(1).to_string()));
        assert_eq!(shop.pending_commit, Some(commit(2).to_string()));
        assert_eq!(shop.state, "deploying");
    }

    /// The OS disk, until told to fail every new file as a full disk does.
    #[derive(Debug, Default)]
    struct FillableDisk {
        full: std::sync::atomic::AtomicBool,
    }

    impl crate::env::Disk for FillableDisk {
        fn create_new(&self, path: &std::path::Path) -> std::io::Result<crate::env::DiskFile> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                // ENOSPC, as a full data disk answers.
                return Err(std::io::Error::from_raw_os_error(28));
            }
            crate::env::OsDisk.create_new(path)
        }
        fn sync(&self, file: &crate::env::DiskFile) -> std::io::Result<()> {
            crate::env::OsDisk.sync(file)
        }
        fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
            crate::env::OsDisk.rename(from, to)
        }
        fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
            crate::env::OsDisk.remove_file(path)
        }
        fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::env::OsDisk.sync_dir(dir)
        }
        fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
            crate::env::OsDisk.create_dir_all(dir)
        }
    }

    /// A release of `shop@main` with nothing in it, at `commit`.
    fn empty_release(commit: &str) -> (LiveRelease, Release) {
        let manifest = manifest::Manifest {
            project: "shop".into(),
            branch: "main".into(),
            commit: commit.into(),
            domains: vec![],
            functions: BTreeMap::new(),
            websites: BTreeMap::new(),
        };
        let manifest_cid = crate::store::cid_of(commit.as_bytes());
        let release = Release {
            commit: commit.into(),
            manifest: manifest_cid.to_string(),
            repo: "shop".into(),
            precedence: None,
        };
        let live = LiveRelease {
            manifest_cid,
            manifest,
            functions: BTreeMap::new(),
            precedence: None,
        };
        (live, release)
    }

    /// Issue 13: a release this node cannot record in deployments.json
    /// (a full disk) does not go live — the push fails with the disk's
    /// error and the previous release keeps serving, in memory and on
    /// disk — and the next push works once there is room, without a
    /// restart.
    #[tokio::test]
    async fn a_release_that_cannot_be_saved_does_not_go_live() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(FillableDisk::default());
        let env = Env {
            disk: disk.clone(),
            ..Env::production(dir.path())
        };
        let deployer = Deployer::new(
            env,
            Arc::new(BlobStore::open(dir.path().join("store")).unwrap()),
            Runtime::new(crate::runtime::RuntimeConfig::new(
                dir.path().join("compiled"),
            ))
            .unwrap(),
            Gateway::new(),
            git::Repos::new(dir.path().join("git")).unwrap(),
            build::SandboxMode::Preferred,
            10,
        )
        .unwrap();
        let key = EnvKey {
            project: "shop".into(),
            branch: "main".into(),
        };
        let live_commit = |d: &Deployer| {
            d.live
                .lock()
                .unwrap()
                .get(&key)
                .map(|r| r.manifest.commit.clone())
        };
        let (live, release) = empty_release("c1");
        deployer.go_live(&key, live, release).unwrap();

        disk.full.store(true, std::sync::atomic::Ordering::SeqCst);
        let (live, release) = empty_release("c2");
        let error = deployer
            .go_live(&key, live, release)
            .unwrap_err()
            .to_string();
        assert!(error.contains("No space left on device"), "{error}");
        assert!(
            error.contains("the previous release keeps serving"),
            "{error}"
        );
        assert_eq!(live_commit(&deployer).as_deref(), Some("c1"));
        assert_eq!(shop(&deployer.status()).live_commit.as_deref(), Some("c1"));
        let on_disk = state::DeploymentState::load(&dir.path().join("deployments.json")).unwrap();
        assert_eq!(
            on_disk.environments[&key].live.as_ref().unwrap().commit,
            "c1"
        );

        disk.full.store(false, std::sync::atomic::Ordering::SeqCst);
        let (live, release) = empty_release("c3");
        deployer.go_live(&key, live, release).unwrap();
        assert_eq!(live_commit(&deployer).as_deref(), Some("c3"));
        let on_disk = state::DeploymentState::load(&dir.path().join("deployments.json")).unwrap();
        let shop_env = &on_disk.environments[&key];
        assert_eq!(shop_env.live.as_ref().unwrap().commit, "c3");
        let history: Vec<&str> = shop_env.history.iter().map(|r| r.commit.as_str()).collect();
        assert_eq!(history, ["c1"], "the refused release is in no history");
    }
}
