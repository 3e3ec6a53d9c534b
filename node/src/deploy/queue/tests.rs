use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn env(project: &str, branch: &str) -> EnvKey {
    EnvKey {
        project: project.to_owned(),
        branch: branch.to_owned(),
    }
}

fn commit(n: u64) -> Target {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    Target::Commit(gix::ObjectId::from_bytes_or_panic(&bytes))
}

fn branches(names: &[&str]) -> Vec<String> {
    names.iter().map(|b| (*b).to_owned()).collect()
}

fn start_all(q: &mut DeployQueue) -> Vec<(EnvKey, Target)> {
    std::iter::from_fn(|| q.poll_start()).collect()
}

#[test]
fn one_projects_build_does_not_hold_up_another_project() {
    let mut q = DeployQueue::new(BuildLimits::default());
    q.push(&env("a", "main"), commit(1)).unwrap();
    q.push(&env("a", "preview"), commit(2)).unwrap();
    q.push(&env("b", "main"), commit(3)).unwrap();
    // One per project, two in all: b starts beside a's slow build.
    assert_eq!(
        start_all(&mut q),
        vec![(env("a", "main"), commit(1)), (env("b", "main"), commit(3))]
    );
    q.finished(&env("b", "main"));
    assert_eq!(start_all(&mut q), vec![]);
    q.finished(&env("a", "main"));
    assert_eq!(start_all(&mut q), vec![(env("a", "preview"), commit(2))]);
}

#[test]
fn only_the_newest_waiting_push_deploys_and_a_running_one_is_waited_for() {
    let mut q = DeployQueue::new(BuildLimits::default());
    let main = env("shop", "main");
    q.push(&main, commit(1)).unwrap();
    q.push(&main, commit(2)).unwrap();
    assert_eq!(start_all(&mut q), vec![(main.clone(), commit(2))]);
    // Pushed while 2 deploys: waits, and is replaced by a deletion.
    q.push(&main, commit(3)).unwrap();
    q.push(&main, Target::Delete).unwrap();
    assert_eq!(start_all(&mut q), vec![], "one deploy per environment");
    q.finished(&main);
    assert_eq!(start_all(&mut q), vec![(main.clone(), Target::Delete)]);
    q.finished(&main);
    assert_eq!((q.waiting(), q.running()), (0, 0));
}

#[test]
fn a_project_over_its_bound_is_refused_and_a_coalescing_push_is_not() {
    let limits = BuildLimits {
        max_queued_per_project: 2,
        ..BuildLimits::default()
    };
    let mut q = DeployQueue::new(limits);
    // Running environments do not count: only waiting ones do.
    q.push(&env("shop", "main"), commit(1)).unwrap();
    assert_eq!(start_all(&mut q).len(), 1);
    q.push(&env("shop", "main"), commit(2)).unwrap();
    q.push(&env("shop", "a"), commit(3)).unwrap();
    let refused = q.push(&env("shop", "b"), commit(4)).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "deploy queue full: project shop has 2 environments waiting to build \
         (limits.builds.max_queued_per_project = 2); wait for them to finish, or ask the \
         operator to raise it"
    );
    q.push(&env("shop", "a"), commit(5)).unwrap();
    q.push(&env("other", "main"), commit(6)).unwrap();
    assert_eq!(q.waiting(), 3);
}

#[test]
fn the_node_wide_bound_counts_every_project() {
    let limits = BuildLimits {
        max_queued: 2,
        ..BuildLimits::default()
    };
    let mut q = DeployQueue::new(limits);
    q.push(&env("a", "main"), commit(1)).unwrap();
    q.push(&env("b", "main"), commit(2)).unwrap();
    assert_eq!(
        q.push(&env("c", "main"), commit(3)),
        Err(QueueFull::Node { max: 2 })
    );
    assert_eq!(
        q.reserve("c", &branches(&["main"])),
        Err(QueueFull::Node { max: 2 })
    );
    start_all(&mut q);
    q.push(&env("c", "main"), commit(3)).unwrap();
}

#[test]
fn a_reservation_holds_its_place_until_released() {
    let limits = BuildLimits {
        max_queued_per_project: 2,
        ..BuildLimits::default()
    };
    let mut q = DeployQueue::new(limits);
    q.reserve("shop", &branches(&["main", "a"])).unwrap();
    // A push received at the same time finds no room…
    assert!(q.reserve("shop", &branches(&["b"])).is_err());
    assert!(q.push(&env("shop", "b"), commit(1)).is_err());
    // …but one into a reserved environment needs none.
    q.reserve("shop", &branches(&["main"])).unwrap();
    q.release("shop", &branches(&["main"]));
    // The reserved push lands, whatever happened meanwhile.
    q.push(&env("shop", "main"), commit(2)).unwrap();
    q.push(&env("shop", "a"), commit(3)).unwrap();
    q.release("shop", &branches(&["main", "a"]));
    assert!(q.push(&env("shop", "b"), commit(4)).is_err());
    assert_eq!(start_all(&mut q).len(), 1);
    q.push(&env("shop", "b"), commit(4)).unwrap();
    // An abandoned reservation gives its place back.
    q.finished(&env("shop", "main"));
    start_all(&mut q);
    q.reserve("shop", &branches(&["c"])).unwrap();
    q.release("shop", &branches(&["c"]));
    assert_eq!(q.projects["shop"].claimed(), 1, "only b waits");
}

#[test]
fn a_waiting_environment_that_starts_stays_claimed_by_its_reservation() {
    let limits = BuildLimits {
        max_queued_per_project: 1,
        ..BuildLimits::default()
    };
    let mut q = DeployQueue::new(limits);
    q.push(&env("shop", "main"), commit(1)).unwrap();
    // A push of main is being received: main waits, so it takes no new room.
    q.reserve("shop", &branches(&["main"])).unwrap();
    assert_eq!(start_all(&mut q).len(), 1);
    // main left the line but stays claimed: another branch finds no room.
    assert!(q.push(&env("shop", "other"), commit(2)).is_err());
    q.push(&env("shop", "main"), commit(3)).unwrap();
    q.release("shop", &branches(&["main"]));
}

#[test]
fn projects_take_turns_whatever_their_number_of_branches() {
    let limits = BuildLimits {
        max_concurrent_builds: 1,
        ..BuildLimits::default()
    };
    let mut q = DeployQueue::new(limits);
    for (n, branch) in ["a1", "a2", "a3"].into_iter().enumerate() {
        q.push(&env("a", branch), commit(n as u64)).unwrap();
    }
    q.push(&env("b", "main"), commit(10)).unwrap();
    q.push(&env("c", "main"), commit(11)).unwrap();
    let mut order = Vec::new();
    while let Some((key, _)) = q.poll_start() {
        order.push(key.to_string());
        q.finished(&key);
    }
    assert_eq!(order, ["a@a1", "b@main", "c@main", "a@a2", "a@a3"]);
}

/// What the proptest does to a queue.
#[derive(Clone, Debug)]
enum Op {
    Push {
        project: u8,
        branch: u8,
        delete: bool,
    },
    Reserve {
        project: u8,
        branches: Vec<u8>,
    },
    /// Push every branch of a held reservation, then release it.
    Land(usize),
    /// Release a held reservation without pushing (the push was refused).
    Abandon(usize),
    Finish(usize),
    Start,
}

const PROJECTS: u8 = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PROJECTS, 0..4u8, proptest::bool::weighted(0.2))
            .prop_map(|(project, branch, delete)| Op::Push { project, branch, delete }),
        1 => (0..PROJECTS, proptest::collection::vec(0..4u8, 0..3))
            .prop_map(|(project, branches)| Op::Reserve { project, branches }),
        1 => any::<usize>().prop_map(Op::Land),
        1 => any::<usize>().prop_map(Op::Abandon),
        3 => any::<usize>().prop_map(Op::Finish),
        2 => Just(Op::Start),
    ]
}

fn limits() -> impl Strategy<Value = BuildLimits> {
    (1..=3usize, 1..=2usize, 1..=4usize, 1..=8usize).prop_map(|(c, p, qp, q)| BuildLimits {
        max_concurrent_builds: c,
        max_builds_per_project: p,
        max_queued_per_project: qp,
        max_queued: q,
    })
}

/// What the queue should hold, kept by the test.
struct Model {
    limits: BuildLimits,
    /// The newest accepted target of every environment ever pushed.
    newest: BTreeMap<EnvKey, Target>,
    /// Environments with an accepted push not started yet.
    pending: BTreeSet<EnvKey>,
    running: Vec<EnvKey>,
    /// Reservations held: project and branches.
    held: Vec<(String, Vec<String>)>,
    last_started: BTreeMap<EnvKey, Target>,
    started_commits: BTreeSet<gix::ObjectId>,
    /// Starts of other projects since each project last started while it
    /// could have.
    skipped: BTreeMap<String, usize>,
    next_commit: u64,
}

impl Model {
    fn claimed(&self, project: &str) -> BTreeSet<String> {
        let reserved = self
            .held
            .iter()
            .filter(|(p, _)| p == project)
            .flat_map(|(_, b)| b.iter().cloned());
        self.pending
            .iter()
            .filter(|e| e.project == project)
            .map(|e| e.branch.clone())
            .chain(reserved)
            .collect()
    }

    fn claimed_total(&self) -> usize {
        (0..PROJECTS)
            .map(|p| self.claimed(&format!("p{p}")).len())
            .sum()
    }

    fn check_bounds(&self) {
        assert!(self.running.len() <= self.limits.max_concurrent_builds);
        assert!(self.claimed_total() <= self.limits.max_queued);
        for p in 0..PROJECTS {
            let project = format!("p{p}");
            assert!(self.claimed(&project).len() <= self.limits.max_queued_per_project);
            let running = self.running.iter().filter(|e| e.project == project).count();
            assert!(running <= self.limits.max_builds_per_project);
        }
        let distinct: BTreeSet<&EnvKey> = self.running.iter().collect();
        assert_eq!(
            distinct.len(),
            self.running.len(),
            "an environment runs twice"
        );
    }

    /// Whether refusing `new` more environments of `project` is right.
    fn full(&self, project: &str, new: usize) -> bool {
        new > 0
            && (self.claimed(project).len() + new > self.limits.max_queued_per_project
                || self.claimed_total() + new > self.limits.max_queued)
    }

    fn push(&mut self, q: &mut DeployQueue, key: EnvKey, delete: bool) -> bool {
        let target = if delete {
            Target::Delete
        } else {
            self.next_commit += 1;
            commit(self.next_commit)
        };
        let new = usize::from(!self.claimed(&key.project).contains(&key.branch));
        let full = self.full(&key.project, new);
        match q.push(&key, target) {
            Ok(()) => {
                assert!(!full, "{key} accepted past a bound");
                self.newest.insert(key.clone(), target);
                self.pending.insert(key);
                true
            }
            Err(_) => {
                assert!(full, "{key} refused with room left");
                false
            }
        }
    }

    fn eligible(&self) -> BTreeSet<String> {
        if self.running.len() >= self.limits.max_concurrent_builds {
            return BTreeSet::new();
        }
        self.pending
            .iter()
            .filter(|e| !self.running.contains(e))
            .filter(|e| {
                self.running
                    .iter()
                    .filter(|r| r.project == e.project)
                    .count()
                    < self.limits.max_builds_per_project
            })
            .map(|e| e.project.clone())
            .collect()
    }

    fn start(&mut self, q: &mut DeployQueue) {
        loop {
            let eligible = self.eligible();
            let Some((key, target)) = q.poll_start() else {
                assert!(eligible.is_empty(), "{eligible:?} could start but did not");
                return;
            };
            assert!(
                eligible.contains(&key.project),
                "{key} started past a bound"
            );
            assert_eq!(
                self.newest.get(&key),
                Some(&target),
                "{key}: not the newest push"
            );
            assert!(self.pending.remove(&key));
            if let Target::Commit(commit) = target {
                assert!(self.started_commits.insert(commit), "a push started twice");
            }
            self.last_started.insert(key.clone(), target);
            self.running.push(key.clone());
            // Round robin: a project that could start waits for each other
            // project at most once.
            for project in (0..PROJECTS).map(|p| format!("p{p}")) {
                let skipped = self.skipped.entry(project.clone()).or_default();
                if project == key.project || !eligible.contains(&project) {
                    *skipped = 0;
                } else {
                    *skipped += 1;
                    assert!(
                        *skipped < usize::from(PROJECTS),
                        "{project} skipped {skipped} times in a row"
                    );
                }
            }
            self.check_bounds();
        }
    }

    /// Hand in (`land`) or give up a held reservation, then release it.
    fn settle(&mut self, q: &mut DeployQueue, which: usize, land: bool) {
        if self.held.is_empty() {
            return;
        }
        let (project, branches) = self.held.remove(which % self.held.len());
        if land {
            // Still counted as held while its pushes land.
            self.held.push((project.clone(), branches.clone()));
            for branch in &branches {
                let accepted = self.push(q, env(&project, branch), false);
                assert!(accepted, "a reserved push was refused");
            }
            self.held.pop();
        }
        q.release(&project, &branches);
    }

    fn finish(&mut self, q: &mut DeployQueue, which: usize) {
        if self.running.is_empty() {
            return;
        }
        let key = self.running.remove(which % self.running.len());
        q.finished(&key);
    }
}

proptest! {
    #[test]
    fn the_queue_keeps_its_bounds_and_deploys_every_newest_push(
        limits in limits(),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let mut q = DeployQueue::new(limits);
        let mut m = Model {
            limits,
            newest: BTreeMap::new(),
            pending: BTreeSet::new(),
            running: Vec::new(),
            held: Vec::new(),
            last_started: BTreeMap::new(),
            started_commits: BTreeSet::new(),
            skipped: BTreeMap::new(),
            next_commit: 0,
        };
        let name = |p: u8| format!("p{p}");
        for op in ops {
            match op {
                Op::Push { project, branch, delete } => {
                    m.push(&mut q, env(&name(project), &format!("b{branch}")), delete);
                }
                Op::Reserve { project, branches } => {
                    let project = name(project);
                    let branches: Vec<String> = branches.iter().map(|b| format!("b{b}")).collect();
                    let distinct: BTreeSet<&String> = branches.iter().collect();
                    let claimed = m.claimed(&project);
                    let new = distinct.iter().filter(|b| !claimed.contains(**b)).count();
                    let full = m.full(&project, new);
                    match q.reserve(&project, &branches) {
                        Ok(()) => {
                            prop_assert!(!full, "reserved past a bound");
                            m.held.push((project, branches));
                        }
                        Err(_) => prop_assert!(full, "reservation refused with room left"),
                    }
                }
                Op::Land(which) => m.settle(&mut q, which, true),
                Op::Abandon(which) => m.settle(&mut q, which, false),
                Op::Finish(which) => m.finish(&mut q, which),
                Op::Start => m.start(&mut q),
            }
            m.check_bounds();
        }
        // Everything finishes: every environment's newest push deploys.
        for (project, branches) in std::mem::take(&mut m.held) {
            q.release(&project, &branches);
        }
        loop {
            m.start(&mut q);
            if m.running.is_empty() {
                break;
            }
            while !m.running.is_empty() {
                m.finish(&mut q, 0);
            }
        }
        prop_assert!(m.pending.is_empty());
        prop_assert_eq!(&m.last_started, &m.newest);
        prop_assert_eq!((q.waiting(), q.running()), (0, 0));
        prop_assert!(q.projects.is_empty(), "nothing left behind");
    }
}
