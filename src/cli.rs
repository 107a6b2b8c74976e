//! Command-line helpers that are not servers: `normalize`.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::normalize::{self, capture, Profile, VendorResponse, MAX_ERROR_BODY};

/// Parses `Name: value` header arguments.
pub fn parse_headers(args: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for a in args {
        let (k, v) = a
            .split_once(':')
            .ok_or_else(|| format!("invalid --header {a:?} (expected 'Name: value')"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid header value {v:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// `switchboard normalize`: the response an app would get for this vendor response. With a
/// `status`, `file` is the body and `header_args` the headers; without, `file` is a capture
/// ([`crate::normalize::capture`]) and `header_args` are added to its headers.
pub fn normalize(
    vendor: &str,
    status: Option<u16>,
    header_args: &[String],
    path: &str,
    profiles: &Path,
    file: Option<&Path>,
) -> Result<String, String> {
    if let Some(s) = status.filter(|s| !(100..=599).contains(s)) {
        return Err(format!("invalid --status {s}"));
    }
    let profile = Profile::load(profiles, vendor).map_err(|problems| {
        let lines: Vec<String> = problems
            .into_iter()
            .map(|(p, m)| format!("  {p}: {m}"))
            .collect();
        format!(
            "profile {vendor:?} in {}:\n{}",
            profiles.display(),
            lines.join("\n")
        )
    })?;
    let mut headers = parse_headers(header_args)?;
    let mut body = Vec::new();
    // A capture holds headers too; read a little more than the body cap for them.
    let limit = MAX_ERROR_BODY as u64 + if status.is_some() { 1 } else { 64 * 1024 };
    match file {
        None => {}
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut body)
                .map_err(|e| format!("stdin: {e}"))?;
        }
        Some(p) => {
            std::fs::File::open(p)
                .and_then(|f| f.take(limit).read_to_end(&mut body))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let mut path = path.to_string();
    let status = match status {
        Some(s) => s,
        None => {
            if file.is_none() {
                return Err("give --status CODE, or a captured response FILE".into());
            }
            let c = capture::parse(&body).map_err(|e| format!("capture: {e}"))?;
            for (k, v) in &c.headers {
                headers.append(k, v.clone());
            }
            if path == "/" {
                path = c.path;
            }
            body = c.body;
            c.status
        }
    };
    let truncated = body.len() > MAX_ERROR_BODY;
    body.truncate(MAX_ERROR_BODY);
    let resp = VendorResponse {
        status,
        headers: &headers,
        body: &body,
        truncated,
        path: &path,
    };
    let now = SystemTime::now();
    let Some(normalized) = normalize::answer(&profile, vendor, "sb-normalize", &resp, now) else {
        return Ok(format!(
            "HTTP {status}: not an error for profile {vendor:?}; passed through untouched\n"
        ));
    };
    let env = &normalized.envelope;
    let status_line = http::StatusCode::from_u16(env.status())
        .map(|s| {
            format!(
                "HTTP/1.1 {} {}",
                s.as_u16(),
                s.canonical_reason().unwrap_or("")
            )
        })
        .unwrap_or_else(|_| format!("HTTP/1.1 {}", env.status()));
    let mut out = format!(
        "{}\ncontent-type: application/json\n",
        status_line.trim_end()
    );
    for (k, v) in env.headers() {
        out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
    }
    let json = serde_json::to_string_pretty(env).map_err(|e| e.to_string())?;
    out.push('\n');
    out.push_str(&json);
    out.push('\n');
    Ok(out)
}
