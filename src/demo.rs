//! `switchboard demo`: the vendor simulator plus Switchboard in front of it, on 127.0.0.1,
//! with the curl lines to try. Needs no network.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::simulator::{Dialect, Scenario, Simulator};

/// Name of the demo vendor whose upstream the simulator plays.
pub const DEMO_VENDOR: &str = "tryvox";

/// Finds a shipped file: relative to the working directory first, then to the source tree
/// this binary was built from (so the demo also works from another directory).
pub fn shipped(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Starts the simulator for the demo vendor on a background thread, at the address the demo
/// config names as that vendor's upstream.
pub fn start_simulator(cfg: &Config, scenario: Scenario) -> Result<(), String> {
    let vendor = cfg
        .vendors
        .iter()
        .find(|v| v.name == DEMO_VENDOR)
        .ok_or_else(|| format!("demo config has no vendor {DEMO_VENDOR:?}"))?;
    let addr = format!("{}:{}", vendor.upstream.host, vendor.upstream.port)
        .parse()
        .map_err(|e| format!("demo upstream must be an IP address: {e}"))?;
    let profile = vendor.profile.clone().unwrap_or_else(|| "generic".into());
    let dialect = Dialect::load(&cfg.profiles_dir, &profile)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            match Simulator::start(addr, scenario, dialect, false).await {
                Ok(_sim) => {
                    let _ = tx.send(Ok(()));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("simulator cannot listen on {addr}: {e}")));
                }
            }
        });
    });
    rx.recv().map_err(|e| e.to_string())?
}

/// The text printed for a newcomer: what runs where, and what to try.
pub fn banner(cfg: &Config) -> String {
    let mut s =
        String::from("\nSwitchboard demo — everything on 127.0.0.1, no network needed.\n\n");
    for v in &cfg.vendors {
        s.push_str(&format!(
            "  vendor {:<14} http://{}  ->  {}\n",
            v.name, v.listen, v.upstream.url
        ));
    }
    s.push_str(&format!(
        "  admin                 http://{}/metrics  /healthz  /readyz\n\n",
        cfg.admin.listen
    ));
    let tv = cfg
        .vendors
        .iter()
        .find(|v| v.name == DEMO_VENDOR)
        .map(|v| v.listen.to_string())
        .unwrap_or_default();
    let down = cfg
        .vendors
        .iter()
        .find(|v| v.name != DEMO_VENDOR)
        .map(|v| v.listen.to_string())
        .unwrap_or_default();
    s.push_str("Try:\n");
    s.push_str(&format!(
        "  # a call placed through Switchboard (success passes through untouched)\n  curl -si -X POST http://{tv}/v1/calls -H 'Authorization: Bearer sk_test_demo' -H 'Content-Type: application/json' -d '{{\"to\":\"+14155551234\",\"from\":\"+14155550000\"}}'\n\n"
    ));
    s.push_str(&format!(
        "  # a vendor error, rewritten: TryVox's 422 VERIFICATION_FAILED -> canonical verification_failed\n  curl -si -X POST http://{tv}/v1/verify/check -H 'Authorization: Bearer sk_test_demo' -d '{{\"code\":\"000000\"}}'\n\n  # a vendor 429 that is NOT a rate limit -> too_many_attempts, retryable: false\n  curl -si -X POST http://{tv}/v1/verify/start -H 'Authorization: Bearer sk_test_demo' -d '{{}}'\n\n"
    ));
    s.push_str(&format!(
        "  # Switchboard's own limit (numbers: 2 per 10 s per key): the third answer is its 429\n  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' http://{tv}/v1/numbers -H 'Authorization: Bearer sk_test_demo'; done; echo\n  curl -si http://{tv}/v1/numbers -H 'Authorization: Bearer sk_test_demo'\n\n"
    ));
    s.push_str(&format!(
        "  # a vendor that cannot be reached: the canonical envelope, upstream_unavailable\n  curl -si http://{down}/api/v1/calls\n\n"
    ));
    s.push_str(&format!("  # metrics\n  curl -s http://{}/metrics | grep switchboard_requests_total\n\nCtrl-C to stop.\n", cfg.admin.listen));
    s
}
