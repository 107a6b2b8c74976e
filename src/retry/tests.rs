use super::*;
use crate::normalize::{normalize, Profile, VendorResponse};
use crate::simulator::Dialect;
use std::path::Path;
use std::time::SystemTime;

const POST: Attempt = Attempt {
    made: 1,
    idempotent_method: false,
    idempotency_key: false,
    replayable: true,
    time_left: Duration::from_secs(60),
};
const POST_KEYED: Attempt = Attempt {
    idempotency_key: true,
    ..POST
};
const GET: Attempt = Attempt {
    idempotent_method: true,
    ..POST
};

fn resp(status: u16, rate_limited: bool, retryable: bool, hint: Option<u64>) -> Outcome {
    Outcome::Response {
        status,
        code: if rate_limited {
            Code::RateLimited
        } else {
            Code::UnknownError
        },
        retryable,
        unprocessed: None,
        hint: hint.map(Duration::from_secs),
    }
}

fn run(a: &Attempt, o: &Outcome) -> Decision {
    decide(&Policy::default(), a, o, |c| c)
}

fn retried(d: Decision) -> bool {
    matches!(d, Decision::Retry { .. })
}

#[test]
fn the_four_safety_rules() {
    // (attempt, outcome, retried?, stop reason if not)
    let rows: Vec<(&str, Attempt, Outcome, Result<RetryReason, GiveUp>)> = vec![
        // Rule 1: never sent -> any method.
        (
            "refused POST",
            POST,
            Outcome::NotSent,
            Ok(RetryReason::ConnectError),
        ),
        // Rule 2: not processed -> any method.
        (
            "429 POST",
            POST,
            resp(429, true, true, Some(1)),
            Ok(RetryReason::RateLimited),
        ),
        (
            "503 POST",
            POST,
            resp(503, false, true, None),
            Ok(RetryReason::Unavailable),
        ),
        // Rule 3: maybe processed -> idempotent or keyed only.
        (
            "500 POST",
            POST,
            resp(500, false, true, None),
            Err(GiveUp::Unsafe),
        ),
        (
            "500 POST+key",
            POST_KEYED,
            resp(500, false, true, None),
            Ok(RetryReason::ServerError),
        ),
        (
            "500 GET",
            GET,
            resp(500, false, true, None),
            Ok(RetryReason::ServerError),
        ),
        (
            "502 POST",
            POST,
            resp(502, false, true, None),
            Err(GiveUp::Unsafe),
        ),
        (
            "504 GET",
            GET,
            resp(504, false, true, None),
            Ok(RetryReason::ServerError),
        ),
        ("lost POST", POST, Outcome::Lost, Err(GiveUp::Unsafe)),
        (
            "lost POST+key",
            POST_KEYED,
            Outcome::Lost,
            Ok(RetryReason::Lost),
        ),
        ("lost GET", GET, Outcome::Lost, Ok(RetryReason::Lost)),
        // Rule 4: a non-retryable code is final whatever the status and method.
        (
            "DELIVERY_FAILED 502 GET",
            GET,
            resp(502, false, false, None),
            Err(GiveUp::Final),
        ),
        (
            "MAX_ATTEMPTS 429 POST",
            POST,
            resp(429, false, false, None),
            Err(GiveUp::Final),
        ),
        (
            "402 credits GET",
            GET,
            resp(402, false, false, None),
            Err(GiveUp::Final),
        ),
        (
            "422 validation GET",
            GET,
            resp(422, false, false, None),
            Err(GiveUp::Final),
        ),
    ];
    for (name, a, o, want) in rows {
        let got = run(&a, &o);
        match want {
            Ok(reason) => assert!(
                matches!(got, Decision::Retry { reason: r, .. } if r == reason),
                "{name}: {got:?}"
            ),
            Err(g) => assert_eq!(got, Decision::Stop(g), "{name}"),
        }
    }
}

#[test]
fn profile_marks_override_the_status() {
    let processed_503 = Outcome::Response {
        status: 503,
        code: Code::UpstreamUnavailable,
        retryable: true,
        unprocessed: Some(false),
        hint: None,
    };
    assert_eq!(run(&POST, &processed_503), Decision::Stop(GiveUp::Unsafe));
    assert!(retried(run(&GET, &processed_503)));
    let unprocessed_500 = Outcome::Response {
        status: 500,
        code: Code::InternalError,
        retryable: true,
        unprocessed: Some(true),
        hint: None,
    };
    assert!(retried(run(&POST, &unprocessed_500)));
}

#[test]
fn waits_hints_attempts_deadline_and_replay() {
    let p = Policy::default();
    let r429 = resp(429, true, true, Some(2));
    assert_eq!(
        run(&POST, &r429),
        Decision::Retry {
            after: Duration::from_secs(2),
            reason: RetryReason::RateLimited
        }
    );
    // A hint past max_retry_after (30 s) ends retrying.
    assert_eq!(
        run(&POST, &resp(429, true, true, Some(31))),
        Decision::Stop(GiveUp::HintTooLong)
    );
    // Backoff: full jitter under base · 2^(n-1), capped at max.
    for (made, ceiling) in [(1, 200), (2, 400), (3, 800), (10, 10_000)] {
        let a = Attempt { made, ..GET };
        let p = Policy {
            max_attempts: 100,
            ..p.clone()
        };
        let d = decide(&p, &a, &Outcome::Lost, |c| c);
        assert_eq!(
            d,
            Decision::Retry {
                after: Duration::from_millis(ceiling),
                reason: RetryReason::Lost
            },
            "attempt {made}"
        );
        let d = decide(&p, &a, &Outcome::Lost, |_| Duration::ZERO);
        assert!(matches!(d, Decision::Retry { after, .. } if after.is_zero()));
    }
    let third = Attempt { made: 3, ..GET };
    assert_eq!(
        run(&third, &Outcome::Lost),
        Decision::Stop(GiveUp::Attempts)
    );
    let late = Attempt {
        time_left: Duration::from_secs(1),
        ..POST
    };
    assert_eq!(run(&late, &r429), Decision::Stop(GiveUp::Deadline));
    let streamed = Attempt {
        replayable: false,
        ..GET
    };
    assert_eq!(
        run(&streamed, &Outcome::Lost),
        Decision::Stop(GiveUp::NotReplayable)
    );
}

/// Every documented example of every seed vendor, normalised by its profile: the decision
/// must follow the canonical code (rule 4 before anything else).
#[test]
fn every_seed_example_follows_the_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/profiles");
    let now = SystemTime::now();
    let mut seen = 0;
    for vendor in ["tryvox", "telephony_io", "agent_platform", "line_platform"] {
        let profile = Profile::load(&dir, vendor).unwrap_or_else(|e| panic!("{e:?}"));
        let dialect = Dialect::load(&dir, vendor).unwrap_or_else(|e| panic!("{e}"));
        for ex in dialect.examples.values() {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &ex.headers {
                let v = crate::simulator::dialect::expand(v);
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    headers.insert(k, v);
                }
            }
            let vr = VendorResponse {
                status: ex.status,
                headers: &headers,
                body: ex.body.as_bytes(),
                truncated: false,
                path: "/",
            };
            let n = normalize(&profile, vendor, "r", &vr, now);
            let o = n.outcome(ex.status);
            let code = n.envelope.error.code;
            let (post, get) = (run(&POST, &o), run(&GET, &o));
            let name = format!("{vendor}/{}: {code}", ex.name);
            if !n.envelope.error.retryable {
                assert_eq!(post, Decision::Stop(GiveUp::Final), "{name}");
                assert_eq!(get, Decision::Stop(GiveUp::Final), "{name}");
            } else if code == Code::RateLimited && o.vendor_did_not_process() {
                // Retried for a POST too, unless its hint is longer than we wait.
                let hint_long = matches!(o, Outcome::Response { hint: Some(h), .. } if h > Duration::from_secs(30));
                if hint_long {
                    assert_eq!(post, Decision::Stop(GiveUp::HintTooLong), "{name}");
                } else {
                    assert!(retried(post), "{name}: {post:?}");
                }
            } else if ex.status == 503 || n.unprocessed == Some(true) {
                assert!(retried(post), "{name}: {post:?}");
            } else {
                assert_eq!(post, Decision::Stop(GiveUp::Unsafe), "{name}");
                assert!(
                    retried(get) || matches!(get, Decision::Stop(GiveUp::HintTooLong)),
                    "{name}: {get:?}"
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 25, "{seen} examples");
}

/// Rule 2 rests on what the vendor stated, not on the words the classifier read: a
/// `rate_limited` inferred from "rate limit" / "throttled" on a 400, 403, 422 or a 2xx
/// does not make a POST repeatable, and pauses nothing.
#[test]
fn rate_limit_wording_is_no_fact() {
    let answer = |status, code, retryable, unprocessed| Outcome::Response {
        status,
        code,
        retryable,
        unprocessed,
        hint: Some(Duration::from_secs(1)),
    };
    let worded = |status| answer(status, Code::RateLimited, true, None);
    for status in [400, 403, 422, 200, 201] {
        let o = worded(status);
        assert!(!o.vendor_did_not_process(), "{status}");
        assert!(!o.vendor_throttled(), "{status}");
        assert_eq!(run(&POST, &o), Decision::Stop(GiveUp::Unsafe), "{status}");
        // An idempotent request may still repeat (it is safe whatever the vendor did).
        assert!(retried(run(&GET, &o)), "{status}");
    }
    // The facts: 429 + rate_limited; a profile code marked unprocessed on any status.
    let r429 = worded(429);
    assert!(r429.vendor_throttled() && r429.vendor_did_not_process());
    assert!(retried(run(&POST, &r429)));
    let marked = answer(400, Code::RateLimited, true, Some(true));
    assert!(marked.vendor_throttled());
    assert_eq!(
        run(&POST, &marked),
        Decision::Retry {
            after: Duration::from_secs(1),
            reason: RetryReason::RateLimited
        }
    );
    // A 429 that is not a rate limit (TryVox MAX_ATTEMPTS_EXCEEDED) is not throttling.
    let attempts = answer(429, Code::TooManyAttempts, false, None);
    assert!(!attempts.vendor_throttled());
    assert!(!attempts.vendor_did_not_process());
    // A 503 is unprocessed but not throttling: it pauses no bucket.
    let r503 = answer(503, Code::UpstreamUnavailable, true, None);
    assert!(r503.vendor_did_not_process() && !r503.vendor_throttled());
    // The profile's `unprocessed: false` demotes a 429 too.
    let processed_429 = answer(429, Code::RateLimited, true, Some(false));
    assert!(!processed_429.vendor_throttled());
    assert_eq!(run(&POST, &processed_429), Decision::Stop(GiveUp::Unsafe));
}

#[test]
fn give_up_labels_are_distinct() {
    let mut seen: Vec<&str> = GiveUp::COUNTED.iter().map(|g| g.as_str()).collect();
    seen.extend(RetryReason::ALL.iter().map(|r| r.as_str()));
    let n = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), n);
    assert!(!GiveUp::COUNTED.contains(&GiveUp::Final));
}

#[test]
fn a_default_hint_fills_only_a_missing_one() {
    let none = resp(429, true, true, None).or_hint(Duration::from_secs(1));
    assert!(matches!(none, Outcome::Response { hint: Some(h), .. } if h == Duration::from_secs(1)));
    let given = resp(429, true, true, Some(3)).or_hint(Duration::from_secs(1));
    assert!(
        matches!(given, Outcome::Response { hint: Some(h), .. } if h == Duration::from_secs(3))
    );
    assert_eq!(Outcome::Lost.or_hint(Duration::from_secs(1)), Outcome::Lost);
}
