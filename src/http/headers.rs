//! HTTP header hygiene shared by the proxy hooks: hop-by-hop headers (RFC 9110 §7.6.1),
//! request framing checks, and request ids.

use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

/// `X-Request-Id`, read from requests and set on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(X_REQUEST_ID_STR);
/// The same name as text, for Pingora's `insert_header`, which copies a custom `HeaderName`
/// into fresh bytes before parsing it back (a `&'static str` it does not copy).
pub const X_REQUEST_ID_STR: &str = "x-request-id";

/// Hop-by-hop headers that are never forwarded. `Transfer-Encoding` framing is owned by
/// Pingora, and `Connection`/`Upgrade` are kept on upgrade requests so WebSockets still work.
const HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
];

/// A message's hop-by-hop names: inline, as a message has a handful at most (the common
/// case is `Connection` alone), so finding them allocates nothing.
type HopNames = smallvec::SmallVec<[HeaderName; 4]>;

fn connection_listed(headers: &http::HeaderMap, found: &mut HopNames) {
    let listed = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !["close", "keep-alive", "upgrade"]
                    .iter()
                    .any(|o| t.eq_ignore_ascii_case(o))
        })
        // Lower-cased by the parse; nothing is allocated for the common `keep-alive`.
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    found.extend(listed);
}

/// The hop-by-hop headers present in `headers`, found in one pass over its names (a message
/// has a handful): a lookup per hop-by-hop name would hash each of them, and most messages
/// carry none but `Connection`. The caller removes only what is there: Pingora's removal also
/// rewrites its case-preserving name map, per name asked.
fn hop_by_hop(headers: &http::HeaderMap) -> HopNames {
    let mut found = HopNames::new();
    let (mut connection, mut upgrade) = (false, false);
    for name in headers.keys() {
        if name == http::header::CONNECTION {
            connection = true;
        } else if name == http::header::UPGRADE {
            upgrade = true;
        } else if HOP_BY_HOP.contains(name) {
            found.push(name.clone());
        }
    }
    if connection {
        connection_listed(headers, &mut found);
        if !upgrade {
            found.push(http::header::CONNECTION);
        }
    }
    found
}

/// Removes `name` from a request when it is there. Checked first: Pingora's removal also
/// rewrites its case-preserving name map, which is work wasted on an absent header.
pub fn remove(req: &mut RequestHeader, name: &HeaderName) {
    if req.headers.contains_key(name) {
        req.remove_header(name);
    }
}

/// Removes hop-by-hop headers from a request about to go upstream.
pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    for name in hop_by_hop(&req.headers) {
        req.remove_header(&name);
    }
}

/// The vendor's response header as it is forwarded to the app: the same status, reason
/// and headers in the same order, hop-by-hop headers left out. What the exchange reads of
/// the vendor's answer (hints, the normaliser) reads this copy too: a header the vendor
/// named in `Connection` was meant for the hop, not for the app nor for Switchboard.
///
/// A copy is needed anyway (Pingora keeps the one it parsed), and building it as a plain
/// `http::HeaderMap` costs about a third of cloning Pingora's header and removing from it:
/// its clone copies a second, case-keeping name map, and every removal and insert rewrites
/// both. What is given up is the vendor's letter case in header names: the dozen names
/// Pingora knows go out title-cased (`Content-Type`, `Date`, `Server`, `Set-Cookie`), all
/// others lower-case (`retry-after`, `x-ratelimit-remaining`), as HTTP/2 and Envoy send
/// them. Names are case-insensitive (RFC 9110 §5.1).
pub fn forwardable(resp: &ResponseHeader) -> ResponseHeader {
    let drop = hop_by_hop(&resp.headers);
    // Room for the `X-Request-Id` (and on an error `X-Switchboard-Error`) added later.
    let mut map = http::HeaderMap::with_capacity(resp.headers.len() + 2);
    for (name, value) in &resp.headers {
        if !drop.contains(name) {
            map.append(name.clone(), value.clone());
        }
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = resp.status;
    parts.version = resp.version;
    parts.headers = map;
    let mut out = ResponseHeader::from(parts);
    // Only a phrase other than the status's own is stored (and set is infallible then).
    if resp.get_reason_phrase() != resp.status.canonical_reason() {
        let _ = out.set_reason_phrase(resp.get_reason_phrase());
    }
    out
}

/// Whether raw request header bytes carry a `Content-Length` line. Pingora silently drops
/// `Content-Length` when `Transfer-Encoding` is also present; we reject such requests
/// instead (request smuggling), so we look at what was actually sent.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// Keeps a sane incoming `X-Request-Id`, else makes a new `sb-<ULID>`.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v)
            if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => {
            // Encoded into a stack buffer: `format!` costs more than the ULID itself.
            let mut buf = [0u8; ulid::ULID_LEN];
            let id = ulid::Ulid::new();
            let mut out = String::with_capacity(3 + ulid::ULID_LEN);
            out.push_str("sb-");
            out.push_str(id.array_to_str(&mut buf));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        assert!(request_id(Some(b"has space")).starts_with("sb-"));
        assert!(request_id(Some(b"")).starts_with("sb-"));
        assert!(request_id(None).starts_with("sb-"));
        assert_ne!(request_id(None), request_id(None));
    }

    #[test]
    fn raw_content_length_detection() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn hop_by_hop_removed() -> Result<(), Box<dyn std::error::Error>> {
        let mut req = RequestHeader::build("GET", b"/", None)?;
        req.insert_header("connection", "keep-alive, x-secret-hop")?;
        req.insert_header("x-secret-hop", "1")?;
        req.insert_header("keep-alive", "timeout=5")?;
        req.insert_header("te", "trailers")?;
        req.insert_header("authorization", "Bearer k")?;
        strip_request_hop_by_hop(&mut req);
        assert!(req.headers.get("x-secret-hop").is_none());
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("te").is_none());
        assert!(req.headers.get("authorization").is_some());
        Ok(())
    }

    #[test]
    fn forwardable_keeps_order_values_and_reason_without_hop_by_hop(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut resp = ResponseHeader::build(422, None)?;
        resp.set_reason_phrase(Some("Nope"))?;
        resp.append_header("Content-Type", "application/json")?;
        resp.append_header("Connection", "keep-alive, X-Hop")?;
        resp.append_header("Set-Cookie", "a=1")?;
        resp.append_header("X-Hop", "1")?;
        resp.append_header("Keep-Alive", "timeout=5")?;
        resp.append_header("X-RateLimit-Remaining", "0")?;
        resp.append_header("Set-Cookie", "b=2")?;
        let out = forwardable(&resp);
        assert_eq!(out.status.as_u16(), 422);
        assert_eq!(out.get_reason_phrase(), Some("Nope"));
        let names: Vec<&str> = out.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "set-cookie", "x-ratelimit-remaining"]
        );
        let cookies: Vec<_> = out.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        // The canonical phrase is not stored twice.
        let plain = forwardable(&ResponseHeader::build(200, None)?);
        assert_eq!(plain.get_reason_phrase(), Some("OK"));
        let mut wire = Vec::new();
        out.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire)?,
            "Content-Type: application/json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nx-ratelimit-remaining: 0\r\n"
        );
        Ok(())
    }

    #[test]
    fn forwardable_keeps_an_upgrade_and_the_version() -> Result<(), Box<dyn std::error::Error>> {
        let mut resp = ResponseHeader::build(101, None)?;
        resp.append_header("Connection", "Upgrade")?;
        resp.append_header("Upgrade", "websocket")?;
        resp.append_header("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")?;
        let out = forwardable(&resp);
        assert_eq!(out.status.as_u16(), 101);
        assert_eq!(
            out.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"Upgrade"[..])
        );
        assert_eq!(
            out.headers.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert!(out.headers.contains_key("sec-websocket-accept"));

        let mut old = ResponseHeader::build(200, None)?;
        old.set_version(http::Version::HTTP_10);
        old.append_header("Content-Length", "2")?;
        let out = forwardable(&old);
        assert_eq!(out.version, http::Version::HTTP_10);
        assert_eq!(
            out.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        Ok(())
    }
}
