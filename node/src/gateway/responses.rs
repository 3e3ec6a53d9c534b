//! The gateway's own responses: plain-text errors that say what happened and
//! what to do. Nothing here reveals which projects a node serves.

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::routes::Site;
use crate::body::{self, Body};

/// How `<project>.localhost` and `<branch>.<project>.localhost` reach a project.
const ROUTING_HINT: &str = "hint: `<project>.localhost` reaches branch main of a project, \
`<branch>.<project>.localhost` reaches branch <branch>, and a project's `domains` reach main";

/// A plain-text response.
pub(crate) fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut resp = Response::new(body::full(message));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn unknown_host_message(host: &str) -> String {
    format!("no Canopy project serves host {host:?}\n{ROUTING_HINT}\n")
}

pub(crate) fn no_host_message() -> String {
    format!(
        "the request names no host: send a Host header (HTTP/1.1) or an :authority (HTTP/2)\n{ROUTING_HINT}\n"
    )
}

pub(crate) fn no_route_message(site: &Site, path: &str) -> String {
    let prefixes: Vec<&str> = site.routes.iter().map(|r| r.prefix.as_str()).collect();
    let routes = if prefixes.is_empty() {
        "it has no HTTP routes".to_string()
    } else {
        format!("its routes: {}", prefixes.join(", "))
    };
    format!(
        "project {:?} (branch {:?}, commit {}) has no route for path {path:?}; {routes}\n",
        site.project,
        site.branch,
        short_commit(&site.commit),
    )
}

pub(crate) fn method_not_allowed_message(
    what: &str,
    method: &Method,
    allowed: &[Method],
) -> String {
    format!(
        "{what} does not accept method {method}; allowed: {}\n",
        allow_list(allowed)
    )
}

/// 405 with the `Allow` header the RFC requires.
pub(crate) fn method_not_allowed(
    what: &str,
    method: &Method,
    allowed: &[Method],
) -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        method_not_allowed_message(what, method, allowed),
    );
    if let Ok(allow) = HeaderValue::from_str(&allow_list(allowed)) {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

fn allow_list(allowed: &[Method]) -> String {
    allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn short_commit(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
