//! How content becomes a CID: CIDv1, codec raw, multihash sha2-256.

use cid::Cid;
use cid::multihash::Multihash;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Multicodec code of raw bytes.
pub const RAW_CODEC: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256_CODE: u64 = 0x12;

/// The CID of `bytes` as this store names it.
pub fn cid_of(bytes: &[u8]) -> Cid {
    let mut hasher = CidHasher::new();
    hasher.update(bytes);
    hasher.finish()
}

/// Incremental hashing, for content that is streamed rather than held.
#[derive(Clone, Default)]
pub(crate) struct CidHasher {
    sha: Sha256,
}

impl CidHasher {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
    }

    pub(crate) fn finish(self) -> Cid {
        let digest = self.sha.finalize();
        // A 32-byte digest always fits the 64-byte multihash of `Cid`.
        let hash = Multihash::<64>::wrap(SHA2_256_CODE, digest.as_slice())
            .expect("a sha2-256 digest fits a 64-byte multihash");
        Cid::new_v1(RAW_CODEC, hash)
    }
}

/// Refuse CIDs this store cannot hold or verify.
pub(crate) fn check_supported(cid: &Cid) -> Result<(), StoreError> {
    let supported = cid.version() == cid::Version::V1
        && cid.codec() == RAW_CODEC
        && cid.hash().code() == SHA2_256_CODE
        && cid.hash().size() == 32;
    if supported {
        Ok(())
    } else {
        Err(StoreError::UnsupportedCid { cid: *cid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cid_of_hello_world() {
        // Same value as `ipfs add --cid-version 1 --raw-leaves` of "hello world".
        assert_eq!(
            cid_of(b"hello world").to_string(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
    }

    #[test]
    fn streamed_hash_equals_whole_hash() {
        let mut h = CidHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), cid_of(b"hello world"));
    }
}
