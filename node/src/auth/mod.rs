//! Who may do what: principals, the tokens that prove them, and the check
//! the admin API and the Git remote make on every request.
//!
//! - [`Principal`] — the cluster's operators (`admin`) or one project's
//!   deployers (`project:NAME`).
//! - [`Token`] — `canopy_<id>_<secret>`: a public id (8 random bytes, hex)
//!   that names the token in lists, logs and error messages, and a 256-bit
//!   secret. Shown once, when it is created.
//! - [`TokenRecord`] — what nodes keep: the id, the principal, a label,
//!   the expiry and SHA-256 of the secret, never the secret. Records live in
//!   a [`TokenBook`]: cluster state for a node in a cluster (so a revocation
//!   reaches every node with the next sync), a file for a standalone node.
//! - [`Authority`] — checks a request's credential against the book
//!   (`Authorization: Bearer TOKEN`, or HTTP Basic with the token as the
//!   password, as `git` sends it) and issues and revokes tokens.
//!
//! A token's secret has 256 bits of entropy, so one plain SHA-256 is as good
//! as a password hash here and costs about a microsecond per request.

mod authority;
mod book;
mod principal;
mod token;
mod token_file;

pub use authority::{Authority, Caller, Forbidden, IssueError, Issuer, Unauthenticated};
pub use book::{
    BookError, LocalBook, MAX_LABEL_LEN, MAX_TOKENS, Revocation, TokenBook, TokenEntry, TokenRecord,
};
pub use principal::{Principal, PrincipalError};
pub use token::{SecretHash, Token, TokenFormatError, TokenId, Warrant, push_statement};
pub use token_file::{git_base_with_token, issue_admin_token_file, read_token_file};

/// The file a node writes its first admin token to (mode 0600), below its
/// data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
