//! DNS labels and names: project, function and website names, and domains.
//!
//! Names end up in hostnames (`<branch>.<project>.localhost`) and in URLs, so
//! they follow the DNS label rules (RFC 1035, lowercase): 1-63 characters of
//! `a-z`, `0-9` and `-`, not starting or ending with `-`.

/// The longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;
/// The longest DNS name, dots included.
pub const MAX_NAME_LEN: usize = 253;

/// What is wrong with a DNS label, phrased to follow the label in a
/// message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {MAX_LABEL_LEN}")]
    TooLong { len: usize },
    #[error(
        "contains `{}`; only lowercase letters `a-z`, digits and `-` are allowed",
        .0.escape_debug()
    )]
    Character(char),
    #[error("starts or ends with `-`")]
    EdgeHyphen,
}

/// Check that `label` is a DNS label.
pub fn check_label(label: &str) -> Result<(), LabelProblem> {
    if label.is_empty() {
        return Err(LabelProblem::Empty);
    }
    let len = label.chars().count();
    if len > MAX_LABEL_LEN {
        return Err(LabelProblem::TooLong { len });
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(LabelProblem::Character(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(LabelProblem::EdgeHyphen);
    }
    Ok(())
}

/// A valid label close to `text`, to suggest in a help message.
pub fn suggest_label(text: &str) -> Option<String> {
    let mut out = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(MAX_LABEL_LEN).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    (check_label(&trimmed).is_ok() && trimmed != text).then_some(trimmed)
}

/// What is wrong with a domain, phrased to follow "it" in a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainProblem {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("needs at least two labels, like `example.com`")]
    TooFewLabels,
    #[error("has a `*` that is not the whole first label")]
    MisplacedWildcard,
    #[error("has an empty label (two dots in a row, or a dot at an end)")]
    EmptyLabel,
    #[error("has a label `{label}` that {problem}")]
    Label {
        label: String,
        problem: LabelProblem,
    },
}

/// Check a domain and return its lowercase form. A leading `*.` (one
/// wildcard label) is allowed; the rest needs at least two labels.
pub fn normalize_domain(text: &str) -> Result<String, DomainProblem> {
    let lower = text.to_ascii_lowercase();
    if lower.is_empty() {
        return Err(DomainProblem::Empty);
    }
    if lower.len() > MAX_NAME_LEN {
        return Err(DomainProblem::TooLong { len: lower.len() });
    }
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 {
        return Err(DomainProblem::TooFewLabels);
    }
    for label in &labels {
        if *label == "*" {
            return Err(DomainProblem::MisplacedWildcard);
        }
        check_label(label).map_err(|problem| match problem {
            LabelProblem::Empty => DomainProblem::EmptyLabel,
            problem => DomainProblem::Label {
                label: (*label).to_owned(),
                problem,
            },
        })?;
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_label("shop").is_ok());
        assert!(check_label("a-1").is_ok());
        assert!(check_label(&"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "Shop", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(suggest_label("My_Shop"), Some("my-shop".to_string()));
        assert_eq!(suggest_label("shop"), None);
        assert_eq!(suggest_label("___"), None);
    }

    #[test]
    fn domains() {
        assert_eq!(
            normalize_domain("Shop.Example.com"),
            Ok("shop.example.com".into())
        );
        assert_eq!(
            normalize_domain("*.shop.example.com"),
            Ok("*.shop.example.com".into())
        );
        for bad in [
            "", "shop", "*.com", "a..b", ".a.b", "a.b.", "a.*.b", "a_b.com", "-a.com",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
