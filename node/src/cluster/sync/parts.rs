//! One sync message as several net payloads, and back.
//!
//! Automerge's sync protocol sends every change a peer lacks in a single
//! message, so the message for a fresh peer grows with the whole history of
//! the cluster state (a 1,000-file site adds ~50 KB per push). A net payload
//! is at most [`crate::net::MAX_PAYLOAD_BYTES`], so a message is sent as a
//! sequence of *parts*, each one request, in order: the sync core sends a
//! peer at most one request at a time, so the parts of one message arrive in
//! order and nothing interleaves with them.
//!
//! Each payload starts with one tag byte:
//!
//! ```text
//! 0 whole   the message in one payload (the common case)
//! 1 first   the first part of a longer message
//! 2 middle  a part after the first, more follow
//! 3 last    the final part: the message is complete
//! ```
//!
//! A sender that gives up on a message (a part was not delivered) starts its
//! next message with `first` or `whole`, which discards whatever the
//! receiver had gathered. The receiver holds at most `max_message_bytes` per
//! peer; a message larger than that is refused, not gathered.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

const WHOLE: u8 = 0;
const FIRST: u8 = 1;
const MIDDLE: u8 = 2;
const LAST: u8 = 3;

/// The tag byte in front of every part.
pub const TAG_BYTES: usize = 1;

/// Why a payload could not be taken as part of a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("an empty payload (every part starts with a tag byte)")]
    Empty,
    #[error("unknown part tag {0} (expected 0 to 3)")]
    UnknownTag(u8),
    #[error("a continuation part with no first part before it")]
    NoFirstPart,
    #[error(
        "a message of more than {max_bytes} bytes (limits.cluster.max_sync_message); \
         raise it on every node if the cluster state is really this large"
    )]
    TooLarge { max_bytes: usize },
}

/// Split `message` into payloads of at most `part_bytes` (tag included),
/// in the order they must be sent.
pub fn split(message: &[u8], part_bytes: usize) -> VecDeque<Bytes> {
    assert!(part_bytes > TAG_BYTES, "a part must carry data");
    let data_bytes = part_bytes - TAG_BYTES;
    if message.len() <= data_bytes {
        return VecDeque::from([tagged(WHOLE, message)]);
    }
    let chunks = message.chunks(data_bytes);
    let count = chunks.len();
    debug_assert!(count >= 2);
    chunks
        .enumerate()
        .map(|(i, chunk)| {
            let tag = match i {
                0 => FIRST,
                i if i + 1 == count => LAST,
                _ => MIDDLE,
            };
            tagged(tag, chunk)
        })
        .collect()
}

fn tagged(tag: u8, data: &[u8]) -> Bytes {
    let mut part = BytesMut::with_capacity(TAG_BYTES + data.len());
    part.put_u8(tag);
    part.put_slice(data);
    part.freeze()
}

/// The parts of one peer's message gathered so far.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// `Some` between a first part and its last part.
    gathered: Option<Vec<u8>>,
}

impl Reassembly {
    /// Take one payload: the whole message once its last part is in
    /// (`Some`), `None` while more parts are due. On an error, whatever was
    /// gathered is dropped.
    pub fn push(
        &mut self,
        payload: &[u8],
        max_message_bytes: usize,
    ) -> Result<Option<Vec<u8>>, PartError> {
        let result = self.take(payload, max_message_bytes);
        if result.is_err() {
            self.gathered = None;
        }
        result
    }

    fn take(
        &mut self,
        payload: &[u8],
        max_message_bytes: usize,
    ) -> Result<Option<Vec<u8>>, PartError> {
        let (&tag, data) = payload.split_first().ok_or(PartError::Empty)?;
        let too_large = PartError::TooLarge {
            max_bytes: max_message_bytes,
        };
        match tag {
            WHOLE | FIRST => {
                // A new message: the sender gave up on any earlier one.
                self.gathered = None;
                if data.len() > max_message_bytes {
                    return Err(too_large);
                }
                if tag == WHOLE {
                    return Ok(Some(data.to_vec()));
                }
                self.gathered = Some(data.to_vec());
                Ok(None)
            }
            MIDDLE | LAST => {
                let gathered = self.gathered.as_mut().ok_or(PartError::NoFirstPart)?;
                if gathered.len() + data.len() > max_message_bytes {
                    return Err(too_large);
                }
                gathered.extend_from_slice(data);
                if tag == LAST {
                    return Ok(self.gathered.take());
                }
                Ok(None)
            }
            other => Err(PartError::UnknownTag(other)),
        }
    }

    /// Bytes held for a message not yet complete.
    pub fn gathered_bytes(&self) -> usize {
        self.gathered.as_ref().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn a_small_message_is_one_whole_part() {
        let parts = split(b"hello", 16);
        assert_eq!(parts.len(), 1);
        assert_eq!(&parts[0][..], b"\0hello");
        let mut r = Reassembly::default();
        assert_eq!(r.push(&parts[0], MAX).unwrap().unwrap(), b"hello");
    }

    #[test]
    fn continuation_without_a_first_part_is_refused() {
        let mut r = Reassembly::default();
        assert_eq!(r.push(&[MIDDLE, 1, 2], MAX), Err(PartError::NoFirstPart));
        assert_eq!(r.push(&[LAST, 1, 2], MAX), Err(PartError::NoFirstPart));
        assert_eq!(r.push(&[], MAX), Err(PartError::Empty));
        assert_eq!(r.push(&[9], MAX), Err(PartError::UnknownTag(9)));
    }

    #[test]
    fn a_message_over_the_bound_is_dropped_not_gathered() {
        let parts = split(&[7u8; 100], 11);
        let mut r = Reassembly::default();
        let mut result = Ok(None);
        for part in &parts {
            result = r.push(part, 50);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(PartError::TooLarge { max_bytes: 50 }));
        assert_eq!(r.gathered_bytes(), 0);
        // The next message is taken as usual.
        assert_eq!(r.push(&split(b"ok", 11)[0], 50).unwrap().unwrap(), b"ok");
    }

    proptest! {
        /// Any message, split at any part size, comes back whole, and every
        /// part fits the part size.
        #[test]
        fn split_then_gather_round_trips(
            message in proptest::collection::vec(any::<u8>(), 0..2000),
            part_bytes in 2usize..300,
        ) {
            let parts = split(&message, part_bytes);
            prop_assert!(parts.iter().all(|p| p.len() <= part_bytes && !p.is_empty()));
            let mut r = Reassembly::default();
            let mut out = None;
            for (i, part) in parts.iter().enumerate() {
                prop_assert!(out.is_none(), "complete before part {}", i);
                out = r.push(part, MAX).unwrap();
            }
            prop_assert_eq!(out, Some(message));
            prop_assert_eq!(r.gathered_bytes(), 0);
        }

        /// A sender that abandons a message part-way and starts another:
        /// the receiver yields exactly the second message.
        #[test]
        fn an_abandoned_message_is_discarded(
            first in proptest::collection::vec(any::<u8>(), 10..500),
            second in proptest::collection::vec(any::<u8>(), 0..500),
            part_bytes in 2usize..50,
            sent in 1usize..10,
        ) {
            let abandoned = split(&first, part_bytes);
            let mut r = Reassembly::default();
            for part in abandoned.iter().take(sent.min(abandoned.len().saturating_sub(1))) {
                prop_assert_eq!(r.push(part, MAX).unwrap(), None);
            }
            let mut out = None;
            for part in split(&second, part_bytes) {
                out = r.push(&part, MAX).unwrap();
            }
            prop_assert_eq!(out, Some(second));
        }
    }
}
