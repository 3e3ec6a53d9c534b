//! What a push tells the rest of the node once it is acknowledged.

/// One acknowledged push to one repository: its refs are updated and every
/// object they name is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushEvent {
    /// The repository name without the `.git` suffix (`shop` for `shop.git`).
    pub repo: String,
    /// The token the push was made with (see [`Pusher`]), while the push is
    /// in memory: what warrants its record in cluster state. Never stored.
    pub pusher: Option<crate::auth::Token>,
    /// The branch updates of this push that succeeded, in the order the client
    /// sent them. Tags are stored but not reported; refused updates are absent.
    pub updates: Vec<RefUpdate>,
}

/// One reference that a push changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full name, e.g. `refs/heads/main`.
    pub refname: String,
    /// The branch name (`main` for `refs/heads/main`), `None` for other refs.
    pub branch: Option<String>,
    /// The previous target, `None` when the ref was created.
    pub old: Option<gix::ObjectId>,
    /// The new target, `None` when the ref was deleted.
    pub new: Option<gix::ObjectId>,
}

/// Who hears of acknowledged pushes. For each push the remote calls
/// [`PushListener::admit`] before it stores anything, then
/// [`PushListener::pushed`] (if a branch moved) before it answers the client,
/// so whatever the listener records is in place by the time `git push`
/// returns; the [`Admission`] is dropped after that.
pub trait PushListener: Send + Sync + std::fmt::Debug + 'static {
    /// May a push that updates (or deletes) `branches` of `repo` be
    /// received? `Err` says why not: every ref of the push is refused with
    /// it and nothing of the push is stored. What the admission holds (room
    /// in a bounded queue) is held until it is dropped, after `pushed`.
    fn admit(&self, repo: &str, branches: &[String]) -> Result<Admission, String> {
        let _ = (repo, branches);
        Ok(Admission::default())
    }

    /// `event` was acknowledged; false if nobody will act on it.
    fn pushed(&self, event: PushEvent) -> bool;
}

/// What a listener holds for a push it admitted, until the remote drops it.
#[must_use = "dropping an admission gives back what it holds"]
#[derive(Default)]
pub struct Admission(Option<Box<dyn Send>>);

impl Admission {
    /// An admission that holds `guard` (whose drop gives back what it held).
    pub fn holding(guard: impl Send + 'static) -> Self {
        Self(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("holds", &self.0.is_some())
            .finish()
    }
}

impl PushListener for tokio::sync::mpsc::UnboundedSender<PushEvent> {
    fn pushed(&self, event: PushEvent) -> bool {
        self.send(event).is_ok()
    }
}

/// The token a request to the Git remote was authenticated with: the admin
/// layer puts it in the request's extensions, and the push event carries it
/// to the deployer, which turns it into a warrant for the push.
#[derive(Clone, Debug)]
pub struct Pusher(pub crate::auth::Token);
