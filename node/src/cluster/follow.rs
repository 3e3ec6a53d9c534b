//! Following the cluster's releases as a sans-IO core: for every
//! environment, which release to install, which install to abort and which
//! environment to take down, decided from the cluster state's winners and
//! what the deployer has installed.
//!
//! Rules:
//!
//! - a release is installed only if it beats what is installed and what is
//!   being installed: precedence never goes down;
//! - one install per environment at a time: a newer winner aborts the install
//!   of an older one (nothing of it has served yet), so a burst of pushes does
//!   not compile every intermediate version on every node;
//! - an environment whose branch was deleted is taken down (its install
//!   aborted, its release retired);
//! - an install that failed is started again no sooner than
//!   [`INSTALL_RETRY_DELAY`] later (a newer winner starts at once), so a
//!   fetch that fails at once — no holder reachable, a stopped replication
//!   task — never turns the follower into a busy loop.
//!
//! In quinn-proto's shape: inputs are `handle_*` methods, outputs are
//! [`FollowAction`]s from [`FollowCore::poll_action`]. The core does no IO
//! and keeps no time; the driver (`follow` in [`super::member`]) fetches and
//! installs, reads the state after every event and at least every few
//! seconds, and feeds it here.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::state::Deployment;
use crate::deploy::{EnvKey, Precedence};

/// How long after a failed install the same release is tried again.
pub const INSTALL_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Names one install the core started, to route its end back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstallId(pub u64);

/// What the follower core wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowAction {
    /// Fetch the blobs of `deployment`, verify them and install it as the
    /// release of `key`; report the end with
    /// [`FollowCore::handle_install_done`].
    Install {
        id: InstallId,
        key: EnvKey,
        deployment: Deployment,
    },
    /// Stop install `id`: a newer release won, or its environment was removed.
    Abort { id: InstallId },
    /// Take down the release of `key`, unless it has a precedence of at
    /// least `precedence`: the environment's branch was deleted.
    Retire { key: EnvKey, precedence: Precedence },
}

/// The follower of one node.
#[derive(Debug, Default)]
pub struct FollowCore {
    /// The install under way per environment, and the precedence it installs.
    in_flight: BTreeMap<EnvKey, (Precedence, InstallId)>,
    /// Per environment, the precedence whose install failed last and when
    /// it may be tried again.
    backoff: BTreeMap<EnvKey, (Precedence, Instant)>,
    next_install: u64,
    actions: VecDeque<FollowAction>,
}

impl FollowCore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plan from the state's winners: `wanted` are the live releases,
    /// `removed` the environments whose winner is a removal, and `installed`
    /// what the deployer runs (`None`: a release without precedence, pushed
    /// here before the cluster recorded it).
    pub fn handle_state(
        &mut self,
        wanted: BTreeMap<EnvKey, Deployment>,
        removed: &BTreeMap<EnvKey, Precedence>,
        installed: &BTreeMap<EnvKey, Option<Precedence>>,
        now: Instant,
    ) {
        // A due retry is this pass's to start (or to find unneeded): keeping
        // it would leave `poll_timeout` in the past and the driver spinning.
        self.backoff.retain(|_, (_, until)| now < *until);
        for (key, precedence) in removed {
            self.backoff.remove(key);
            if let Some((_, id)) = self.in_flight.remove(key) {
                self.actions.push_back(FollowAction::Abort { id });
            }
            if installed.contains_key(key) {
                self.actions.push_back(FollowAction::Retire {
                    key: key.clone(),
                    precedence: *precedence,
                });
            }
        }
        for (key, deployment) in wanted {
            let precedence = deployment.precedence();
            let current = installed.get(&key).copied().flatten();
            if current.is_some_and(|c| c >= precedence)
                || self
                    .in_flight
                    .get(&key)
                    .is_some_and(|(p, _)| *p >= precedence)
            {
                continue;
            }
            if self
                .backoff
                .get(&key)
                .is_some_and(|(failed, _)| *failed >= precedence)
            {
                continue;
            }
            self.backoff.remove(&key);
            if let Some((_, older)) = self.in_flight.remove(&key) {
                self.actions.push_back(FollowAction::Abort { id: older });
            }
            let id = InstallId(self.next_install);
            self.next_install += 1;
            self.in_flight.insert(key.clone(), (precedence, id));
            self.actions.push_back(FollowAction::Install {
                id,
                key,
                deployment,
            });
        }
    }

    /// Install `id` ended: installed, failed or aborted. Whether it installed
    /// shows in the next [`FollowCore::handle_state`]'s `installed`; if it did
    /// not, that pass starts it again.
    pub fn handle_install_done(&mut self, id: InstallId) {
        // An aborted install may end after its successor started.
        self.in_flight.retain(|_, (_, current)| *current != id);
    }

    /// Install `id` failed at `now`: its release is tried again after
    /// [`INSTALL_RETRY_DELAY`] (see [`FollowCore::poll_timeout`]).
    pub fn handle_install_failed(&mut self, id: InstallId, now: Instant) {
        let failed = self
            .in_flight
            .iter()
            .find(|(_, (_, current))| *current == id)
            .map(|(key, (precedence, _))| (key.clone(), *precedence));
        if let Some((key, precedence)) = failed {
            self.in_flight.remove(&key);
            self.backoff
                .insert(key, (precedence, now + INSTALL_RETRY_DELAY));
        }
    }

    /// When the next retry is due: call [`FollowCore::handle_state`] then.
    /// Always after the last `handle_state`'s `now` (due retries are
    /// dropped there).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.backoff.values().map(|(_, until)| *until).min()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<FollowAction> {
        self.actions.pop_front()
    }

    /// The install under way for `key`, if any.
    pub fn installing(&self, key: &EnvKey) -> Option<(Precedence, InstallId)> {
        self.in_flight.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::NodeId;
    use crate::store::cid_of;

    /// A base instant for the core's clock (it only compares them).
    fn t0() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn env(branch: &str) -> EnvKey {
        EnvKey {
            project: "p".into(),
            branch: branch.into(),
        }
    }

    fn release(seq: u64) -> Deployment {
        Deployment {
            commit: format!("c{seq}"),
            manifest_cid: cid_of(format!("manifest {seq}").as_bytes()),
            artifacts: vec![],
            pushed_at_seq: seq,
            pushed_by: NodeId([1; 32]),
        }
    }

    type Removed = BTreeMap<EnvKey, Precedence>;
    type Installed = BTreeMap<EnvKey, Option<Precedence>>;

    fn drain(core: &mut FollowCore) -> Vec<FollowAction> {
        std::iter::from_fn(|| core.poll_action()).collect()
    }

    fn wanted(releases: &[(&str, u64)]) -> BTreeMap<EnvKey, Deployment> {
        releases
            .iter()
            .map(|(branch, seq)| (env(branch), release(*seq)))
            .collect()
    }

    fn installs(actions: &[FollowAction]) -> Vec<(InstallId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                FollowAction::Install { id, deployment, .. } => {
                    Some((*id, deployment.pushed_at_seq))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn installs_the_winner_once() {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing, t0());
        let actions = drain(&mut core);
        assert_eq!(installs(&actions), vec![(InstallId(0), 1)]);
        assert_eq!(actions.len(), 1);
        // Planning again while it installs starts nothing.
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing, t0());
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn precedence_never_goes_down() {
        let mut core = FollowCore::new();
        let none: Removed = BTreeMap::new();
        // What is installed beats the state's winner (or ties it): nothing.
        let installed = BTreeMap::from([(env("main"), Some(release(5).precedence()))]);
        for seq in [3, 5] {
            core.handle_state(wanted(&[("main", seq)]), &none, &installed, t0());
            assert!(drain(&mut core).is_empty(), "seq {seq}");
        }
        // What is being installed beats it: nothing either.
        core.handle_state(wanted(&[("main", 7)]), &none, &installed, t0());
        assert_eq!(installs(&drain(&mut core)), vec![(InstallId(0), 7)]);
        core.handle_state(wanted(&[("main", 6)]), &none, &installed, t0());
        assert!(drain(&mut core).is_empty());
        assert_eq!(
            core.installing(&env("main")),
            Some((release(7).precedence(), InstallId(0)))
        );
    }

    #[test]
    fn a_newer_winner_aborts_an_older_install() {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 1), ("dev", 1)]), &none, &nothing, t0());
        let first = installs(&drain(&mut core));
        assert_eq!(first.len(), 2);
        let (_, main_id) = core.installing(&env("main")).unwrap();
        core.handle_state(wanted(&[("main", 2), ("dev", 1)]), &none, &nothing, t0());
        let actions = drain(&mut core);
        assert_eq!(
            actions[0],
            FollowAction::Abort { id: main_id },
            "{actions:?}"
        );
        assert_eq!(installs(&actions), vec![(InstallId(2), 2)]);
        // The aborted install ending late does not end its successor's.
        core.handle_install_done(main_id);
        assert_eq!(
            core.installing(&env("main")),
            Some((release(2).precedence(), InstallId(2)))
        );
        core.handle_state(wanted(&[("main", 2), ("dev", 1)]), &none, &nothing, t0());
        assert!(drain(&mut core).is_empty());
    }

    /// A core whose install of `main`'s release 1 failed at `start`.
    fn core_with_a_failed_install(start: Instant) -> FollowCore {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing, start);
        let [(id, 1)] = installs(&drain(&mut core))[..] else {
            panic!("one install expected")
        };
        core.handle_install_failed(id, start);
        core
    }

    #[test]
    fn a_failed_install_is_started_again_after_the_retry_delay() {
        let start = t0();
        let mut core = core_with_a_failed_install(start);
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        assert_eq!(core.installing(&env("main")), None);
        // Not before the delay: a fetch that fails at once must not spin.
        let due = start + INSTALL_RETRY_DELAY;
        assert_eq!(core.poll_timeout(), Some(due));
        core.handle_state(
            wanted(&[("main", 1)]),
            &none,
            &nothing,
            due - Duration::from_millis(1),
        );
        assert!(drain(&mut core).is_empty());
        // A newer winner does not wait.
        core.handle_state(wanted(&[("main", 2)]), &none, &nothing, start);
        let [(newer, 2)] = installs(&drain(&mut core))[..] else {
            panic!("the newer release installs at once")
        };
        core.handle_install_failed(newer, start);
        let due = start + INSTALL_RETRY_DELAY;
        core.handle_state(wanted(&[("main", 2)]), &none, &nothing, due);
        assert_eq!(installs(&drain(&mut core)), vec![(InstallId(2), 2)]);
        assert_eq!(core.poll_timeout(), None);
        // Once installed, the next pass leaves it be.
        core.handle_install_done(InstallId(2));
        let installed = BTreeMap::from([(env("main"), Some(release(2).precedence()))]);
        core.handle_state(wanted(&[("main", 2)]), &none, &installed, t0());
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_due_retry_that_is_no_longer_needed_leaves_no_timeout() {
        let start = t0();
        let mut core = core_with_a_failed_install(start);
        let none: Removed = BTreeMap::new();
        // Meanwhile the release was installed another way.
        let installed = BTreeMap::from([(env("main"), Some(release(1).precedence()))]);
        core.handle_state(
            wanted(&[("main", 1)]),
            &none,
            &installed,
            start + INSTALL_RETRY_DELAY,
        );
        assert!(drain(&mut core).is_empty());
        // A timeout left in the past would wake the driver at once, forever.
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn a_removed_environment_is_aborted_and_retired() {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 3)]), &none, &nothing, t0());
        let [(id, 3)] = installs(&drain(&mut core))[..] else {
            panic!("one install expected")
        };
        let removed = BTreeMap::from([(env("main"), release(4).precedence())]);
        let installed = BTreeMap::from([(env("main"), Some(release(2).precedence()))]);
        core.handle_state(BTreeMap::new(), &removed, &installed, t0());
        assert_eq!(
            drain(&mut core),
            vec![
                FollowAction::Abort { id },
                FollowAction::Retire {
                    key: env("main"),
                    precedence: release(4).precedence()
                }
            ]
        );
        // Not installed here: nothing to retire.
        core.handle_state(BTreeMap::new(), &removed, &nothing, t0());
        assert!(drain(&mut core).is_empty());
    }
}
