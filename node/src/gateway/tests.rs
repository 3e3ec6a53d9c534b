//! Unit tests of routing and of the gateway's messages. The HTTP behaviour
//! is tested end to end in `node/tests/it/gateway.rs`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use http::Method;

use super::responses::*;
use super::*;

struct Nothing;

impl FunctionTarget for Nothing {
    fn call(&self, _req: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        Box::pin(async { Response::new(crate::body::empty()) })
    }
}

fn function_route(prefix: &str) -> Route {
    Route::new(prefix, None, Target::Function(Arc::new(Nothing)))
}

fn site(routes: Vec<Route>) -> Arc<Site> {
    Arc::new(Site::new("shop", "main", "0123456789abcdef0123", routes))
}

fn found_prefix(table: &RouteTable, host: &str, path: &str) -> Option<String> {
    match table.lookup(host, path) {
        Lookup::Found { route, .. } => Some(route.prefix.clone()),
        _ => None,
    }
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    let r = function_route("/hello");
    assert!(r.matches("/hello"));
    assert!(r.matches("/hello/"));
    assert!(r.matches("/hello/x/y"));
    assert!(!r.matches("/helloworld"));
    assert!(!r.matches("/hell"));
    assert!(!r.matches("/"));
    let root = function_route("/");
    assert!(root.matches("/"));
    assert!(root.matches("/anything/at/all"));
    assert_eq!(function_route("api/").prefix, "/api");
    assert_eq!(function_route("").prefix, "/");
}

#[test]
fn rest_is_the_path_below_the_prefix() {
    assert_eq!(function_route("/hello").rest("/hello"), "");
    assert_eq!(function_route("/hello").rest("/hello/"), "");
    assert_eq!(function_route("/hello").rest("/hello/a/b.css"), "a/b.css");
    assert_eq!(function_route("/").rest("/index.html"), "index.html");
}

#[test]
fn longest_prefix_wins_whatever_the_order() {
    let mut table = RouteTable::new();
    table.insert_host(
        "shop.localhost",
        site(vec![
            function_route("/"),
            function_route("/api"),
            function_route("/api/v2"),
        ]),
    );
    assert_eq!(
        found_prefix(&table, "shop.localhost", "/api/v2/x").as_deref(),
        Some("/api/v2")
    );
    assert_eq!(
        found_prefix(&table, "shop.localhost", "/api/v3").as_deref(),
        Some("/api")
    );
    assert_eq!(
        found_prefix(&table, "shop.localhost", "/apix").as_deref(),
        Some("/")
    );

    // Even if a caller built the Site by hand, unsorted.
    let mut unsorted = RouteTable::new();
    unsorted.insert_host(
        "x.localhost",
        Arc::new(Site {
            project: "x".into(),
            branch: "main".into(),
            commit: "c".into(),
            routes: vec![function_route("/"), function_route("/api")],
        }),
    );
    assert_eq!(
        found_prefix(&unsorted, "x.localhost", "/api/1").as_deref(),
        Some("/api")
    );
}

#[test]
fn hosts_are_case_and_port_insensitive_and_wildcards_match_one_label() {
    let mut table = RouteTable::new();
    table.insert_host("Shop.Localhost", site(vec![function_route("/")]));
    table.insert_host("*.shop.example.com", site(vec![function_route("/")]));
    assert!(table.site("shop.localhost:8080").is_some());
    assert!(table.site("SHOP.LOCALHOST").is_some());
    assert!(table.site("dev.shop.localhost").is_none());
    assert_eq!(
        table.entry("eu.shop.example.com").map(|(k, _)| k),
        Some("*.shop.example.com")
    );
    assert!(table.site("a.b.shop.example.com").is_none());
    assert!(matches!(
        table.lookup("other.localhost", "/"),
        Lookup::UnknownHost
    ));
}

#[test]
fn known_host_without_a_matching_route() {
    let mut table = RouteTable::new();
    table.insert_host("shop.localhost", site(vec![function_route("/hello")]));
    assert!(matches!(
        table.lookup("shop.localhost", "/other"),
        Lookup::NoRoute { .. }
    ));
}

#[test]
fn methods_filter() {
    let r = Route::new(
        "/api",
        Some(vec![Method::GET, Method::POST]),
        Target::Function(Arc::new(Nothing)),
    );
    assert!(r.allows(&Method::GET));
    assert!(!r.allows(&Method::PUT));
    assert!(function_route("/").allows(&Method::DELETE));
}

#[test]
fn website_route_debug_does_not_need_a_function() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::BlobStore::open(dir.path()).unwrap());
    let cid = store.put(b"<h1>hi</h1>").unwrap();
    let site = StaticSite::from_files(
        BTreeMap::from([("/index.html".to_string(), (cid, 11))]),
        store,
    );
    assert!(
        site.file("index.html").is_some(),
        "a leading slash in a key is ignored"
    );
    let route = Route::new("/", None, Target::Website(Arc::new(site)));
    assert!(format!("{route:?}").contains("Website"));
}

#[test]
fn messages() {
    insta::assert_snapshot!(unknown_host_message("shop.example.org"), @r#"
    no Canopy project serves host "shop.example.org"
    hint: `<project>.localhost` reaches branch main of a project, `<branch>.<project>.localhost` reaches branch <branch>, and a project's `domains` reach main
    "#);
    insta::assert_snapshot!(no_host_message(), @r"
    the request names no host: send a Host header (HTTP/1.1) or an :authority (HTTP/2)
    hint: `<project>.localhost` reaches branch main of a project, `<branch>.<project>.localhost` reaches branch <branch>, and a project's `domains` reach main
    ");
    let s = site(vec![function_route("/hello"), function_route("/api")]);
    insta::assert_snapshot!(no_route_message(&s, "/nope"), @r#"project "shop" (branch "main", commit 0123456789ab) has no route for path "/nope"; its routes: /hello, /api"#);
    insta::assert_snapshot!(
        method_not_allowed_message("route \"/api\" of project \"shop\"", &Method::PUT, &[Method::GET, Method::POST]),
        @r#"route "/api" of project "shop" does not accept method PUT; allowed: GET, POST"#
    );
}
