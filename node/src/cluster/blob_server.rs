//! Answering peers' `blob/1` requests from the local store: the file IO half
//! of blob replication, on the driver side of [`super::replicate`]'s sans-IO
//! core (which only fetches).
//!
//! `Have` is answered with the blob's size if it is stored here; `Get` with
//! the raw bytes of a range, read without verifying them (the requester
//! verifies the whole blob against its CID before storing it). A refusal
//! travels to the requester as the text of a [`ServeError`]: the wire format
//! is that string, so the messages below are part of the protocol.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use cid::Cid;

use super::replicate::{BlobRequest, HaveReply};
use crate::net::MAX_PAYLOAD_BYTES;
use crate::store::BlobStore;

/// Why a blob request was refused. Its text is what the requester sees.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The payload is not a JSON [`BlobRequest`].
    #[error("invalid blob request: {0}")]
    BadRequest(serde_json::Error),
    /// The request names something that is not a CID.
    #[error("invalid CID: {0}")]
    BadCid(cid::Error),
    /// A `Get` asked for more than one payload can carry.
    #[error("a chunk of {len} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
    ChunkTooLarge { len: u64 },
    /// A `Get` for a blob this node does not store.
    #[error("blob {cid} is not held here")]
    NotHeld { cid: Cid },
    /// A `Get` for bytes past the end of the blob.
    #[error("range {offset}+{len} is past the end of blob {cid} ({size_bytes} bytes)")]
    PastEnd {
        cid: Cid,
        offset: u64,
        len: u64,
        size_bytes: u64,
    },
    /// Reading the stored blob failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The `Have` reply could not be encoded.
    #[error(transparent)]
    Encode(serde_json::Error),
}

/// Answer a blob-protocol request from `store` (blocking file IO: at most
/// one chunk is read).
pub fn serve_request(store: &BlobStore, payload: &[u8]) -> Result<Bytes, ServeError> {
    let request: BlobRequest = serde_json::from_slice(payload).map_err(ServeError::BadRequest)?;
    match request {
        BlobRequest::Have { cid } => {
            let cid = parse_cid(&cid)?;
            let size_bytes = if store.contains(&cid) {
                store.size(&cid).ok()
            } else {
                None
            };
            let reply =
                serde_json::to_vec(&HaveReply { size_bytes }).map_err(ServeError::Encode)?;
            Ok(Bytes::from(reply))
        }
        BlobRequest::Get { cid, offset, len } => {
            let cid = parse_cid(&cid)?;
            if len > MAX_PAYLOAD_BYTES as u64 {
                return Err(ServeError::ChunkTooLarge { len });
            }
            read_range(store, &cid, offset, len).map(Bytes::from)
        }
    }
}

fn parse_cid(text: &str) -> Result<Cid, ServeError> {
    Cid::try_from(text).map_err(ServeError::BadCid)
}

/// `len` bytes of the stored blob `cid` from `offset`.
fn read_range(store: &BlobStore, cid: &Cid, offset: u64, len: u64) -> Result<Vec<u8>, ServeError> {
    debug_assert!(len <= MAX_PAYLOAD_BYTES as u64);
    let mut file =
        File::open(store.blob_path(cid)).map_err(|_| ServeError::NotHeld { cid: *cid })?;
    let size_bytes = file.metadata()?.len();
    if offset.checked_add(len).is_none_or(|end| end > size_bytes) {
        return Err(ServeError::PastEnd {
            cid: *cid,
            offset,
            len,
            size_bytes,
        });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::cid_of;

    fn store_with(data: &[u8]) -> (tempfile::TempDir, BlobStore, Cid) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("store")).unwrap();
        let cid = store.put(data).unwrap();
        (dir, store, cid)
    }

    fn request(request: &BlobRequest) -> Vec<u8> {
        serde_json::to_vec(request).unwrap()
    }

    #[test]
    fn answers_have_and_get() {
        let (_dir, store, cid) = store_with(b"0123456789");
        let have = serve_request(
            &store,
            &request(&BlobRequest::Have {
                cid: cid.to_string(),
            }),
        )
        .unwrap();
        let have: HaveReply = serde_json::from_slice(&have).unwrap();
        assert_eq!(have.size_bytes, Some(10));
        let chunk = serve_request(
            &store,
            &request(&BlobRequest::Get {
                cid: cid.to_string(),
                offset: 3,
                len: 4,
            }),
        )
        .unwrap();
        assert_eq!(&chunk[..], b"3456");
        let missing = cid_of(b"not stored");
        let have = serve_request(
            &store,
            &request(&BlobRequest::Have {
                cid: missing.to_string(),
            }),
        )
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<HaveReply>(&have).unwrap(),
            HaveReply { size_bytes: None }
        );
    }

    /// The refusals' texts are what peers see on the wire.
    #[test]
    fn refusals_keep_their_wire_text() {
        let (_dir, store, cid) = store_with(b"0123456789");
        let err = serve_request(&store, b"{").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid blob request: "),
            "{err}"
        );
        let err = serve_request(
            &store,
            &request(&BlobRequest::Have {
                cid: "not a cid".into(),
            }),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid CID: "), "{err}");
        let get = |cid: Cid, offset, len| {
            serve_request(
                &store,
                &request(&BlobRequest::Get {
                    cid: cid.to_string(),
                    offset,
                    len,
                }),
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            get(cid, 8, 4),
            format!("range 8+4 is past the end of blob {cid} (10 bytes)")
        );
        let missing = cid_of(b"not stored");
        assert_eq!(
            get(missing, 0, 1),
            format!("blob {missing} is not held here")
        );
        let over = MAX_PAYLOAD_BYTES as u64 + 1;
        assert_eq!(
            get(cid, 0, over),
            format!("a chunk of {over} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
        );
    }
}
