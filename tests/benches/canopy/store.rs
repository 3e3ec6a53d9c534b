//! Store throughput: put and verified get of 4 KiB and 64 MiB blobs in the
//! node's content-addressed [`BlobStore`], on the local disk.

use std::time::Instant;

use anyhow::{Result, ensure};
use canopy_node::store::BlobStore;
use serde_json::{Value, json};

/// Put then get `count` distinct blobs of `size_bytes`; figures in MB/s
/// (10^6 bytes) and operations/s. Every get is verified by the store (it
/// rehashes the bytes) and compared here.
pub fn measure(size_bytes: usize, count: usize) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let store = BlobStore::open(dir.path())?;
    // Distinct contents (so nothing dedups), made before the clock starts.
    let blobs: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut blob = vec![0u8; size_bytes];
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for chunk in blob.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = x.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            blob
        })
        .collect();
    let start = Instant::now();
    let mut cids = Vec::with_capacity(blobs.len());
    for blob in &blobs {
        cids.push(store.put(blob)?);
    }
    let put_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for (cid, blob) in cids.iter().zip(&blobs) {
        let got = store.get(cid)?;
        ensure!(
            got.len() == blob.len(),
            "store returned a blob of the wrong size"
        );
    }
    let get_s = start.elapsed().as_secs_f64();
    for (cid, blob) in cids.iter().zip(&blobs) {
        ensure!(
            store.get(cid)?[..] == blob[..],
            "store returned different bytes for {cid}"
        );
    }
    let total_mb = (size_bytes * count) as f64 / 1e6;
    Ok(json!({
        "size_bytes": size_bytes,
        "count": count,
        "put_mb_per_s": total_mb / put_s,
        "get_mb_per_s": total_mb / get_s,
        "put_ops_per_s": count as f64 / put_s,
        "get_ops_per_s": count as f64 / get_s,
    }))
}
