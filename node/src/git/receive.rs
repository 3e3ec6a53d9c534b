//! The receive-pack core, independent of HTTP: read the client's commands,
//! index the pack into the repository, update each ref with its old value
//! checked, and say what happened (git's `gitprotocol-pack`, "Pushing Data
//! To a Server").
//!
//! Blocking (file I/O, zlib, hashing): run it in `spawn_blocking`.

use std::collections::BTreeSet;
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};

use super::RefUpdate;
use super::error::error_chain;
use super::limits::{GitLimits, OverLimit};
use super::pktline::{self, Packet};

/// The most commands one push may carry (git has no limit; we want one).
const MAX_COMMANDS: usize = 10_000;

/// One `<old> <new> <ref>` line of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub old: gix::ObjectId,
    pub new: gix::ObjectId,
    pub refname: String,
}

impl Command {
    fn is_delete(&self) -> bool {
        self.new.is_null()
    }
}

/// The command section of a receive-pack request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Commands {
    pub commands: Vec<Command>,
    /// Capabilities the client asked for on its first command line.
    pub capabilities: BTreeSet<String>,
}

impl Commands {
    pub fn wants(&self, capability: &str) -> bool {
        self.capabilities.contains(capability)
    }
}

/// Reads the commands up to the flush-pkt; the pack (if any) follows in `input`.
pub(crate) fn read_commands(input: &mut dyn BufRead) -> io::Result<Commands> {
    let mut parsed = Commands::default();
    loop {
        let line = match pktline::read(input)? {
            None if parsed.commands.is_empty() => return Ok(parsed),
            None => {
                return Err(invalid(
                    "the request ended before the flush after the commands",
                ));
            }
            Some(Packet::Flush) => return Ok(parsed),
            Some(Packet::Data(line)) => line,
        };
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let (line, caps) = match line.iter().position(|b| *b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(caps) = caps
            && parsed.commands.is_empty()
        {
            parsed.capabilities = String::from_utf8_lossy(caps)
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
        }
        // A shallow client names its shallow boundary first; nothing to do.
        if line.starts_with(b"shallow ") {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| invalid("a command line is not UTF-8"))?;
        let mut parts = text.splitn(3, ' ');
        let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("a command line is not `<old-id> <new-id> <ref>`"));
        };
        let parse = |hex: &str| {
            gix::ObjectId::from_hex(hex.as_bytes())
                .map_err(|_| invalid("a command names an invalid object id"))
        };
        parsed.commands.push(Command {
            old: parse(old)?,
            new: parse(new)?,
            refname: refname.to_owned(),
        });
        if parsed.commands.len() > MAX_COMMANDS {
            return Err(invalid("more than 10000 ref updates in one push"));
        }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Why the pack of a push was not stored. Its text goes to the client on
/// the report's `unpack` line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error(
        "push refused: it is larger than this node's limit limits.git.max_push_bytes = {max_push_bytes} bytes; \
         push fewer commits at a time, or ask the operator to raise it"
    )]
    TooLarge { max_push_bytes: u64 },

    /// The pack is over a limit (its object count).
    #[error("{0}")]
    OverLimit(OverLimit),

    #[error("the pack is not a git pack: {0}")]
    NotAPack(String),

    /// The node's disk has no room for the push.
    #[error(
        "push refused: the node's disk is full ({0}); nothing was stored and the live release keeps serving; \
         free space on the node (or ask its operator), then push again"
    )]
    DiskFull(io::Error),

    /// The repository could not be opened or created.
    #[error(transparent)]
    Repository(#[from] super::GitError),

    #[error("could not create {}: {source}", .path.display())]
    CreatePackDir { path: PathBuf, source: io::Error },

    #[error("the pack could not be stored: {0}")]
    StorePack(String),

    #[error("could not reopen the repository: {0}")]
    Reopen(String),
}

/// Why one ref update of a push was refused. Its text goes to the client on
/// the report's `ng <ref>` line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefRejection {
    /// The pack was not stored, so no update could apply.
    #[error("unpacker error")]
    Unpacker,
    #[error("invalid reference name")]
    InvalidName,
    #[error("only branches (refs/heads/*) and tags (refs/tags/*) can be pushed here")]
    NotBranchOrTag,
    #[error("nothing to do: both old and new ids are zero")]
    NothingToDo,
    #[error("missing necessary objects: {0} was not sent")]
    MissingObject(gix::ObjectId),
    #[error("could not read object {id}: {message}")]
    ReadObject { id: gix::ObjectId, message: String },
    #[error("{0} is not a commit; a branch must point to a commit")]
    NotACommit(gix::ObjectId),
    #[error("could not read commit {id}: {message}")]
    ReadCommit { id: gix::ObjectId, message: String },
    #[error("missing necessary objects: tree {0} was not sent")]
    MissingTree(gix::ObjectId),
    /// The pushed `canopy.yaml` names another project than the repository's.
    #[error(
        "canopy.yaml says `project: {declared}` but this is the repository of project \
         {repository}; push to /git/{declared}.git, or change `project:` to {repository}"
    )]
    ProjectMismatch {
        declared: String,
        repository: String,
    },
    /// The commit, or the repository with this ref, is over a limit.
    #[error("{0}")]
    OverLimit(OverLimit),
    /// The listener did not admit the push (its deploy queue is full).
    #[error("push refused: {0}")]
    NotAdmitted(String),
    /// gix refused the name when building the edit.
    #[error("{0}")]
    RefName(String),
    /// The ref no longer has the value the client saw.
    #[error("stale info")]
    Stale,
    #[error("failed to update ref: {0}")]
    UpdateFailed(String),
}

/// What happened to a push, for the report-status and the push event.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// `Ok` or why the pack could not be stored.
    pub unpack: Result<(), UnpackError>,
    /// Per command, in order: `Ok` or the reason it was refused.
    pub refs: Vec<(String, Result<(), RefRejection>)>,
    /// The updates applied, in command order (branches and tags).
    pub applied: Vec<RefUpdate>,
}

impl Outcome {
    /// Every command refused because the pack was not stored.
    pub fn unpack_failed(commands: &[Command], reason: UnpackError) -> Self {
        Outcome {
            unpack: Err(reason),
            refs: commands
                .iter()
                .map(|c| (c.refname.clone(), Err(RefRejection::Unpacker)))
                .collect(),
            applied: Vec::new(),
        }
    }

    /// Every command refused for `reason` before anything was stored.
    pub fn refused(commands: &[Command], reason: &str) -> Self {
        Outcome {
            unpack: Ok(()),
            refs: commands
                .iter()
                .map(|c| {
                    let rejection = RefRejection::NotAdmitted(reason.to_owned());
                    (c.refname.clone(), Err(rejection))
                })
                .collect(),
            applied: Vec::new(),
        }
    }

    /// The report-status pkt-lines (flush included).
    pub fn report_status(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.unpack {
            Ok(()) => pktline::write(&mut out, b"unpack ok\n"),
            Err(reason) => pktline::write(
                &mut out,
                format!("unpack {}\n", one_line(&reason.to_string())).as_bytes(),
            ),
        }
        for (refname, result) in &self.refs {
            let line = match result {
                Ok(()) => format!("ok {refname}\n"),
                Err(reason) => format!("ng {refname} {}\n", one_line(&reason.to_string())),
            };
            pktline::write(&mut out, line.as_bytes());
        }
        pktline::flush(&mut out);
        out
    }
}

/// A reason fit for one pkt-line.
fn one_line(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    line.chars().take(1000).collect()
}

/// Applies `commands` to `repo`, the repository of `project`, reading the
/// pack from `pack` when any command creates or updates a ref, within
/// `limits`. A pack no ref update took is removed again: a refused push
/// stores nothing.
pub(crate) fn receive(
    repo: &gix::Repository,
    project: &str,
    commands: &[Command],
    pack: &mut dyn BufRead,
    limits: &GitLimits,
) -> Outcome {
    let checks: Vec<Result<(), RefRejection>> = commands.iter().map(check_command).collect();

    let mut written = None;
    if commands.iter().any(|c| !c.is_delete()) {
        match index_pack(repo, pack, limits) {
            Ok(pack) => written = Some(pack),
            Err(reason) => return Outcome::unpack_failed(commands, reason),
        }
    }
    // Reopen so the object database sees the pack just written.
    let repo = match gix::open(repo.path()) {
        Ok(repo) => repo,
        Err(e) => return Outcome::unpack_failed(commands, UnpackError::Reopen(e.to_string())),
    };

    let mut outcome = Outcome {
        unpack: Ok(()),
        refs: Vec::with_capacity(commands.len()),
        applied: Vec::new(),
    };
    let mut refs_now = count_refs(&repo);
    for (command, check) in commands.iter().zip(checks) {
        let creates = command.old.is_null() && !command.is_delete();
        let result = check
            .and_then(|()| {
                if creates {
                    limits.refs(refs_now + 1).map_err(RefRejection::OverLimit)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| check_objects(&repo, command))
            .and_then(|tree| match tree {
                Some(tree) => check_tree(&repo, tree, limits),
                None => Ok(()),
            })
            .and_then(|()| check_project(&repo, project, command))
            .and_then(|()| update_ref(&repo, command));
        if result.is_ok() {
            if creates {
                refs_now += 1;
            } else if command.is_delete() {
                refs_now = refs_now.saturating_sub(1);
            }
            outcome.applied.push(RefUpdate {
                refname: command.refname.clone(),
                branch: command
                    .refname
                    .strip_prefix("refs/heads/")
                    .map(str::to_owned),
                old: (!command.old.is_null()).then_some(command.old),
                new: (!command.new.is_null()).then_some(command.new),
            });
        } else if let Err(reason) = &result {
            tracing::info!(repo = %repo.path().display(), refname = %command.refname, %reason, "ref update refused");
        }
        outcome.refs.push((command.refname.clone(), result));
    }
    if let Some(pack) = written {
        if outcome.applied.iter().any(|u| u.new.is_some()) {
            // The refs now protect the new objects; the pack may be
            // collected normally.
            pack.release();
        } else {
            // No ref took the pack (and the repository lock keeps any other
            // push from using it meanwhile): nothing of the push stays.
            pack.remove();
        }
    }
    outcome
}

/// Branches and tags in `repo` now.
fn count_refs(repo: &gix::Repository) -> usize {
    let Ok(platform) = repo.references() else {
        return 0;
    };
    let Ok(all) = platform.all() else {
        return 0;
    };
    all.filter_map(Result::ok)
        .filter(|r| {
            let name = r.name().as_bstr();
            name.starts_with(b"refs/heads/") || name.starts_with(b"refs/tags/")
        })
        .count()
}

/// A branch's commit, whose tree is `root`, must fit the checkout limits:
/// files, their total bytes, the length of each path. Reads tree objects
/// and object headers only, never a file's content.
fn check_tree(
    repo: &gix::Repository,
    root: gix::ObjectId,
    limits: &GitLimits,
) -> Result<(), RefRejection> {
    let read_error = |id: gix::ObjectId, e: &dyn std::fmt::Display| RefRejection::ReadObject {
        id,
        message: e.to_string(),
    };
    let mut files = 0usize;
    let mut total_bytes = 0u64;
    // Depth-first with an explicit stack: a deep tree cannot overflow ours.
    let mut stack: Vec<(gix::ObjectId, String)> = vec![(root, String::new())];
    while let Some((tree_id, dir)) = stack.pop() {
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| read_error(tree_id, &e))?;
        let decoded = tree.decode().map_err(|e| read_error(tree_id, &e))?;
        for entry in &decoded.entries {
            let path = if dir.is_empty() {
                entry.filename.to_string()
            } else {
                format!("{dir}/{}", entry.filename)
            };
            limits.path(&path).map_err(RefRejection::OverLimit)?;
            let id = entry.oid.to_owned();
            match entry.mode.kind() {
                gix::objs::tree::EntryKind::Tree => stack.push((id, path)),
                gix::objs::tree::EntryKind::Commit => {}
                _ => {
                    files += 1;
                    limits.files(files).map_err(RefRejection::OverLimit)?;
                    let header = repo.find_header(id).map_err(|e| read_error(id, &e))?;
                    total_bytes = total_bytes.saturating_add(header.size());
                    limits
                        .checkout_bytes(total_bytes)
                        .map_err(RefRejection::OverLimit)?;
                }
            }
        }
    }
    Ok(())
}

/// The checks that need no objects: which refs may be pushed at all.
fn check_command(command: &Command) -> Result<(), RefRejection> {
    if gix::refs::FullName::try_from(command.refname.as_str()).is_err() {
        return Err(RefRejection::InvalidName);
    }
    if !(command.refname.starts_with("refs/heads/") || command.refname.starts_with("refs/tags/")) {
        return Err(RefRejection::NotBranchOrTag);
    }
    if command.old.is_null() && command.new.is_null() {
        return Err(RefRejection::NothingToDo);
    }
    Ok(())
}

/// The new target must be stored, and a branch must name a commit whose tree
/// is stored too (a cheap connectivity check). Returns a branch's tree.
fn check_objects(
    repo: &gix::Repository,
    command: &Command,
) -> Result<Option<gix::ObjectId>, RefRejection> {
    if command.is_delete() {
        return Ok(None);
    }
    let header = match repo.try_find_header(command.new) {
        Ok(Some(header)) => header,
        Ok(None) => return Err(RefRejection::MissingObject(command.new)),
        Err(e) => {
            return Err(RefRejection::ReadObject {
                id: command.new,
                message: e.to_string(),
            });
        }
    };
    if command.refname.starts_with("refs/heads/") {
        if header.kind() != gix::object::Kind::Commit {
            return Err(RefRejection::NotACommit(command.new));
        }
        let tree = repo
            .find_commit(command.new)
            .and_then(|commit| commit.tree_id().map(|id| id.detach()))
            .map_err(|e| RefRejection::ReadCommit {
                id: command.new,
                message: e.to_string(),
            })?;
        if !repo.has_object(tree) {
            return Err(RefRejection::MissingTree(tree));
        }
        return Ok(Some(tree));
    }
    Ok(None)
}

/// A branch's `canopy.yaml` must name the repository's project. A missing
/// or unreadable one passes: the deploy then fails with its located error.
fn check_project(
    repo: &gix::Repository,
    project: &str,
    command: &Command,
) -> Result<(), RefRejection> {
    if command.is_delete() || !command.refname.starts_with("refs/heads/") {
        return Ok(());
    }
    let declared = super::read_file(repo.path(), command.new, "canopy.yaml")
        .ok()
        .flatten()
        .and_then(|bytes| crate::config::declared_project(&bytes));
    match declared {
        Some(declared) if declared != project => Err(RefRejection::ProjectMismatch {
            declared,
            repository: project.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Updates (or deletes) one ref atomically, refusing if it no longer has the
/// value the client saw.
fn update_ref(repo: &gix::Repository, command: &Command) -> Result<(), RefRejection> {
    let name = gix::refs::FullName::try_from(command.refname.as_str())
        .map_err(|e| RefRejection::RefName(e.to_string()))?;
    let expected = if command.old.is_null() {
        PreviousValue::MustNotExist
    } else {
        PreviousValue::MustExistAndMatch(gix::refs::Target::Object(command.old))
    };
    let change = if command.is_delete() {
        Change::Delete {
            expected,
            log: RefLog::AndReference,
        }
    } else {
        Change::Update {
            log: LogChange {
                mode: RefLog::AndReference,
                force_create_reflog: false,
                message: "push".into(),
            },
            expected,
            new: gix::refs::Target::Object(command.new),
        }
    };
    // Bare repositories keep no reflog by default; should one exist, it gets a
    // fixed identity and no wall-clock time (the node reads no OS clock).
    let committer = gix::actor::SignatureRef {
        name: "canopy".into(),
        email: "canopy@localhost".into(),
        time: "0 +0000",
    };
    match repo.edit_references_as(Some(RefEdit::new(name, change)), Some(committer)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let current = repo
                .try_find_reference(command.refname.as_str())
                .ok()
                .flatten()
                .and_then(|r| r.target().try_id().map(ToOwned::to_owned));
            let expected_now = (!command.old.is_null()).then_some(command.old);
            if current != expected_now {
                Err(RefRejection::Stale)
            } else {
                Err(RefRejection::UpdateFailed(error_chain(&e)))
            }
        }
    }
}

/// A pack just written into a repository, held by its `.keep` file until
/// the push's ref updates are done. Without a `.keep`, gix found the same
/// pack already there: it is not this push's to remove.
struct WrittenPack {
    keep: Option<PathBuf>,
    data: Option<PathBuf>,
    index: Option<PathBuf>,
}

impl WrittenPack {
    /// Refs point into the pack: drop the `.keep` so it is collected normally.
    fn release(self) {
        if let Some(keep) = self.keep
            && let Err(e) = std::fs::remove_file(&keep)
        {
            tracing::warn!(path = %keep.display(), error = %e, "could not remove the pack's .keep file");
        }
    }

    /// Nothing points into the pack: remove it, index first (without its
    /// index a pack file is invisible), the `.keep` last.
    fn remove(self) {
        if self.keep.is_none() {
            return;
        }
        for path in self.index.into_iter().chain(self.data).chain(self.keep) {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a refused push's pack");
            }
        }
    }
}

/// The length of a pack's header: `PACK`, a version, an object count.
const PACK_HEADER_BYTES: usize = 12;

/// Indexes the pack in `pack` into `objects/pack`, completing a thin pack
/// from the repository's objects, once its header shows it within
/// `limits`.
fn index_pack(
    repo: &gix::Repository,
    pack: &mut dyn BufRead,
    limits: &GitLimits,
) -> Result<WrittenPack, UnpackError> {
    let mut header = [0u8; PACK_HEADER_BYTES];
    io::Read::read_exact(pack, &mut header)
        .map_err(|e| UnpackError::NotAPack(format!("no pack header ({e})")))?;
    if &header[..4] != b"PACK" {
        return Err(UnpackError::NotAPack(
            "it does not start with PACK".to_owned(),
        ));
    }
    let objects = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    limits.objects(objects).map_err(UnpackError::OverLimit)?;
    let mut pack = io::BufReader::new(io::Read::chain(&header[..], pack));
    let pack = &mut pack;
    let pack_dir = repo.common_dir().join("objects").join("pack");
    std::fs::create_dir_all(&pack_dir).map_err(|source| {
        if super::http::is_disk_full(&source) {
            return UnpackError::DiskFull(source);
        }
        UnpackError::CreatePackDir {
            path: pack_dir.clone(),
            source,
        }
    })?;
    let interrupt = AtomicBool::new(false);
    let outcome = gix::odb::pack::Bundle::write_to_directory(
        pack,
        Some(&pack_dir),
        &mut gix::progress::Discard,
        &interrupt,
        Some(repo.objects.clone()),
        repo.object_hash(),
        gix::odb::pack::bundle::write::Options {
            // No single allocation while indexing (an inflated object, a
            // delta's result, the delta tree) may pass the object limit.
            alloc_limit_bytes: Some(usize::try_from(limits.max_object_bytes).unwrap_or(usize::MAX)),
            ..Default::default()
        },
    )
    .map_err(|e| {
        if over_allocation_limit(&e) {
            return UnpackError::OverLimit(limits.object_too_large());
        }
        match disk_full_cause(&e) {
            Some(kind) => UnpackError::DiskFull(io::Error::from(kind)),
            None => UnpackError::StorePack(error_chain(&e)),
        }
    })?;
    tracing::debug!(
        objects = outcome.index.num_objects,
        pack = ?outcome.data_path,
        "indexed received pack"
    );
    Ok(WrittenPack {
        keep: outcome.keep_path,
        data: outcome.data_path,
        index: outcome.index_path,
    })
}

/// Whether gix refused an allocation past `alloc_limit_bytes`.
fn over_allocation_limit(e: &gix::Error) -> bool {
    use gix::error::{Class, ResourceExhaustionKind};
    e.classify()
        .any(|c| c.class() == Class::ResourceExhaustion(ResourceExhaustionKind::AllocationLimit))
}

/// The kind of the I/O error in `e`'s chain if it says the disk is full.
fn disk_full_cause(e: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && super::http::is_disk_full(io)
        {
            return Some(io.kind());
        }
        cause = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex_digit: char) -> String {
        std::iter::repeat_n(hex_digit, 40).collect()
    }

    #[test]
    fn parses_commands_and_capabilities() {
        let mut input = Vec::new();
        pktline::write(
            &mut input,
            format!(
                "{} {} refs/heads/main\0report-status side-band-64k agent=git/2\n",
                id('0'),
                id('a')
            )
            .as_bytes(),
        );
        pktline::write(
            &mut input,
            format!("{} {} refs/heads/old\n", id('b'), id('0')).as_bytes(),
        );
        pktline::flush(&mut input);
        input.extend_from_slice(b"PACK...");
        let mut reader = &input[..];
        let parsed = read_commands(&mut reader).unwrap();
        assert_eq!(parsed.commands.len(), 2);
        assert!(parsed.wants("side-band-64k") && parsed.wants("report-status"));
        assert!(!parsed.wants("quiet"));
        assert_eq!(parsed.commands[0].refname, "refs/heads/main");
        assert!(parsed.commands[0].old.is_null());
        assert!(parsed.commands[1].is_delete());
        assert_eq!(reader, b"PACK...");
    }

    #[test]
    fn probe_request_has_no_commands() {
        assert_eq!(
            read_commands(&mut &b"0000"[..]).unwrap(),
            Commands::default()
        );
        assert_eq!(read_commands(&mut &b""[..]).unwrap(), Commands::default());
    }

    #[test]
    fn rejects_malformed_commands() {
        for line in [
            "garbage",
            "zz zz refs/heads/x",
            &format!("{} refs/heads/x", id('a')),
        ] {
            let mut input = Vec::new();
            pktline::write(&mut input, line.as_bytes());
            pktline::flush(&mut input);
            assert!(read_commands(&mut &input[..]).is_err(), "{line}");
        }
    }

    #[test]
    fn only_branches_and_tags() {
        let cmd = |refname: &str| Command {
            old: gix::ObjectId::null(gix::hash::Kind::Sha1),
            new: gix::ObjectId::from_hex(id('a').as_bytes()).unwrap(),
            refname: refname.to_owned(),
        };
        assert!(check_command(&cmd("refs/heads/main")).is_ok());
        assert!(check_command(&cmd("refs/tags/v1")).is_ok());
        assert_eq!(
            check_command(&cmd("refs/notes/x")),
            Err(RefRejection::NotBranchOrTag)
        );
        assert_eq!(
            check_command(&cmd("refs/heads/a..b")),
            Err(RefRejection::InvalidName)
        );
        assert!(check_command(&cmd("HEAD")).is_err());
    }

    #[test]
    fn report_status_format() {
        let outcome = Outcome {
            unpack: Ok(()),
            refs: vec![
                ("refs/heads/main".to_owned(), Ok(())),
                ("refs/heads/x".to_owned(), Err(RefRejection::Stale)),
            ],
            applied: Vec::new(),
        };
        assert_eq!(
            outcome.report_status(),
            b"000eunpack ok\n0017ok refs/heads/main\n001fng refs/heads/x stale info\n0000"
        );
    }

    #[test]
    fn refused_pack_refuses_every_ref() {
        let command = Command {
            old: gix::ObjectId::null(gix::hash::Kind::Sha1),
            new: gix::ObjectId::from_hex(id('a').as_bytes()).unwrap(),
            refname: "refs/heads/main".to_owned(),
        };
        let outcome = Outcome::unpack_failed(
            &[command],
            UnpackError::TooLarge {
                max_push_bytes: 100,
            },
        );
        let report = String::from_utf8(outcome.report_status()).unwrap();
        assert!(
            report.contains(
                "unpack push refused: it is larger than this node's limit limits.git.max_push_bytes = 100 bytes; push fewer"
            ),
            "{report}"
        );
        assert!(
            report.contains("ng refs/heads/main unpacker error\n"),
            "{report}"
        );
    }
}
