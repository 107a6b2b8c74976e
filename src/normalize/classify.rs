//! The generic mapping from (vendor status, vendor code, message) to a canonical code, used
//! when no profile rule or code entry matched.
//!
//! The status decides the family; words in the vendor's code and message refine it where a
//! status is ambiguous (400/403/422/429/502). Words are matched at word starts after
//! splitting `snake_case`, `kebab-case` and `camelCase`, so `INSUFFICIENT_BALANCE`,
//! `insufficientBalance` and "Insufficient balance" all read the same.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use crate::envelope::Code;

/// Keyword families, most specific first. Each phrase matches at a word start.
const FAMILIES: &[(Code, &[&str])] = &[
    (
        Code::TooManyAttempts,
        &[
            "max attempts",
            "maximum attempts",
            "too many attempts",
            "too many check attempts",
            "attempts exceeded",
            "attempts reached",
            "attempt limit",
            "verification attempts",
            "check attempts",
            "too many times",
        ],
    ),
    (
        Code::ConsentRequired,
        &[
            "consent",
            "opt out",
            "opted out",
            "optout",
            "unsubscribed",
            "not verified",
            "not a verified",
            "unverified",
            "do not call",
            "dnc",
            "ndnc",
            "dnd",
            "compliance",
            "regulations",
        ],
    ),
    (
        Code::InsufficientCredits,
        &[
            "insufficient funds",
            "insufficient balance",
            "insufficient credit",
            "insufficient quota",
            "insufficient account balance",
            "not enough funds",
            "not enough credit",
            "balance",
            "credit",
            "billing",
            "funds",
            "top up",
            "payment",
            "exceeded your current quota",
        ],
    ),
    (
        Code::AuthenticationFailed,
        &[
            "unauthorized",
            "unauthorised",
            "unauthenticated",
            "authentication",
            "api key",
            "apikey",
            "invalid token",
            "expired token",
            "token expired",
            "invalid credentials",
            "access token",
            "security token",
            "client token",
            "unrecognized client",
            "application key",
            "app key",
            "invalid signature",
        ],
    ),
    (
        Code::PermissionDenied,
        &[
            "forbidden",
            "permission",
            "access denied",
            "not authorized to",
            "insufficient scope",
            "insufficient privileges",
            "not enabled",
        ],
    ),
    (
        Code::VerificationFailed,
        &[
            "verification code",
            "verification failed",
            "invalid code",
            "wrong code",
            "incorrect code",
            "otp",
        ],
    ),
    (
        Code::NotFound,
        &[
            "not found",
            "does not exist",
            "not exist",
            "no such",
            "cannot find",
            "could not find",
            "unable to find",
            "unknown resource",
        ],
    ),
    (
        Code::Conflict,
        &[
            "already exists",
            "already in use",
            "already taken",
            "duplicate",
            "conflict",
        ],
    ),
    (
        Code::RateLimited,
        &[
            "rate limit",
            "ratelimit",
            "too many requests",
            "throttl",
            "slow down",
        ],
    ),
    (
        Code::PayloadTooLarge,
        &[
            "too large",
            "too big",
            "entity too large",
            "exceeds the maximum size",
        ],
    ),
    (
        Code::DeliveryFailed,
        &["delivery failed", "undeliverable", "carrier", "delivery"],
    ),
    (Code::UpstreamTimeout, &["timeout", "timed out", "time out"]),
    (
        Code::UpstreamUnavailable,
        &[
            "unavailable",
            "maintenance",
            "unreachable",
            "connection refused",
            "overloaded",
            "bad gateway",
        ],
    ),
    (
        Code::ValidationFailed,
        &[
            "invalid",
            "required",
            "missing",
            "must be",
            "not allowed",
            "malformed",
            "validation",
            "bad request",
            "format",
        ],
    ),
];

/// Lower-cases and splits identifiers into words: `maxAttempts_EXCEEDED` -> `max attempts exceeded`.
pub fn words(s: &str) -> String {
    if s.is_ascii() {
        return ascii_words(s.as_bytes());
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower {
                out.push(' ');
            }
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
            out.extend(c.to_lowercase());
        } else {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            prev_lower = false;
        }
    }
    out
}

/// [`words`] for ASCII text (nearly every vendor code and message), byte by byte.
fn ascii_words(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut prev_lower = false;
    for &c in s {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower {
                out.push(b' ');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if out.last() != Some(&b' ') {
                out.push(b' ');
            }
            prev_lower = false;
        }
    }
    // Only ASCII bytes were pushed.
    String::from_utf8(out).unwrap_or_default()
}

const _: () = assert!(FAMILIES.len() <= 32, "family masks are u32");

/// All family phrases in one automaton: one pass over a text finds every family it names,
/// where a phrase-by-phrase search cost several microseconds per error.
static MATCHER: LazyLock<Option<(AhoCorasick, Vec<usize>)>> = LazyLock::new(|| {
    let mut phrases = Vec::new();
    let mut family_of = Vec::new();
    for (i, (_, list)) in FAMILIES.iter().enumerate() {
        for p in *list {
            phrases.push(*p);
            family_of.push(i);
        }
    }
    AhoCorasick::new(&phrases).ok().map(|ac| (ac, family_of))
});

/// Which families (bit = index in [`FAMILIES`]) have a phrase starting at a word start.
fn found(text: &str) -> u32 {
    let Some((ac, family_of)) = MATCHER.as_ref() else {
        return 0;
    };
    let bytes = text.as_bytes();
    let mut mask = 0u32;
    for m in ac.find_overlapping_iter(text) {
        if m.start() == 0 || bytes[m.start() - 1] == b' ' {
            mask |= 1 << family_of[m.pattern().as_usize()];
        }
    }
    mask
}

/// Whether `phrase` occurs in `text` starting at a word boundary.
#[cfg(test)]
fn has(text: &str, phrase: &str) -> bool {
    FAMILIES
        .iter()
        .position(|(_, list)| list.contains(&phrase))
        .is_some_and(|i| found(text) & (1 << i) != 0)
}

/// The first keyword family named in a text (see [`found`]), among `allowed`.
fn family(mask: u32, allowed: &[Code]) -> Option<Code> {
    FAMILIES
        .iter()
        .enumerate()
        .find(|(i, (c, _))| mask & (1 << i) != 0 && allowed.contains(c))
        .map(|(_, (c, _))| *c)
}

const ALL_CLIENT: [Code; 12] = [
    Code::TooManyAttempts,
    Code::ConsentRequired,
    Code::InsufficientCredits,
    Code::AuthenticationFailed,
    Code::PermissionDenied,
    Code::VerificationFailed,
    Code::NotFound,
    Code::Conflict,
    Code::RateLimited,
    Code::PayloadTooLarge,
    Code::DeliveryFailed,
    Code::ValidationFailed,
];

/// The keyword families named in the vendor's code and in its message.
#[derive(Clone, Copy)]
struct Found {
    code: u32,
    message: u32,
}

impl Found {
    /// The family to use among `allowed`. The vendor's code speaks first, but a code that
    /// only says "invalid" (validation) yields to a message that names something more
    /// specific ("API key not valid", "already in use").
    fn pick(self, allowed: &[Code]) -> Option<Code> {
        match family(self.code, allowed) {
            Some(Code::ValidationFailed) | None => family(self.message, allowed)
                .filter(|c| *c != Code::ValidationFailed)
                .or_else(|| family(self.code, allowed))
                .or_else(|| family(self.message, allowed)),
            specific => specific,
        }
    }
}

/// The canonical code for a vendor error nothing more specific matched.
pub fn canonical(status: u16, vendor_code: Option<&str>, message: Option<&str>) -> Code {
    let named = Found {
        code: vendor_code.map(|c| found(&words(c))).unwrap_or(0),
        message: message.map(|m| found(&words(m))).unwrap_or(0),
    };
    let pick = |allowed: &[Code]| named.pick(allowed);
    // What the vendor says beats a client status it misuses: exhausted verification
    // attempts and a blocked (opted-out, unverified, do-not-call) recipient are those
    // whatever 4xx carries them.
    if (400..500).contains(&status) {
        if let Some(c) = pick(&[Code::TooManyAttempts, Code::ConsentRequired]) {
            return c;
        }
    }
    match status {
        // A 401 that names credit or permission is about the account, not the key.
        401 => pick(&[Code::InsufficientCredits, Code::PermissionDenied])
            .unwrap_or(Code::AuthenticationFailed),
        402 => Code::InsufficientCredits,
        404 | 410 => Code::NotFound,
        408 | 504 => Code::UpstreamTimeout,
        409 => Code::Conflict,
        413 => Code::PayloadTooLarge,
        503 => Code::UpstreamUnavailable,
        403 => pick(&[
            Code::ConsentRequired,
            Code::InsufficientCredits,
            Code::AuthenticationFailed,
            Code::RateLimited,
        ])
        .unwrap_or(Code::PermissionDenied),
        // "Rate limit reached … add a payment method to raise it" is a rate limit: naming
        // the limit beats naming money, unless the vendor's code says credit.
        429 => family(named.code, &[Code::InsufficientCredits, Code::RateLimited])
            .or_else(|| family(named.message, &[Code::RateLimited]))
            .or_else(|| family(named.message, &[Code::InsufficientCredits]))
            .unwrap_or(Code::RateLimited),
        502 => pick(&[Code::DeliveryFailed]).unwrap_or(Code::UpstreamUnavailable),
        500..=599 => pick(&[
            Code::DeliveryFailed,
            Code::UpstreamTimeout,
            Code::UpstreamUnavailable,
        ])
        .unwrap_or(Code::InternalError),
        400 | 422 => pick(&ALL_CLIENT).unwrap_or(Code::ValidationFailed),
        _ => pick(&ALL_CLIENT).unwrap_or(Code::UnknownError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fast_path_agrees_with_the_general_one() {
        for t in [
            "MAX_ATTEMPTS_EXCEEDED",
            "insufficientBalance",
            "Rate-Limited!",
            "",
            " a  b ",
            "x9Y",
            "API key",
        ] {
            assert_eq!(
                ascii_words(t.as_bytes()),
                words(&format!("{t}é")).trim_end_matches('é').to_string(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn words_split_identifiers() {
        assert_eq!(
            words("MAX_ATTEMPTS_EXCEEDED").trim(),
            "max attempts exceeded"
        );
        assert_eq!(words("insufficientBalance").trim(), "insufficient balance");
        assert_eq!(words("Rate-Limited!").trim(), "rate limited");
    }

    #[test]
    fn status_families_and_refinements() {
        let cases: &[(u16, Option<&str>, Option<&str>, Code)] = &[
            (401, Some("anything"), None, Code::AuthenticationFailed),
            (
                429,
                Some("MAX_ATTEMPTS_EXCEEDED"),
                None,
                Code::TooManyAttempts,
            ),
            (
                429,
                Some("insufficient_quota"),
                None,
                Code::InsufficientCredits,
            ),
            (429, None, Some("slow down"), Code::RateLimited),
            (502, Some("DELIVERY_FAILED"), None, Code::DeliveryFailed),
            (502, None, Some("Bad Gateway"), Code::UpstreamUnavailable),
            (
                400,
                None,
                Some("Attempt to send to unsubscribed recipient"),
                Code::ConsentRequired,
            ),
            (
                400,
                Some("validation_error"),
                Some("Agent name is already in use"),
                Code::Conflict,
            ),
            (
                400,
                Some("INVALID_ARGUMENT"),
                Some("API key not valid"),
                Code::AuthenticationFailed,
            ),
            (
                400,
                Some("INVALID_ARGUMENT"),
                Some("name: too short"),
                Code::ValidationFailed,
            ),
            (
                400,
                None,
                Some("Agent name is already in use"),
                Code::Conflict,
            ),
            (
                422,
                None,
                Some("Invalid verification code"),
                Code::VerificationFailed,
            ),
            (
                403,
                None,
                Some("Number is unverified"),
                Code::ConsentRequired,
            ),
            (403, None, None, Code::PermissionDenied),
            (418, None, None, Code::UnknownError),
            (524, None, Some("A timeout occurred"), Code::UpstreamTimeout),
            (
                422,
                None,
                Some("The sender was not allowed"),
                Code::ValidationFailed,
            ),
            (400, None, None, Code::ValidationFailed),
            // What the vendor says beats a status it misuses.
            (
                401,
                None,
                Some("permissions denied"),
                Code::PermissionDenied,
            ),
            (
                401,
                Some("quota_exceeded"),
                Some("Insufficient credits"),
                Code::InsufficientCredits,
            ),
            (
                404,
                None,
                Some("The number has opted out"),
                Code::ConsentRequired,
            ),
            (
                410,
                None,
                Some("An incorrect code has been provided too many times"),
                Code::TooManyAttempts,
            ),
            (
                400,
                None,
                Some("Account not authorized to call +54…"),
                Code::PermissionDenied,
            ),
            // A rate limit that mentions payment is still a rate limit; a credit code is not.
            (
                429,
                Some("rate_limit_exceeded"),
                Some("Rate limit reached. Add a payment method to raise it."),
                Code::RateLimited,
            ),
            (
                429,
                None,
                Some("Rate limit reached. Add a payment method to raise it."),
                Code::RateLimited,
            ),
            (
                429,
                Some("insufficient_quota"),
                Some("You exceeded your current quota"),
                Code::InsufficientCredits,
            ),
            (
                429,
                None,
                Some("Quota exceeded for DefaultRequestsPerMinutePerProject"),
                Code::RateLimited,
            ),
            (
                400,
                None,
                Some("could not process the JSON payload"),
                Code::ValidationFailed,
            ),
            (
                403,
                None,
                Some("Insufficient permissions"),
                Code::PermissionDenied,
            ),
        ];
        for (status, code, msg, want) in cases {
            assert_eq!(
                canonical(*status, *code, *msg),
                *want,
                "{status} {code:?} {msg:?}"
            );
        }
    }

    #[test]
    fn word_start_matching() {
        assert!(has(" credits left", "credit"));
        assert!(!has(" accredited", "credit"));
    }
}
