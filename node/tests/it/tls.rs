//! The gateway over TLS on 127.0.0.1 with a real client (reqwest + rustls)
//! that trusts only the local CA's `ca.pem`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_node::env::Rng;
use canopy_node::gateway::{
    Gateway, GatewayConfig, HSTS_VALUE, Route, RouteTable, Site, StaticSite, Target,
};
use canopy_node::store::BlobStore;
use canopy_node::tls::{self, CA_CERT_FILE, LocalCa, TlsError};
use http::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const INDEX_HTML: &str = "<!doctype html><h1>shop over tls</h1>";
const DEADLINE: Duration = Duration::from_secs(30);

struct Harness {
    addr: SocketAddr,
    ca: Arc<LocalCa>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<io::Result<()>>,
    dir: tempfile::TempDir,
}

async fn start(config: GatewayConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::open(dir.path().join("store")).unwrap());
    let cid = store.put(INDEX_HTML.as_bytes()).unwrap();
    let files = BTreeMap::from([("index.html".to_string(), (cid, INDEX_HTML.len() as u64))]);
    let site = Arc::new(StaticSite::from_files(files, store));
    let main = Arc::new(Site::new(
        "shop",
        "main",
        "0123456789abcdef",
        vec![Route::new("/", None, Target::Website(site))],
    ));
    let mut table = RouteTable::new();
    table.insert_host("shop.localhost", main.clone());
    table.insert_host("shop.example.com", main);

    let ca = Arc::new(LocalCa::load_or_create(&dir.path().join("tls"), &Rng::seeded(42)).unwrap());
    let tls_config = tls::server_config(ca.clone()).unwrap();
    let gateway = Gateway::with_config(config);
    gateway.replace_routes(table);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(gateway.serve_tls(listener, tls_config, async move {
        let _ = rx.await;
    }));
    Harness {
        addr,
        ca,
        shutdown: Some(tx),
        server,
        dir,
    }
}

/// A client trusting only the certificates in `ca_pem` (none: trusts
/// nothing), offering `alpn`, resolving every test name to the gateway.
fn client(addr: SocketAddr, ca_pem: Option<&Path>, alpn: &[&[u8]]) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_pem {
        for cert in CertificateDer::pem_file_iter(path).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(DEADLINE)
        .no_proxy();
    for host in ["shop.localhost", "example.com", "shop.example.com"] {
        builder = builder.resolve(host, addr);
    }
    builder.build().unwrap()
}

impl Harness {
    fn trusting_client(&self, alpn: &[&[u8]]) -> reqwest::Client {
        client(self.addr, Some(self.ca.ca_pem_path()), alpn)
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("the gateway stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

/// The whole error chain as one string, to see why a request failed.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[tokio::test]
async fn serves_http1_with_the_local_ca() {
    let h = start(GatewayConfig::default()).await;
    let resp = h
        .trusting_client(&[b"http/1.1"])
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.headers()["server"], "canopy");
    assert!(
        resp.headers().get("strict-transport-security").is_none(),
        "no HSTS for .localhost"
    );
    assert_eq!(resp.text().await.unwrap(), INDEX_HTML);
    h.stop().await;
}

#[tokio::test]
async fn serves_http2_negotiated_by_alpn() {
    let h = start(GatewayConfig::default()).await;
    // Offering both, the server's preference (h2) wins.
    for alpn in [&[b"h2".as_slice()][..], &[b"h2", b"http/1.1"]] {
        let resp = h
            .trusting_client(alpn)
            .get(h.url("shop.localhost", "/index.html"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2, "alpn {alpn:?}");
        assert_eq!(resp.text().await.unwrap(), INDEX_HTML);
    }
    h.stop().await;
}

#[tokio::test]
async fn a_client_without_the_ca_fails_the_handshake() {
    let h = start(GatewayConfig::default()).await;
    let err = client(h.addr, None, &[b"http/1.1"])
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap_err();
    let why = chain(&err);
    assert!(why.contains("UnknownIssuer"), "{why}");
    // The failed handshake did not hurt the gateway.
    let resp = h
        .trusting_client(&[b"http/1.1"])
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn refuses_to_certify_a_real_domain() {
    let h = start(GatewayConfig::default()).await;
    let client = h.trusting_client(&[b"http/1.1"]);
    let err = client
        .get(h.url("example.com", "/"))
        .send()
        .await
        .unwrap_err();
    let why = chain(&err);
    // The server aborts the handshake with an alert instead of a certificate.
    assert!(why.to_lowercase().contains("alert"), "{why}");
    // The same client, the same server, a local name: fine.
    let resp = client
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn no_sni_gets_the_loopback_certificate() {
    let h = start(GatewayConfig::default()).await;
    // A URL with an IP address sends no SNI; the certificate names
    // 127.0.0.1, so the handshake succeeds and the gateway answers (no site
    // is served at a bare address: 404).
    let url = format!("https://127.0.0.1:{}/", h.addr.port());
    let resp = h
        .trusting_client(&[b"h2", b"http/1.1"])
        .get(url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    h.stop().await;
}

#[tokio::test]
async fn hsts_only_for_hosts_outside_localhost() {
    let h = start(GatewayConfig::default()).await;
    let client = h.trusting_client(&[b"http/1.1"]);
    // The handshake is for shop.localhost; the request is for a production
    // domain the table also serves.
    let resp = client
        .get(h.url("shop.localhost", "/"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["strict-transport-security"], HSTS_VALUE);
    let resp = client
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("strict-transport-security").is_none());
    h.stop().await;
}

#[tokio::test]
async fn the_ca_is_reused_and_still_trusted_after_reload() {
    let h = start(GatewayConfig::default()).await;
    let ca_dir = h.dir.path().join("tls");
    let pem_before = std::fs::read(h.ca.ca_pem_path()).unwrap();
    let reloaded = Arc::new(LocalCa::load_or_create(&ca_dir, &Rng::seeded(7)).unwrap());
    assert_eq!(reloaded.certificate_der(), h.ca.certificate_der());
    assert_eq!(std::fs::read(reloaded.ca_pem_path()).unwrap(), pem_before);

    // A second gateway on the reloaded CA is trusted by a client that was
    // given the original ca.pem.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let gateway = Gateway::new();
    let server = tokio::spawn(gateway.serve_tls(
        listener,
        tls::server_config(reloaded).unwrap(),
        async move {
            let _ = rx.await;
        },
    ));
    let resp = client(addr, Some(h.ca.ca_pem_path()), &[b"h2"])
        .get(format!("https://shop.localhost:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    // An empty route table: the TLS part is what this checks.
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.version(), Version::HTTP_2);
    tx.send(()).unwrap();
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn a_corrupt_ca_pem_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(dir.path(), &Rng::seeded(1)).unwrap();
    let ca_pem = dir.path().join(CA_CERT_FILE);
    std::fs::write(&ca_pem, "this is not a certificate\n").unwrap();
    let err = LocalCa::load_or_create(dir.path(), &Rng::seeded(1)).unwrap_err();
    let msg = err.to_string();
    match &err {
        TlsError::CorruptCa { path, .. } => assert_eq!(path, &ca_pem),
        other => panic!("expected CorruptCa, got {other:?}"),
    }
    assert!(msg.contains(&ca_pem.display().to_string()), "{msg}");
    assert!(msg.contains("Delete"), "{msg}");
    assert!(msg.contains("make a new local CA"), "{msg}");
    // Nothing was overwritten: the user decides.
    assert_eq!(
        std::fs::read_to_string(&ca_pem).unwrap(),
        "this is not a certificate\n"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let config = GatewayConfig {
        tls_handshake_timeout_ms: 200,
        ..GatewayConfig::default()
    };
    let h = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The server closes the connection without ever sending a byte.
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_abandons_handshakes_in_progress() {
    // Handshake timeout and grace far beyond the deadline: only the
    // shutdown signal can end the stalled handshake in time.
    let config = GatewayConfig {
        tls_handshake_timeout_ms: 600_000,
        shutdown_grace_ms: 600_000,
        ..GatewayConfig::default()
    };
    let h = start(config).await;
    let _silent = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // A served request proves the silent connection was accepted before
    // shutdown (the loop accepts in order).
    let resp = h
        .trusting_client(&[b"http/1.1"])
        .get(h.url("shop.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    h.stop().await;
}
