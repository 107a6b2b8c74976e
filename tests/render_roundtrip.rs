//! Every shipped profile's `render` templates round-trip: what Switchboard writes as its own
//! error in a vendor's dialect (for apps on the vendor's SDK), the same profile reads back as
//! the same canonical code — so metrics, retries and the app's branching agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::SystemTime;

use switchboard::envelope::Code;
use switchboard::normalize::render::Values;
use switchboard::normalize::{normalize, Profile, VendorResponse};

/// The codes Switchboard answers with itself.
const OWN: [Code; 7] = [
    Code::RateLimited,
    Code::UpstreamUnavailable,
    Code::UpstreamTimeout,
    Code::OutcomeUnknown,
    Code::Overloaded,
    Code::PayloadTooLarge,
    Code::ValidationFailed,
];

#[test]
fn own_errors_rendered_in_a_vendor_dialect_read_back_as_themselves() {
    let dir = support::root().join("config/profiles");
    let mut checked = 0;
    for f in support::files_with_ext(&dir, "yaml") {
        let name = f.file_stem().unwrap().to_str().unwrap().to_string();
        let profile = Profile::load(&dir, &name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            !profile.render.is_empty(),
            "{name} ships no render templates"
        );
        for code in OWN {
            let t = profile.render.for_code(code).unwrap();
            let body = t.body(&Values {
                code,
                message: "Switchboard's own \"words\"",
                retry_after_s: Some(5),
                request_id: "sb-01TEST",
            });
            let status = t.status.unwrap_or_else(|| code.status(None));
            let mut headers = http::HeaderMap::new();
            headers.insert("content-type", t.default_content_type().parse().unwrap());
            headers.insert("retry-after", "5".parse().unwrap());
            let n = normalize(
                &profile,
                &name,
                "sb-01TEST",
                &VendorResponse {
                    status,
                    headers: &headers,
                    body: body.as_bytes(),
                    truncated: false,
                    path: "/v1/anything",
                },
                SystemTime::now(),
            );
            assert_eq!(
                n.envelope.error.code, code,
                "{name}: {code:?} rendered as {status} {body}"
            );
            // Read back whole, unescaped; a problem document's fixed title may lead it
            // (`Too Many Requests: …`), as the detector keeps a title with its detail.
            assert!(
                n.envelope
                    .error
                    .message
                    .ends_with("Switchboard's own \"words\""),
                "{name}: {body} read back as {:?}",
                n.envelope.error.message
            );
            checked += 1;
        }
    }
    assert!(checked >= 4 * OWN.len(), "{checked}");
}
