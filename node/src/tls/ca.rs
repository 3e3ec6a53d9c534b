//! The local certificate authority: made once per data directory, kept in
//! `ca.pem` / `ca-key.pem`, and used to sign leaf certificates on demand.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use super::error::TlsError;
use super::names::is_local_dns_name;
use crate::env::Rng;

/// The CA certificate, PEM; what clients are pointed at (`curl --cacert`).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key, PKCS#8 PEM, readable by the owner only.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Start of every certificate's validity: 2025-01-01T00:00:00Z.
///
/// Node code must not read the wall clock (the simulator replays runs from
/// a seed), so validity is a fixed window that began in the past and ends
/// far in the future rather than "now plus N days".
const NOT_BEFORE_UNIX_S: u64 = 1_735_689_600;
const NOT_BEFORE_YMD: (i32, u8, u8) = (2025, 1, 1);
/// End of every certificate's validity: 2045-01-01.
const NOT_AFTER_YMD: (i32, u8, u8) = (2045, 1, 1);
/// The instant at which a loaded CA is checked: inside the fixed window, so
/// the check does not depend on the wall clock either.
const SELF_CHECK_UNIX_S: u64 = NOT_BEFORE_UNIX_S + 86_400;
/// Serial numbers: 16 random bytes (RFC 5280 allows up to 20).
const SERIAL_BYTES: usize = 16;

/// Which names a CA may certify; fixed when the CA is made, and read back
/// from its subject name when it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaScope {
    /// `canopy dream`'s CA: `localhost`, `*.localhost` and loopback
    /// addresses only, enforced by X.509 name constraints, so that trusting
    /// it system-wide risks nothing beyond this machine.
    Local,
    /// A production node's CA (`canopy node`, `canopy cluster init
    /// --ca-dir`): certifies the names the admin port is reached by, which
    /// can be any DNS name or address. Trust it for Canopy only (`--ca`,
    /// git's `http.sslCAInfo`), never system-wide.
    Node,
}

impl CaScope {
    /// The order in which a loaded CA's scope is tried.
    const ALL: [CaScope; 2] = [CaScope::Local, CaScope::Node];
}

/// A local certificate authority (like Caddy's `tls internal`): an ECDSA
/// P-256 root kept in a directory, signing leaf certificates on demand,
/// within its [`CaScope`].
pub struct LocalCa {
    scope: CaScope,
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    rng: Rng,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Load the CA kept in `dir` (`ca.pem`, `ca-key.pem`), or make a
    /// dream CA ([`CaScope::Local`]) there if neither file exists.
    pub fn load_or_create(dir: &Path, rng: &Rng) -> Result<LocalCa, TlsError> {
        Self::load_or_create_scoped(dir, CaScope::Local, rng)
    }

    /// Load the CA kept in `dir` (`ca.pem`, `ca-key.pem`), whatever its
    /// scope, or make one of scope `new_scope` and write it there if neither
    /// file exists. Serial numbers of certificates it signs come from `rng`.
    ///
    /// Key pairs themselves come from ring's system RNG: ring accepts no
    /// other source (its `SecureRandom` is sealed). TLS keys are not part of
    /// any replayed protocol state, so this does not break determinism.
    pub fn load_or_create_scoped(
        dir: &Path,
        new_scope: CaScope,
        rng: &Rng,
    ) -> Result<LocalCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_exists = exists(&cert_path)?;
        let key_exists = exists(&key_path)?;
        let ca = match (cert_exists, key_exists) {
            (true, true) => return Self::load(cert_path, key_path, provider, rng),
            (false, false) => Self::create(dir, new_scope, cert_path, key_path, provider, rng)?,
            (true, false) => {
                return Err(TlsError::HalfCa {
                    present: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(TlsError::HalfCa {
                    present: key_path,
                    missing: cert_path,
                });
            }
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Which names this CA certifies.
    pub fn scope(&self) -> CaScope {
        self.scope
    }

    /// Where the CA certificate is kept: the file clients must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The crypto provider (ring) every TLS object of this CA uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Sign a fresh leaf certificate (new P-256 key) for `names`: DNS names
    /// and addresses, the first becoming the subject's common name. A dream
    /// CA refuses any name outside localhost.
    pub fn issue(&self, names: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
        let Some(first) = names.first() else {
            return Err(TlsError::NameNotLocal {
                name: String::new(),
            });
        };
        let in_scope = |name: &String| match self.scope {
            CaScope::Local => is_certifiable(name),
            CaScope::Node => true,
        };
        if let Some(foreign) = names.iter().find(|n| !in_scope(n)) {
            return Err(TlsError::NameNotLocal {
                name: foreign.clone(),
            });
        }
        let key = generate_key("generate a leaf certificate key")?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|source| TlsError::Certificate {
                action: format!("make a certificate for {names:?}"),
                source,
            })?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        set_validity(&mut params);
        params.serial_number = Some(serial_number(&self.rng));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert =
            params
                .signed_by(&key, &self.issuer)
                .map_err(|source| TlsError::Certificate {
                    action: format!("sign a certificate for {names:?}"),
                    source,
                })?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, &self.provider)
            .map_err(|source| TlsError::Rustls {
            action: format!("load the key of the certificate for {names:?}"),
            source,
        })?;
        Ok(Arc::new(certified))
    }

    fn create(
        dir: &Path,
        scope: CaScope,
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
        rng: &Rng,
    ) -> Result<LocalCa, TlsError> {
        fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            action: "create the CA directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let key = generate_key("generate the local CA key")?;
        let mut params = ca_params(&key, scope);
        params.serial_number = Some(serial_number(rng));
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Certificate {
                action: "sign the local CA certificate".into(),
                source,
            })?;
        // Key first: a crash between the two leaves a key without a
        // certificate, which load_or_create reports instead of guessing.
        write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %cert_path.display(), ?scope, "tls: made a new local CA");
        Ok(LocalCa {
            scope,
            cert_path,
            key_path,
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            provider,
            rng: rng.clone(),
        })
    }

    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
        rng: &Rng,
    ) -> Result<LocalCa, TlsError> {
        let corrupt = |path: &Path, reason: String| TlsError::CorruptCa {
            path: path.to_path_buf(),
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
            reason,
        };
        let cert_pem = read(&cert_path)?;
        let cert_der = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| corrupt(&cert_path, format!("no PEM certificate in it ({e})")))?;
        let key_pem = read(&key_path)?;
        let key_pem =
            String::from_utf8(key_pem).map_err(|_| corrupt(&key_path, "it is not text".into()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| corrupt(&key_path, format!("no PKCS#8 private key in it ({e})")))?;
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(corrupt(
                &key_path,
                "the key is not an ECDSA P-256 key".into(),
            ));
        }
        warn_if_readable_by_others(&key_path);
        // The issuer (subject name, key usages) is rebuilt from the key and
        // a scope: `ca_params` derives everything from those, so no X.509
        // parser is needed; `self_check` proves which scope's issuer
        // matches ca.pem (the scopes' subject names differ).
        let key_der = key.serialize_der();
        let mut first_error = None;
        for scope in CaScope::ALL {
            let key = KeyPair::try_from(key_der.as_slice())
                .map_err(|e| corrupt(&key_path, format!("no PKCS#8 private key in it ({e})")))?;
            let ca = LocalCa {
                scope,
                cert_path: cert_path.clone(),
                key_path: key_path.clone(),
                cert_der: cert_der.clone(),
                issuer: Issuer::new(ca_params(&key, scope), key),
                provider: provider.clone(),
                rng: rng.clone(),
            };
            match ca.self_check() {
                Ok(()) => return Ok(ca),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.expect("CaScope::ALL is not empty"))
    }

    /// Issue a certificate for `localhost` and verify it against `ca.pem`
    /// the way a client would: catches a ca.pem that does not belong to
    /// ca-key.pem, or one that is not a CA this code made.
    fn self_check(&self) -> Result<(), TlsError> {
        let corrupt = |reason: String| TlsError::CorruptCa {
            path: self.cert_path.clone(),
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            reason,
        };
        let leaf = self.issue(&["localhost".to_string()])?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| corrupt(format!("it is not a CA certificate ({e})")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| corrupt(format!("it cannot be used as a trust anchor ({e})")))?;
        let end_entity = leaf
            .cert
            .first()
            .ok_or_else(|| corrupt("it issued an empty certificate chain".into()))?;
        let name = ServerName::try_from("localhost")
            .map_err(|e| corrupt(format!("internal: bad check name ({e})")))?;
        verifier
            .verify_server_cert(
                end_entity,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(SELF_CHECK_UNIX_S)),
            )
            .map_err(|e| {
                corrupt(format!(
                    "a certificate signed with {} does not verify against it ({e}); the two files do not belong together",
                    self.key_path.display()
                ))
            })?;
        Ok(())
    }
}

/// The CA certificate's parameters, all derived from its key and scope so a
/// loaded CA can rebuild its issuer name without parsing ca.pem.
fn ca_params(key: &KeyPair, scope: CaScope) -> CertificateParams {
    let digest = sha2::Sha256::digest(key.public_key_raw());
    let id: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Canopy");
    let common_name = match scope {
        CaScope::Local => format!("Canopy dream local CA {id}"),
        CaScope::Node => format!("Canopy node CA {id}"),
    };
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    set_validity(&mut params);
    // Path length 0: it signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if scope == CaScope::Node {
        // A node's admin names are the operator's to choose; this CA is
        // trusted per client (`--ca`), not system-wide.
        return params;
    }
    // Even a stolen ca-key.pem cannot vouch for a real domain to clients
    // that honour name constraints: `localhost` covers it and every name
    // below it (RFC 5280 §4.2.1.10), plus loopback addresses.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".into()),
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                8,
            )),
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                128,
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params
}

fn set_validity(params: &mut CertificateParams) {
    let (y, m, d) = NOT_BEFORE_YMD;
    params.not_before = rcgen::date_time_ymd(y, m, d);
    debug_assert_eq!(
        params.not_before.unix_timestamp(),
        NOT_BEFORE_UNIX_S as i64,
        "NOT_BEFORE_YMD and NOT_BEFORE_UNIX_S disagree"
    );
    let (y, m, d) = NOT_AFTER_YMD;
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// A positive serial number with no leading zero byte (minimal DER).
fn serial_number(rng: &Rng) -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn generate_key(action: &str) -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Certificate {
        action: action.to_string(),
        source,
    })
}

/// A DNS name the policy allows, or a loopback address.
fn is_certifiable(name: &str) -> bool {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => is_local_dns_name(name),
    }
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(|source| TlsError::Io {
        action: "check for",
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Write a CA file atomically and durably with `mode`, naming the file in
/// the error.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::durable::write_atomically(path, bytes, Some(mode)).map_err(|source| TlsError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "tls: the local CA key is readable by other users; run `chmod 600` on it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_are_positive_minimal_and_seeded() {
        let a = serial_number(&Rng::seeded(1));
        let b = serial_number(&Rng::seeded(1));
        assert_eq!(a, b);
        assert_ne!(a, serial_number(&Rng::seeded(2)));
        for seed in 0..64 {
            let bytes = serial_number(&Rng::seeded(seed)).to_bytes();
            assert_eq!(bytes.len(), SERIAL_BYTES);
            assert!(bytes[0] != 0 && bytes[0] & 0x80 == 0, "{bytes:?}");
        }
    }

    #[test]
    fn creates_then_reloads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let rng = Rng::seeded(3);
        let ca = LocalCa::load_or_create(dir.path(), &rng).unwrap();
        assert_eq!(ca.ca_pem_path(), dir.path().join(CA_CERT_FILE));
        let pem = fs::read(ca.ca_pem_path()).unwrap();
        let again = LocalCa::load_or_create(dir.path(), &rng).unwrap();
        assert_eq!(again.certificate_der(), ca.certificate_der());
        assert_eq!(fs::read(again.ca_pem_path()).unwrap(), pem);
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path(), &Rng::seeded(4)).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let no_temp_files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(no_temp_files, 2);
    }

    #[test]
    fn refuses_to_issue_for_foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), &Rng::seeded(5)).unwrap();
        for name in ["example.com", "10.1.2.3", "shop.localhost.example.com"] {
            let err = ca
                .issue(&["shop.localhost".into(), name.into()])
                .unwrap_err();
            assert!(
                matches!(&err, TlsError::NameNotLocal { name: n } if n == name),
                "{err}"
            );
        }
        assert!(ca.issue(&[]).is_err());
        let leaf = ca
            .issue(&["dev.shop.localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(leaf.cert.len(), 1);
    }

    #[test]
    fn a_node_ca_certifies_network_names_and_keeps_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            LocalCa::load_or_create_scoped(dir.path(), CaScope::Node, &Rng::seeded(12)).unwrap();
        assert_eq!(ca.scope(), CaScope::Node);
        let names = ["node1.example.net".to_string(), "10.0.0.5".to_string()];
        let leaf = ca.issue(&names).unwrap();
        // A client trusting ca.pem accepts the leaf for each of its names,
        // and for no other.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.certificate_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            ca.provider().clone(),
        )
        .build()
        .unwrap();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(SELF_CHECK_UNIX_S));
        for name in ["node1.example.net", "10.0.0.5", "node2.example.net"] {
            let verified = verifier.verify_server_cert(
                &leaf.cert[0],
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                at,
            );
            assert_eq!(
                verified.is_ok(),
                name != "node2.example.net",
                "{name}: {verified:?}"
            );
        }
        // Loaded again, it is still a node CA; a dream CA stays a dream CA
        // (and still refuses network names).
        let again =
            LocalCa::load_or_create_scoped(dir.path(), CaScope::Local, &Rng::seeded(12)).unwrap();
        assert_eq!(again.scope(), CaScope::Node);
        assert_eq!(again.certificate_der(), ca.certificate_der());
        let dream_dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dream_dir.path(), &Rng::seeded(13)).unwrap();
        let dream =
            LocalCa::load_or_create_scoped(dream_dir.path(), CaScope::Node, &Rng::seeded(13))
                .unwrap();
        assert_eq!(dream.scope(), CaScope::Local);
        assert!(matches!(
            dream.issue(&names),
            Err(TlsError::NameNotLocal { .. })
        ));
    }

    #[test]
    fn mismatched_files_are_a_clear_error() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(a.path(), &Rng::seeded(6)).unwrap();
        LocalCa::load_or_create(b.path(), &Rng::seeded(7)).unwrap();
        // b's certificate with a's key.
        fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).unwrap();
        let err = LocalCa::load_or_create(a.path(), &Rng::seeded(6)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TlsError::CorruptCa { .. }), "{msg}");
        assert!(msg.contains("do not belong together"), "{msg}");
        assert!(msg.contains("Delete"), "{msg}");
    }

    #[test]
    fn half_a_ca_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path(), &Rng::seeded(8)).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = LocalCa::load_or_create(dir.path(), &Rng::seeded(8)).unwrap_err();
        assert!(matches!(err, TlsError::HalfCa { .. }), "{err}");
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn corrupt_key_names_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(dir.path(), &Rng::seeded(9)).unwrap();
        let key_path = dir.path().join(CA_KEY_FILE);
        fs::write(
            &key_path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = LocalCa::load_or_create(dir.path(), &Rng::seeded(9)).unwrap_err();
        match err {
            TlsError::CorruptCa { path, .. } => assert_eq!(path, key_path),
            other => panic!("unexpected error: {other}"),
        }
    }
}
