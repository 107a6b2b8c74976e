//! HTTP header hygiene shared by the proxy hooks: hop-by-hop headers (RFC 9110 §7.6.1),
//! request framing checks, and request ids.

use http::header::HeaderName;
use pingora::http::RequestHeader;

/// `X-Request-Id`, read from requests and set on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(X_REQUEST_ID_STR);
/// The same name as text, for Pingora's `insert_header`, which copies a custom `HeaderName`
/// into fresh bytes before parsing it back (a `&'static str` it does not copy).
pub const X_REQUEST_ID_STR: &str = "x-request-id";

/// Hop-by-hop headers that are never forwarded. `Transfer-Encoding` is framing, handled by
/// whoever writes the message (Pingora's server downstream, `client` upstream), and
/// `Connection`/`Upgrade` are kept on upgrade requests so WebSockets still work.
const HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
];

/// Names `Connection` cannot make hop-by-hop.
const NEVER_HOP_BY_HOP: [HeaderName; 3] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::HOST,
];

/// A message's hop-by-hop names: inline, as a message has a handful at most (the common
/// case is `Connection` alone), so finding them allocates nothing.
pub(crate) type HopNames = smallvec::SmallVec<[HeaderName; 4]>;

fn connection_listed(headers: &http::HeaderMap, found: &mut HopNames) {
    for v in headers.get_all(http::header::CONNECTION) {
        connection_names(v.as_bytes(), found);
    }
}

/// The header names one `Connection` value lists (its options `close`, `keep-alive` and
/// `upgrade` are not names), added to `found`.
pub(crate) fn connection_names(value: &[u8], found: &mut HopNames) {
    let listed = value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && ![&b"close"[..], b"keep-alive", b"upgrade"]
                    .iter()
                    .any(|o| t.eq_ignore_ascii_case(o))
        })
        // Lower-cased by the parse; nothing is allocated for the common `keep-alive`.
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        // What frames or routes the message is never the hop's alone: an app listing its
        // own `Content-Length` would otherwise send its body unframed, read by the vendor
        // as further requests (smuggling past the limits), and a vendor its own.
        .filter(|n| !NEVER_HOP_BY_HOP.contains(n));
    found.extend(listed);
}

/// Whether `name` is hop-by-hop whatever `Connection` says (`Connection` itself aside).
pub(crate) fn always_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The hop-by-hop headers present in `headers`, found in one pass over its names (a message
/// has a handful): a lookup per hop-by-hop name would hash each of them, and most messages
/// carry none but `Connection`. The request writer skips what is found.
pub(crate) fn hop_by_hop(headers: &http::HeaderMap) -> HopNames {
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

/// Each of `names`' first value in `headers`, in `names`' order: what `headers.get(name)`
/// gives for each. A vendor's response carries a handful of headers, so one pass comparing
/// names costs a fraction of hashing every name looked for (the normaliser and the hints look
/// for a dozen names on a response, most of them absent); a large map is looked up by name.
pub fn first_values<'a, const N: usize>(
    headers: &'a http::HeaderMap,
    names: &[HeaderName; N],
) -> [Option<&'a http::HeaderValue>; N] {
    let mut found = [None; N];
    if headers.len() > 16 {
        for (slot, name) in found.iter_mut().zip(names) {
            *slot = headers.get(name);
        }
        return found;
    }
    for (name, value) in headers {
        if let Some(i) = names.iter().position(|n| n == name) {
            // A name's later values are not what `get` gives.
            if found[i].is_none() {
                found[i] = Some(value);
            }
        }
    }
    found
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
    fn first_values_agree_with_get_on_small_and_large_maps(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let names = [
            HeaderName::from_static("x-request-id"),
            http::header::RETRY_AFTER,
            HeaderName::from_static("cf-ray"),
            HeaderName::from_static("absent"),
        ];
        for pad in [0, 30] {
            let mut m = http::HeaderMap::new();
            m.append("cf-ray", http::HeaderValue::from_static("r1"));
            m.append("content-type", http::HeaderValue::from_static("a/b"));
            m.append("x-request-id", http::HeaderValue::from_static(""));
            m.append("x-request-id", http::HeaderValue::from_static("second"));
            m.append("cf-ray", http::HeaderValue::from_static("r2"));
            m.append("retry-after", http::HeaderValue::from_static("3"));
            for i in 0..pad {
                let name = HeaderName::from_bytes(format!("x-pad-{i}").as_bytes())?;
                m.append(name, http::HeaderValue::from_static("p"));
            }
            let by_get: Vec<_> = names.iter().map(|n| m.get(n)).collect();
            assert_eq!(first_values(&m, &names).to_vec(), by_get, "pad {pad}");
            assert_eq!(by_get[0].map(|v| v.as_bytes()), Some(&b""[..]));
        }
        Ok(())
    }
}
