//! The check on every request, and issuing and revoking tokens.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, header};

use super::book::{BookError, MAX_LABEL_LEN, Revocation, TokenBook, TokenEntry, TokenRecord};
use super::{Principal, Token, TokenFormatError, TokenId};
use crate::cluster::hex;
use crate::env::{Clock, Rng};

/// The longest `Authorization` header read, in bytes: a bound on work
/// before anything is known about the caller.
const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Who made a request: a valid token's id, label and principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token: TokenId,
    pub label: String,
    pub principal: Principal,
    /// The token the caller presented: what signs the warrants of the
    /// records written for this request (see [`Token::warrant`]). Its
    /// `Debug` shows the id only.
    pub credential: Token,
}

impl Caller {
    /// How records name this caller (`created_by`, `revoked_by`).
    pub fn reference(&self) -> String {
        format!("token {}", self.token)
    }

    /// `Ok` if this caller may push to and read `project`.
    pub fn may_deploy(&self, project: &str) -> Result<(), Forbidden> {
        if self.principal.may_deploy(project) {
            Ok(())
        } else {
            Err(self.forbidden(format!("deploy project {project:?}")))
        }
    }

    /// `Ok` if this caller is an admin.
    pub fn must_be_admin(&self, action: &str) -> Result<(), Forbidden> {
        if self.principal.is_admin() {
            Ok(())
        } else {
            Err(self.forbidden(action.to_owned()))
        }
    }

    fn forbidden(&self, action: String) -> Forbidden {
        Forbidden {
            token: self.token,
            label: self.label.clone(),
            principal: self.principal.clone(),
            action,
        }
    }
}

/// A request without a usable credential: answered 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "no token: send `Authorization: Bearer TOKEN`, or for git a URL like \
         http://canopy:TOKEN@HOST/git/PROJECT.git (`canopy token create` makes one)"
    )]
    Missing,
    #[error(
        "the Authorization header is not `Bearer TOKEN` or HTTP Basic with the token as password"
    )]
    Scheme,
    #[error("the token is malformed: {0}")]
    Format(#[from] TokenFormatError),
    #[error("token {0} is not known to this cluster (or its secret is wrong)")]
    Unknown(TokenId),
    #[error("token {0} was revoked")]
    Revoked(TokenId),
    #[error("token {id} expired at unix time {expired_at}; create a new one")]
    Expired { id: TokenId, expired_at: u64 },
}

/// A valid token that may not do what it asked: answered 403.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "token {token} ({label:?}) is a token of {principal} and may not {action}; \
     use a token of that project or an admin token"
)]
pub struct Forbidden {
    pub token: TokenId,
    pub label: String,
    pub principal: Principal,
    pub action: String,
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the label is {len} characters long; the limit is {MAX_LABEL_LEN}")]
    LabelTooLong { len: usize },
    #[error("the label may not contain control characters")]
    LabelCharacters,
    #[error("a token's lifetime must be at least one second")]
    ZeroTtl,
    #[error(transparent)]
    Book(#[from] BookError),
}

/// Who asks for a new token.
#[derive(Clone, Copy, Debug)]
pub enum Issuer<'a> {
    /// An admin's request: their token warrants the new record.
    Caller(&'a Caller),
    /// A node issuing its first admin token (`node <id>`): the new token
    /// warrants its own record, which other nodes accept only from the
    /// cluster's founder.
    Node(&'a str),
}

impl Issuer<'_> {
    /// How the record names its creator (`created_by`).
    pub fn reference(&self) -> String {
        match self {
            Issuer::Caller(caller) => caller.reference(),
            Issuer::Node(node) => format!("node {node}"),
        }
    }
}

/// Checks credentials against a [`TokenBook`], issues and revokes tokens.
#[derive(Clone)]
pub struct Authority {
    book: Arc<dyn TokenBook>,
    clock: Clock,
    rng: Rng,
}

impl Authority {
    pub fn new(book: Arc<dyn TokenBook>, clock: Clock, rng: Rng) -> Self {
        Self { book, clock, rng }
    }

    /// The caller a request's `Authorization` header proves.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Unauthenticated> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(Unauthenticated::Missing)?;
        if value.len() > MAX_AUTHORIZATION_LEN {
            return Err(Unauthenticated::Scheme);
        }
        let value = value.to_str().map_err(|_| Unauthenticated::Scheme)?;
        let token = credential(value)?;
        self.verify(&Token::parse(&token)?)
    }

    /// The caller `token` proves, if the book knows it and it is live.
    pub fn verify(&self, token: &Token) -> Result<Caller, Unauthenticated> {
        let id = token.id();
        let entry = self.book.get(&id).ok_or(Unauthenticated::Unknown(id))?;
        if !entry.record.secret_sha256.matches(&token.secret_hash()) {
            // The same answer as an unknown id: a wrong secret says nothing.
            return Err(Unauthenticated::Unknown(id));
        }
        if entry.revoked.is_some() {
            return Err(Unauthenticated::Revoked(id));
        }
        if let Some(expired_at) = entry.record.expires_at_unix_s
            && self.clock.unix_now_s() >= expired_at
        {
            return Err(Unauthenticated::Expired { id, expired_at });
        }
        Ok(Caller {
            token: id,
            label: entry.record.label,
            principal: entry.record.principal,
            credential: token.clone(),
        })
    }

    /// Create a token for `principal`; the returned [`Token`] is the only
    /// copy of its secret. `by` is the admin who asked (their token warrants
    /// the record); `None` for a node's first admin token, which warrants
    /// itself.
    pub fn issue(
        &self,
        principal: Principal,
        label: &str,
        ttl: Option<Duration>,
        by: Issuer<'_>,
    ) -> Result<(Token, TokenRecord), IssueError> {
        let len = label.chars().count();
        if len > MAX_LABEL_LEN {
            return Err(IssueError::LabelTooLong { len });
        }
        if label.chars().any(char::is_control) {
            return Err(IssueError::LabelCharacters);
        }
        if ttl.is_some_and(|ttl| ttl.as_secs() == 0) {
            return Err(IssueError::ZeroTtl);
        }
        let token = Token::generate(&self.rng);
        let now = self.clock.unix_now_s();
        let record = TokenRecord {
            id: token.id(),
            principal,
            label: label.to_owned(),
            secret_sha256: token.secret_hash(),
            created_at_unix_s: now,
            expires_at_unix_s: ttl.map(|ttl| now.saturating_add(ttl.as_secs())),
            created_by: by.reference(),
            warrant_key: Some(hex(&token.warrant_key().node_id().0)),
        };
        let warrantor = match by {
            Issuer::Caller(caller) => &caller.credential,
            Issuer::Node(_) => &token,
        };
        self.book.insert(record.clone(), warrantor)?;
        Ok((token, record))
    }

    /// Revoke token `id` on behalf of `by`.
    pub fn revoke(&self, id: &TokenId, by: &Caller) -> Result<TokenEntry, BookError> {
        self.book.revoke(
            id,
            Revocation {
                revoked_at_unix_s: self.clock.unix_now_s(),
                revoked_by: by.reference(),
            },
            &by.credential,
        )?;
        self.book.get(id).ok_or(BookError::NotFound(*id))
    }

    pub fn list(&self) -> Vec<TokenEntry> {
        self.book.list()
    }

    /// Whether any admin token is live (neither revoked nor expired).
    pub fn has_live_admin(&self) -> bool {
        let now = self.clock.unix_now_s();
        self.book.list().iter().any(|entry| {
            entry.record.principal.is_admin()
                && entry.revoked.is_none()
                && entry.record.expires_at_unix_s.is_none_or(|at| now < at)
        })
    }
}

/// The token text in an `Authorization` value: `Bearer TOKEN`, or `Basic`
/// with the token as password (any user name) or, password empty, as user
/// name — what `git`, curl and credential helpers send.
fn credential(value: &str) -> Result<String, Unauthenticated> {
    let (scheme, rest) = value
        .trim()
        .split_once(' ')
        .ok_or(Unauthenticated::Scheme)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Unauthenticated::Scheme);
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Unauthenticated::Scheme)?;
    let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    Ok(if password.is_empty() { user } else { password }.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::LocalBook;
    use http::HeaderValue;

    fn authority(dir: &std::path::Path) -> Authority {
        let book = LocalBook::open(crate::env::os_disk(), dir.join("tokens.json")).unwrap();
        Authority::new(Arc::new(book), Clock::tokio(), Rng::seeded(7))
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn bearer_and_basic_prove_the_same_caller() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path());
        let (token, _) = authority
            .issue(
                Principal::project("shop").unwrap(),
                "ci",
                None,
                Issuer::Node("test"),
            )
            .unwrap();
        let text = token.reveal();
        for value in [
            format!("Bearer {text}"),
            basic("canopy", &text),
            basic(&text, ""),
        ] {
            let caller = authority.authenticate(&headers(&value)).unwrap();
            assert_eq!(caller.token, token.id());
            assert_eq!(caller.label, "ci");
            assert!(caller.may_deploy("shop").is_ok());
            let forbidden = caller.may_deploy("blog").unwrap_err().to_string();
            assert!(
                forbidden.contains(&token.id().to_string()) && forbidden.contains("\"ci\""),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn missing_wrong_revoked_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path());
        assert_eq!(
            authority.authenticate(&HeaderMap::new()),
            Err(Unauthenticated::Missing)
        );
        assert_eq!(
            authority.authenticate(&headers("Digest x")),
            Err(Unauthenticated::Scheme)
        );
        let (token, _) = authority
            .issue(Principal::Admin, "ops", None, Issuer::Node("test"))
            .unwrap();
        // The right id with another secret.
        let mut forged = token.reveal();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            authority.authenticate(&headers(&format!("Bearer {forged}"))),
            Err(Unauthenticated::Unknown(token.id()))
        );
        let admin = authority.verify(&token).unwrap();
        authority.revoke(&token.id(), &admin).unwrap();
        assert_eq!(
            authority.verify(&token),
            Err(Unauthenticated::Revoked(token.id()))
        );
        // A record that expired a second ago.
        let old = Token::generate(&Rng::seeded(9));
        let now = Clock::tokio().unix_now_s();
        authority
            .book
            .insert(
                TokenRecord {
                    id: old.id(),
                    principal: Principal::Admin,
                    label: "old".into(),
                    secret_sha256: old.secret_hash(),
                    created_at_unix_s: now - 10,
                    expires_at_unix_s: Some(now - 1),
                    created_by: "test".into(),
                    warrant_key: None,
                },
                &old,
            )
            .unwrap();
        assert_eq!(
            authority.verify(&old),
            Err(Unauthenticated::Expired {
                id: old.id(),
                expired_at: now - 1
            })
        );
    }

    #[test]
    fn records_survive_a_restart_and_keep_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (token, _) = authority(dir.path())
            .issue(Principal::Admin, "first", None, Issuer::Node("test"))
            .unwrap();
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!file.contains(&token.reveal()[20..]), "{file}");
        let reopened = authority(dir.path());
        assert_eq!(reopened.verify(&token).unwrap().label, "first");
        assert!(reopened.has_live_admin());
    }

    #[test]
    fn labels_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path());
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            authority.issue(Principal::Admin, &long, None, Issuer::Node("test")),
            Err(IssueError::LabelTooLong { .. })
        ));
        assert!(matches!(
            authority.issue(Principal::Admin, "a\nb", None, Issuer::Node("test")),
            Err(IssueError::LabelCharacters)
        ));
    }
}
