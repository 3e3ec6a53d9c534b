//! The deploy queue: which pushed environment deploys next, sans IO.
//!
//! A core in quinn-proto's style: no tokio, no clock, no tasks. The Git
//! remote reserves room for a push ([`DeployQueue::reserve`]) before any of
//! it is stored and hands it in once its refs moved ([`DeployQueue::push`]);
//! the deployer's driver takes what may start now
//! ([`DeployQueue::poll_start`]) and reports each deploy's end
//! ([`DeployQueue::finished`]).
//!
//! Rules (issue 13: one project's build never blocks another's deploy):
//! - one deploy per environment (project × branch) at a time; a push of a
//!   running environment waits behind it;
//! - a newer push of a waiting environment replaces the waiting one (only
//!   the newest commit deploys) and keeps its place in line;
//! - at most [`BuildLimits::max_builds_per_project`] deploys per project and
//!   [`BuildLimits::max_concurrent_builds`] node-wide run at once;
//! - projects with startable work take turns (round robin by name), so a
//!   project with many branches cannot starve another; within a project,
//!   environments start in the order they first waited;
//! - at most [`BuildLimits::max_queued_per_project`] environments of one
//!   project, and [`BuildLimits::max_queued`] in all, are claimed — waiting,
//!   or reserved by a push being received. A push into a claimed
//!   environment never counts as new; one that would claim past a bound is
//!   refused.
//!
//! It must not know about Git, builds or the gateway: targets are opaque
//! commits and deletions.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::EnvKey;

/// The bounds of the deploy queue (`limits.builds` in the node config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildLimits {
    /// Deploys (builds included) running at once on this node.
    pub max_concurrent_builds: usize,
    /// Deploys of one project running at once.
    pub max_builds_per_project: usize,
    /// Environments of one project waiting to deploy.
    pub max_queued_per_project: usize,
    /// Environments of all projects waiting to deploy.
    pub max_queued: usize,
}

impl Default for BuildLimits {
    fn default() -> Self {
        Self {
            max_concurrent_builds: 2,
            max_builds_per_project: 1,
            max_queued_per_project: 16,
            max_queued: 256,
        }
    }
}

/// What a deploy of an environment does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Deploy this commit of the branch.
    Commit(gix::ObjectId),
    /// The branch was deleted: take the environment down.
    Delete,
}

/// A push refused because the queue is at a bound. Its text is what
/// `git push` shows on the refused ref's line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    #[error(
        "deploy queue full: project {project} has {max} environments waiting to build \
         (limits.builds.max_queued_per_project = {max}); wait for them to finish, or ask the \
         operator to raise it"
    )]
    Project { project: String, max: usize },
    #[error(
        "deploy queue full: this node has {max} environments waiting to build \
         (limits.builds.max_queued = {max}); wait for them to finish, or ask the operator to \
         raise it"
    )]
    Node { max: usize },
}

/// One project's share of the queue.
#[derive(Debug, Default)]
struct Project {
    /// Branch → what waits, and its place in line (a sequence number).
    waiting: BTreeMap<String, (u64, Target)>,
    /// Branches deploying now.
    running: BTreeSet<String>,
    /// Branches reserved by pushes being received, with how many pushes
    /// reserved each.
    reserved: BTreeMap<String, usize>,
}

impl Project {
    fn is_claimed(&self, branch: &str) -> bool {
        self.waiting.contains_key(branch) || self.reserved.contains_key(branch)
    }

    /// Environments that count against the queue bounds.
    fn claimed(&self) -> usize {
        self.waiting.len()
            + self
                .reserved
                .keys()
                .filter(|b| !self.waiting.contains_key(*b))
                .count()
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.reserved.is_empty()
    }

    /// The waiting branch that may start first: the longest waiting one
    /// that is not running.
    fn next_startable(&self) -> Option<&str> {
        self.waiting
            .iter()
            .filter(|(branch, _)| !self.running.contains(*branch))
            .min_by_key(|(_, (seq, _))| *seq)
            .map(|(branch, _)| branch.as_str())
    }
}

/// The deploy queue's state. See the module docs for its rules.
#[derive(Debug)]
pub struct DeployQueue {
    limits: BuildLimits,
    /// Only projects with something waiting, running or reserved.
    projects: BTreeMap<String, Project>,
    /// The project that started last: the round robin goes on after it.
    last_served: Option<String>,
    /// Deploys running, all projects.
    running: usize,
    /// Environments claimed, all projects.
    claimed: usize,
    /// The next place in line.
    next_seq: u64,
}

impl DeployQueue {
    pub fn new(limits: BuildLimits) -> Self {
        assert!(
            limits.max_concurrent_builds > 0
                && limits.max_builds_per_project > 0
                && limits.max_queued_per_project > 0
                && limits.max_queued > 0,
            "a deploy queue bound of 0 would deploy nothing: {limits:?}"
        );
        Self {
            limits,
            projects: BTreeMap::new(),
            last_served: None,
            running: 0,
            claimed: 0,
            next_seq: 0,
        }
    }

    pub fn limits(&self) -> BuildLimits {
        self.limits
    }

    /// Hold room for a push of `branches` of `project` that is being
    /// received: each branch not claimed yet takes a place now, so pushes
    /// received at the same time cannot both pass a full queue. Give it back
    /// with [`DeployQueue::release`] once the push was handed in (or not).
    pub fn reserve(&mut self, project: &str, branches: &[String]) -> Result<(), QueueFull> {
        if branches.is_empty() {
            return Ok(());
        }
        let branches: BTreeSet<&String> = branches.iter().collect();
        let (claimed, new) = match self.projects.get(project) {
            Some(p) => (
                p.claimed(),
                branches.iter().filter(|b| !p.is_claimed(b)).count(),
            ),
            None => (0, branches.len()),
        };
        self.check_room(project, claimed, new)?;
        let p = self.projects.entry(project.to_owned()).or_default();
        for branch in branches {
            *p.reserved.entry(branch.clone()).or_default() += 1;
        }
        self.claimed += new;
        self.check_invariants();
        Ok(())
    }

    /// Give back what [`DeployQueue::reserve`] held for the same arguments.
    pub fn release(&mut self, project: &str, branches: &[String]) {
        if branches.is_empty() {
            return;
        }
        let branches: BTreeSet<&String> = branches.iter().collect();
        let Some(p) = self.projects.get_mut(project) else {
            debug_assert!(false, "a release without its reservation");
            return;
        };
        let before = p.claimed();
        for branch in branches {
            match p.reserved.get_mut(branch) {
                Some(1) => {
                    p.reserved.remove(branch);
                }
                Some(count) => *count -= 1,
                None => debug_assert!(false, "a release without its reservation"),
            }
        }
        let after = p.claimed();
        debug_assert!(after <= before);
        self.claimed -= before - after;
        if p.is_empty() {
            self.projects.remove(project);
        }
        self.check_invariants();
    }

    /// `target` is now the newest push of `env`: it waits (replacing what
    /// waited for `env`, keeping its place) until [`DeployQueue::poll_start`]
    /// hands it out. Refused only if `env` was not claimed and claiming it
    /// would pass a bound (a push reserved first is never refused).
    pub fn push(&mut self, env: &EnvKey, target: Target) -> Result<(), QueueFull> {
        let (claimed, is_claimed) = match self.projects.get(&env.project) {
            Some(p) => (p.claimed(), p.is_claimed(&env.branch)),
            None => (0, false),
        };
        if !is_claimed {
            self.check_room(&env.project, claimed, 1)?;
            self.claimed += 1;
        }
        let seq = self.next_seq;
        let p = self.projects.entry(env.project.clone()).or_default();
        match p.waiting.get_mut(&env.branch) {
            Some((_, waiting)) => *waiting = target,
            None => {
                p.waiting.insert(env.branch.clone(), (seq, target));
                self.next_seq += 1;
            }
        }
        self.check_invariants();
        Ok(())
    }

    /// The next deploy to start, if the bounds allow one now; it runs until
    /// [`DeployQueue::finished`]. Call until `None` after every push and
    /// every finish.
    pub fn poll_start(&mut self) -> Option<(EnvKey, Target)> {
        if self.running >= self.limits.max_concurrent_builds {
            return None;
        }
        let max_per_project = self.limits.max_builds_per_project;
        let startable = |(name, p): (&String, &Project)| {
            (p.running.len() < max_per_project)
                .then(|| p.next_startable())
                .flatten()
                .map(|branch| (name.clone(), branch.to_owned()))
        };
        // Round robin: the first project after the last one served.
        let after = match &self.last_served {
            Some(last) => self
                .projects
                .range::<str, _>((Bound::Excluded(last.as_str()), Bound::Unbounded))
                .find_map(startable),
            None => None,
        };
        let (project, branch) = after.or_else(|| self.projects.iter().find_map(startable))?;
        let p = self
            .projects
            .get_mut(&project)
            .expect("a startable project");
        let (_, target) = p.waiting.remove(&branch).expect("a waiting branch");
        let inserted = p.running.insert(branch.clone());
        debug_assert!(inserted, "an environment runs once at a time");
        // Still claimed if a push being received reserved it.
        if !p.reserved.contains_key(&branch) {
            self.claimed -= 1;
        }
        self.running += 1;
        self.last_served = Some(project.clone());
        self.check_invariants();
        Some((EnvKey { project, branch }, target))
    }

    /// The deploy of `env` that [`DeployQueue::poll_start`] handed out ended
    /// (went live, failed or was abandoned).
    pub fn finished(&mut self, env: &EnvKey) {
        let Some(p) = self.projects.get_mut(&env.project) else {
            debug_assert!(false, "{env} finished but was not running");
            return;
        };
        let removed = p.running.remove(&env.branch);
        debug_assert!(removed, "{env} finished but was not running");
        if removed {
            self.running -= 1;
        }
        if p.is_empty() {
            self.projects.remove(&env.project);
        }
        self.check_invariants();
    }

    /// Environments waiting to start, all projects.
    pub fn waiting(&self) -> usize {
        self.projects.values().map(|p| p.waiting.len()).sum()
    }

    /// Deploys running now, all projects.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether `new` more environments of `project` (of which `claimed` are
    /// claimed) fit.
    fn check_room(&self, project: &str, claimed: usize, new: usize) -> Result<(), QueueFull> {
        if new == 0 {
            return Ok(());
        }
        let max = self.limits.max_queued_per_project;
        if claimed + new > max {
            return Err(QueueFull::Project {
                project: project.to_owned(),
                max,
            });
        }
        let max = self.limits.max_queued;
        if self.claimed + new > max {
            return Err(QueueFull::Node { max });
        }
        Ok(())
    }

    /// The counts agree with the projects, and every bound holds.
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let limits = self.limits;
        let mut running = 0;
        let mut claimed = 0;
        for (name, p) in &self.projects {
            debug_assert!(!p.is_empty(), "{name}: an empty project is dropped");
            debug_assert!(p.running.len() <= limits.max_builds_per_project);
            debug_assert!(p.claimed() <= limits.max_queued_per_project);
            debug_assert!(p.reserved.values().all(|count| *count > 0));
            running += p.running.len();
            claimed += p.claimed();
        }
        debug_assert_eq!(running, self.running);
        debug_assert_eq!(claimed, self.claimed);
        debug_assert!(self.running <= limits.max_concurrent_builds);
        debug_assert!(self.claimed <= limits.max_queued);
    }
}

#[cfg(test)]
mod tests;
