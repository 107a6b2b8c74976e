//! Captured vendor responses as text files (`.http`): the golden fixture format, and what
//! `switchboard normalize FILE` reads when no `--status` is given.
//!
//! ```text
//! # source: where this response came from (leading `#` lines are comments)
//! HTTP/1.1 429 Too Many Requests
//! Content-Type: application/json
//! Retry-After: 60
//!
//! {"error":{"code":"RATE_LIMITED","message":"..."}}
//! ```
//!
//! Everything after the blank line is the body, byte for byte. Two directive headers are
//! removed before normalising: `X-Fixture-Gzip: 1` gzips the body and sets
//! `Content-Encoding: gzip` (so fixtures stay readable); `X-Fixture-Path: /p` is the request
//! path, for path-scoped profile rules.

use std::io::Write;

use http::{HeaderMap, HeaderName, HeaderValue};

/// One captured vendor response.
#[derive(Debug, Clone)]
pub struct Capture {
    /// HTTP status.
    pub status: u16,
    /// Response headers (directives removed).
    pub headers: HeaderMap,
    /// Body bytes as the vendor sent them (gzipped when the directive says so).
    pub body: Vec<u8>,
    /// Request path (`/` unless `X-Fixture-Path` says otherwise).
    pub path: String,
}

impl Capture {
    /// The capture as a whole vendor response (nothing cut).
    pub fn response(&self) -> super::VendorResponse<'_> {
        super::VendorResponse {
            status: self.status,
            headers: &self.headers,
            body: &self.body,
            truncated: false,
            path: &self.path,
        }
    }
}

/// Parses a capture; the error names the line that is wrong.
pub fn parse(raw: &[u8]) -> Result<Capture, String> {
    let mut rest = raw;
    let mut lines = Vec::new();
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end])
            .trim_end_matches('\r')
            .to_string();
        let at_end = end >= rest.len();
        rest = if at_end { &[] } else { &rest[end + 1..] };
        if line.starts_with('#') && lines.is_empty() {
            continue;
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
        if at_end {
            break;
        }
    }
    let first = lines
        .first()
        .ok_or("empty capture (expected a status line)")?;
    let status = first
        .split_whitespace()
        .nth(1)
        .filter(|_| first.starts_with("HTTP/"))
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| {
            format!(
                "invalid status line {first:?} (expected e.g. 'HTTP/1.1 429 Too Many Requests')"
            )
        })?;
    let mut headers = HeaderMap::new();
    let (mut gzip, mut path) = (false, "/".to_string());
    for l in &lines[1..] {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("invalid header line {l:?} (expected 'Name: value')"))?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "x-fixture-gzip" => gzip = true,
            "x-fixture-path" => path = v.to_string(),
            _ => {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("invalid header name {k:?}"))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("invalid value for header {k:?}"))?;
                headers.append(name, value);
            }
        }
    }
    let mut body = rest.to_vec();
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        body = enc
            .write_all(&body)
            .and_then(|()| enc.finish())
            .map_err(|e| format!("gzip: {e}"))?;
        headers.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
    }
    Ok(Capture {
        status,
        headers,
        body,
        path,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_headers_and_raw_body() {
        let c = parse(b"# src\nHTTP/1.1 429 Too Many\r\nRetry-After: 60\nX-Fixture-Path: /v1/x\n\n{\"a\":1}\n\nmore")
            .unwrap();
        assert_eq!(c.status, 429);
        assert_eq!(c.headers["retry-after"], "60");
        assert!(c.headers.get("x-fixture-path").is_none());
        assert_eq!(c.path, "/v1/x");
        assert_eq!(c.body, b"{\"a\":1}\n\nmore");
    }

    #[test]
    fn bad_captures_are_clear_errors() {
        for (raw, want) in [
            (&b""[..], "empty capture"),
            (&b"{\"error\":1}\n"[..], "invalid status line"),
            (&b"HTTP/1.1 999 X\n"[..], "invalid status line"),
            (
                &b"HTTP/1.1 400 Bad\nno colon\n\n"[..],
                "invalid header line",
            ),
        ] {
            let e = parse(raw).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
