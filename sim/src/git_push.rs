//! A `git push` made in process: the commit of one push as Git objects, the
//! pack that carries them, and the smart-HTTP exchange with a node's Git
//! remote (`GET info/refs?service=git-receive-pack`, then
//! `POST git-receive-pack`), as `git push --force` does it.
//!
//! Owns: encoding blobs, trees and a commit with gix-object, writing the
//! pack with gix-pack's output API, the receive-pack request and reading
//! the answer. Deterministic: fixed author and committer, times derived from
//! the push number, no `git` subprocess, no OS clock. It does not decide
//! what a push contains (see [`crate::workload`]) nor run anything on a
//! simulated host (see [`crate::harness`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use gix::objs::WriteTo;
use gix::objs::tree::EntryKind;
use gix::{ObjectId, hash::Kind as HashKind};
use gix_pack::data::output;

/// The ref advertisement's first line when a repository has no refs.
const NO_REFS: &str = "capabilities^{}";

/// One pushed commit: its id and a pack holding every object it needs.
#[derive(Clone, Debug)]
pub struct PushPack {
    pub commit: ObjectId,
    pub pack: Bytes,
}

/// A file of the commit: its path (with `/` separators) and its bytes.
pub type File = (String, Arc<Vec<u8>>);

/// Build a root commit (no parent: every push stands alone, so every pack is
/// complete whatever the node's repository holds) of `files`.
/// `n` numbers the push: its author and committer time is `epoch_s + n`.
pub fn build(files: &[File], n: u64, epoch_s: i64) -> anyhow::Result<PushPack> {
    let mut objects: Vec<(ObjectId, gix::objs::Kind, Vec<u8>)> = Vec::new();
    let mut root = Dir::default();
    for (path, bytes) in files {
        let id = hash(gix::objs::Kind::Blob, bytes)?;
        objects.push((id, gix::objs::Kind::Blob, bytes.to_vec()));
        root.insert(path, id)?;
    }
    let tree = root.write(&mut objects)?;
    let signature = gix::actor::Signature {
        name: "canopy-sim".into(),
        email: "sim@canopy.invalid".into(),
        time: gix::date::Time {
            seconds: epoch_s + n as i64,
            offset: 0,
        },
    };
    let commit = gix::objs::Commit {
        tree,
        parents: Default::default(),
        author: signature.clone(),
        committer: signature,
        encoding: None,
        message: format!("push {n}\n").into(),
        extra_headers: Vec::new(),
    };
    let commit_id = encode(&commit, gix::objs::Kind::Commit, &mut objects)?;
    Ok(PushPack {
        commit: commit_id,
        pack: Bytes::from(write_pack(&objects)?),
    })
}

/// A directory of the commit being built: files and subdirectories by name.
#[derive(Default)]
struct Dir {
    files: BTreeMap<String, ObjectId>,
    dirs: BTreeMap<String, Dir>,
}

impl Dir {
    fn insert(&mut self, path: &str, id: ObjectId) -> anyhow::Result<()> {
        match path.split_once('/') {
            Some((dir, rest)) => self
                .dirs
                .entry(dir.to_owned())
                .or_default()
                .insert(rest, id),
            None => {
                anyhow::ensure!(
                    self.files.insert(path.to_owned(), id).is_none(),
                    "{path} twice"
                );
                Ok(())
            }
        }
    }

    /// Encode this directory's tree (subtrees first) into `objects`.
    fn write(
        &self,
        objects: &mut Vec<(ObjectId, gix::objs::Kind, Vec<u8>)>,
    ) -> anyhow::Result<ObjectId> {
        let mut entries = Vec::new();
        for (name, dir) in &self.dirs {
            entries.push(gix::objs::tree::Entry {
                mode: EntryKind::Tree.into(),
                filename: name.as_str().into(),
                oid: dir.write(objects)?,
            });
        }
        for (name, id) in &self.files {
            entries.push(gix::objs::tree::Entry {
                mode: EntryKind::Blob.into(),
                filename: name.as_str().into(),
                oid: *id,
            });
        }
        // Git's order (a tree sorts as if its name ended in `/`).
        entries.sort();
        encode(&gix::objs::Tree { entries }, gix::objs::Kind::Tree, objects)
    }
}

fn hash(kind: gix::objs::Kind, data: &[u8]) -> anyhow::Result<ObjectId> {
    gix::objs::compute_hash(HashKind::Sha1, kind, data)
        .map_err(|e| anyhow::anyhow!("hashing a {kind} failed: {e}"))
}

fn encode(
    object: &dyn WriteTo,
    kind: gix::objs::Kind,
    objects: &mut Vec<(ObjectId, gix::objs::Kind, Vec<u8>)>,
) -> anyhow::Result<ObjectId> {
    let mut data = Vec::new();
    object
        .write_to(&mut data)
        .with_context(|| format!("encoding a {kind}"))?;
    let id = hash(kind, &data)?;
    objects.push((id, kind, data));
    Ok(id)
}

/// Compressed pack entries by object id: the function versions and the
/// manifest-free site files repeat across pushes, and deflating them is the
/// costly part of a pack (the entry of an object is a pure function of it).
type EntryCache = Mutex<BTreeMap<ObjectId, output::Entry>>;

fn entry_cache() -> &'static EntryCache {
    static CACHE: std::sync::OnceLock<EntryCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The most entries the cache keeps (it holds the few function versions;
/// the rest is bounded so a soak cannot grow it without end).
const ENTRY_CACHE_MAX: usize = 64;

/// A version-2 pack of `objects` (undeltified), written by gix-pack.
fn write_pack(objects: &[(ObjectId, gix::objs::Kind, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut entries = Vec::with_capacity(objects.len());
    for (id, kind, data) in objects {
        let cached = entry_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let count = output::Count::from_data(*id, None);
                let entry = output::Entry::from_data(
                    &count,
                    &gix::objs::Data::new(data, *kind, HashKind::Sha1),
                    gix::zlib::Compression::BEST_SPEED,
                )
                .map_err(|e| anyhow::anyhow!("compressing {id}: {e}"))?;
                // Only big blobs are worth keeping (the function versions).
                if data.len() > 32 * 1024 {
                    let mut cache = entry_cache().lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() < ENTRY_CACHE_MAX {
                        cache.insert(*id, entry.clone());
                    }
                }
                entry
            }
        };
        entries.push(entry);
    }
    let count = entries.len() as u32;
    let mut writer = output::bytes::FromEntriesIter::new(
        std::iter::once(Ok(entries)),
        Vec::new(),
        count,
        gix_pack::data::Version::V2,
        HashKind::Sha1,
    );
    for written in writer.by_ref() {
        written.map_err(|e| anyhow::anyhow!("writing the pack: {e}"))?;
    }
    Ok(writer.into_write())
}

/// The old value of `refs/heads/<branch>` in a receive-pack ref
/// advertisement (`None`: the branch does not exist yet).
pub fn advertised(advertisement: &[u8], branch: &str) -> anyhow::Result<Option<ObjectId>> {
    let wanted = format!("refs/heads/{branch}");
    for line in pkt_lines(advertisement)? {
        let Some(line) = line else { continue };
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let text = std::str::from_utf8(line).context("advertisement is not UTF-8")?;
        if text.starts_with('#') {
            continue;
        }
        let Some((id, name)) = text.split_once(' ') else {
            anyhow::bail!("advertisement line {text:?} is not `<id> <ref>`");
        };
        if name == NO_REFS {
            return Ok(None);
        }
        if name == wanted {
            return Ok(Some(
                ObjectId::from_hex(id.as_bytes()).context("advertised id")?,
            ));
        }
    }
    Ok(None)
}

/// The receive-pack request: one command (`old` → `commit` on the branch,
/// asking for report-status), a flush, the pack.
pub fn request_body(old: Option<ObjectId>, push: &PushPack, branch: &str) -> Bytes {
    let old = old.unwrap_or_else(|| ObjectId::null(HashKind::Sha1));
    let line = format!(
        "{old} {} refs/heads/{branch}\0report-status agent=canopy-sim\n",
        push.commit
    );
    let mut out = Vec::with_capacity(line.len() + 8 + push.pack.len());
    out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"0000");
    out.extend_from_slice(&push.pack);
    Bytes::from(out)
}

/// Read a report-status answer: `Ok` when the pack was unpacked and the
/// branch updated, else the reason the remote gave.
pub fn acknowledged(report: &[u8], branch: &str) -> Result<(), String> {
    let lines = pkt_lines(report).map_err(|e| e.to_string())?;
    let text: Vec<String> = lines
        .into_iter()
        .flatten()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .collect();
    match text.first().map(String::as_str) {
        Some("unpack ok") => {}
        Some(other) => return Err(other.to_owned()),
        None => return Err("empty report".to_owned()),
    }
    let ok = format!("ok refs/heads/{branch}");
    if text.contains(&ok) {
        Ok(())
    } else {
        Err(text
            .get(1)
            .cloned()
            .unwrap_or_else(|| "no ref status".into()))
    }
}

/// Split pkt-lines: `Some(data)` per data line, `None` per flush.
fn pkt_lines(mut input: &[u8]) -> anyhow::Result<Vec<Option<&[u8]>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        anyhow::ensure!(input.len() >= 4, "truncated pkt-line");
        let len = std::str::from_utf8(&input[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .context("bad pkt-line length")?;
        if len == 0 {
            out.push(None);
            input = &input[4..];
            continue;
        }
        anyhow::ensure!(len >= 4 && input.len() >= len, "truncated pkt-line");
        out.push(Some(&input[4..len]));
        input = &input[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<File> {
        vec![
            ("canopy.yaml".into(), Arc::new(b"project: shop\n".to_vec())),
            ("public/a.txt".into(), Arc::new(b"a".to_vec())),
            ("public/b/c.txt".into(), Arc::new(vec![7u8; 40_000])),
        ]
    }

    #[test]
    fn same_content_same_commit_and_pack() {
        let a = build(&files(), 3, 1_800_000_000).unwrap();
        let b = build(&files(), 3, 1_800_000_000).unwrap();
        assert_eq!(a.commit, b.commit);
        assert_eq!(a.pack, b.pack);
        assert!(a.pack.starts_with(b"PACK\0\0\0\x02"));
        assert_ne!(build(&files(), 4, 1_800_000_000).unwrap().commit, a.commit);
    }

    #[test]
    fn reads_advertisements_and_reports() {
        let zero = format!("{} capabilities^{{}}\0x\n", "0".repeat(40));
        let empty = format!(
            "001f# service=git-receive-pack\n0000{:04x}{zero}0000",
            zero.len() + 4
        );
        assert_eq!(advertised(empty.as_bytes(), "main").unwrap(), None);
        let id = "1".repeat(40);
        let line = format!("{id} refs/heads/dev\0caps\n");
        let adv = format!("0000{:04x}{line}0000", line.len() + 4);
        assert_eq!(
            advertised(adv.as_bytes(), "dev").unwrap(),
            Some(ObjectId::from_hex(id.as_bytes()).unwrap())
        );
        assert_eq!(advertised(adv.as_bytes(), "main").unwrap(), None);
        let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
        let report = |line: &str| format!("{}{}0000", pkt("unpack ok\n"), pkt(line));
        assert!(acknowledged(report("ok refs/heads/main\n").as_bytes(), "main").is_ok());
        assert_eq!(
            acknowledged(report("ng refs/heads/main stale info\n").as_bytes(), "main"),
            Err("ng refs/heads/main stale info".into())
        );
    }
}
