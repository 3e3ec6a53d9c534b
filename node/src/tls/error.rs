//! What can go wrong making, loading or using the local certificate authority.

use std::path::PathBuf;

/// Errors of the [`tls`](super) module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading, writing or creating a CA file or its directory failed.
    #[error("{action} {}: {source}; check that the directory exists and is writable by this user", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A CA file exists but does not hold what it should.
    #[error(
        "{} is not a usable local CA file: {reason}. Delete {} and {} to make a new local CA (clients must then trust the new ca.pem)",
        path.display(), cert_path.display(), key_path.display()
    )]
    CorruptCa {
        path: PathBuf,
        cert_path: PathBuf,
        key_path: PathBuf,
        reason: String,
    },

    /// Only one of `ca.pem` and `ca-key.pem` exists.
    #[error(
        "{} exists but {} is missing; a CA needs both. Restore the missing file, or delete {} to make a new local CA",
        present.display(), missing.display(), present.display()
    )]
    HalfCa { present: PathBuf, missing: PathBuf },

    /// Generating a key or signing a certificate failed.
    #[error("could not {action}: {source}")]
    Certificate {
        action: String,
        #[source]
        source: rcgen::Error,
    },

    /// rustls refused a key, certificate or configuration.
    #[error("could not {action}: {source}")]
    Rustls {
        action: String,
        #[source]
        source: rustls::Error,
    },

    /// A name this CA must not certify (only `localhost`, `*.localhost` and
    /// loopback addresses are served in dream).
    #[error(
        "refusing to issue a certificate for {name:?}: the local CA only certifies localhost, names ending in .localhost and loopback addresses"
    )]
    NameNotLocal { name: String },
}
