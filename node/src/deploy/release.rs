//! Building a release from a pushed commit: check the commit out, read and
//! check its `canopy.yaml`, build or read every function, store every
//! artifact by CID, compile and verify every component, and store the
//! manifest that names them all.
//!
//! It touches only its own checkout, the store and the runtime's compiled
//! code; whether the release serves is the deployer's business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, ProjectFile};
use crate::git;
use crate::runtime::{Function, Runtime};
use crate::store::BlobStore;

use super::EnvKey;
use super::build;
use super::error::DeployError;
use super::live::LiveRelease;
use super::manifest::{FileArtifact, FunctionArtifact, Manifest, WebsiteArtifact};

/// What building a release needs from the node.
pub(super) struct ReleaseBuilder<'a> {
    pub store: &'a Arc<BlobStore>,
    pub runtime: &'a Runtime,
    /// Where checkouts go (each in a temporary directory of its own).
    pub work_dir: &'a Path,
    /// What `build.command`s run in.
    pub sandbox: &'a build::Sandbox,
}

impl ReleaseBuilder<'_> {
    /// Build `commit` of the repository at `repo_dir` as `key`'s next
    /// release. Returns the manifest's CID and the release, not yet serving.
    pub async fn build(
        &self,
        repo_dir: &Path,
        key: &EnvKey,
        commit: gix::ObjectId,
    ) -> Result<(cid::Cid, LiveRelease), DeployError> {
        let checkout = self.check_out(repo_dir, commit).await?;
        let root = checkout.path().to_owned();
        let project_file = read_project_file(&root, commit).await?;
        let project = &project_file.project;
        // The Git remote refuses such pushes; this catches those it took
        // before projects had their own repositories.
        if project.name != key.project {
            return Err(DeployError::ProjectMismatch {
                declared: project.name.clone(),
                repository: key.project.clone(),
            });
        }

        self.check_memory_budget(&project_file)?;
        self.check_request_body_limits(&project_file)?;

        let mut functions = BTreeMap::new();
        let mut artifacts = BTreeMap::new();
        for (name, function) in &project.functions {
            let bytes =
                component_bytes(self.sandbox, &project_file, &root, name, &function.source).await?;
            let (loaded, artifact) = self
                .store_and_compile(&project_file, name, function, &bytes)
                .await?;
            functions.insert(name.clone(), loaded);
            artifacts.insert(name.clone(), artifact);
        }

        let websites = {
            let (sites, store, root) = (project.websites.clone(), self.store.clone(), root.clone());
            blocking(move || store_websites(&sites, &store, &root)).await??
        };

        let manifest = Manifest {
            project: project.name.clone(),
            branch: key.branch.clone(),
            commit: commit.to_string(),
            domains: project.domains.clone(),
            functions: artifacts,
            websites,
        };
        let manifest_cid = self.store_manifest(&manifest)?;
        Ok((
            manifest_cid,
            LiveRelease {
                manifest_cid,
                manifest,
                functions,
                precedence: None,
            },
        ))
    }

    /// Refuse, before anything is built, a function whose `limits.memory`
    /// is more than the node's whole memory budget for functions: it could
    /// never run here.
    fn check_memory_budget(&self, project_file: &ProjectFile) -> Result<(), DeployError> {
        refuse_over_node_limit(
            project_file,
            NodeLimit {
                field: "memory",
                what: "this node's memory budget for all functions",
                name: "limits.wasm.memory_budget",
                max_bytes: self.runtime.memory_budget().budget_bytes,
                help: "ask for less memory, or ask the node's operator to raise limits.wasm.memory_budget",
            },
            |limits| Some(limits.memory_bytes),
        )
    }

    /// Refuse, before anything is built, a function whose `limits.body` is
    /// more than this node lets any function accept
    /// (`limits.wasm.max_request_body`).
    fn check_request_body_limits(&self, project_file: &ProjectFile) -> Result<(), DeployError> {
        refuse_over_node_limit(
            project_file,
            NodeLimit {
                field: "body",
                what: "this node lets a function accept",
                name: "limits.wasm.max_request_body",
                max_bytes: self.runtime.request_body_limits().max_bytes,
                help: "accept smaller request bodies, or ask the node's operator to raise limits.wasm.max_request_body",
            },
            |limits| limits.body_bytes,
        )
    }

    /// Check `commit` out into a fresh directory under the work directory,
    /// removed when the returned handle drops.
    async fn check_out(
        &self,
        repo_dir: &Path,
        commit: gix::ObjectId,
    ) -> Result<tempfile::TempDir, DeployError> {
        let checkout = tempfile::Builder::new()
            .prefix("checkout-")
            .tempdir_in(self.work_dir)
            .map_err(DeployError::CheckoutDir)?;
        let (repo_dir, root) = (repo_dir.to_owned(), checkout.path().to_owned());
        crate::env::spawn_blocking(move || git::checkout(&repo_dir, commit, &root))
            .await
            .map_err(DeployError::CheckoutTask)??;
        Ok(checkout)
    }

    /// Store a function's component, verify it, compile it, and describe it
    /// for the manifest.
    async fn store_and_compile(
        &self,
        project_file: &ProjectFile,
        name: &str,
        function: &config::Function,
        bytes: &[u8],
    ) -> Result<(Arc<Function>, FunctionArtifact), DeployError> {
        let cid = self.store.put(bytes)?;
        self.store.verify(&cid)?;
        let loaded = self.runtime.load(&cid, bytes).await.map_err(|e| {
            DeployError::Compile(Box::new(project_file.diagnostic(
                &["functions", name],
                e.to_string(),
                None,
            )))
        })?;
        let artifact = FunctionArtifact {
            cid: cid.to_string(),
            http_path: function.http.as_ref().map(|h| h.path.clone()),
            http_methods: function.http.as_ref().and_then(|h| {
                h.methods
                    .as_ref()
                    .map(|ms| ms.iter().map(|m| m.to_string()).collect())
            }),
            timeout_ms: function.limits.timeout.as_millis() as u64,
            memory_bytes: function.limits.memory_bytes,
            fuel: function.limits.fuel,
            body_bytes: function.limits.body_bytes,
        };
        Ok((loaded, artifact))
    }

    /// Store the manifest and read it back verified: the release is its CID.
    fn store_manifest(&self, manifest: &Manifest) -> Result<cid::Cid, DeployError> {
        let bytes = serde_json::to_vec(manifest).expect("manifest serialises");
        let cid = self.store.put(&bytes)?;
        self.store.verify(&cid)?;
        Ok(cid)
    }
}

/// Read `canopy.yaml` at the checkout's root, parse it, and check the files
/// it names.
async fn read_project_file(
    root: &Path,
    commit: gix::ObjectId,
) -> Result<Arc<ProjectFile>, DeployError> {
    let text = match std::fs::read_to_string(root.join("canopy.yaml")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DeployError::NoProjectFile {
                commit: short(&commit.to_string()).to_owned(),
            });
        }
        Err(e) => return Err(DeployError::ReadProjectFile(e)),
    };
    let project_file = Arc::new(config::parse("canopy.yaml", &text)?);
    let problems = {
        let (project_file, root) = (project_file.clone(), root.to_owned());
        blocking(move || project_file.check_files(&root)).await?
    };
    if !problems.is_empty() {
        return Err(config::Diagnostics(problems).into());
    }
    Ok(project_file)
}

/// A function's component: the committed `wasm` file, or the output of its
/// build command run in the checkout (checked to be a wasi:http component).
async fn component_bytes(
    sandbox: &build::Sandbox,
    project_file: &ProjectFile,
    root: &Path,
    name: &str,
    source: &config::Source,
) -> Result<Vec<u8>, DeployError> {
    match source {
        config::Source::Wasm { path } => std::fs::read(root.join(path)).map_err(|e| {
            DeployError::ReadComponent(Box::new(project_file.diagnostic(
                &["functions", name, "wasm"],
                format!("cannot read {path}: {e}"),
                None,
            )))
        }),
        config::Source::Build {
            dir,
            command,
            output,
            timeout,
            env,
        } => {
            let build_dir = root.join(dir);
            let spec = build::BuildSpec {
                command,
                checkout: root,
                dir,
                timeout: *timeout,
                env,
            };
            build::run(sandbox, spec).await.map_err(|e| {
                let help = match e {
                    build::BuildError::NoSandbox { .. } => {
                        "ask the node's operator to install bubblewrap"
                    }
                    _ => "run the command in a clean checkout to reproduce it",
                };
                DeployError::Build(Box::new(project_file.diagnostic(
                    &["functions", name, "build", "command"],
                    e.to_string(),
                    Some(help.into()),
                )))
            })?;
            let bytes = read_inside(root, &build_dir.join(output)).map_err(|e| {
                let help = "point `output` at the component the command writes, relative to `dir`";
                DeployError::BuildOutput(Box::new(project_file.diagnostic(
                    &["functions", name, "build", "output"],
                    format!("the build succeeded but {dir}/{output} cannot be read: {e}"),
                    Some(help.into()),
                )))
            })?;
            project_file
                .check_built_component(name, &bytes)
                .map_err(|d| DeployError::BuildOutput(Box::new(d)))?;
            Ok(bytes)
        }
    }
}

/// Read `path`, which must resolve (symlinks followed) to a file inside
/// `root`: a build's output may not point the node at its own files.
fn read_inside(root: &Path, path: &Path) -> std::io::Result<Vec<u8>> {
    let resolved = path.canonicalize()?;
    if !resolved.starts_with(root.canonicalize()?) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "it resolves to {}, outside the checkout",
                resolved.display()
            ),
        ));
    }
    std::fs::read(resolved)
}

/// Run file-heavy work (hashing, copying, validating components) off the
/// async workers; its result does not depend on timing.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DeployError> {
    crate::env::spawn_blocking(work)
        .await
        .map_err(DeployError::Task)
}

/// Put every file of every website into the store.
fn store_websites(
    sites: &BTreeMap<String, config::Website>,
    store: &BlobStore,
    root: &Path,
) -> Result<BTreeMap<String, WebsiteArtifact>, DeployError> {
    let mut websites = BTreeMap::new();
    for (name, website) in sites {
        let mut files = BTreeMap::new();
        for (relative, path) in
            walk_files(&root.join(&website.dir)).map_err(DeployError::WebsiteFiles)?
        {
            let cid = store.put_file(&path)?;
            let size_bytes = std::fs::metadata(&path)
                .map_err(DeployError::WebsiteFiles)?
                .len();
            files.insert(
                relative,
                FileArtifact {
                    cid: cid.to_string(),
                    size_bytes,
                },
            );
        }
        websites.insert(
            name.clone(),
            WebsiteArtifact {
                path: website.path.clone(),
                files,
            },
        );
    }
    Ok(websites)
}

/// A commit id short enough to read.
fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// Every regular file below `dir`, as (path relative to `dir` with `/`
/// separators, full path), in sorted order.
fn walk_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let relative = path
                    .strip_prefix(dir)
                    .expect("walked paths are below dir")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((relative, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A node-wide bound a function's own `limits.<field>` may not pass.
struct NodeLimit {
    /// The field under `functions.<name>.limits`.
    field: &'static str,
    /// What the bound is, for the message ("… is more than {what}").
    what: &'static str,
    /// Its name in the node config.
    name: &'static str,
    max_bytes: u64,
    help: &'static str,
}

/// One diagnostic per function whose `limits.<field>` (read by `value`) is
/// over `limit`, naming both.
fn refuse_over_node_limit(
    project_file: &ProjectFile,
    limit: NodeLimit,
    value: impl Fn(&config::Limits) -> Option<u64>,
) -> Result<(), DeployError> {
    let over: Vec<_> = project_file
        .project
        .functions
        .iter()
        .filter_map(|(name, f)| Some((name, value(&f.limits)?)))
        .filter(|(_, bytes)| *bytes > limit.max_bytes)
        .map(|(name, bytes)| {
            project_file.diagnostic(
                &["functions", name, "limits", limit.field],
                format!(
                    "{} is more than {}, {} = {}",
                    crate::runtime::format_bytes(bytes),
                    limit.what,
                    limit.name,
                    crate::runtime::format_bytes(limit.max_bytes)
                ),
                Some(limit.help.into()),
            )
        })
        .collect();
    if over.is_empty() {
        Ok(())
    } else {
        Err(config::Diagnostics(over).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_nested_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("css/deep")).unwrap();
        std::fs::write(dir.path().join("index.html"), "x").unwrap();
        std::fs::write(dir.path().join("css/a.css"), "x").unwrap();
        std::fs::write(dir.path().join("css/deep/b.css"), "x").unwrap();
        let names: Vec<String> = walk_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["css/a.css", "css/deep/b.css", "index.html"]);
    }
}
