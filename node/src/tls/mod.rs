//! HTTPS for `canopy dream`: a local certificate authority, like Caddy's
//! `tls internal`.
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
//! (`curl --cacert DIR/ca.pem`).

mod ca;
mod error;
mod names;
mod resolver;

use std::sync::Arc;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, LocalCa};
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            action: "configure TLS 1.2 and 1.3 with the ring provider".into(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LocalCertResolver::new(ca)));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
