//! The gateway over real TCP on 127.0.0.1 with a real HTTP client (reqwest),
//! HTTP/1.1 and HTTP/2 prior knowledge.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::body::{self, Body, BoxError};
use canopy_node::gateway::{
    FunctionTarget, Gateway, GatewayConfig, Route, RouteInfo, RouteTable, Site, StaticSite, Target,
    UNKNOWN_HOST,
};
use canopy_node::store::BlobStore;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

const BIG_CHUNK_BYTES: usize = 64 * 1024;
const BIG_CHUNKS: usize = 160; // 10 MiB

/// Replies with fixed text and the matched route prefix in `x-route`.
struct Text(&'static str);

impl FunctionTarget for Text {
    fn call(&self, req: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        let text = self.0;
        let prefix = req
            .extensions()
            .get::<RouteInfo>()
            .map(|r| r.prefix.clone())
            .unwrap_or_default();
        Box::pin(async move {
            Response::builder()
                .header("x-route", prefix)
                .header("server", "not-canopy")
                .body(body::full(text))
                .unwrap()
        })
    }
}

/// Streams the request body straight back.
struct Echo;

impl FunctionTarget for Echo {
    fn call(&self, req: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        Box::pin(async move {
            let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
            Response::new(body)
        })
    }
}

/// Streams 10 MiB in 64 KiB chunks, generated as they are sent.
struct Big;

fn big_chunk(i: usize) -> Bytes {
    Bytes::from(
        (0..BIG_CHUNK_BYTES)
            .map(|j| ((i * BIG_CHUNK_BYTES + j) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn big_expected() -> Vec<u8> {
    (0..BIG_CHUNKS)
        .flat_map(|i| big_chunk(i).to_vec())
        .collect()
}

impl FunctionTarget for Big {
    fn call(&self, _req: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        Box::pin(async move {
            let frames = futures::stream::iter(
                (0..BIG_CHUNKS).map(|i| Ok::<_, BoxError>(Frame::data(big_chunk(i)))),
            );
            Response::new(StreamBody::new(frames).boxed())
        })
    }
}

/// Answers only once released: a request that is in flight on purpose.
struct Gate {
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl FunctionTarget for Gate {
    fn call(&self, _req: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        let entered = self.entered.clone();
        let release = self.release.clone();
        Box::pin(async move {
            entered.notify_one();
            release.notified().await;
            Response::new(body::full("released"))
        })
    }
}

struct Harness {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    store: Arc<BlobStore>,
    site_files: BTreeMap<String, (cid::Cid, u64)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
    _dir: tempfile::TempDir,
}

const INDEX_HTML: &str = "<!doctype html><h1>shop</h1>";
const CSS: &str = "h1 { color: green }";
const DOCS_HTML: &str = "<h1>docs</h1>";
const LARGE_FILE_BYTES: usize = 9 * 1024 * 1024;

fn large_file() -> Vec<u8> {
    (0..LARGE_FILE_BYTES).map(|i| (i % 253) as u8).collect()
}

fn website(store: &Arc<BlobStore>) -> BTreeMap<String, (cid::Cid, u64)> {
    let mut files = BTreeMap::new();
    for (path, content) in [
        ("index.html", INDEX_HTML.as_bytes().to_vec()),
        ("css/a.css", CSS.as_bytes().to_vec()),
        ("docs/index.html", DOCS_HTML.as_bytes().to_vec()),
        ("img/logo.png", vec![0x89, b'P', b'N', b'G']),
        ("video/large.bin", large_file()),
    ] {
        let cid = store.put(&content).unwrap();
        files.insert(path.to_string(), (cid, content.len() as u64));
    }
    files
}

async fn start(config: GatewayConfig, gate: Option<Gate>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::open(dir.path()).unwrap());
    let site_files = website(&store);
    let site = Arc::new(StaticSite::from_files(site_files.clone(), store.clone()));

    let mut main_routes = vec![
        Route::new("/", None, Target::Website(site)),
        Route::new(
            "/hello",
            None,
            Target::Function(Arc::new(Text("hello from main"))),
        ),
        Route::new(
            "/hello/deep",
            None,
            Target::Function(Arc::new(Text("deep"))),
        ),
        Route::new(
            "/api",
            Some(vec![Method::GET, Method::POST]),
            Target::Function(Arc::new(Echo)),
        ),
        Route::new("/big", None, Target::Function(Arc::new(Big))),
    ];
    if let Some(gate) = gate {
        main_routes.push(Route::new("/wait", None, Target::Function(Arc::new(gate))));
    }
    let main = Arc::new(Site::new("shop", "main", "0123456789abcdef", main_routes));
    let dev = Arc::new(Site::new(
        "shop",
        "dev",
        "fedcba9876543210",
        vec![Route::new(
            "/hello",
            None,
            Target::Function(Arc::new(Text("hello from dev"))),
        )],
    ));
    let mut table = RouteTable::new();
    table.insert_host("shop.localhost", main.clone());
    table.insert_host("shop.example.com", main);
    table.insert_host("dev.shop.localhost", dev);

    let gateway = Gateway::with_config(config);
    gateway.replace_routes(table);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    Harness {
        addr,
        gateway,
        store,
        site_files,
        shutdown: Some(tx),
        server,
        _dir: dir,
    }
}

const HOSTS: [&str; 5] = [
    "shop.localhost",
    "dev.shop.localhost",
    "shop.example.com",
    "unknown.localhost",
    "localhost",
];

impl Harness {
    fn client(&self) -> reqwest::Client {
        self.builder().build().unwrap()
    }

    fn h2_client(&self) -> reqwest::Client {
        self.builder().http2_prior_knowledge().build().unwrap()
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy();
        for host in HOSTS {
            b = b.resolve(host, self.addr);
        }
        b
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        self.client()
            .get(self.url(host, path))
            .send()
            .await
            .unwrap()
    }
}

async fn text_of(resp: reqwest::Response) -> (StatusCode, http::HeaderMap, String) {
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn routes_by_host() {
    let h = start(GatewayConfig::default(), None).await;
    for (host, expected) in [
        ("shop.localhost", "hello from main"),
        ("dev.shop.localhost", "hello from dev"),
        ("shop.example.com", "hello from main"),
    ] {
        let (status, headers, body) = text_of(h.get(host, "/hello").await).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert_eq!(body, expected, "{host}");
        assert_eq!(
            headers["server"], "canopy",
            "the gateway's server header wins"
        );
    }
    // A Host header with another case and a port (sent by hand) routes too.
    let resp = h
        .client()
        .get(format!("http://127.0.0.1:{}/hello", h.addr.port()))
        .header("host", "Dev.Shop.LOCALHOST:1234")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello from dev");
}

#[tokio::test]
async fn longest_prefix_on_segment_boundaries() {
    let h = start(GatewayConfig::default(), None).await;
    let cases = [
        ("/hello", "hello from main", "/hello"),
        ("/hello/", "hello from main", "/hello"),
        ("/hello/x", "hello from main", "/hello"),
        ("/hello/deep", "deep", "/hello/deep"),
        ("/hello/deep/er", "deep", "/hello/deep"),
        ("/hello/deeper", "hello from main", "/hello"),
    ];
    for (path, body, route) in cases {
        let (status, headers, text) = text_of(h.get("shop.localhost", path).await).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(text, body, "{path}");
        assert_eq!(headers["x-route"], route, "{path}");
    }
    // `/helloworld` is not under `/hello`: it falls to the website at `/`.
    let (status, headers, text) = text_of(h.get("shop.localhost", "/helloworld").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.get("x-route").is_none());
    assert!(text.contains("no file at \"/helloworld\""), "{text}");
}

#[tokio::test]
async fn not_found_messages() {
    let h = start(GatewayConfig::default(), None).await;

    let (status, headers, text) = text_of(h.get("unknown.localhost", "/").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["server"], "canopy");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        text.starts_with("no Canopy project serves host \"unknown.localhost\""),
        "{text}"
    );
    assert!(
        text.contains("`<project>.localhost` reaches branch main"),
        "{text}"
    );

    for host in ["localhost", "127.0.0.1"] {
        let resp = h
            .client()
            .get(format!("http://{host}:{}/", h.addr.port()))
            .send()
            .await
            .unwrap();
        let (status, _, text) = text_of(resp).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{host}");
        assert!(text.contains(&format!("serves host \"{host}\"")), "{text}");
        assert!(
            !text.contains("shop"),
            "a bare host lists no project: {text}"
        );
    }

    // Known host, no route: names project and branch.
    let (status, _, text) = text_of(h.get("dev.shop.localhost", "/nothing").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("project \"shop\" (branch \"dev\""), "{text}");
    assert!(text.contains("\"/nothing\""), "{text}");
}

#[tokio::test]
async fn method_filters_answer_405_with_allow() {
    let h = start(GatewayConfig::default(), None).await;
    let c = h.client();
    let resp = c
        .put(h.url("shop.localhost", "/api/x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    assert_eq!(resp.headers()["server"], "canopy");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("does not accept method PUT")
    );

    let resp = c
        .post(h.url("shop.localhost", "/api/x"))
        .body("posted")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "posted");

    // Websites serve GET and HEAD only.
    let resp = c
        .post(h.url("shop.localhost", "/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn website_files_types_etags_and_revalidation() {
    let h = start(GatewayConfig::default(), None).await;
    let c = h.client();
    let index_cid = h.site_files["index.html"].0;

    for path in ["/", "/index.html"] {
        let resp = h.get("shop.localhost", path).await;
        let (status, headers, text) = text_of(resp).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(text, INDEX_HTML);
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["etag"], format!("\"{index_cid}\"").as_str());
        assert_eq!(
            headers["cache-control"],
            "public, max-age=0, must-revalidate"
        );
        assert_eq!(headers["server"], "canopy");
    }
    let (_, headers, text) = text_of(h.get("shop.localhost", "/css/a.css").await).await;
    assert_eq!(text, CSS);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    let resp = h.get("shop.localhost", "/img/logo.png").await;
    assert_eq!(resp.headers()["content-type"], "image/png");

    // If-None-Match with the CID → 304, no body.
    let resp = c
        .get(h.url("shop.localhost", "/"))
        .header("if-none-match", format!("\"{index_cid}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()["etag"], format!("\"{index_cid}\"").as_str());
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = c
        .get(h.url("shop.localhost", "/"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // HEAD: the headers of GET, no body.
    let resp = c
        .head(h.url("shop.localhost", "/css/a.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        CSS.len().to_string().as_str()
    );
    assert_eq!(resp.headers()["content-type"], "text/css; charset=utf-8");
    assert!(resp.bytes().await.unwrap().is_empty());

    // Directories serve their index.html; without the slash, a redirect.
    let (status, _, text) = text_of(h.get("shop.localhost", "/docs/").await).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, DOCS_HTML));
    let no_redirects = h
        .builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(h.url("shop.localhost", "/docs?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.headers()["location"], "/docs/?x=1");

    let (status, _, _) = text_of(h.get("shop.localhost", "/missing.html").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn large_website_file_streams_whole() {
    let h = start(GatewayConfig::default(), None).await;
    let resp = h.get("shop.localhost", "/video/large.bin").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        LARGE_FILE_BYTES.to_string().as_str()
    );
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let body = resp.bytes().await.unwrap();
    assert!(
        body[..] == large_file()[..],
        "streamed file arrives whole and unchanged"
    );
}

#[tokio::test]
async fn corrupt_website_blob_gives_500_never_the_bad_bytes() {
    let h = start(GatewayConfig::default(), None).await;
    let (cid, _) = h.site_files["css/a.css"];
    let path = h.store.blob_path(&cid);
    let tampered = "h1 { color: EVIL }";
    std::fs::write(&path, tampered).unwrap();

    let (status, headers, text) = text_of(h.get("shop.localhost", "/css/a.css").await).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["server"], "canopy");
    assert!(text.contains("stored file failed verification"), "{text}");
    assert!(!text.contains("EVIL"));
    assert!(!path.exists(), "the corrupt blob was quarantined");

    // Putting the real content heals it.
    h.store.put(CSS.as_bytes()).unwrap();
    let (status, _, text) = text_of(h.get("shop.localhost", "/css/a.css").await).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, CSS));
}

#[tokio::test]
async fn corrupt_large_file_aborts_the_stream() {
    let h = start(GatewayConfig::default(), None).await;
    let (cid, _) = h.site_files["video/large.bin"];
    let path = h.store.blob_path(&cid);
    for client in [h.client(), h.h2_client()] {
        h.store.put(&large_file()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();

        let resp = client
            .get(h.url("shop.localhost", "/video/large.bin"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "headers go out before the end is verified"
        );
        assert!(
            resp.bytes().await.is_err(),
            "the client never sees a complete body"
        );
        assert!(!path.exists(), "the corrupt blob was quarantined");
    }
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let h = start(GatewayConfig::default(), None).await;
    let c = h.h2_client();
    for (host, expected) in [
        ("shop.localhost", "hello from main"),
        ("dev.shop.localhost", "hello from dev"),
    ] {
        let resp = c.get(h.url(host, "/hello")).send().await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["server"], "canopy");
        assert_eq!(resp.text().await.unwrap(), expected);
    }
    let resp = c.get(h.url("shop.localhost", "/")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), INDEX_HTML);
    let resp = c.get(h.url("unknown.localhost", "/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn function_bodies_stream_both_ways() {
    let h = start(GatewayConfig::default(), None).await;
    let expected = big_expected();
    for client in [h.client(), h.h2_client()] {
        // 10 MiB produced in chunks by the function arrives whole.
        let resp = client
            .get(h.url("shop.localhost", "/big"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), expected.len());
        assert!(body[..] == expected[..]);

        // 10 MiB uploaded in chunks is handed to the function as a stream
        // and comes back whole.
        let chunks =
            futures::stream::iter((0..BIG_CHUNKS).map(|i| Ok::<_, io::Error>(big_chunk(i))));
        let resp = client
            .post(h.url("shop.localhost", "/api/echo"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.bytes().await.unwrap();
        assert!(body[..] == expected[..], "echoed {} bytes", body.len());
    }
}

#[tokio::test]
async fn hundred_concurrent_requests_all_succeed() {
    let h = start(GatewayConfig::default(), None).await;
    let http1 = h.client();
    let http2 = h.h2_client();
    let requests = (0..100).map(|i| {
        let client = if i % 2 == 0 {
            http1.clone()
        } else {
            http2.clone()
        };
        let (host, path, expected) = match i % 3 {
            0 => ("shop.localhost", "/hello", "hello from main"),
            1 => ("dev.shop.localhost", "/hello", "hello from dev"),
            _ => ("shop.localhost", "/", INDEX_HTML),
        };
        let url = h.url(host, path);
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap(), expected)
        }
    });
    let results = futures::future::join_all(requests).await;
    for (status, text, expected) in &results {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(text, expected);
    }

    let m = h.gateway.metrics();
    assert_eq!(m.total, 100);
    assert_eq!(m.hosts["shop.localhost"].success_2xx, 67);
    assert_eq!(m.hosts["dev.shop.localhost"].success_2xx, 33);
}

#[tokio::test]
async fn metrics_count_per_host_and_status_class() {
    let h = start(GatewayConfig::default(), None).await;
    h.get("shop.localhost", "/hello").await;
    h.get("shop.localhost", "/nope.html").await;
    h.get("shop.example.com", "/hello").await;
    h.get("unknown.localhost", "/").await;
    h.get("localhost", "/").await;
    let m = h.gateway.metrics();
    assert_eq!(m.total, 5);
    assert_eq!(m.hosts["shop.localhost"].success_2xx, 1);
    assert_eq!(m.hosts["shop.localhost"].client_error_4xx, 1);
    assert_eq!(m.hosts["shop.example.com"].total(), 1);
    assert_eq!(
        m.hosts[UNKNOWN_HOST].client_error_4xx, 2,
        "unserved hosts share one counter"
    );
    assert_eq!(m.hosts.len(), 3);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let gate = Gate {
        entered: entered.clone(),
        release: release.clone(),
    };
    let mut h = start(GatewayConfig::default(), Some(gate)).await;
    let client = h.client();
    let url = h.url("shop.localhost", "/wait");
    let in_flight = tokio::spawn(async move { client.get(url).send().await?.text().await });
    tokio::time::timeout(Duration::from_secs(30), entered.notified())
        .await
        .unwrap();

    h.shutdown.take().unwrap().send(()).unwrap();
    // The listener closes: new connections are refused.
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if tokio::net::TcpStream::connect(h.addr).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener closes after shutdown");
    assert!(
        !h.server.is_finished(),
        "serve waits for the in-flight request"
    );

    release.notify_one();
    let text = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(text, "released");
    let served = tokio::time::timeout(Duration::from_secs(30), &mut h.server)
        .await
        .unwrap()
        .unwrap();
    served.unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let entered = Arc::new(Notify::new());
    let gate = Gate {
        entered: entered.clone(),
        release: Arc::new(Notify::new()), // never released
    };
    let config = GatewayConfig {
        shutdown_grace_ms: 200,
        ..GatewayConfig::default()
    };
    let mut h = start(config, Some(gate)).await;
    let client = h.client();
    let url = h.url("shop.localhost", "/wait");
    let stuck = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::timeout(Duration::from_secs(30), entered.notified())
        .await
        .unwrap();

    h.shutdown.take().unwrap().send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(30), &mut h.server).await;
    assert!(served.is_ok(), "serve returns after the grace period");
    let outcome = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.is_err(), "the stuck request was cut off");
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    use tokio::io::AsyncReadExt;
    let config = GatewayConfig {
        header_read_timeout_ms: 300,
        max_connections: 2,
        ..GatewayConfig::default()
    };
    let h = start(config, None).await;
    // Two silent clients take both slots; the header-read timeout frees them.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
    }
    for stream in &mut silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("a silent client was never closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let resp = h.get("shop.localhost", "/hello").await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_gateway_caps_connections_per_address_and_closes_idle_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = GatewayConfig {
        max_connections_per_address: 1,
        idle_timeout_ms: 300,
        ..GatewayConfig::default()
    };
    let h = start(config, None).await;
    let connect_from = |ip: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((ip, 0))).unwrap();
        socket.connect(h.addr).await.unwrap()
    };
    // 127.0.0.1's one slot is held; a second connection from it is closed.
    let mut held = connect_from([127, 0, 0, 1]).await;
    let mut second = connect_from([127, 0, 0, 1]).await;
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("a connection over the per-address cap was kept");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The held one is served, then closed by the idle timeout (not the
    // 30 s header-read one) once it has nothing more to ask.
    held.write_all(b"GET /hello HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match held.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection was kept open"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello from main"),
        "{answer}"
    );
}
