//! HTTPS for `canopy dream`, and TLS for a node's admin port: a local
//! certificate authority, like Caddy's `tls internal`.
//!
//! The module owns the CA (made once, kept in the data directory as
//! `ca.pem` + `ca-key.pem`), the policy of which names it certifies
//! (`localhost`, `*.localhost`, loopback addresses — never a real domain),
//! leaf certificates issued on demand per SNI name and cached in memory,
//! and the rustls server configuration (ring provider, ALPN `h2` and
//! `http/1.1`). The gateway owns the accept loop
//! ([`Gateway::serve_tls`](crate::gateway::Gateway::serve_tls)); production
//! certificates (ACME) are not this module's business.
//!
//! Users trust the CA by pointing their client at [`LocalCa::ca_pem_path`]
//! (`curl --cacert DIR/ca.pem`, `canopy --ca DIR/ca.pem`).
//!
//! A production node whose admin port is off loopback serves it with one
//! certificate for the names it is reached by ([`fixed_server_config`]),
//! from a CA of [`CaScope::Node`] that operators share between nodes
//! (`canopy cluster init --ca-dir`).

mod ca;
mod error;
mod names;
mod resolver;

use std::sync::Arc;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, CaScope, LocalCa};
pub use error::TlsError;
pub use names::{NO_SNI_NAMES, certificate_names, is_local_dns_name, wants_hsts};
pub use resolver::{LEAF_CACHE_CAPACITY, LocalCertResolver};

/// ALPN protocols offered, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls server configuration that serves certificates issued by `ca`
/// for the name each client asks for, with the ring crypto provider (never
/// a process-wide default) and ALPN `h2`, `http/1.1`.
pub fn server_config(ca: Arc<LocalCa>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = ca.provider().clone();
    config_with(provider, Arc::new(LocalCertResolver::new(ca)))
}

/// A rustls server configuration that serves one certificate, issued now by
/// `ca` for `names` (DNS names and addresses), to every client whatever
/// name it asks for: the admin port's, where clients verify the name they
/// dialled against the certificate.
pub fn fixed_server_config(
    ca: &LocalCa,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certified = ca.issue(names)?;
    config_with(
        ca.provider().clone(),
        Arc::new(rustls::sign::SingleCertAndKey::from(certified)),
    )
}

/// TLS 1.2 and 1.3 with `provider`, no client certificates, ALPN `h2` and
/// `http/1.1`, certificates from `resolver`.
fn config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            action: "configure TLS 1.2 and 1.3 with the ring provider".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
