//! The two kinds of principal a token can stand for.

use std::fmt;
use std::str::FromStr;

use crate::config::names::{LabelProblem, check_label};

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// The cluster's operators: every project, tokens, invites.
    Admin,
    /// The deployers of one project: push to it, read its status. A project
    /// token may create its project with the first push.
    Project(String),
}

impl Principal {
    /// A project principal, if `name` is a valid project name.
    pub fn project(name: &str) -> Result<Self, PrincipalError> {
        check_label(name).map_err(|problem| PrincipalError::ProjectName {
            name: name.to_owned(),
            problem,
        })?;
        Ok(Principal::Project(name.to_owned()))
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// Whether this principal may push to, and read the status of, `project`.
    pub fn may_deploy(&self, project: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Project(own) => own == project,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Project(name) => write!(f, "project:{name}"),
        }
    }
}

/// Why a text is not a principal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    #[error("{text:?} is not a principal: write `admin` or `project:NAME`")]
    Unknown { text: String },
    #[error("project name {name:?} {problem}")]
    ProjectName { name: String, problem: LabelProblem },
}

impl FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            None if text == "admin" => Ok(Principal::Admin),
            Some(("project", name)) => Principal::project(name),
            _ => Err(PrincipalError::Unknown {
                text: text.to_owned(),
            }),
        }
    }
}

impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_round_trip_through_text() {
        for text in ["admin", "project:shop", "project:a-1"] {
            let principal: Principal = text.parse().unwrap();
            assert_eq!(principal.to_string(), text);
        }
    }

    #[test]
    fn bad_principals_say_what_to_write() {
        let err = "root".parse::<Principal>().unwrap_err().to_string();
        assert!(err.contains("`admin` or `project:NAME`"), "{err}");
        let err = "project:Shop".parse::<Principal>().unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
        assert!("project:".parse::<Principal>().is_err());
        assert!("admin:x".parse::<Principal>().is_err());
    }

    #[test]
    fn a_project_principal_deploys_only_its_project() {
        let shop = Principal::project("shop").unwrap();
        assert!(shop.may_deploy("shop"));
        assert!(!shop.may_deploy("blog"));
        assert!(Principal::Admin.may_deploy("blog"));
    }
}
