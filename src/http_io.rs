//! The error body for requests the HTTP parser itself rejects.
//!
//! actix-http answers a request it cannot parse (raw invalid bytes in the request
//! line, conflicting `Content-Length` headers, a header block over its buffer)
//! from inside its HTTP/1 dispatcher, before any application code runs, with a
//! fixed empty response: `400 Bad Request` or `431 Request Header Fields Too
//! Large`, `content-length: 0`, `connection: close`. Everything else fleet-q
//! answers carries the JSON error body `{detail, error_type, timestamp, path}`.
//!
//! [`ErrorBodyIo`] wraps each connection's socket and rewrites exactly those two
//! fixed responses, as they are written, into the same status with the JSON body.
//! The match is on the dispatcher's literal bytes: a response the application
//! writes always has a body and a content type, so it never matches. Nothing else
//! is touched; reads pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The fixed heads actix-http writes for parser errors, and what each becomes.
const REWRITES: [(&[u8], &str, &str); 2] = [
    (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n",
        "400 Bad Request",
        "the request could not be parsed (malformed request line or headers, invalid bytes, or conflicting Content-Length headers)",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n",
        "431 Request Header Fields Too Large",
        "the request line or headers are too large",
    ),
];

/// The response that replaces a parser error: same status, the JSON error body.
pub fn error_response(status: &str, detail: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "detail": detail,
        "error_type": "validation_error",
        "timestamp": chrono::Utc::now(),
        // The request could not be read, so its path is unknown.
        "path": "",
    })
    .to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Finds a parser-error response in `buf`: `(start, end, replacement)`.
fn find_rewrite(buf: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    for (head, status, detail) in REWRITES {
        if let Some(start) = buf.windows(head.len()).position(|w| w == head) {
            let rest = &buf[start + head.len()..];
            let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
            return Some((
                start,
                start + head.len() + end,
                error_response(status, detail),
            ));
        }
    }
    None
}

/// A connection whose parser-error responses are rewritten (see the module docs).
pub struct ErrorBodyIo<T> {
    inner: T,
    /// Rewritten bytes still to be written to `inner`.
    pending: Vec<u8>,
}

impl<T> ErrorBodyIo<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        ErrorBodyIo {
            inner,
            pending: Vec::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> ErrorBodyIo<T> {
    /// Writes out what a rewrite left pending; ready once all of it is written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodyIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodyIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        match find_rewrite(buf) {
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
            Some((start, end, replacement)) => {
                // Take the whole buffer now; what the socket does not accept at once
                // is written by the next calls (and by flush and shutdown).
                this.pending.extend_from_slice(&buf[..start]);
                this.pending.extend_from_slice(&replacement);
                this.pending.extend_from_slice(&buf[end..]);
                let _ = this.drain(cx)?;
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parsers_fixed_responses_are_rewritten() {
        let ok = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 120\r\ncontent-type: application/json\r\n\r\n{}";
        assert!(
            find_rewrite(ok).is_none(),
            "application errors pass through"
        );
        let prior = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 30 Nov 2026 15:32:36 GMT\r\n\r\n";
        let mut buf = prior.to_vec();
        buf.extend_from_slice(bare);
        let (start, end, rep) = find_rewrite(&buf).unwrap();
        assert_eq!((start, end), (prior.len(), buf.len()));
        let text = String::from_utf8(rep).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "));
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error_type"], "validation_error");
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, text.split("\r\n\r\n").nth(1).unwrap().len());
    }
}
