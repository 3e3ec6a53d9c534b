//! Git's pkt-line framing and side-band multiplexing (see git's
//! `gitprotocol-common` and `gitprotocol-pack` documentation).
//!
//! A pkt-line is four hex digits giving the length of the whole line
//! (including those four digits) followed by the payload; `0000` is a flush.

use std::io::{self, BufRead};

/// The largest pkt-line, header included.
pub const MAX_PKT_LEN: usize = 65520;
/// The largest payload of one side-band-64k packet (band byte excluded).
const MAX_SIDEBAND_DATA: usize = MAX_PKT_LEN - 4 - 1;

/// Side-band channel carrying the protocol data (the report-status).
pub const BAND_DATA: u8 = 1;
/// Side-band channel carrying progress text shown as `remote: ...`.
pub const BAND_PROGRESS: u8 = 2;

/// Appends one pkt-line holding `payload` to `out`.
pub fn write(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(
        payload.len() + 4 <= MAX_PKT_LEN,
        "pkt-line payload too long"
    );
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a flush-pkt (`0000`).
pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Appends `data` on side-band `band`, split into as many packets as needed.
pub fn write_sideband(out: &mut Vec<u8>, band: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_SIDEBAND_DATA) {
        let mut payload = Vec::with_capacity(chunk.len() + 1);
        payload.push(band);
        payload.extend_from_slice(chunk);
        write(out, &payload);
    }
}

/// One pkt-line read from a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Flush,
    Data(Vec<u8>),
}

/// Reads one pkt-line; `Ok(None)` at a clean end of input.
pub fn read(input: &mut dyn BufRead) -> io::Result<Option<Packet>> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        let n = input.read(&mut header[filled..])?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(invalid("input ended inside a pkt-line length"))
            };
        }
        filled += n;
    }
    let len = std::str::from_utf8(&header)
        .ok()
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .ok_or_else(|| invalid("a pkt-line length is not four hex digits"))?;
    match len {
        0 => Ok(Some(Packet::Flush)),
        1..=3 => Err(invalid(
            "a pkt-line length below 4 (delim/response-end) is not allowed here",
        )),
        _ if len > MAX_PKT_LEN => Err(invalid("a pkt-line is longer than 65520 bytes")),
        _ => {
            let mut payload = vec![0u8; len - 4];
            input.read_exact(&mut payload)?;
            Ok(Some(Packet::Data(payload)))
        }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_like_git() {
        let mut out = Vec::new();
        write(&mut out, b"# service=git-receive-pack\n");
        flush(&mut out);
        assert_eq!(out, b"001f# service=git-receive-pack\n0000");
    }

    #[test]
    fn sideband_splits_large_data() {
        let data = vec![b'x'; MAX_SIDEBAND_DATA + 10];
        let mut out = Vec::new();
        write_sideband(&mut out, BAND_DATA, &data);
        let mut input = &out[..];
        let Some(Packet::Data(first)) = read(&mut input).unwrap() else {
            panic!("no packet")
        };
        assert_eq!(first.len(), MAX_PKT_LEN - 4);
        assert_eq!(first[0], BAND_DATA);
        let Some(Packet::Data(second)) = read(&mut input).unwrap() else {
            panic!("no packet")
        };
        assert_eq!(
            &second[..],
            &[&[BAND_DATA][..], &[b'x'; 10][..]].concat()[..]
        );
        assert_eq!(read(&mut input).unwrap(), None);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(read(&mut &b"zzzz"[..]).is_err());
        assert!(read(&mut &b"00"[..]).is_err());
        assert!(read(&mut &b"0009abc"[..]).is_err());
        assert!(read(&mut &b"0001"[..]).is_err());
        assert!(read(&mut &b"fff1"[..]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8)) {
            let mut out = Vec::new();
            for p in &payloads { write(&mut out, p); }
            flush(&mut out);
            let mut input = &out[..];
            for p in &payloads {
                prop_assert_eq!(read(&mut input).unwrap(), Some(Packet::Data(p.clone())));
            }
            prop_assert_eq!(read(&mut input).unwrap(), Some(Packet::Flush));
            prop_assert_eq!(read(&mut input).unwrap(), None);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = &bytes[..];
            while let Ok(Some(_)) = read(&mut input) {}
        }
    }
}
