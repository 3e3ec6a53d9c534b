//! Tests of the blob store: round-trips, dedup, corruption detection, healing.

use std::io::Read;

use proptest::prelude::*;

use super::*;

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn files_under(dir: &Path) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            count += files_under(&path);
        } else {
            count += 1;
        }
    }
    count
}

fn flip_byte(path: &Path, index: usize, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[index] ^= mask;
    fs::write(path, bytes).unwrap();
}

fn stream_all(store: &BlobStore, cid: &Cid) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    store.open_blob(cid).unwrap().read_to_end(&mut out)?;
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn put_get_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_dir, store) = new_store();
        let cid = store.put(&bytes).unwrap();
        prop_assert_eq!(cid, cid_of(&bytes));
        prop_assert_eq!(&store.get(&cid).unwrap()[..], &bytes[..]);
        prop_assert_eq!(stream_all(&store, &cid).unwrap(), bytes.clone());
        prop_assert_eq!(store.size(&cid).unwrap(), bytes.len() as u64);
        prop_assert!(store.contains(&cid));
        // Streaming put names the same content the same way.
        prop_assert_eq!(store.put_reader(&bytes[..]).unwrap(), cid);
    }

    #[test]
    fn same_bytes_same_cid_one_file(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (dir, store) = new_store();
        let a = store.put(&bytes).unwrap();
        let b = store.put(&bytes).unwrap();
        let c = store.put_reader(&bytes[..]).unwrap();
        prop_assert_eq!(a, b);
        prop_assert_eq!(a, c);
        prop_assert_eq!(files_under(&dir.path().join("blobs")), 1);
        prop_assert_eq!(files_under(&dir.path().join("tmp")), 0);
        prop_assert_eq!(store.list().unwrap(), vec![a]);
    }

    #[test]
    fn any_flipped_byte_is_detected(
        bytes in proptest::collection::vec(any::<u8>(), 1..2048),
        index in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let i = index.index(bytes.len());
        // By `get`.
        let (_dir, store) = new_store();
        let cid = store.put(&bytes).unwrap();
        flip_byte(&store.blob_path(&cid), i, mask);
        let is_corrupt = matches!(store.get(&cid), Err(StoreError::Corrupt { .. }));
        prop_assert!(is_corrupt);
        prop_assert!(!store.contains(&cid), "a corrupt blob is quarantined");

        // By the streaming reader, on its final read.
        let (_dir2, store2) = new_store();
        let cid2 = store2.put(&bytes).unwrap();
        flip_byte(&store2.blob_path(&cid2), i, mask);
        let err = stream_all(&store2, &cid2).unwrap_err();
        let is_corrupt = matches!(StoreError::from_io_error(&err), Some(StoreError::Corrupt { .. }));
        prop_assert!(is_corrupt);
        prop_assert!(!store2.contains(&cid2));
    }
}

#[test]
fn corrupt_blob_is_quarantined_and_put_heals_it() {
    let (dir, store) = new_store();
    let content = b"the real content of a website file".to_vec();
    let cid = store.put(&content).unwrap();
    flip_byte(&store.blob_path(&cid), 3, 0x01);

    let err = store.get(&cid).unwrap_err();
    let quarantined = match &err {
        StoreError::Corrupt { cid: c, path } => {
            assert_eq!(c, &cid);
            path.clone()
        }
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert_eq!(
        quarantined,
        dir.path().join("quarantine").join(cid.to_string())
    );
    assert!(quarantined.is_file(), "the bad copy is kept for inspection");
    assert!(matches!(store.get(&cid), Err(StoreError::NotFound { .. })));
    assert!(err.to_string().contains("put the original content again"));

    // Putting the real content again heals the store.
    assert_eq!(store.put(&content).unwrap(), cid);
    assert_eq!(&store.get(&cid).unwrap()[..], &content[..]);
    store.verify(&cid).unwrap();
}

#[test]
fn verify_quarantines_a_corrupt_blob() {
    let (_dir, store) = new_store();
    let cid = store.put(b"verify me").unwrap();
    store.verify(&cid).unwrap();
    flip_byte(&store.blob_path(&cid), 0, 0x80);
    assert!(matches!(
        store.verify(&cid),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(!store.contains(&cid));
}

#[test]
fn a_truncated_blob_is_replaced_by_put() {
    let (_dir, store) = new_store();
    let content = vec![7u8; 10_000];
    let cid = store.put(&content).unwrap();
    fs::write(store.blob_path(&cid), &content[..100]).unwrap();
    // The size differs, so put knows the stored copy is bad and rewrites it.
    assert_eq!(store.put(&content).unwrap(), cid);
    assert_eq!(store.get(&cid).unwrap().len(), content.len());
}

#[test]
fn streaming_reader_keeps_failing_after_corruption() {
    let (_dir, store) = new_store();
    let cid = store.put(b"abcdef").unwrap();
    flip_byte(&store.blob_path(&cid), 5, 0x01);
    let mut reader = store.open_blob(&cid).unwrap();
    let mut out = Vec::new();
    assert!(reader.read_to_end(&mut out).is_err());
    let mut buf = [0u8; 4];
    assert!(
        reader.read(&mut buf).is_err(),
        "no clean EOF after a failed verification"
    );
}

#[test]
fn put_file_streams_a_file_and_missing_file_names_its_path() {
    let (dir, store) = new_store();
    let path = dir.path().join("input.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&path, &content).unwrap();
    let cid = store.put_file(&path).unwrap();
    assert_eq!(cid, cid_of(&content));
    assert_eq!(&store.get(&cid).unwrap()[..], &content[..]);

    let missing = dir.path().join("nope.wasm");
    let err = store.put_file(&missing).unwrap_err();
    assert!(err.to_string().contains("nope.wasm"), "{err}");
}

#[test]
fn missing_and_unsupported_cids_are_clear_errors() {
    let (_dir, store) = new_store();
    let absent = cid_of(b"never stored");
    assert!(matches!(
        store.get(&absent),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.size(&absent),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.contains(&absent));

    let dag_pb = Cid::new_v1(0x70, *absent.hash());
    assert!(matches!(
        store.get(&dag_pb),
        Err(StoreError::UnsupportedCid { .. })
    ));
}

#[test]
fn layout_and_reopen() {
    let (dir, store) = new_store();
    let cid = store.put(b"layout").unwrap();
    let name = cid.to_string();
    let expected = dir
        .path()
        .join("blobs")
        .join(&name[name.len() - 3..name.len() - 1])
        .join(&name);
    assert_eq!(store.blob_path(&cid), expected);
    assert!(expected.is_file());
    // A stale temp file from a crashed write is cleaned up on open.
    fs::write(dir.path().join("tmp").join("put-1-1"), b"half").unwrap();
    drop(store);
    let store = BlobStore::open(dir.path()).unwrap();
    assert_eq!(files_under(&dir.path().join("tmp")), 0);
    assert_eq!(store.list().unwrap(), vec![cid]);
}

#[test]
fn error_messages() {
    let cid = cid_of(b"hello world");
    insta::assert_snapshot!(
        StoreError::Corrupt { cid, path: PathBuf::from("/data/store/quarantine/x") }.to_string(),
        @"blob bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e failed verification: its bytes do not hash to its CID; the bad copy was moved to /data/store/quarantine/x — put the original content again (or fetch it from a peer) to heal the store"
    );
    insta::assert_snapshot!(
        StoreError::NotFound { cid }.to_string(),
        @"blob bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e is not in this node's store; it must be put (or fetched from a peer) first"
    );
}
