//! The bounds on what one push may carry and what a pushed commit may hold:
//! checked while the push is received, so that a push over any of them is
//! refused with the limit's name and value, and nothing of it is stored.

use crate::config::format_size;

/// What one push may carry and what a pushed branch's commit may hold. Each
/// is named in the node config as `limits.git.<field>` (sizes in bytes or
/// with a unit, like `512MiB`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitLimits {
    /// The push request as received (commands and pack, after gzip): 512 MiB.
    pub max_push_bytes: u64,
    /// Objects in one pack: 1,000,000.
    pub max_pack_objects: u32,
    /// Branches and tags in one repository: 1,000.
    pub max_refs: usize,
    /// Files (and symbolic links) in a pushed commit's tree: 100,000.
    pub max_files: usize,
    /// Bytes of all the files of a pushed commit's tree, as checked out:
    /// 1 GiB.
    pub max_checkout_bytes: u64,
    /// Bytes in one path of a pushed commit's tree: 1,024.
    pub max_path_bytes: usize,
    /// Bytes of one object (a file, a tree, a delta's result) as inflated
    /// while a pack is indexed and a commit is checked out: 256 MiB. A pack
    /// of a few kilobytes can declare an object of gigabytes, and indexing
    /// holds each object whole in memory.
    pub max_object_bytes: u64,
}

impl Default for GitLimits {
    fn default() -> Self {
        GitLimits {
            max_push_bytes: 512 << 20,
            max_pack_objects: 1_000_000,
            max_refs: 1_000,
            max_files: 100_000,
            max_checkout_bytes: 1 << 30,
            max_path_bytes: 1_024,
            max_object_bytes: 256 << 20,
        }
    }
}

/// A limit a push went over: its config name, its value as a user writes
/// it, and what the push had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverLimit {
    /// The name under `limits.git` in the node config, like `max_files`.
    pub name: &'static str,
    /// The limit, like `100000` or `1GiB`.
    pub value: String,
    /// What went over it, like `more than 100000 files`.
    pub found: String,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "push refused: {} is over this node's limit limits.git.{} = {}; push less, or ask the operator to raise it",
            self.found, self.name, self.value
        )
    }
}

impl GitLimits {
    pub(crate) fn objects(&self, count: u32) -> Result<(), OverLimit> {
        if count <= self.max_pack_objects {
            return Ok(());
        }
        Err(OverLimit {
            name: "max_pack_objects",
            value: self.max_pack_objects.to_string(),
            found: format!("a pack of {count} objects"),
        })
    }

    pub(crate) fn refs(&self, count: usize) -> Result<(), OverLimit> {
        if count <= self.max_refs {
            return Ok(());
        }
        Err(OverLimit {
            name: "max_refs",
            value: self.max_refs.to_string(),
            found: format!("a repository of {count} branches and tags"),
        })
    }

    pub(crate) fn files(&self, count: usize) -> Result<(), OverLimit> {
        if count <= self.max_files {
            return Ok(());
        }
        Err(OverLimit {
            name: "max_files",
            value: self.max_files.to_string(),
            found: format!("a commit of more than {} files", self.max_files),
        })
    }

    pub(crate) fn checkout_bytes(&self, total: u64) -> Result<(), OverLimit> {
        if total <= self.max_checkout_bytes {
            return Ok(());
        }
        Err(OverLimit {
            name: "max_checkout_bytes",
            value: format_size(self.max_checkout_bytes),
            found: format!(
                "a commit of more than {} of files",
                format_size(self.max_checkout_bytes)
            ),
        })
    }

    /// A pack held an object larger than `max_object_bytes`; indexing
    /// found it before allocating for it, and says only that it did.
    pub(crate) fn object_too_large(&self) -> OverLimit {
        OverLimit {
            name: "max_object_bytes",
            value: format_size(self.max_object_bytes),
            found: format!(
                "an object of more than {}",
                format_size(self.max_object_bytes)
            ),
        }
    }

    pub(crate) fn path(&self, path: &str) -> Result<(), OverLimit> {
        if path.len() <= self.max_path_bytes {
            return Ok(());
        }
        let shown: String = path.chars().take(60).collect();
        Err(OverLimit {
            name: "max_path_bytes",
            value: self.max_path_bytes.to_string(),
            found: format!("the path {shown}… ({} bytes)", path.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_names_itself_and_its_value() {
        let limits = GitLimits::default();
        assert!(limits.files(100_000).is_ok());
        let over = limits.files(100_001).unwrap_err();
        let text = over.to_string();
        assert!(text.contains("limits.git.max_files = 100000"), "{text}");
        let over = limits.checkout_bytes((1 << 30) + 1).unwrap_err();
        assert!(
            over.to_string()
                .contains("limits.git.max_checkout_bytes = 1GiB"),
            "{over}"
        );
        assert!(limits.objects(1_000_001).is_err());
        assert!(limits.refs(1_001).is_err());
        assert!(limits.path(&"a".repeat(1_024)).is_ok());
        assert!(
            limits
                .object_too_large()
                .to_string()
                .contains("limits.git.max_object_bytes = 256MiB")
        );
        let long = limits.path(&"é".repeat(600)).unwrap_err().to_string();
        assert!(long.contains("1200 bytes"), "{long}");
    }
}
