//! Git's smart HTTP protocol, receive-pack side only: the remote that
//! `git push` talks to. Framework-independent: the gateway hands requests to
//! [`GitHttp::handle`].
//!
//! Routes (relative to the mount point, see [`GitHttp::with_mount_prefix`]):
//! - `GET /<repo>/info/refs?service=git-receive-pack` — ref advertisement;
//! - `POST /<repo>/git-receive-pack` — commands and pack, answered with
//!   report-status;
//! - `git-upload-pack` (clone, fetch) — 403: this remote accepts pushes only;
//! - dumb HTTP (`info/refs` without `service`, `HEAD`, `objects/…`) — 404.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Seek, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::limits::GitLimits;
use super::receive::{self, Commands, Outcome, UnpackError};
use super::repack::RepackPolicy;
use super::repos::{self, Repos};
use super::{Admission, GitError, PushEvent, PushListener, Result, pktline};
use crate::body::{self, Body};

/// How much of an oversized push is read and discarded, at least, so that the
/// client gets to read the refusal.
const MIN_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// The Git remote: serves receive-pack for every repository in [`Repos`] and
/// reports each acknowledged push as a [`PushEvent`].
///
/// Cheap to clone (shared state is behind `Arc`s). `handle` must run inside a
/// tokio runtime: its file work goes through [`crate::env::spawn_blocking`]
/// (tokio's blocking pool, or inline in the simulator, so a simulated push
/// replays from its seed).
#[derive(Clone, Debug)]
pub struct GitHttp {
    repos: Repos,
    events: Arc<dyn PushListener>,
    mount_prefix: String,
    limits: GitLimits,
    /// When a push merges its repository's packs, and the clock pack ages
    /// are read against; `None`: never.
    repack: Option<(RepackPolicy, crate::env::Clock)>,
    /// One lock per repository: pushes to one repository are applied and
    /// reported one at a time, so events arrive in ref-update order.
    repo_locks: Arc<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl GitHttp {
    /// A remote serving `repos`, telling `events` of every acknowledged push.
    /// Request paths are taken as already relative to the mount point.
    pub fn new(repos: Repos, events: impl PushListener) -> Self {
        Self {
            repos,
            events: Arc::new(events),
            mount_prefix: String::new(),
            limits: GitLimits::default(),
            repack: None,
            repo_locks: Arc::default(),
        }
    }

    /// Strip `prefix` (e.g. `/git`) from request paths before routing, so a
    /// gateway can pass requests for `/git/shop.git/info/refs` unchanged.
    /// Requests outside the prefix get a 404.
    pub fn with_mount_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.mount_prefix = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Receive pushes within `limits` (see [`GitLimits`]).
    pub fn with_limits(mut self, limits: GitLimits) -> Self {
        debug_assert!(limits.max_push_bytes > 0);
        self.limits = limits;
        self
    }

    /// After a push, merge the repository's packs as `policy` says
    /// ([`RepackPolicy`]), pack ages read against `clock`; `None` (the
    /// default): never.
    pub fn with_repack(mut self, policy: Option<RepackPolicy>, clock: crate::env::Clock) -> Self {
        self.repack = policy.map(|policy| (policy, clock));
        self
    }

    /// The repositories this remote serves.
    pub fn repos(&self) -> &Repos {
        &self.repos
    }

    /// Every branch of `repo` and its commit, sorted by branch name.
    pub fn branches(&self, repo: &str) -> Result<Vec<(String, gix::ObjectId)>> {
        self.repos.branches(repo)
    }

    /// Answers one HTTP request of the Git smart protocol.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let path = req.uri().path().to_owned();
        let Some(relative) = path.strip_prefix(self.mount_prefix.as_str()) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{path} is not a Git repository URL\n"),
            );
        };
        let Some((repo_segment, rest)) = relative.strip_prefix('/').and_then(|p| p.split_once('/'))
        else {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "{path} is not a Git repository URL: expected {}/<repo>.git\n",
                    self.mount_prefix
                ),
            );
        };
        let repo = match Repos::normalize_name(repo_segment) {
            Ok(repo) => repo,
            Err(e) => return text(StatusCode::NOT_FOUND, format!("{e}\n")),
        };
        let method = req.method().clone();
        match (method, rest) {
            (Method::GET, "info/refs") => match service(req.uri().query()) {
                Some("git-receive-pack") => self.advertise(&repo).await,
                Some("git-upload-pack") => upload_refused(),
                Some(other) => text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unsupported Git service {other:?}: this remote accepts `git push` only\n"
                    ),
                ),
                None => dumb_refused(),
            },
            (Method::POST, "git-receive-pack") => self.receive_pack(&repo, req).await,
            (_, "git-upload-pack") => upload_refused(),
            (_, "info/refs" | "git-receive-pack") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET for info/refs and POST for git-receive-pack\n".to_owned(),
            ),
            (_, "HEAD" | "info/packs" | "objects/info/packs") => dumb_refused(),
            (_, rest) if rest.starts_with("objects/") => dumb_refused(),
            _ => text(
                StatusCode::NOT_FOUND,
                format!("{path} is not part of Git's smart HTTP protocol\n"),
            ),
        }
    }

    async fn advertise(&self, repo: &str) -> Response<Body> {
        let repos = self.repos.clone();
        let name = repo.to_owned();
        match crate::env::spawn_blocking(move || advertisement(&repos, &name)).await {
            Ok(Ok(body)) => git_response("application/x-git-receive-pack-advertisement", body),
            Ok(Err(e)) => {
                tracing::error!(repo, error = %e, "could not advertise refs");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("advertising refs failed: {e}\n"),
            ),
        }
    }

    async fn receive_pack<B>(&self, repo: &str, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if content_type != Some("application/x-git-receive-pack-request") {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a push must be sent with Content-Type: application/x-git-receive-pack-request (use `git push`)\n"
                    .to_owned(),
            );
        }
        let gzip = match req
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(HeaderValue::to_str)
        {
            None | Some(Ok("identity")) => false,
            Some(Ok("gzip" | "x-gzip")) => true,
            Some(other) => {
                return text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "unsupported Content-Encoding {other:?}: send the push uncompressed or gzip-compressed\n"
                    ),
                );
            }
        };

        let pusher = req.extensions().get::<super::Pusher>().cloned();
        let spooled = match self.spool(req.into_body()).await {
            Ok(spooled) => spooled,
            Err(response) => return response,
        };

        let lock = self.repo_lock(repo);
        let _guard = lock.lock().await;
        let repos = self.repos.clone();
        let name = repo.to_owned();
        let limits = self.limits.clone();
        let listener = self.events.clone();
        let processed = crate::env::spawn_blocking(move || {
            process(&repos, &name, spooled, gzip, &limits, listener.as_ref())
        })
        .await;
        let (commands, outcome, admission) = match processed {
            Ok(Ok(Some(processed))) => processed,
            // A request with no commands: git's probe before a large push.
            Ok(Ok(None)) => {
                return git_response("application/x-git-receive-pack-result", Vec::new());
            }
            Ok(Err(message)) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("receiving the push failed: {e}\n"),
                );
            }
        };

        let branch_updates: Vec<_> = outcome
            .applied
            .iter()
            .filter(|u| u.branch.is_some())
            .cloned()
            .collect();
        tracing::info!(
            repo,
            unpack = ?outcome.unpack,
            applied = outcome.applied.len(),
            refused = outcome.refs.iter().filter(|(_, r)| r.is_err()).count(),
            "push received"
        );
        if !branch_updates.is_empty() {
            let event = PushEvent {
                repo: repo.to_owned(),
                pusher: pusher.map(|p| p.0),
                updates: branch_updates,
            };
            if !self.events.pushed(event) {
                tracing::warn!(repo, "push acknowledged but nobody listens for push events");
            }
        }
        // Held until the push is handed in: what it reserved is now used.
        drop(admission);
        if !outcome.applied.is_empty() {
            let deleted_a_branch = outcome
                .applied
                .iter()
                .any(|u| u.branch.is_some() && u.new.is_none());
            self.repack_after_push(repo, deleted_a_branch);
        }
        git_response(
            "application/x-git-receive-pack-result",
            response_body(&commands, &outcome),
        )
    }

    /// Merge `repo`'s packs if the policy says it is due, in the
    /// background under the repository's lock (the push is answered at
    /// once; the next push to it waits for the repack).
    fn repack_after_push(&self, repo: &str, deleted_a_branch: bool) {
        let Some((policy, clock)) = self.repack.clone() else {
            return;
        };
        let Ok(dir) = self.repos.dir(repo) else {
            return;
        };
        let lock = self.repo_lock(repo);
        let repo = repo.to_owned();
        tokio::spawn(async move {
            let _guard = lock.lock_owned().await;
            let done = crate::env::spawn_blocking(move || {
                let now = std::time::UNIX_EPOCH + clock.unix_now();
                super::repack::repack_if_due(&dir, &policy, deleted_a_branch, now)
            })
            .await;
            match done {
                Ok(Ok(Some(r))) => tracing::info!(
                    repo,
                    packs_merged = r.packs_merged,
                    packs_now = r.packs_now,
                    objects = r.objects,
                    bytes_before = r.bytes_before,
                    bytes_after = r.bytes_after,
                    "repacked the repository"
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(repo, error = %e, "repack failed; the packs stay as they were")
                }
                Err(e) => tracing::warn!(repo, error = %e, "repack did not run"),
            }
        });
    }

    fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .repo_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(repo.to_owned()).or_default().clone()
    }

    /// Streams the request body into an anonymous temporary file next to the
    /// repositories. Past the limit, the rest is read and discarded (so the
    /// client, still sending, can read our refusal) up to the limit again (at
    /// least [`MIN_DRAIN_BYTES`]), then the connection is given up. A full
    /// disk is treated the same way: the rest is read and discarded, and the
    /// request's head (kept in memory) names the refs the refusal reports.
    async fn spool<B>(&self, mut body: B) -> std::result::Result<Spooled, Response<Body>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let root = self.repos.root();
        let mut disk_full = None;
        let mut file = match tempfile::tempfile_in(root) {
            Ok(file) => Some(file),
            Err(e) if is_disk_full(&e) => {
                disk_full = Some(e);
                None
            }
            Err(e) => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "could not create a temporary file in {}: {e}\n",
                        root.display()
                    ),
                ));
            }
        };
        let max = self.limits.max_push_bytes;
        let mut head = Vec::new();
        let mut stored_bytes = 0u64;
        let mut discarded_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the push request body: {e}\n"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let room = HEAD_BYTES.saturating_sub(head.len());
            head.extend_from_slice(&data[..room.min(data.len())]);
            let len = data.len() as u64;
            let keep = if file.is_some() {
                len.min(max - stored_bytes)
            } else {
                0
            };
            if let (Some(open), true) = (file.take(), keep > 0) {
                let keep_usize = usize::try_from(keep).unwrap_or(data.len());
                let data = data.slice(..keep_usize);
                // The file moves to the blocking write and back.
                let (open, written) = crate::env::spawn_blocking(move || {
                    let mut open = open;
                    let written = open.write_all(&data);
                    (open, written)
                })
                .await
                .map_err(|e| spool_write_error(io::Error::other(e.to_string())))?;
                match written {
                    Ok(()) => {
                        file = Some(open);
                        stored_bytes += keep;
                    }
                    // Dropping the file frees what it held.
                    Err(e) if is_disk_full(&e) => disk_full = Some(e),
                    Err(e) => return Err(spool_write_error(e)),
                }
            }
            if file.is_some() {
                discarded_bytes += len - keep;
            } else {
                discarded_bytes += len;
            }
            if discarded_bytes > max.max(MIN_DRAIN_BYTES) {
                return Err(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{}\n", too_large_message(max)),
                ));
            }
        }
        if let Some(file) = &mut file {
            file.rewind().map_err(spool_write_error)?;
        }
        debug_assert!(stored_bytes <= max);
        Ok(Spooled {
            file,
            head,
            too_large: discarded_bytes > 0,
            disk_full,
        })
    }
}

/// A push request body on disk.
struct Spooled {
    /// `None` when the disk filled up.
    file: Option<std::fs::File>,
    /// The body's first [`HEAD_BYTES`] (its commands come first).
    head: Vec<u8>,
    /// The body was longer than the limit; `file` holds its first part only.
    too_large: bool,
    /// Writing it failed because the node's disk is full.
    disk_full: Option<io::Error>,
}

/// How much of a push body is kept in memory as well, so that a push the
/// disk has no room for can still be answered ref by ref.
const HEAD_BYTES: usize = 64 * 1024;

/// Whether `e` says the disk (or the user's quota) is out of space.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded
}

fn spool_write_error(e: io::Error) -> Response<Body> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("could not store the push on the node's disk: {e}\n"),
    )
}

fn too_large_message(max_push_bytes: u64) -> String {
    UnpackError::TooLarge { max_push_bytes }.to_string()
}

/// Reads the spooled request and applies it, if `listener` admits it.
/// `Ok(None)`: no commands (a probe). `Err`: a malformed request.
fn process(
    repos: &Repos,
    name: &str,
    spooled: Spooled,
    gzip: bool,
    limits: &GitLimits,
    listener: &dyn PushListener,
) -> std::result::Result<Option<(Commands, Outcome, Admission)>, String> {
    let max_push_bytes = limits.max_push_bytes;
    let source: Box<dyn std::io::BufRead> = match spooled.file {
        Some(file) if spooled.disk_full.is_none() => Box::new(BufReader::new(file)),
        // Only the commands are read: from the head kept in memory.
        _ => Box::new(io::Cursor::new(spooled.head)),
    };
    let decoded: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::GzDecoder::new(source))
    } else {
        Box::new(source)
    };
    // Bound the decompressed size too: a small gzip body can inflate hugely.
    let mut input = BufReader::with_capacity(
        64 * 1024,
        Limited {
            inner: decoded,
            read_bytes: 0,
            max_bytes: max_push_bytes,
        },
    );
    if let Some(source) = spooled.disk_full {
        let commands = receive::read_commands(&mut input).unwrap_or_default();
        if commands.commands.is_empty() {
            return Ok(None);
        }
        let outcome = Outcome::unpack_failed(&commands.commands, UnpackError::DiskFull(source));
        return Ok(Some((commands, outcome, Admission::default())));
    }
    let commands = match receive::read_commands(&mut input) {
        Ok(commands) => commands,
        Err(_) if spooled.too_large => {
            return Ok(Some((
                Commands::default(),
                Outcome::unpack_failed(&[], UnpackError::TooLarge { max_push_bytes }),
                Admission::default(),
            )));
        }
        Err(e) => return Err(format!("malformed receive-pack request: {e}")),
    };
    if commands.commands.is_empty() {
        return Ok(None);
    }
    if spooled.too_large {
        let outcome =
            Outcome::unpack_failed(&commands.commands, UnpackError::TooLarge { max_push_bytes });
        return Ok(Some((commands, outcome, Admission::default())));
    }
    // Asked before the pack is read: a refused push stores nothing, not even
    // a new repository.
    let branches: Vec<String> = commands
        .commands
        .iter()
        .filter_map(|c| c.refname.strip_prefix("refs/heads/"))
        .map(str::to_owned)
        .collect();
    let admission = if branches.is_empty() {
        Admission::default()
    } else {
        match listener.admit(name, &branches) {
            Ok(admission) => admission,
            Err(reason) => {
                tracing::info!(repo = name, %reason, "push refused by the deployer");
                let outcome = Outcome::refused(&commands.commands, &reason);
                return Ok(Some((commands, outcome, Admission::default())));
            }
        }
    };
    let outcome = match repos.open_or_init(name) {
        Ok(repo) => receive::receive(&repo, name, &commands.commands, &mut input, limits),
        Err(e) => Outcome::unpack_failed(&commands.commands, e.into()),
    };
    Ok(Some((commands, outcome, admission)))
}

/// A reader that fails once more than `max_bytes` came through.
struct Limited<R> {
    inner: R,
    read_bytes: u64,
    max_bytes: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read_bytes += n as u64;
        if self.read_bytes > self.max_bytes {
            return Err(io::Error::other(too_large_message(self.max_bytes)));
        }
        Ok(n)
    }
}

/// The response to a push: progress lines on band 2 and the report-status on
/// band 1 when the client asked for side-band-64k, else the bare report.
fn response_body(commands: &Commands, outcome: &Outcome) -> Vec<u8> {
    let report = if commands.wants("report-status") || commands.commands.is_empty() {
        outcome.report_status()
    } else {
        Vec::new()
    };
    if !commands.wants("side-band-64k") {
        return report;
    }
    let mut out = Vec::new();
    for update in &outcome.applied {
        let Some(branch) = &update.branch else {
            continue;
        };
        let line = match update.new {
            Some(new) => format!(
                "canopy: received {} on {branch}; deploying — see `canopy status`\n",
                new.to_hex_with_len(7)
            ),
            None => format!("canopy: deleted branch {branch}\n"),
        };
        pktline::write_sideband(&mut out, pktline::BAND_PROGRESS, line.as_bytes());
    }
    if !report.is_empty() {
        pktline::write_sideband(&mut out, pktline::BAND_DATA, &report);
    }
    pktline::flush(&mut out);
    out
}

/// `# service=git-receive-pack`, then every ref with our capabilities on the
/// first line (or `capabilities^{}` when there are none). A repository that
/// does not exist yet is advertised empty; the push creates it.
fn advertisement(repos: &Repos, name: &str) -> Result<Vec<u8>, GitError> {
    let refs = if repos.exists(name)? {
        repos::refs(&repos.open(name)?)?
    } else {
        Vec::new()
    };
    let capabilities = format!(
        "report-status delete-refs side-band-64k quiet ofs-delta agent=canopy/{}",
        crate::version()
    );
    let mut out = Vec::new();
    pktline::write(&mut out, b"# service=git-receive-pack\n");
    pktline::flush(&mut out);
    if refs.is_empty() {
        let zero = gix::ObjectId::null(gix::hash::Kind::Sha1);
        pktline::write(
            &mut out,
            format!("{zero} capabilities^{{}}\0{capabilities}\n").as_bytes(),
        );
    }
    for (i, (refname, id)) in refs.iter().enumerate() {
        let line = if i == 0 {
            format!("{id} {refname}\0{capabilities}\n")
        } else {
            format!("{id} {refname}\n")
        };
        pktline::write(&mut out, line.as_bytes());
    }
    pktline::flush(&mut out);
    Ok(out)
}

fn service(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("service="))
}

fn upload_refused() -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        "This Canopy remote accepts pushes only (git push); it does not serve clone or fetch.\n\
         Clone or fetch from your own repository instead.\n"
            .to_owned(),
    )
}

fn dumb_refused() -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        "Canopy speaks Git's smart HTTP protocol only; the dumb protocol is not served.\n\
         Push with a git client that sends ?service=git-receive-pack (any git since 1.6.6).\n"
            .to_owned(),
    )
}

/// A protocol response: never cached (git's http-backend sends the same).
fn git_response(content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(body::full(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_cache(headers);
    response
}

/// A plain-text response; git shows its lines as `remote: …` on errors.
fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(body::full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_cache(headers);
    response
}

fn no_cache(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Fri, 01 Jan 1980 00:00:00 GMT"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> (
        tempfile::TempDir,
        GitHttp,
        tokio::sync::mpsc::UnboundedReceiver<PushEvent>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let git = GitHttp::new(Repos::new(dir.path()).unwrap(), tx).with_mount_prefix("/git/");
        (dir, git, rx)
    }

    fn get(uri: &str) -> Request<http_body_util::Empty<Bytes>> {
        Request::get(uri)
            .body(http_body_util::Empty::new())
            .unwrap()
    }

    async fn body_bytes(response: Response<Body>) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn advertises_an_empty_repository_without_creating_it() {
        let (dir, git, _rx) = remote();
        let response = git
            .handle(get("/git/shop.git/info/refs?service=git-receive-pack"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-git-receive-pack-advertisement"
        );
        let body = String::from_utf8(body_bytes(response).await).unwrap();
        assert!(
            body.starts_with("001f# service=git-receive-pack\n0000"),
            "{body}"
        );
        assert!(
            body.contains("0000000000000000000000000000000000000000 capabilities^{}\0report-status delete-refs side-band-64k quiet ofs-delta agent=canopy/"),
            "{body}"
        );
        assert!(body.ends_with("\n0000"));
        assert!(!dir.path().join("shop.git").exists());
    }

    #[tokio::test]
    async fn refuses_fetch_dumb_http_and_bad_names() {
        let (_dir, git, _rx) = remote();
        let upload = git
            .handle(get("/git/shop.git/info/refs?service=git-upload-pack"))
            .await;
        assert_eq!(upload.status(), StatusCode::FORBIDDEN);
        assert!(
            String::from_utf8(body_bytes(upload).await)
                .unwrap()
                .contains("accepts pushes only")
        );
        let dumb = git.handle(get("/git/shop.git/info/refs")).await;
        assert_eq!(dumb.status(), StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8(body_bytes(dumb).await)
                .unwrap()
                .contains("smart HTTP")
        );
        let bad = git
            .handle(get("/git/sh%20op.git/info/refs?service=git-receive-pack"))
            .await;
        assert_eq!(bad.status(), StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8(body_bytes(bad).await)
                .unwrap()
                .contains("invalid repository name")
        );
        let outside = git
            .handle(get("/other/shop.git/info/refs?service=git-receive-pack"))
            .await;
        assert_eq!(outside.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn probe_gets_an_empty_answer_and_oversized_pushes_are_refused() {
        let (dir, git, mut rx) = remote();
        let git = git.with_limits(GitLimits {
            max_push_bytes: 200,
            ..GitLimits::default()
        });
        let post = |body: Vec<u8>| {
            Request::post("/git/shop.git/git-receive-pack")
                .header(
                    header::CONTENT_TYPE,
                    "application/x-git-receive-pack-request",
                )
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap()
        };
        let probe = git.handle(post(b"0000".to_vec())).await;
        assert_eq!(probe.status(), StatusCode::OK);
        assert!(body_bytes(probe).await.is_empty());

        let mut big = Vec::new();
        let zero = "0".repeat(40);
        let one = "1".repeat(40);
        pktline::write(
            &mut big,
            format!("{zero} {one} refs/heads/main\0report-status\n").as_bytes(),
        );
        pktline::flush(&mut big);
        big.extend_from_slice(&[b'P'; 300]);
        let response = git.handle(post(big)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = String::from_utf8(body_bytes(response).await).unwrap();
        assert!(
            body.contains(
                "unpack push refused: it is larger than this node's limit limits.git.max_push_bytes = 200 bytes"
            ),
            "{body}"
        );
        assert!(body.contains("ng refs/heads/main unpacker error"), "{body}");
        assert!(!dir.path().join("shop.git").exists());
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_corrupt_pack_is_reported_and_changes_nothing() {
        let (dir, git, mut rx) = remote();
        let mut request = Vec::new();
        let (zero, new) = ("0".repeat(40), "1".repeat(40));
        pktline::write(
            &mut request,
            format!("{zero} {new} refs/heads/main\0report-status side-band-64k\n").as_bytes(),
        );
        pktline::flush(&mut request);
        request.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01garbage");
        let request = Request::post("/git/shop/git-receive-pack")
            .header(
                header::CONTENT_TYPE,
                "application/x-git-receive-pack-request",
            )
            .body(http_body_util::Full::new(Bytes::from(request)))
            .unwrap();
        let response = git.handle(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = String::from_utf8_lossy(&body_bytes(response).await).into_owned();
        assert!(
            body.contains("unpack the pack could not be stored: "),
            "{body}"
        );
        assert!(body.contains("corrupt deflate stream"), "{body}");
        assert!(body.contains("ng refs/heads/main unpacker error"), "{body}");
        assert!(rx.try_recv().is_err());
        let repos = Repos::new(dir.path()).unwrap();
        assert_eq!(repos.branches("shop").unwrap(), vec![]);
    }

    #[derive(Debug)]
    struct Refusing;

    impl PushListener for Refusing {
        fn admit(&self, repo: &str, branches: &[String]) -> std::result::Result<Admission, String> {
            Err(format!("no room for {repo} {}", branches.join(",")))
        }

        fn pushed(&self, event: PushEvent) -> bool {
            panic!("a push that was not admitted is reported: {event:?}")
        }
    }

    #[tokio::test]
    async fn a_push_the_listener_does_not_admit_is_refused_on_every_ref_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let git =
            GitHttp::new(Repos::new(dir.path()).unwrap(), Refusing).with_mount_prefix("/git/");
        let mut request = Vec::new();
        let (zero, new) = ("0".repeat(40), "1".repeat(40));
        pktline::write(
            &mut request,
            format!("{zero} {new} refs/heads/main\0report-status\n").as_bytes(),
        );
        pktline::write(
            &mut request,
            format!("{zero} {new} refs/tags/v1\n").as_bytes(),
        );
        pktline::flush(&mut request);
        request.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01garbage");
        let request = Request::post("/git/shop.git/git-receive-pack")
            .header(
                header::CONTENT_TYPE,
                "application/x-git-receive-pack-request",
            )
            .body(http_body_util::Full::new(Bytes::from(request)))
            .unwrap();
        let response = git.handle(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = String::from_utf8(body_bytes(response).await).unwrap();
        // The pack was never read (its garbage would fail the unpack).
        assert!(body.contains("unpack ok\n"), "{body}");
        assert!(
            body.contains("ng refs/heads/main push refused: no room for shop main\n"),
            "{body}"
        );
        assert!(
            body.contains("ng refs/tags/v1 push refused: no room for shop main\n"),
            "{body}"
        );
        assert!(!dir.path().join("shop.git").exists());
    }

    #[tokio::test]
    async fn gzip_request_bodies_are_decoded() {
        use std::io::Write;
        let (dir, git, mut rx) = remote();
        let mut plain = Vec::new();
        let (old, zero) = ("1".repeat(40), "0".repeat(40));
        pktline::write(
            &mut plain,
            format!("{old} {zero} refs/heads/gone\0report-status\n").as_bytes(),
        );
        pktline::flush(&mut plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let request = Request::post("/git/shop/git-receive-pack")
            .header(
                header::CONTENT_TYPE,
                "application/x-git-receive-pack-request",
            )
            .header(header::CONTENT_ENCODING, "gzip")
            .body(http_body_util::Full::new(Bytes::from(gz.finish().unwrap())))
            .unwrap();
        let response = git.handle(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = String::from_utf8(body_bytes(response).await).unwrap();
        // Deleting a branch that does not exist: the old value is stale.
        assert_eq!(
            body,
            "000eunpack ok\n0022ng refs/heads/gone stale info\n0000"
        );
        assert!(dir.path().join("shop.git/HEAD").is_file());
        assert!(rx.try_recv().is_err());
    }
}
