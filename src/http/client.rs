//! Switchboard's own HTTP/1 client: one request and its response over one connection to
//! the vendor, on a Pingora [`Stream`] (TCP or TLS, dialled by Pingora's connector).
//!
//! Why not Pingora's client session: per request it clones the app's case-keeping request
//! header, rewrites it (every insert and removal touches both of its maps), turns it into
//! bytes, parses the response into a second case-keeping header, and the forwarded copy is
//! a third. Callgrind put that at about a fifth of a proxied request (`benches/RESULTS.md`,
//! "Issue 17, third pass"). Here the request header is written to the wire straight from
//! the app's, filtered on the way, and the response is parsed once, with `httparse` (as
//! Pingora does), into the plain header that is forwarded; the values are slices of the
//! read buffer, not copies.
//!
//! What it promises, as Pingora's did:
//! - framing by RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; `Transfer-Encoding`
//!   (chunked last) over `Content-Length`, which is then dropped; a `Content-Length` that
//!   is not one number (or a list of the same one) is an error; otherwise until the close;
//! - informational responses are read past (the final header is returned), except a `101`;
//! - a connection is reused only when both sides allow it (HTTP/1.1 without
//!   `Connection: close`, or `keep-alive` said), the body was read to its end and the vendor
//!   sent nothing beyond it;
//! - every read and write is bounded: by its timeout when one is set, and in size (a
//!   response header over [`MAX_HEADER_SIZE`] or [`MAX_HEADERS`] lines is an error; a body
//!   is handed on as it is read, at most [`READ_SIZE`] at a time).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::RequestBody;
use super::headers;

/// The most header lines a response may have (Pingora's limit).
pub const MAX_HEADERS: usize = 256;
/// The largest response header (status line and fields; each 1xx response on its own)
/// accepted. nginx refuses past 4–8 KiB by default; vendors' headers are well under 2 KiB.
/// Endless 1xx responses are bounded by the callers' one timer for the final header.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;
/// Room made for each read from the vendor.
pub const READ_SIZE: usize = 16 * 1024;
/// A request body at most this large is written with its header, in one write.
const COALESCE: usize = 16 * 1024;
/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4 * 1024;
/// The most trailer bytes read (and dropped) after a chunked body: Pingora's limit.
const MAX_TRAILERS: usize = 64 * 1024;

/// How the rest of the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No final header read yet.
    Head,
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Until the vendor closes the connection.
    Close,
    /// Switched protocols: raw bytes both ways from here.
    Upgraded,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk's data are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// As it comes (`Content-Length`, or nothing to send).
    Raw,
    /// Each write a chunk, and a last empty one at the end.
    Chunked,
}

/// One HTTP/1 connection to the vendor, in use by one request.
pub struct Conn {
    stream: Stream,
    /// Read and not yet handed on.
    buf: BytesMut,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    framing: Framing,
    sending: Sending,
    /// The request was `HEAD`: its response has no body whatever it says.
    head: bool,
    /// The request asked for a protocol upgrade (HTTP/1.1 with `Upgrade`).
    upgrade: bool,
    /// The request was HTTP/1.1 (an HTTP/1.0 one is never kept alive).
    http11: bool,
    /// The vendor's final header allows reuse.
    keepalive: bool,
    /// Trailer bytes read so far.
    trailers: usize,
}

/// An upstream error, as Pingora's client would have raised it.
fn fail<T>(etype: ErrorType, context: &'static str) -> Result<T> {
    Err(Error::explain(etype, context).into_up())
}

impl Conn {
    /// A connection ready for a request.
    pub fn new(stream: Stream) -> Self {
        Conn {
            stream,
            buf: BytesMut::new(),
            read_timeout: None,
            write_timeout: None,
            framing: Framing::Head,
            sending: Sending::Raw,
            head: false,
            upgrade: false,
            http11: true,
            keepalive: false,
            trailers: 0,
        }
    }

    /// Bounds each read from now on (`None`: unbounded, the caller times them).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Bounds each write from now on.
    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    /// Sends the request header for the app's `req`: `Host` is the vendor's, hop-by-hop
    /// headers, `Expect` and `drop` (Switchboard's own) are left out, and the names keep
    /// the app's letter case. A fully buffered body goes with it, with an exact
    /// `Content-Length`; a streamed one keeps the app's framing, and its first part is sent
    /// here (the rest through [`Conn::write_body`] and [`Conn::finish_body`]).
    pub async fn send_request(
        &mut self,
        req: &RequestHeader,
        host: &HeaderValue,
        drop: &[HeaderName],
        body: &RequestBody,
    ) -> Result<()> {
        // Pingora's server parser and `http::Uri` let none of these through; checked again
        // because a request line is where smuggling starts.
        if req
            .raw_path()
            .iter()
            .any(|b| matches!(b, 0 | b'\r' | b'\n' | b' '))
        {
            return fail(
                ErrorType::InternalError,
                "request target with a forbidden byte",
            );
        }
        let mut wire = Vec::with_capacity(256 + req.headers.len() * 48 + body.buffered.len());
        self.sending = encode_request(req, host, drop, body, &mut wire);
        self.head = req.method == http::Method::HEAD;
        self.http11 = req.version != Version::HTTP_10;
        self.upgrade = self.http11 && req.headers.contains_key(header::UPGRADE);
        if body.buffered.len() <= COALESCE {
            self.frame_into(&body.buffered, &mut wire);
            self.write(&wire).await
        } else {
            self.write(&wire).await?;
            self.write_body(&body.buffered).await
        }
    }

    /// Sends more of a streamed request body.
    pub async fn write_body(&mut self, data: &[u8]) -> Result<()> {
        match self.sending {
            Sending::Raw => self.write(data).await,
            Sending::Chunked => {
                let mut wire = Vec::with_capacity(data.len() + 20);
                self.frame_into(data, &mut wire);
                self.write(&wire).await
            }
        }
    }

    /// Ends a streamed request body (a chunked one with its last, empty chunk).
    pub async fn finish_body(&mut self) -> Result<()> {
        match self.sending {
            Sending::Raw => Ok(()),
            Sending::Chunked => self.write(b"0\r\n\r\n").await,
        }
    }

    fn frame_into(&self, data: &[u8], wire: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if self.sending == Sending::Chunked {
            let mut hex = [0u8; 16];
            wire.extend_from_slice(hex_len(data.len(), &mut hex));
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(data);
            wire.extend_from_slice(b"\r\n");
        } else {
            wire.extend_from_slice(data);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        timed(self.write_timeout, io, Op::Write).await
    }

    /// Reads more from the vendor into the buffer; the number of bytes (0: it closed).
    async fn fill(&mut self) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        timed(
            self.read_timeout,
            self.stream.read_buf(&mut self.buf),
            Op::Read,
        )
        .await
    }

    /// Reads past informational responses to the final header (or a `101`), and returns
    /// it as it is forwarded: the vendor's status, reason and headers in their order, without
    /// hop-by-hop headers (and without `Content-Length` when `Transfer-Encoding` is there).
    /// Names are lower-case but for the dozen Pingora writes title-cased.
    pub async fn read_header(&mut self) -> Result<ResponseHeader> {
        loop {
            if !self.buf.is_empty() {
                if let Some(resp) = self.parse_header()? {
                    if resp.status.is_informational()
                        && resp.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Ok(resp);
                }
            }
            if self.buf.len() >= MAX_HEADER_SIZE {
                return fail(ErrorType::InvalidHTTPHeader, "response header too large");
            }
            if self.fill().await? == 0 {
                return fail(
                    ErrorType::ConnectionClosed,
                    "the vendor closed the connection before a response header",
                );
            }
        }
    }

    /// One response header off the front of the buffer, when all of it is there.
    fn parse_header(&mut self) -> Result<Option<ResponseHeader>> {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        config.allow_obsolete_multiline_headers_in_responses(true);
        let len = match config.parse_response_with_uninit_headers(&mut resp, &self.buf, &mut slots)
        {
            // One read can take the buffer past the limit and complete the header there.
            Ok(httparse::Status::Complete(n)) if n > MAX_HEADER_SIZE => {
                return fail(ErrorType::InvalidHTTPHeader, "response header too large")
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return fail(ErrorType::InvalidHTTPHeader, "malformed response header"),
        };
        let Some(status) = resp.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
            return fail(ErrorType::InvalidHTTPHeader, "invalid response status");
        };
        let version = match resp.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let reason = resp
            .reason
            .filter(|r| Some(*r) != status.canonical_reason());
        let base = self.buf.as_ptr() as usize;
        // Where each name and value sits in the buffer, so the values can be slices of it
        // once it is frozen (the parse borrows it).
        let mut spans: smallvec::SmallVec<[(HeaderName, usize, usize); 24]> =
            smallvec::SmallVec::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                return fail(ErrorType::InvalidHTTPHeader, "invalid response header name");
            };
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
        let reason = reason.map(str::to_owned);
        let head = self.buf.split_to(len).freeze();
        // What the hop says of itself, read before the map is built: removing from an
        // `http::HeaderMap` reorders it, so the hop-by-hop headers are never put in.
        let mut hop = headers::HopNames::new();
        let (mut close, mut keep, mut upgrade) = (false, false, false);
        let mut te: Option<(usize, usize)> = None;
        let mut length = false;
        for (name, start, end) in &spans {
            if *name == header::CONNECTION {
                let v = &head[*start..*end];
                let (c, k) = connection_tokens(v);
                (close, keep) = (close | c, keep | k);
                headers::connection_names(v, &mut hop);
            } else if *name == header::UPGRADE {
                upgrade = true;
            } else if *name == header::TRANSFER_ENCODING {
                te = Some((*start, *end));
            } else if *name == header::CONTENT_LENGTH {
                length = true;
            }
        }
        let mut map = HeaderMap::with_capacity(spans.len() + 2);
        for (name, start, end) in spans {
            let skip = headers::always_hop_by_hop(&name)
                || (name == header::CONNECTION && !upgrade)
                // Transfer-Encoding frames the body; a Content-Length beside it is void.
                || (name == header::CONTENT_LENGTH && te.is_some())
                || hop.contains(&name);
            if !skip {
                map.append(
                    name,
                    pingora::http::header_value_from_raw(head.slice(start..end)),
                );
            }
        }
        // Transfer-Encoding with HTTP/1.0 (RFC 9112 §6.1), or beside a Content-Length (§6.3:
        // a sign of response splitting): the connection closes after this response.
        let suspect = te.is_some() && (version == Version::HTTP_10 || length);
        self.keepalive = (version == Version::HTTP_11 || keep) && !close && self.http11 && !suspect;
        let chunked = te.map(|(start, end)| is_chunked(&head[start..end]));
        self.framing = match status.as_u16() {
            101 if self.upgrade && version == Version::HTTP_11 => Framing::Upgraded,
            100..=199 => Framing::Head,
            204 | 304 => Framing::Done,
            _ if self.head => Framing::Done,
            _ => match chunked {
                Some(true) => Framing::Chunked(Chunk::Size),
                Some(false) => Framing::Close,
                None => match content_length(&map)? {
                    Some(0) => Framing::Done,
                    Some(n) => Framing::Length(n),
                    None => Framing::Close,
                },
            },
        };
        // A body that ends with the connection leaves nothing to reuse.
        if self.framing == Framing::Close {
            self.keepalive = false;
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        let mut out = ResponseHeader::from(parts);
        if let Some(r) = reason {
            // Only a phrase other than the status's own is stored.
            let _ = out.set_reason_phrase(Some(&r));
        }
        Ok(Some(out))
    }

    /// Whether the response body has been read to its end.
    pub fn body_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Whether the vendor switched protocols for an upgrade request.
    pub fn upgraded(&self) -> bool {
        self.framing == Framing::Upgraded
    }

    /// The next part of the response body; `None` once it has ended.
    pub async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Head | Framing::Upgraded => {
                    return fail(ErrorType::InternalError, "no response body to read")
                }
                Framing::Length(left) => {
                    let (out, left) = self
                        .take(
                            left,
                            "the vendor closed the connection before the body's end",
                        )
                        .await?;
                    self.framing = match left {
                        0 => Framing::Done,
                        _ => Framing::Length(left),
                    };
                    return Ok(Some(out));
                }
                Framing::Close => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::Chunked(state) => {
                    if let Some(data) = self.chunked(state).await? {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Up to `left` bytes of what is expected (reading when none are in hand), and how many
    /// are still expected after them; the vendor closing first is the error `closed`.
    async fn take(&mut self, left: u64, closed: &'static str) -> Result<(Bytes, u64)> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return fail(ErrorType::ConnectionClosed, closed);
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        Ok((self.buf.split_to(n).freeze(), left - n as u64))
    }

    /// One step of a chunked body: data when some is in hand, else `None` after moving on.
    async fn chunked(&mut self, state: Chunk) -> Result<Option<Bytes>> {
        match state {
            Chunk::Size => {
                let line = self.line().await?;
                // httparse reads a line without digits as 0, the last chunk.
                let digits = line.first().is_some_and(u8::is_ascii_hexdigit);
                let size = match httparse::parse_chunk_size(&line) {
                    Ok(httparse::Status::Complete((_, size))) if digits => size,
                    _ => return fail(ErrorType::InvalidHTTPHeader, "invalid chunk size"),
                };
                self.framing = Framing::Chunked(match size {
                    0 => Chunk::Trailers,
                    n => Chunk::Data(n),
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                let (out, left) = self
                    .take(left, "the vendor closed the connection inside a chunk")
                    .await?;
                self.framing = Framing::Chunked(match left {
                    0 => Chunk::DataEnd,
                    _ => Chunk::Data(left),
                });
                Ok(Some(out))
            }
            Chunk::DataEnd => {
                if !matches!(&self.line().await?[..], b"\r\n" | b"\n") {
                    return fail(
                        ErrorType::InvalidHTTPHeader,
                        "chunk data longer than its size",
                    );
                }
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                // Trailers are not forwarded (Pingora's server sends none either).
                let line = self.line().await?;
                self.trailers += line.len();
                if self.trailers > MAX_TRAILERS {
                    return fail(ErrorType::InvalidHTTPHeader, "trailers too large");
                }
                if matches!(&line[..], b"\r\n" | b"\n") {
                    self.framing = Framing::Done;
                }
                Ok(None)
            }
        }
    }

    /// The next line of a chunked body, its line ending included.
    async fn line(&mut self) -> Result<Bytes> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                return Ok(self.buf.split_to(i + 1).freeze());
            }
            if self.buf.len() > MAX_LINE {
                return fail(ErrorType::InvalidHTTPHeader, "chunk line too long");
            }
            if self.fill().await? == 0 {
                return fail(
                    ErrorType::ConnectionClosed,
                    "the vendor closed the connection inside a chunked body",
                );
            }
        }
    }

    /// After a switch of protocols: the vendor's next bytes, `None` once it closed.
    pub async fn read_raw(&mut self) -> Result<Option<Bytes>> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// After a switch of protocols: bytes to the vendor, as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write(bytes).await
    }

    /// The connection, when it can carry another request: both sides allowed it, the body
    /// was read to its end, and nothing came after it.
    pub fn into_reusable(self) -> Option<Stream> {
        // Bytes left in the buffer came after the body's end: the framing is not to be
        // trusted with another request.
        (self.keepalive && self.framing == Framing::Done && self.buf.is_empty())
            .then_some(self.stream)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
}

/// One read or write, within `limit` when set, its failure as Pingora's client names it.
async fn timed<T>(
    limit: Option<Duration>,
    io: impl std::future::Future<Output = std::io::Result<T>>,
    op: Op,
) -> Result<T> {
    let (timedout, failed, what) = match op {
        Op::Read => (
            ErrorType::ReadTimedout,
            ErrorType::ReadError,
            "reading from the vendor",
        ),
        Op::Write => (
            ErrorType::WriteTimedout,
            ErrorType::WriteError,
            "writing to the vendor",
        ),
    };
    let done = match limit {
        Some(t) => match pingora::prelude::timeout(t, io).await {
            Ok(r) => r,
            Err(_) => return fail(timedout, what),
        },
        None => io.await,
    };
    done.map_err(|e| Error::because(failed, what, e).into_up())
}

/// Whether one `Connection` value says `close`, and `keep-alive`.
fn connection_tokens(v: &[u8]) -> (bool, bool) {
    let (mut close, mut keep) = (false, false);
    for t in v.split(|b| *b == b',') {
        let t = t.trim_ascii();
        close |= t.eq_ignore_ascii_case(b"close");
        keep |= t.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep)
}

/// Whether a `Transfer-Encoding` value ends with `chunked`.
fn is_chunked(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The body length `Content-Length` gives: one number, or a list of the same one (RFC 9110
/// §8.6); anything else is an error, as framing cannot be guessed.
fn content_length(map: &HeaderMap) -> Result<Option<u64>> {
    let mut found: Option<u64> = None;
    for v in map.get_all(header::CONTENT_LENGTH) {
        for t in v.as_bytes().split(|b| *b == b',') {
            let t = t.trim_ascii();
            let n = std::str::from_utf8(t)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (n, found) {
                (None, _) => return fail(ErrorType::InvalidHTTPHeader, "invalid Content-Length"),
                (Some(n), Some(f)) if n != f => {
                    return fail(ErrorType::InvalidHTTPHeader, "conflicting Content-Length")
                }
                (Some(n), _) => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// `n` in lower-case hex, for a chunk-size line.
fn hex_len(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes the request header (request line, fields, blank line) into `wire`, and says how
/// its body is framed.
fn encode_request(
    req: &RequestHeader,
    host: &HeaderValue,
    drop: &[HeaderName],
    body: &RequestBody,
    wire: &mut Vec<u8>,
) -> Sending {
    // A buffered body's length is known: it is what the vendor is told.
    let exact = (!body.streaming && body.present).then_some(body.buffered.len());
    let hop = headers::hop_by_hop(&req.headers);
    wire.extend_from_slice(req.method.as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(req.raw_path());
    wire.extend_from_slice(match req.version {
        Version::HTTP_10 => b" HTTP/1.0\r\n",
        _ => b" HTTP/1.1\r\n",
    });
    let (mut host_sent, mut length_sent) = (false, false);
    let mut len_buf = itoa::Buffer::new();
    let mut field = |wire: &mut Vec<u8>, name: &HeaderName, case: &[u8], value: &[u8]| {
        if *name == header::HOST {
            if !host_sent {
                put(wire, b"Host", host.as_bytes());
                host_sent = true;
            }
            return;
        }
        // The body is here (or streams on): the vendor must not wait for a go-ahead.
        if *name == header::EXPECT {
            return;
        }
        if let Some(n) = exact {
            if *name == header::CONTENT_LENGTH {
                if !length_sent {
                    put(wire, case, len_buf.format(n).as_bytes());
                    length_sent = true;
                }
                return;
            }
            if *name == header::TRANSFER_ENCODING {
                return;
            }
        }
        if hop.contains(name) || drop.contains(name) {
            return;
        }
        put(wire, case, value);
    };
    if req.has_case() {
        for ((name, value), (case, _)) in req.headers.iter().zip(req.case_header_iter()) {
            // Pingora keeps the two maps in step (and asserts it when it writes them).
            debug_assert!(name
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(case.as_slice()));
            field(wire, name, case.as_slice(), value.as_bytes());
        }
    } else {
        for (name, value) in &req.headers {
            field(wire, name, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !host_sent {
        put(wire, b"Host", host.as_bytes());
    }
    if let Some(n) = exact.filter(|_| !length_sent) {
        put(
            wire,
            b"Content-Length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    wire.extend_from_slice(b"\r\n");
    let chunked = exact.is_none()
        && req
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .is_some_and(|v| is_chunked(v.as_bytes()));
    match chunked {
        true => Sending::Chunked,
        false => Sending::Raw,
    }
}

fn put(wire: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    wire.extend_from_slice(name);
    wire.extend_from_slice(b": ");
    wire.extend_from_slice(value);
    wire.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    fn get(method: &str) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/v1/calls?x=1", None).unwrap();
        req.append_header("Host", "app.local").unwrap();
        req
    }

    fn no_body() -> RequestBody {
        RequestBody {
            buffered: Bytes::new(),
            streaming: false,
            present: false,
        }
    }

    /// A vendor on a real socket that reads one request head, answers `response` and then
    /// closes (`close`) or waits for the client to go.
    async fn vendor(
        response: impl Into<Vec<u8>>,
        close: bool,
    ) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let response = response.into();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request head ended early");
                seen.extend_from_slice(&chunk[..n]);
            }
            s.write_all(&response).await.unwrap();
            if !close {
                while s.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
            }
            seen
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        (Conn::new(stream), task)
    }

    struct Outcome {
        header: ResponseHeader,
        body: Vec<u8>,
        reusable: bool,
    }

    async fn run(method: &str, response: impl Into<Vec<u8>>, close: bool) -> Result<Outcome> {
        let (mut conn, _task) = vendor(response, close).await;
        let host = HeaderValue::from_static("api.vendor.test");
        conn.send_request(&get(method), &host, &[], &no_body())
            .await?;
        let header = conn.read_header().await?;
        let mut body = Vec::new();
        while let Some(b) = conn.read_body().await? {
            body.extend_from_slice(&b);
        }
        assert!(conn.body_done());
        Ok(Outcome {
            header,
            body,
            reusable: conn.into_reusable().is_some(),
        })
    }

    /// The error a response read to its end fails with; a panic when it is accepted.
    async fn refused(response: Vec<u8>) -> ErrorType {
        match run("GET", response.clone(), false).await {
            Ok(_) => panic!("accepted {}", String::from_utf8_lossy(&response)),
            Err(e) => e.etype().clone(),
        }
    }

    /// `head` and then header (or trailer) lines until it is more than `past` bytes long.
    fn padded(head: &[u8], past: usize) -> Vec<u8> {
        let mut out = head.to_vec();
        while out.len() <= past {
            out.extend_from_slice(b"X-Pad: 0123456789abcdef0123456789abcdef\r\n");
        }
        out
    }

    fn names(h: &ResponseHeader) -> Vec<&str> {
        h.headers.keys().map(|k| k.as_str()).collect()
    }

    #[tokio::test]
    async fn a_length_delimited_body_is_read_whole_and_the_connection_kept() {
        let o = run("GET", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", false)
            .await
            .unwrap();
        assert_eq!(o.header.status, 200);
        assert_eq!(o.body, b"{\"ok\":true}");
        assert!(o.reusable);
        assert_eq!(names(&o.header), ["content-type", "content-length"]);
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_past_extensions_and_trailers() {
        let o = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(o.body, b"hello world");
        // Transfer-Encoding wins; the Content-Length beside it is not forwarded, and the
        // connection (which could be split) is not kept.
        assert!(!o.reusable);
        assert_eq!(names(&o.header), ["transfer-encoding"]);
        let plain = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        );
        let o = plain.await.unwrap();
        assert_eq!(o.body, b"ok");
        assert!(o.reusable);
    }

    #[tokio::test]
    async fn informational_responses_are_read_past_to_the_final_one() {
        let o = run(
            "GET",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
            false,
        )
        .await
        .unwrap();
        assert_eq!(o.header.status, 201);
        assert_eq!(o.body, b"{}");
        assert!(!o.header.headers.contains_key("link"));
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_they_say() {
        let o = run(
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert!(o.body.is_empty() && o.reusable);
        assert_eq!(o.header.headers["content-length"], "5");
        for r in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        ] {
            let o = run("GET", r, false).await.unwrap();
            assert!(o.body.is_empty() && o.reusable);
        }
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_the_connection_is_not_kept() {
        let o = run("GET", b"HTTP/1.1 200 OK\r\n\r\nall of it", true)
            .await
            .unwrap();
        assert_eq!(o.body, b"all of it");
        assert!(!o.reusable);
    }

    #[tokio::test]
    async fn reuse_follows_what_both_sides_said() {
        let close = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!close.await.unwrap().reusable);
        let old = run(
            "GET",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!old.await.unwrap().reusable);
        let old_kept = run(
            "GET",
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        let o = old_kept.await.unwrap();
        assert!(o.reusable);
        assert_eq!(o.header.version, Version::HTTP_10);
        // More than the body said: the framing is not to be trusted with another request.
        let over = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk",
            false,
        );
        let o = over.await.unwrap();
        assert_eq!(o.body, b"{}");
        assert!(!o.reusable);
    }

    #[tokio::test]
    async fn hop_by_hop_headers_stay_on_the_hop_and_the_reason_is_kept() {
        let o = run(
            "GET",
            b"HTTP/1.1 422 Nope\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              X-Hop: 1\r\nSet-Cookie: a=1\r\nRetry-After: 3\r\nSet-Cookie: b=2\r\n\
              X-Folded: one\r\n two\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await
        .unwrap();
        assert_eq!(o.header.get_reason_phrase(), Some("Nope"));
        assert_eq!(
            names(&o.header),
            ["set-cookie", "retry-after", "x-folded", "content-length"]
        );
        let cookies: Vec<_> = o.header.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(o.header.headers["x-folded"], "one two");
        assert!(o.reusable);
    }

    #[tokio::test]
    async fn broken_framing_is_an_error_not_a_guess() {
        let bad = [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"[..],
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (b"SMTP ready\r\n\r\n", ErrorType::InvalidHTTPHeader),
            // No digits is not the last chunk, and a chunk's data ends exactly at CRLF.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc  \r\n0\r\n\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n",
                ErrorType::InvalidHTTPHeader,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                ErrorType::ConnectionClosed,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                ErrorType::ConnectionClosed,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-", ErrorType::ConnectionClosed),
        ];
        for (response, etype) in bad {
            let Err(e) = run("GET", response, true).await else {
                panic!("accepted {}", String::from_utf8_lossy(response));
            };
            assert_eq!(e.etype(), &etype, "{}", String::from_utf8_lossy(response));
            assert_eq!(e.esource(), &pingora::ErrorSource::Upstream);
        }
        // The same length twice is one length (RFC 9110 §8.6).
        let o = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
            false,
        );
        assert_eq!(o.await.unwrap().body, b"{}");
    }

    #[tokio::test]
    async fn trailers_that_never_end_are_refused_at_their_limit() {
        let r = padded(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n",
            MAX_TRAILERS + 1024,
        );
        assert_eq!(refused(r).await, ErrorType::InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn connection_cannot_make_the_framing_hop_by_hop() {
        let o = run(
            "GET",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n{}",
            false,
        );
        // Read as close-delimited, the body would wait for a close that never comes.
        let o = tokio::time::timeout(Duration::from_secs(10), o)
            .await
            .expect("framed by its length")
            .unwrap();
        assert_eq!(o.body, b"{}");
        assert!(o.reusable);
        assert_eq!(o.header.headers["content-length"], "2");
        // An app listing its own framing in Connection still has its streamed body framed.
        for (framing, value) in [
            ("Content-Length", "70000"),
            ("Transfer-Encoding", "chunked"),
        ] {
            let mut req = RequestHeader::build("POST", b"/v1/calls", None).unwrap();
            req.append_header(framing, value).unwrap();
            req.append_header("Connection", framing).unwrap();
            let body = RequestBody {
                buffered: Bytes::from_static(b"x"),
                streaming: true,
                present: true,
            };
            let mut wire = Vec::new();
            let host = HeaderValue::from_static("v");
            let sending = encode_request(&req, &host, &[], &body, &mut wire);
            let wire = String::from_utf8(wire).unwrap();
            assert!(
                wire.contains(&format!("\r\n{framing}: {value}\r\n")),
                "{wire}"
            );
            assert_eq!(sending == Sending::Chunked, framing == "Transfer-Encoding");
        }
    }

    #[tokio::test]
    async fn a_complete_header_over_the_limit_is_refused() {
        // Written at once, so one read can take the buffer past the limit with the header
        // complete in it.
        let mut big = padded(b"HTTP/1.1 200 OK\r\n", MAX_HEADER_SIZE + 1024);
        big.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(big.len() < MAX_HEADER_SIZE * 2);
        assert_eq!(refused(big).await, ErrorType::InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn a_header_that_never_ends_is_refused_at_the_size_limit() {
        let huge = padded(b"HTTP/1.1 200 OK\r\n", MAX_HEADER_SIZE + READ_SIZE);
        assert_eq!(refused(huge).await, ErrorType::InvalidHTTPHeader);
    }

    #[tokio::test]
    async fn a_switch_of_protocols_hands_over_the_bytes_after_it() {
        let (mut conn, _task) = vendor(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframe",
            false,
        )
        .await;
        let mut req = get("GET");
        req.append_header("Connection", "Upgrade").unwrap();
        req.append_header("Upgrade", "websocket").unwrap();
        let host = HeaderValue::from_static("api.vendor.test");
        conn.send_request(&req, &host, &[], &no_body())
            .await
            .unwrap();
        let resp = conn.read_header().await.unwrap();
        assert_eq!(resp.status, 101);
        assert!(conn.upgraded());
        assert_eq!(resp.headers["upgrade"], "websocket");
        // `Connection: Upgrade` is what the app needs to see for the switch.
        assert_eq!(resp.headers["connection"], "Upgrade");
        assert_eq!(
            conn.read_raw().await.unwrap().as_deref(),
            Some(&b"frame"[..])
        );
        assert!(conn.into_reusable().is_none());
    }

    #[test]
    fn the_request_keeps_the_apps_case_and_order_with_the_vendors_host() {
        let mut req = RequestHeader::build("POST", b"/v1/messages?to=%2B1", None).unwrap();
        for (n, v) in [
            ("host", "app.local"),
            ("X-App-Trace", "A1"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Expect", "100-continue"),
            ("Transfer-Encoding", "chunked"),
            ("authorization", "Bearer k"),
            ("X-Switchboard-Deadline", "500"),
            ("TE", "trailers"),
            ("Keep-Alive", "timeout=5"),
        ] {
            req.append_header(n.to_string(), v).unwrap();
        }
        let body = RequestBody {
            buffered: Bytes::from_static(b"hello"),
            streaming: false,
            present: true,
        };
        let host = HeaderValue::from_static("api.vendor.test");
        let drop = [HeaderName::from_static("x-switchboard-deadline")];
        let mut wire = Vec::new();
        let sending = encode_request(&req, &host, &drop, &body, &mut wire);
        assert_eq!(sending, Sending::Raw);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "POST /v1/messages?to=%2B1 HTTP/1.1\r\nHost: api.vendor.test\r\nX-App-Trace: A1\r\n\
             authorization: Bearer k\r\nContent-Length: 5\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_streamed_chunked_body_goes_out_chunked_and_ends() {
        let (mut conn, task) = vendor(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true).await;
        let mut req = RequestHeader::build("POST", b"/up", None).unwrap();
        req.append_header("Transfer-Encoding", "chunked").unwrap();
        let body = RequestBody {
            buffered: Bytes::from(vec![b'a'; 20]),
            streaming: true,
            present: true,
        };
        let host = HeaderValue::from_static("v");
        conn.send_request(&req, &host, &[], &body).await.unwrap();
        conn.write_body(b"tail").await.unwrap();
        conn.finish_body().await.unwrap();
        assert_eq!(conn.read_header().await.unwrap().status, 200);
        let seen = String::from_utf8(task.await.unwrap()).unwrap();
        assert_eq!(
            seen,
            format!(
                "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: v\r\n\r\n14\r\n{}\r\n4\r\ntail\r\n0\r\n\r\n",
                "a".repeat(20)
            )
        );
    }
}
