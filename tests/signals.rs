//! Signals through the real binary (SPEC §8, README "Operations"): SIGHUP never kills the
//! process, SIGQUIT drains like SIGTERM, a repeated SIGTERM does not cut the drain short, and
//! SIGINT exits 130 at once — also in the middle of a drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use switchboard::simulator::Simulator;

/// The simulator answering 200 after `delay`, and Switchboard in front of it with `grace`.
async fn slow_vendor(delay: &str, grace: &str) -> (Simulator, Sb, SocketAddr) {
    let sim = sim(
        "tryvox",
        &format!("default: {{ status: 200, json: {{ done: true }}, delay: {delay} }}\n"),
    )
    .await;
    let port = free_port();
    let sb = Sb::start_with(
        &vendor_yaml(
            "tryvox",
            port,
            &format!("http://{}", sim.addr()),
            "    timeouts: { response: 60s }\n",
        ),
        grace,
        &[],
    );
    (sim, sb, local(port))
}

/// Starts one request and returns once the vendor has it, so it is in flight.
async fn in_flight(
    sim: &Simulator,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<std::io::Result<Resp>> {
    let before = sim.hits();
    let task = tokio::spawn(async move {
        Conn::open(addr)
            .await
            .send(&request("GET", "/v1/calls", &[], None))
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.hits() == before {
        assert!(
            Instant::now() < deadline,
            "the vendor never saw the request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task
}

/// Waits until `/readyz` stops answering 200: the signal thread has started the drain.
async fn wait_draining(sb: &Sb) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(blocking_get(sb.admin, "/readyz"), Ok(r) if r.status == 200) {
        assert!(Instant::now() < deadline, "never started draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the process's stderr contains `text` `times` times.
async fn wait_log(sb: &mut Sb, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.stderr().matches(text).count() < times {
        if let Ok(Some(status)) = sb.child.try_wait() {
            panic!("switchboard exited ({status}):\n{}", sb.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} x{times} in the log:\n{}",
            sb.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_the_process_keeps_serving() {
    let (_sim, mut sb, addr) =
        proxied("tryvox", "default: { status: 200, echo: true }\n", "", &[]).await;
    for n in 1..=2 {
        sb.signal("HUP");
        until_metric(
            sb.admin,
            "switchboard_config_reloads_total{result=\"ok\"}",
            n as f64,
        )
        .await;
        assert!(
            sb.child.try_wait().unwrap().is_none(),
            "SIGHUP #{n} ended the process:\n{}",
            sb.stderr()
        );
        let r = get(addr, "/v1/calls").await;
        assert_eq!(r.status, 200, "after SIGHUP #{n}: {}", r.text());
        assert_eq!(get(sb.admin, "/readyz").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_drains_like_sigterm() {
    let (sim, mut sb, addr) = slow_vendor("1500ms", "10s").await;
    let req = in_flight(&sim, addr).await;
    let t0 = Instant::now();
    sb.signal("QUIT");
    wait_draining(&sb).await;
    let r = req
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["done"], true);
    let (code, _) = sb.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "{}", sb.stderr());
    // Drained, not waited out: the grace period is 10 s.
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_does_not_cut_the_drain_short() {
    let (sim, mut sb, addr) = slow_vendor("1500ms", "10s").await;
    let req = in_flight(&sim, addr).await;
    sb.signal("TERM");
    wait_draining(&sb).await;
    sb.signal("TERM");
    wait_log(&mut sb, "SIGTERM: already draining", 1).await;
    let r = req
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, _) = sb.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "{}", sb.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_drain_exits_at_once() {
    // The vendor answers after 20 s and the grace period is 30 s: only SIGINT ends this soon.
    let (sim, mut sb, addr) = slow_vendor("20s", "30s").await;
    let req = in_flight(&sim, addr).await;
    sb.signal("TERM");
    wait_draining(&sb).await;
    assert!(!req.is_finished(), "the request must still be in flight");
    sb.signal("INT");
    let (code, took) = sb.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(130), "{}", sb.stderr());
    assert!(took < Duration::from_secs(3), "SIGINT took {took:?}");
    // The request was cut, not answered.
    let r = tokio::time::timeout(Duration::from_secs(5), req)
        .await
        .expect("the connection closes with the process")
        .unwrap();
    assert!(r.is_err(), "cut request got an answer: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_when_idle_exits_130() {
    let port = free_port();
    let mut sb = Sb::start_with(
        &vendor_yaml("tryvox", port, "http://127.0.0.1:9", ""),
        "30s",
        &[],
    );
    sb.signal("INT");
    let (code, took) = sb.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(130), "{}", sb.stderr());
    assert!(took < Duration::from_secs(3), "SIGINT took {took:?}");
}
