//! The wire format of Canopy requests over libp2p request-response.
//!
//! One libp2p protocol (`/canopy/req/1`) carries every Canopy protocol's
//! requests as `(protocol name, payload)` frames, length-prefixed:
//!
//! - request:  `u8 name_len | name (UTF-8) | u32 payload_len (BE) | payload`
//! - response: `u8 status (0 ok, 1 error, 2 busy) | u32 len (BE) | payload or UTF-8 reason`
//!
//! "Busy" is the answer of the per-peer request limits
//! ([`peer_limits`](crate::net::peer_limits)): retry later, nothing is wrong
//! with the request; the requester sees [`NetError::Busy`](crate::net::NetError::Busy).
//!
//! Lengths are checked against [`MAX_PAYLOAD_BYTES`] before anything is
//! allocated, so a peer cannot make this node buffer more than the limit.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::net::MAX_PAYLOAD_BYTES;

/// The libp2p protocol that carries all Canopy requests.
pub const REQUEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/canopy/req/1");

/// The longest Canopy protocol name (`"state-sync/1"` is 12).
pub const MAX_PROTOCOL_NAME_BYTES: usize = 64;

/// The longest error reason carried in a response.
pub const MAX_REASON_BYTES: usize = 4 * 1024;

const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;
const STATUS_BUSY: u8 = 2;

/// A request on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    pub protocol: String,
    pub payload: Bytes,
}

/// A response on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireResponse {
    /// The answer's payload.
    Answer(Bytes),
    /// The responder's reason for refusing.
    Refused(String),
    /// The responder's per-peer limits turned the request away: retry later.
    Busy(String),
}

impl From<Result<Bytes, String>> for WireResponse {
    fn from(answer: Result<Bytes, String>) -> Self {
        match answer {
            Ok(payload) => WireResponse::Answer(payload),
            Err(reason) => WireResponse::Refused(reason),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!(
            "frame of {len} bytes is over the {limit}-byte limit"
        )));
    }
    Ok(len)
}

async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

fn frame_len(len: usize, limit: usize) -> io::Result<[u8; 4]> {
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    // `limit` is far below u32::MAX, so the cast cannot truncate.
    debug_assert!(limit <= u32::MAX as usize);
    Ok((len as u32).to_be_bytes())
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = WireRequest;
    type Response = WireResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut name_len = [0u8; 1];
        io.read_exact(&mut name_len).await?;
        let name_len = name_len[0] as usize;
        if name_len > MAX_PROTOCOL_NAME_BYTES {
            return Err(invalid(format!(
                "protocol name of {name_len} bytes is over the {MAX_PROTOCOL_NAME_BYTES}-byte limit"
            )));
        }
        let name = read_body(io, name_len).await?;
        let protocol = String::from_utf8(name)
            .map_err(|_| invalid("protocol name is not UTF-8".to_owned()))?;
        let len = read_len(io, MAX_PAYLOAD_BYTES).await?;
        let payload = Bytes::from(read_body(io, len).await?);
        Ok(WireRequest { protocol, payload })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut status = [0u8; 1];
        io.read_exact(&mut status).await?;
        match status[0] {
            STATUS_OK => {
                let len = read_len(io, MAX_PAYLOAD_BYTES).await?;
                Ok(WireResponse::Answer(Bytes::from(read_body(io, len).await?)))
            }
            STATUS_ERR | STATUS_BUSY => {
                let len = read_len(io, MAX_REASON_BYTES).await?;
                let reason = String::from_utf8_lossy(&read_body(io, len).await?).into_owned();
                Ok(if status[0] == STATUS_BUSY {
                    WireResponse::Busy(reason)
                } else {
                    WireResponse::Refused(reason)
                })
            }
            other => Err(invalid(format!("unknown response status {other}"))),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: WireRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let name = req.protocol.as_bytes();
        if name.len() > MAX_PROTOCOL_NAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "protocol name of {} bytes is over the {MAX_PROTOCOL_NAME_BYTES}-byte limit",
                    name.len()
                ),
            ));
        }
        let len = frame_len(req.payload.len(), MAX_PAYLOAD_BYTES)?;
        io.write_all(&[name.len() as u8]).await?;
        io.write_all(name).await?;
        io.write_all(&len).await?;
        io.write_all(&req.payload).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: WireResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let (status, reason) = match res {
            WireResponse::Answer(payload) => {
                let len = frame_len(payload.len(), MAX_PAYLOAD_BYTES)?;
                io.write_all(&[STATUS_OK]).await?;
                io.write_all(&len).await?;
                io.write_all(&payload).await?;
                return io.close().await;
            }
            WireResponse::Refused(reason) => (STATUS_ERR, reason),
            WireResponse::Busy(reason) => (STATUS_BUSY, reason),
        };
        // Cut an over-long reason at a char boundary rather than fail.
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason.as_bytes()[..end];
        let len = frame_len(reason.len(), MAX_REASON_BYTES)?;
        io.write_all(&[status]).await?;
        io.write_all(&len).await?;
        io.write_all(reason).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn request_round_trip() {
        let req = WireRequest {
            protocol: "state-sync/1".into(),
            payload: Bytes::from_static(b"hello"),
        };
        let mut buf = Cursor::new(Vec::new());
        block_on(FrameCodec.write_request(&REQUEST_PROTOCOL, &mut buf, req.clone())).unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        let back = block_on(FrameCodec.read_request(&REQUEST_PROTOCOL, &mut rd)).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_round_trip() {
        for res in [
            WireResponse::Answer(Bytes::from_static(b"ok")),
            WireResponse::Refused("no such blob".to_owned()),
            WireResponse::Busy("busy: too many requests open".to_owned()),
        ] {
            let mut buf = Cursor::new(Vec::new());
            block_on(FrameCodec.write_response(&REQUEST_PROTOCOL, &mut buf, res.clone())).unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            let back = block_on(FrameCodec.read_response(&REQUEST_PROTOCOL, &mut rd)).unwrap();
            assert_eq!(back, res);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut frame = vec![1u8, b'x'];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut rd = Cursor::new(frame);
        let err = block_on(FrameCodec.read_request(&REQUEST_PROTOCOL, &mut rd)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the"), "{err}");
    }
}
