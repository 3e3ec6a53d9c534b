//! The admin-token file (`DATA_DIR/admin-token`) and push URLs carrying a
//! token: what a node, the dream and the test harness share.

use std::path::Path;

use anyhow::Context as _;

use super::{Authority, Issuer, Principal, Token};

/// Issue an admin token labelled `label` and write it to `path` (mode 0600,
/// atomically): the way into a node, kept where only its user can read it.
pub fn issue_admin_token_file(
    authority: &Authority,
    path: &Path,
    label: &str,
    node: &str,
) -> anyhow::Result<Token> {
    let (token, record) = authority
        .issue(Principal::Admin, label, None, Issuer::Node(node))
        .with_context(|| format!("cannot create an admin token ({label})"))?;
    crate::durable::write_atomically(
        path,
        format!("{}\n", token.reveal()).as_bytes(),
        Some(0o600),
    )
    .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    tracing::info!(token = %record.id, path = %path.display(), label, "created an admin token");
    Ok(token)
}

/// The token text a token file holds (surrounding whitespace dropped).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token in {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// `http://127.0.0.1:P/git/` → `http://canopy:TOKEN@127.0.0.1:P/git/`: a
/// push URL prefix that `git` authenticates with by itself (HTTP Basic,
/// the token as password).
pub fn git_base_with_token(git_base: &str, token: &str) -> String {
    match git_base.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://canopy:{token}@{rest}"),
        None => git_base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_into_the_url_as_the_password() {
        assert_eq!(
            git_base_with_token("http://127.0.0.1:7070/git/", "canopy_ab_cd"),
            "http://canopy:canopy_ab_cd@127.0.0.1:7070/git/"
        );
    }
}
