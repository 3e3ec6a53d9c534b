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
//! - an install that ended without installing (it failed) is started again
//!   at the next planning pass ([`FollowCore::handle_state`]).
//!
//! In quinn-proto's shape: inputs are `handle_*` methods, outputs are
//! [`FollowAction`]s from [`FollowCore::poll_action`]. The core does no IO
//! and keeps no time; the driver (`follow` in [`super::member`]) fetches and
//! installs, reads the state after every event and at least every few
//! seconds, and feeds it here.

use std::collections::{BTreeMap, VecDeque};

use super::state::Deployment;
use crate::deploy::{EnvKey, Precedence};

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
    ) {
        for (key, precedence) in removed {
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
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing);
        let actions = drain(&mut core);
        assert_eq!(installs(&actions), vec![(InstallId(0), 1)]);
        assert_eq!(actions.len(), 1);
        // Planning again while it installs starts nothing.
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing);
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn precedence_never_goes_down() {
        let mut core = FollowCore::new();
        let none: Removed = BTreeMap::new();
        // What is installed beats the state's winner (or ties it): nothing.
        let installed = BTreeMap::from([(env("main"), Some(release(5).precedence()))]);
        for seq in [3, 5] {
            core.handle_state(wanted(&[("main", seq)]), &none, &installed);
            assert!(drain(&mut core).is_empty(), "seq {seq}");
        }
        // What is being installed beats it: nothing either.
        core.handle_state(wanted(&[("main", 7)]), &none, &installed);
        assert_eq!(installs(&drain(&mut core)), vec![(InstallId(0), 7)]);
        core.handle_state(wanted(&[("main", 6)]), &none, &installed);
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
        core.handle_state(wanted(&[("main", 1), ("dev", 1)]), &none, &nothing);
        let first = installs(&drain(&mut core));
        assert_eq!(first.len(), 2);
        let (_, main_id) = core.installing(&env("main")).unwrap();
        core.handle_state(wanted(&[("main", 2), ("dev", 1)]), &none, &nothing);
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
        core.handle_state(wanted(&[("main", 2), ("dev", 1)]), &none, &nothing);
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_failed_install_is_started_again_at_the_next_pass() {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing);
        let [(id, 1)] = installs(&drain(&mut core))[..] else {
            panic!("one install expected")
        };
        // It ended, and the deployer does not run it: it failed.
        core.handle_install_done(id);
        assert_eq!(core.installing(&env("main")), None);
        core.handle_state(wanted(&[("main", 1)]), &none, &nothing);
        assert_eq!(installs(&drain(&mut core)), vec![(InstallId(1), 1)]);
        // Once installed, the next pass leaves it be.
        core.handle_install_done(InstallId(1));
        let installed = BTreeMap::from([(env("main"), Some(release(1).precedence()))]);
        core.handle_state(wanted(&[("main", 1)]), &none, &installed);
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_removed_environment_is_aborted_and_retired() {
        let mut core = FollowCore::new();
        let (none, nothing): (Removed, Installed) = (BTreeMap::new(), BTreeMap::new());
        core.handle_state(wanted(&[("main", 3)]), &none, &nothing);
        let [(id, 3)] = installs(&drain(&mut core))[..] else {
            panic!("one install expected")
        };
        let removed = BTreeMap::from([(env("main"), release(4).precedence())]);
        let installed = BTreeMap::from([(env("main"), Some(release(2).precedence()))]);
        core.handle_state(BTreeMap::new(), &removed, &installed);
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
        core.handle_state(BTreeMap::new(), &removed, &nothing);
        assert!(drain(&mut core).is_empty());
    }
}
