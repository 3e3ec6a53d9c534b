//! Certificates chosen per handshake: issued by the local CA for the name
//! the client asks for (SNI), cached, refused for names outside localhost.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::LocalCa;
use super::names::certificate_names;

/// Leaf certificates kept in memory at most; the least recently used one
/// goes first. Each is ~1 KiB plus a key.
pub const LEAF_CACHE_CAPACITY: usize = 1024;

/// Issues leaf certificates on demand (like Caddy's on-demand `tls
/// internal`): `localhost` and `*.localhost` names get a certificate for
/// exactly that name; a client that sends no SNI gets one for `localhost`,
/// `127.0.0.1` and `::1`; any other name fails the handshake.
pub struct LocalCertResolver {
    ca: Arc<LocalCa>,
    cache: Mutex<LeafCache>,
}

impl std::fmt::Debug for LocalCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCertResolver")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl LocalCertResolver {
    pub fn new(ca: Arc<LocalCa>) -> Self {
        Self::with_capacity(ca, LEAF_CACHE_CAPACITY)
    }

    /// A resolver keeping at most `capacity_names` certificates.
    pub fn with_capacity(ca: Arc<LocalCa>, capacity_names: usize) -> Self {
        assert!(capacity_names > 0, "the certificate cache needs room");
        LocalCertResolver {
            ca,
            cache: Mutex::new(LeafCache::new(capacity_names)),
        }
    }

    /// The certificate for a client asking for `server_name` (`None`: no
    /// SNI), issued now or taken from the cache; `None` refuses.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let names = certificate_names(server_name)?;
        let key = names.join(" ");
        // Issue under the lock: a burst of handshakes for one new name
        // signs once. Signing takes well under a millisecond.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.get(&key) {
            return Some(found);
        }
        match self.ca.issue(&names) {
            Ok(certified) => {
                tracing::debug!(names = %key, "tls: issued a certificate");
                cache.insert(key, certified.clone());
                Some(certified)
            }
            Err(e) => {
                tracing::warn!(names = %key, error = %e, "tls: could not issue a certificate; failing the handshake");
                None
            }
        }
    }

    /// How many certificates are cached.
    pub fn cached_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl ResolvesServerCert for LocalCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let server_name = client_hello.server_name();
        let found = self.certificate_for(server_name);
        if found.is_none() {
            tracing::debug!(
                sni = server_name.unwrap_or(""),
                "tls: refused a handshake for a name outside localhost"
            );
        }
        found
    }
}

/// A least-recently-used map, ordered by a use counter so that eviction
/// does not depend on hash order.
struct LeafCache {
    capacity: usize,
    by_key: BTreeMap<String, (u64, Arc<CertifiedKey>)>,
    by_use: BTreeMap<u64, String>,
    next_use: u64,
}

impl LeafCache {
    fn new(capacity: usize) -> Self {
        LeafCache {
            capacity,
            by_key: BTreeMap::new(),
            by_use: BTreeMap::new(),
            next_use: 0,
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn get(&mut self, key: &str) -> Option<Arc<CertifiedKey>> {
        let stamp = self.next_use;
        let (used, found) = self.by_key.get_mut(key)?;
        self.by_use.remove(used);
        *used = stamp;
        self.by_use.insert(stamp, key.to_string());
        self.next_use += 1;
        Some(found.clone())
    }

    fn insert(&mut self, key: String, value: Arc<CertifiedKey>) {
        if let Some((old, _)) = self.by_key.remove(&key) {
            self.by_use.remove(&old);
        }
        while self.by_key.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
        self.by_use.insert(self.next_use, key.clone());
        self.by_key.insert(key, (self.next_use, value));
        self.next_use += 1;
        debug_assert_eq!(self.by_key.len(), self.by_use.len());
        debug_assert!(self.by_key.len() <= self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Rng;

    fn resolver(capacity: usize) -> (LocalCertResolver, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &Rng::seeded(11)).unwrap();
        (
            LocalCertResolver::with_capacity(Arc::new(ca), capacity),
            dir,
        )
    }

    #[test]
    fn caches_per_name() {
        let (r, _dir) = resolver(8);
        let a = r.certificate_for(Some("shop.localhost")).unwrap();
        let b = r.certificate_for(Some("Shop.Localhost")).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same name, same certificate");
        let c = r.certificate_for(Some("dev.shop.localhost")).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        // No SNI and a loopback SNI share the loopback certificate.
        let d = r.certificate_for(None).unwrap();
        let e = r.certificate_for(Some("127.0.0.1")).unwrap();
        assert!(Arc::ptr_eq(&d, &e));
        assert_eq!(r.cached_len(), 3);
    }

    #[test]
    fn refuses_foreign_names_without_caching() {
        let (r, _dir) = resolver(8);
        for name in [
            "example.com",
            "shop.example.com",
            "10.0.0.1",
            "localhost.evil",
        ] {
            assert!(r.certificate_for(Some(name)).is_none(), "{name}");
        }
        assert_eq!(r.cached_len(), 0);
    }

    #[test]
    fn cache_is_bounded_and_evicts_least_recently_used() {
        let (r, _dir) = resolver(2);
        let a = r.certificate_for(Some("a.localhost")).unwrap();
        r.certificate_for(Some("b.localhost")).unwrap();
        // Touch a, so b is the least recently used.
        assert!(Arc::ptr_eq(
            &a,
            &r.certificate_for(Some("a.localhost")).unwrap()
        ));
        r.certificate_for(Some("c.localhost")).unwrap();
        assert_eq!(r.cached_len(), 2);
        assert!(Arc::ptr_eq(
            &a,
            &r.certificate_for(Some("a.localhost")).unwrap()
        ));
        for i in 0..10 {
            r.certificate_for(Some(&format!("n{i}.localhost"))).unwrap();
            assert!(r.cached_len() <= 2);
        }
    }
}
