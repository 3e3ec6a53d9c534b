//! The route table: which site serves a host, which route serves a path.
//!
//! Built by the deployment layer at each deployment and swapped into the
//! [`Gateway`](super::Gateway) whole; the gateway only reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use hyper::body::Incoming;

use super::host::normalize_host;
use super::static_site::StaticSite;

/// A function endpoint: receives the request as it arrives (body streaming)
/// and produces a response whose body is streamed back unbuffered.
pub trait FunctionTarget: Send + Sync + 'static {
    fn call(
        &self,
        req: http::Request<Incoming>,
    ) -> BoxFuture<'static, http::Response<crate::body::Body>>;
}

/// What a route serves.
#[derive(Clone)]
pub enum Target {
    Function(Arc<dyn FunctionTarget>),
    Website(Arc<StaticSite>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Function(_) => f.write_str("Function(..)"),
            Target::Website(site) => f.debug_tuple("Website").field(site).finish(),
        }
    }
}

/// One route of a site: a path prefix (matched on segment boundaries), an
/// optional method filter, and what serves it.
#[derive(Clone, Debug)]
pub struct Route {
    /// `/` or `/a/b` (no trailing slash; [`Site::new`] normalizes).
    pub prefix: String,
    /// `None`: every method.
    pub methods: Option<Vec<http::Method>>,
    pub target: Target,
}

impl Route {
    /// A route with its prefix normalized (leading `/`, no trailing `/`).
    pub fn new(prefix: &str, methods: Option<Vec<http::Method>>, target: Target) -> Self {
        Route {
            prefix: normalize_prefix(prefix),
            methods,
            target,
        }
    }

    /// Whether this route serves `path` (an absolute URL path, no query).
    ///
    /// `/hello` matches `/hello`, `/hello/`, `/hello/x`, not `/helloworld`;
    /// `/` matches everything.
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }

    /// Whether `method` passes this route's method filter.
    pub fn allows(&self, method: &http::Method) -> bool {
        match &self.methods {
            None => true,
            Some(methods) => methods.contains(method),
        }
    }

    /// The part of `path` below the prefix, without a leading `/`
    /// (`/hello/a/b` under `/hello` → `a/b`). `path` must match.
    pub fn rest<'p>(&self, path: &'p str) -> &'p str {
        debug_assert!(
            self.matches(path),
            "rest() of a path the route does not match"
        );
        let below = if self.prefix == "/" {
            path
        } else {
            path.get(self.prefix.len()..).unwrap_or("")
        };
        below.trim_start_matches('/')
    }
}

/// A deployed branch of a project: its routes, longest prefix first.
#[derive(Clone, Debug)]
pub struct Site {
    pub project: String,
    pub branch: String,
    pub commit: String,
    pub routes: Vec<Route>,
}

impl Site {
    /// A site whose routes are normalized and sorted longest-prefix-first
    /// (ties keep their given order), so the first match is the best one.
    pub fn new(project: &str, branch: &str, commit: &str, routes: Vec<Route>) -> Self {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|mut r| {
                r.prefix = normalize_prefix(&r.prefix);
                r
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Site {
            project: project.to_string(),
            branch: branch.to_string(),
            commit: commit.to_string(),
            routes,
        }
    }

    /// The best (longest-prefix) route for `path`.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        // `routes` is public, so a caller may have skipped `Site::new`:
        // pick the longest match rather than trust the order.
        let mut best: Option<&Route> = None;
        for route in &self.routes {
            if route.matches(path) && best.is_none_or(|b| route.prefix.len() > b.prefix.len()) {
                best = Some(route);
            }
        }
        best
    }
}

/// Which site serves each host.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Lowercase host without port → site. A key `*.example.com` serves any
    /// single label below `example.com` that has no entry of its own.
    hosts: BTreeMap<String, Arc<Site>>,
}

/// The outcome of [`RouteTable::lookup`].
#[derive(Debug)]
pub enum Lookup<'a> {
    /// `route` of `site` serves the request; `rest` is the path below the
    /// route's prefix (no leading `/`).
    Found {
        site: &'a Arc<Site>,
        route: &'a Route,
        rest: &'a str,
    },
    /// The host is served, but no route of its site matches the path.
    NoRoute { site: &'a Arc<Site> },
    /// No site serves this host.
    UnknownHost,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `host` (any case, a port is ignored) with `site`, replacing any
    /// previous site for it. `*.domain` is a one-label wildcard.
    pub fn insert_host(&mut self, host: &str, site: Arc<Site>) {
        self.hosts.insert(normalize_host(host), site);
    }

    /// The hosts served, in order.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// The site serving `host` (an exact entry first, then a wildcard).
    pub fn site(&self, host: &str) -> Option<&Arc<Site>> {
        self.entry(host).map(|(_, site)| site)
    }

    /// The table key (exact host or wildcard) and site serving `host`.
    pub fn entry(&self, host: &str) -> Option<(&str, &Arc<Site>)> {
        let host = normalize_host(host);
        if let Some((key, site)) = self.hosts.get_key_value(&host) {
            return Some((key.as_str(), site));
        }
        let (_, parent) = host.split_once('.')?;
        let (key, site) = self.hosts.get_key_value(&format!("*.{parent}"))?;
        Some((key.as_str(), site))
    }

    /// Route a request by host, then by longest path prefix.
    pub fn lookup<'a>(&'a self, host: &str, path: &'a str) -> Lookup<'a> {
        let Some(site) = self.site(host) else {
            return Lookup::UnknownHost;
        };
        match site.route_for(path) {
            Some(route) => Lookup::Found {
                site,
                route,
                rest: route.rest(path),
            },
            None => Lookup::NoRoute { site },
        }
    }
}

/// `hello/` → `/hello`, `/` → `/`, `` → `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}")
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(after) => after.is_empty() || after.starts_with('/'),
        None => false,
    }
}
