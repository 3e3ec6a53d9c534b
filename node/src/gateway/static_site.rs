//! Websites: static files served from the blob store, verified.
//!
//! A site is a map from a path relative to its route prefix (`index.html`,
//! `css/a.css`) to a stored blob. Responses carry `ETag: "<cid>"` (the CID is
//! the content, so it is a perfect validator), honour `If-None-Match`, and
//! use `Cache-Control: public, max-age=0, must-revalidate` so a deployment is
//! visible at once while unchanged files cost a 304.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;

use super::responses::{method_not_allowed, text};
use crate::body::{self, Body, BoxError};
use crate::store::{BlobReader, BlobStore, StoreError};

/// Files up to this size are read whole and verified before a byte is sent;
/// larger ones are streamed (and a corrupt one aborts the response).
pub const STREAM_THRESHOLD_BYTES: u64 = 8 * 1024 * 1024;
/// Chunk size of streamed files.
const STREAM_CHUNK_BYTES: usize = 64 * 1024;

const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

/// One file of a website.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticFile {
    pub cid: Cid,
    pub content_type: HeaderValue,
    pub size_bytes: u64,
}

/// A deployed website: relative path → stored file.
#[derive(Debug)]
pub struct StaticSite {
    files: BTreeMap<String, StaticFile>,
    store: Arc<BlobStore>,
}

impl StaticSite {
    /// A site from `files` (keys relative to the site dir, `/`-separated;
    /// a leading `/` is ignored), each naming a blob in `store` and its size.
    pub fn from_files(files: BTreeMap<String, (Cid, u64)>, store: Arc<BlobStore>) -> Self {
        let files = files
            .into_iter()
            .map(|(path, (cid, size_bytes))| {
                let path = path.trim_start_matches('/').to_string();
                let content_type = content_type_for(&path);
                (
                    path,
                    StaticFile {
                        cid,
                        content_type,
                        size_bytes,
                    },
                )
            })
            .collect();
        StaticSite { files, store }
    }

    /// The file at `path` (relative to the site), if any.
    pub fn file(&self, path: &str) -> Option<&StaticFile> {
        self.files.get(path)
    }

    /// Every file, in path order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &StaticFile)> {
        self.files.iter().map(|(p, f)| (p.as_str(), f))
    }

    /// Answer a request whose path below the route prefix is `rest`
    /// (`request_path` is the whole path, for redirects and messages).
    pub async fn serve(
        &self,
        method: &Method,
        headers: &HeaderMap,
        request_path: &str,
        query: Option<&str>,
        rest: &str,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("a website", method, &[Method::GET, Method::HEAD]);
        }
        let Some(decoded) = percent_decode(rest) else {
            return not_found(request_path);
        };
        let is_dir = decoded.is_empty() || decoded.ends_with('/');
        let key = if is_dir {
            format!("{decoded}index.html")
        } else {
            decoded.clone()
        };
        if let Some(file) = self.files.get(&key) {
            if is_dir && !request_path.ends_with('/') {
                return redirect_to_dir(request_path, query);
            }
            return self.serve_file(method, headers, file).await;
        }
        // `/docs/guide` where `guide/index.html` exists: the browser needs the
        // trailing slash to resolve the page's relative links.
        if !is_dir && self.files.contains_key(&format!("{decoded}/index.html")) {
            return redirect_to_dir(request_path, query);
        }
        not_found(request_path)
    }

    async fn serve_file(
        &self,
        method: &Method,
        headers: &HeaderMap,
        file: &StaticFile,
    ) -> Response<Body> {
        let etag = format!("\"{}\"", file.cid);
        let mut resp = if if_none_match(headers, &etag) {
            let mut resp = Response::new(body::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else if method == Method::HEAD {
            let mut resp = Response::new(body::empty());
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(file.size_bytes));
            resp
        } else if file.size_bytes <= STREAM_THRESHOLD_BYTES {
            match self.read_whole(file.cid).await {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    let mut resp = Response::new(body::full(bytes));
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                    resp
                }
                Err(resp) => return resp,
            }
        } else {
            match self.stream(file.cid).await {
                Ok((body, len)) => {
                    let mut resp = Response::new(body);
                    resp.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                    resp
                }
                Err(resp) => return resp,
            }
        };
        let h = resp.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, etag);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
        h.insert(header::CONTENT_TYPE, file.content_type.clone());
        resp
    }

    /// The whole file, verified; an error response if it cannot be served.
    #[allow(
        clippy::disallowed_methods,
        reason = "the simulator serves requests on a runtime of its own, outside the simulation (canopy_sim::workload), so file reads may use tokio's pool"
    )]
    async fn read_whole(&self, cid: Cid) -> Result<Bytes, Response<Body>> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.get(&cid)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(store_error_response(&e)),
            Err(join) => {
                tracing::error!(cid = %cid, error = %join, "gateway: reading a website file panicked");
                Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not read stored file\n".into(),
                ))
            }
        }
    }

    /// A body streaming the file through the verifying reader, and its length.
    ///
    /// Each chunk is read by its own short task on the blocking pool, and
    /// only when the connection wants it: a slow client holds a 64 KiB
    /// chunk or two and no thread, whatever the file's size.
    #[allow(
        clippy::disallowed_methods,
        reason = "the simulator serves requests on a runtime of its own, outside the simulation (canopy_sim::workload), so file reads may use tokio's pool"
    )]
    async fn stream(&self, cid: Cid) -> Result<(Body, u64), Response<Body>> {
        let store = self.store.clone();
        let opened = tokio::task::spawn_blocking(move || store.open_blob_shared(&cid)).await;
        let reader = match opened {
            Ok(Ok(reader)) => reader,
            Ok(Err(e)) => return Err(store_error_response(&e)),
            Err(_) => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not read stored file\n".into(),
                ));
            }
        };
        let size_bytes = reader.size_bytes();
        let chunks = futures::stream::unfold(
            Streaming::Reading {
                reader: Box::new(reader),
                held: None,
            },
            |state| async move { state.next().await },
        );
        let body = http_body_util::StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data)));
        Ok((BodyExt::boxed(body), size_bytes))
    }
}

/// Where a streamed file is.
enum Streaming {
    /// More to read. The last chunk read is `held` back until the next read
    /// succeeds: the read that reaches the end verifies the whole blob, and
    /// a client must never receive all `Content-Length` bytes of a corrupt
    /// file, or it would take them as complete.
    Reading {
        reader: Box<BlobReader<Arc<BlobStore>>>,
        held: Option<Bytes>,
    },
    Done,
}

impl Streaming {
    /// The next chunk to send and the state after it; `None` at the end.
    #[allow(
        clippy::disallowed_methods,
        reason = "the simulator serves requests on a runtime of its own, outside the simulation (canopy_sim::workload), so file reads may use tokio's pool"
    )]
    async fn next(self) -> Option<(Result<Bytes, BoxError>, Streaming)> {
        let Streaming::Reading {
            mut reader,
            mut held,
        } = self
        else {
            return None;
        };
        loop {
            let cid = *reader.cid();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
                let read = loop {
                    match reader.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                (reader, read.map(|n| Bytes::from(buf).slice(..n)))
            })
            .await;
            let (back, read) = match read {
                Ok(done) => done,
                Err(join) => {
                    let e = std::io::Error::other(format!("reading the file failed: {join}"));
                    return Some((Err(Box::new(e) as BoxError), Streaming::Done));
                }
            };
            reader = back;
            match read {
                // Verified to the end: the held-back chunk may go now.
                Ok(chunk) if chunk.is_empty() => {
                    return held.map(|last| (Ok(last), Streaming::Done));
                }
                Ok(chunk) => match held.replace(chunk) {
                    Some(previous) => {
                        return Some((Ok(previous), Streaming::Reading { reader, held }));
                    }
                    None => continue,
                },
                Err(e) => {
                    // Too late for a 500: failing the body aborts the
                    // response, so the client never sees it complete.
                    tracing::error!(cid = %cid, error = %e, "gateway: a streamed website file failed");
                    return Some((Err(Box::new(e) as BoxError), Streaming::Done));
                }
            }
        }
    }
}

fn store_error_response(err: &StoreError) -> Response<Body> {
    tracing::error!(error = %err, "gateway: cannot serve a website file");
    let message = match err {
        StoreError::Corrupt { .. } => "stored file failed verification\n",
        StoreError::NotFound { .. } => "stored file is missing from this node's store\n",
        _ => "could not read stored file\n",
    };
    text(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
}

fn not_found(request_path: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("no file at {request_path:?} in this website\n"),
    )
}

fn redirect_to_dir(request_path: &str, query: Option<&str>) -> Response<Body> {
    let location = match query {
        Some(q) => format!("{request_path}/?{q}"),
        None => format!("{request_path}/"),
    };
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The `Content-Type` of a file by its extension; text types are UTF-8.
pub fn content_type_for(path: &str) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let is_text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "image/svg+xml"
        );
    let value = if is_text {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Decode `%XX` escapes; `None` for a bad escape, invalid UTF-8 or a NUL.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    if decoded.contains('\0') {
        None
    } else {
        Some(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("css/a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type_for("img/logo.png"), "image/png");
        assert_eq!(
            content_type_for("blob.unknownext"),
            "application/octet-stream"
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(
            percent_decode("my%20file.html").as_deref(),
            Some("my file.html")
        );
        assert_eq!(
            percent_decode("plain/a.css").as_deref(),
            Some("plain/a.css")
        );
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("nul%00"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn etag_matching() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, "\"x\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"x\""),
        );
        assert!(if_none_match(&h, "\"x\""));
        assert!(!if_none_match(&h, "\"y\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, "\"y\""));
    }
}
