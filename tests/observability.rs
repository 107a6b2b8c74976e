//! Observability end to end: exact metric values after scripted traffic through the real
//! binary, every metric the dashboard and the alert rules use exists in the real `/metrics`,
//! and the JSON access log carries what operators need and never a key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::*;
use switchboard::envelope::Code;

const SCENARIO: &str = "rules:\n  - match: { path_prefix: /v1/verify/check }\n    steps: [ { vendor_error: VERIFICATION_FAILED } ]\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 503 }, { status: 201 } ]\ndefault: { status: 200 }\n";
const EXTRA: &str = "    retry: { backoff: { base: 5ms, max: 10ms } }\n    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n      - name: verify\n        match: { path_prefix: /v1/verify }\n      - name: numbers\n        match: { path_prefix: /v1/numbers }\n        limits: [ { rate: 2, per: 1m, burst: 2 } ]\n";

fn v(text: &str, line_start: &str) -> f64 {
    metric(text, line_start).unwrap_or_else(|| panic!("no series {line_start}"))
}

/// Metric names in PromQL text: `switchboard_…` identifiers (and `up`, Prometheus' own).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("switchboard_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Names of the families present in a Prometheus text exposition, with histogram series.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_scripted_traffic_and_the_dashboard_and_rules_use_real_names() {
    let env = [
        ("SWITCHBOARD__LOG__LEVEL", "info".to_string()),
        ("SWITCHBOARD__LOG__FORMAT", "json".to_string()),
    ];
    let (s, sb, addr) = proxied("tryvox", SCENARIO, EXTRA, &env).await;
    let key = [("authorization", "Bearer sk_live_OBSERVE_ME_9")];
    // 3 numbers requests against a limit of 2: 2 answered 200, 1 Switchboard 429.
    for _ in 0..3 {
        send(addr, &request("GET", "/v1/numbers", &key, None)).await;
    }
    // A vendor error: VERIFICATION_FAILED 422.
    let r = send(
        addr,
        &request("POST", "/v1/verify/check", &key, Some(b"{}")),
    )
    .await;
    assert_eq!(r.status, 422);
    // 503 then 201: one retry (a 503 was not processed, so a POST is retried).
    let r = send(addr, &request("POST", "/v1/calls", &key, Some(b"{}"))).await;
    assert_eq!(r.status, 201);
    assert_eq!(s.hits(), 5);

    let m = metrics_settled(sb.admin, 5).await;
    let req = |ep: &str, method: &str, status: &str| {
        v(
            &m,
            &format!("switchboard_requests_total{{endpoint=\"{ep}\",method=\"{method}\",status=\"{status}\",vendor=\"tryvox\"}}"),
        )
    };
    assert_eq!(req("numbers", "GET", "200"), 2.0);
    assert_eq!(req("numbers", "GET", "429"), 1.0);
    assert_eq!(req("verify", "POST", "422"), 1.0);
    assert_eq!(req("voice", "POST", "201"), 1.0);
    // The access log's losses are exported, and there were none.
    assert_eq!(v(&m, "switchboard_access_log_dropped_total"), 0.0);
    let err = |ep: &str, code: &str, source: &str| {
        v(
            &m,
            &format!("switchboard_errors_total{{code=\"{code}\",endpoint=\"{ep}\",source=\"{source}\",vendor=\"tryvox\"}}"),
        )
    };
    assert_eq!(err("numbers", "rate_limited", "proxy"), 1.0);
    assert_eq!(err("numbers", "rate_limited", "upstream"), 0.0);
    assert_eq!(err("verify", "verification_failed", "upstream"), 1.0);
    // A retried-then-successful request is not an error.
    assert_eq!(err("voice", "upstream_unavailable", "upstream"), 0.0);
    // Every code exists for every endpoint, `other` included, from the start.
    for ep in ["voice", "verify", "numbers", "other"] {
        for code in Code::ALL {
            for source in ["upstream", "proxy"] {
                err(ep, code.as_str(), source);
            }
        }
    }
    assert_eq!(
        v(&m, "switchboard_upstream_attempts_total{endpoint=\"voice\",status=\"503\",vendor=\"tryvox\"}"),
        1.0
    );
    assert_eq!(
        v(&m, "switchboard_retries_total{endpoint=\"voice\",reason=\"unavailable\",vendor=\"tryvox\"}"),
        1.0
    );
    assert_eq!(
        v(&m, "switchboard_ratelimit_decisions_total{decision=\"rejected\",endpoint=\"numbers\",scope=\"key\",vendor=\"tryvox\"}"),
        1.0
    );
    assert_eq!(
        v(
            &m,
            "switchboard_upstream_duration_seconds_count{endpoint=\"voice\",vendor=\"tryvox\"}"
        ),
        2.0,
        "one latency sample per attempt"
    );
    assert_eq!(
        v(
            &m,
            "switchboard_request_duration_seconds_count{endpoint=\"numbers\",vendor=\"tryvox\"}"
        ),
        3.0
    );
    assert!(!m.contains("OBSERVE_ME"));

    // Every metric the dashboard and the alert rules query is one Switchboard exports.
    let have = exposed(&m);
    let root = root();
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/switchboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    exprs(&dash, &mut queries);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/switchboard-rules.yml")).unwrap();
    let rule_names = names_in(&rules);
    let mut used: BTreeSet<String> = queries.iter().flat_map(|q| names_in(q)).collect();
    used.extend(rule_names);
    for name in &used {
        assert!(have.contains(name), "{name} is queried but not exported");
    }
    for family in [
        "switchboard_requests_total",
        "switchboard_errors_total",
        "switchboard_upstream_attempts_total",
        "switchboard_retries_total",
        "switchboard_ratelimit_decisions_total",
        "switchboard_request_duration_seconds_bucket",
        "switchboard_upstream_duration_seconds_bucket",
        "switchboard_queue_depth",
        "switchboard_ratelimit_keys",
    ] {
        assert!(
            used.contains(family),
            "the dashboard and rules never show {family}"
        );
    }
    // The dashboard: a stable uid, and a data source variable every query goes through.
    assert_eq!(dash["uid"], "switchboard-overview");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|x| x["type"] == "datasource" && x["name"] == "datasource"));
    let panels: Vec<&Value> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }

    // One JSON access-log line per request, with what operators filter on; never the key.
    // (Written by the logging hook after each response: wait for the last one.)
    let access_lines = |logs: &str| -> Vec<Value> {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|j| j["target"] == "switchboard::access")
            .collect()
    };
    let logs = until("5 access-log lines", WAIT, || {
        let logs = sb.stderr();
        (access_lines(&logs).len() >= 5).then_some(logs)
    })
    .await;
    assert!(!logs.contains("OBSERVE_ME"), "a key leaked into the logs");
    let access = access_lines(&logs);
    assert_eq!(access.len(), 5, "{logs}");
    let retried = access
        .iter()
        .find(|j| j["fields"]["endpoint"] == "voice")
        .unwrap();
    let f = &retried["fields"];
    assert_eq!(f["vendor"], "tryvox");
    assert_eq!(f["method"], "POST");
    assert_eq!(f["status"], 201);
    assert_eq!(f["attempts"], 2);
    assert!(f["request_id"].as_str().unwrap().starts_with("sb-"));
    assert!(f["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(f["upstream_ms"].as_f64().is_some());
    let limited = access
        .iter()
        .find(|j| j["fields"]["status"] == 429)
        .unwrap();
    assert_eq!(limited["fields"]["code"], "rate_limited");
    assert_eq!(limited["fields"]["attempts"], 0);
}
