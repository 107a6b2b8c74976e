//! The forwarding engine: drives one request to the vendor and its answer back to the app.
//!
//! Pingora's proxy loop writes the response header downstream before any of the body is
//! read, so it cannot answer a vendor error with the *canonical* status that only the body
//! reveals (TryVox `DELIVERY_FAILED` 502 stays 502, a bare gateway 502 becomes 503). This
//! engine therefore runs inside `request_filter`: it reads the request body (buffered up to
//! the replay limit, streamed beyond), sends it over Pingora's pooled upstream connector,
//! reads the response header, and then either streams a success through untouched or reads
//! the (capped) error body, normalises it and answers with the envelope.
//!
//! It owns the mechanics only: codes come from `normalize`, metrics from `metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::pool::Upstreams;
use super::{Ctx, VendorRuntime};
use crate::envelope::{Code, Envelope};
use crate::headers;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::normalize::transport::{classify, AttemptState};
use crate::normalize::{self, hints, Normalized, VendorResponse, MAX_ERROR_BODY};
use crate::retry;

/// Request bodies up to this size are buffered before sending (and could be replayed);
/// larger ones are streamed to the vendor as they arrive.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// How one request ended, for the caller's bookkeeping.
#[derive(Debug)]
pub enum Outcome {
    /// A response (success, passthrough or envelope) was written in full.
    Answered,
    /// Nothing more can be written (client gone, or the stream was cut mid-body).
    Aborted(Box<Error>),
}

/// The request body as read from the app.
struct Body {
    buffered: Bytes,
    /// More body follows on the downstream session.
    streaming: bool,
    /// The app sent a body at all (`Content-Length` or `Transfer-Encoding`).
    present: bool,
}

/// Drives requests to the vendor over pooled upstream connections.
pub struct Forwarder {
    upstreams: Upstreams,
    lifecycle: Arc<Lifecycle>,
    metrics: Metrics,
}

/// What one attempt produced, when it was not a transport failure.
enum Reply {
    /// A response was written to the app (or the app went away): nothing more to do.
    Done(Outcome),
    /// The vendor answered with an error, normalised and not yet written.
    Error(Box<Normalized>, u16),
}

/// What [`Forwarder::hold_for_retry`] allows.
enum Hold {
    /// Send again.
    Go,
    /// Answer with the last outcome; the give-up reason.
    Stop(&'static str),
    /// An answer was already written (the retry line was full).
    Answered(Outcome),
}

/// The answer to give if retrying stops now.
enum Last {
    Envelope(Envelope),
    Failure(Box<Error>),
}

/// Header a caller uses to shorten its own deadline, in milliseconds. Never forwarded.
pub const DEADLINE_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-switchboard-deadline");

impl Forwarder {
    /// A forwarder with its own connection pool; `lifecycle` tells waiting retries to stop
    /// at shutdown.
    pub fn new(upstreams: Upstreams, lifecycle: Arc<Lifecycle>, metrics: Metrics) -> Self {
        Forwarder {
            upstreams,
            lifecycle,
            metrics,
        }
    }

    /// Forwards the request in `session` and answers it. Every path writes exactly one
    /// response, or reports why none could be written.
    pub async fn run(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
    ) -> Outcome {
        session.set_read_timeout(Some(vendor.cfg.timeouts.response));
        let body = match read_body(session, vendor.cfg.max_request_body).await {
            Ok(Ok(b)) => b,
            Ok(Err(env_msg)) => {
                let env = Envelope::proxy(
                    Code::PayloadTooLarge,
                    env_msg,
                    &vendor.cfg.name,
                    &ctx.request_id,
                );
                session.set_keepalive(None);
                return Box::pin(write_envelope(session, ctx, env)).await;
            }
            Err(e) => return Outcome::Aborted(e),
        };
        let policy = &vendor.cfg.retry;
        let h = &session.req_header().headers;
        let idempotency_key = h.contains_key(&policy.idempotency_header);
        let idempotent_method = session.req_header().method.is_idempotent();
        // The caller may shorten (never lengthen) the deadline.
        let deadline = h
            .get(&DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(policy.deadline, |ms| {
                policy.deadline.min(Duration::from_millis(ms))
            });
        ctx.idempotent = idempotent_method || idempotency_key;
        vendor.retry_budget.request(retry::now());
        let endpoint = vendor.router.name(ctx.endpoint);
        let label = |m: &prometheus::IntCounterVec, v: &str| {
            m.with_label_values(&[&vendor.cfg.name, endpoint, v]).inc()
        };
        loop {
            let req = upstream_request(session.req_header(), vendor, &body);
            ctx.upstream_elapsed = None;
            // Answered attempts are counted (status, latency) inside, as soon as the
            // vendor's header arrives: before the app can see the answer.
            let result = self.attempt(session, ctx, vendor, req, &body).await;
            ctx.upstream_observed = true;
            let (outcome, last) = match result {
                Ok(Reply::Done(outcome)) => return outcome,
                Ok(Reply::Error(n, status)) => {
                    let outcome = retry::Outcome::from_normalized(&n, status);
                    let mut env = n.envelope;
                    env.error.attempts = ctx.attempts;
                    (outcome, Last::Envelope(env))
                }
                Err(failure) => {
                    let outcome = if ctx.sent {
                        retry::Outcome::Lost
                    } else {
                        retry::Outcome::NotSent
                    };
                    let what = match failure.etype() {
                        ErrorType::ConnectTimedout
                        | ErrorType::ReadTimedout
                        | ErrorType::WriteTimedout => "timeout",
                        _ if ctx.sent => "lost",
                        _ => "connect_error",
                    };
                    label(&self.metrics.upstream_attempts, what);
                    (outcome, Last::Failure(failure))
                }
            };
            let attempt = retry::Attempt {
                made: ctx.attempts,
                idempotent_method,
                idempotency_key,
                replayable: !body.streaming,
                time_left: deadline.saturating_sub(ctx.started.elapsed()),
            };
            let decision = retry::decide(policy, &attempt, &outcome, |ceiling| {
                let ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::random_range(0..=ns))
            });
            let stop = match decision {
                retry::Decision::Stop(g) => Some(g.as_str()),
                retry::Decision::Retry { after, reason } => {
                    match Box::pin(self.hold_for_retry(session, ctx, vendor, after)).await {
                        Hold::Go => {
                            label(&self.metrics.retries, reason);
                            None
                        }
                        Hold::Stop(why) => Some(why),
                        Hold::Answered(outcome) => return outcome,
                    }
                }
            };
            let Some(why) = stop else { continue };
            if why != retry::GiveUp::Final.as_str() {
                label(&self.metrics.retry_giveups, why);
            }
            return Box::pin(self.answer_last(session, ctx, vendor, last)).await;
        }
    }

    /// Everything between deciding to retry and sending again: the budget, a place in the
    /// bounded retry line (full: `overloaded` is answered here), the wait (cut short by a
    /// shutdown), and rate-limit tokens, which a retry takes like a new request.
    async fn hold_for_retry(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        after: Duration,
    ) -> Hold {
        if !vendor.retry_budget.try_retry(retry::now()) {
            return Hold::Stop(retry::GiveUp::Budget.as_str());
        }
        let Ok(_place) = vendor.retry_queue.try_acquire() else {
            self.metrics
                .retry_giveups
                .with_label_values(&[
                    &vendor.cfg.name,
                    vendor.router.name(ctx.endpoint),
                    "overloaded",
                ])
                .inc();
            let env = Envelope::proxy(
                Code::Overloaded,
                "too many requests are waiting to be retried; try again shortly",
                &vendor.cfg.name,
                &ctx.request_id,
            )
            .with_attempts(ctx.attempts)
            .with_retry_after(Some(1));
            return Hold::Answered(write_envelope(session, ctx, env).await);
        };
        self.metrics.queue_depth_retry(&vendor.cfg.name, 1);
        let waited = self
            .lifecycle
            .sleep_unless_draining(tokio::time::Instant::now() + after)
            .await;
        self.metrics.queue_depth_retry(&vendor.cfg.name, -1);
        if !waited {
            return Hold::Stop("shutdown");
        }
        match vendor.limits.admit(ctx.limit_key, ctx.endpoint).await {
            crate::limits::Verdict::Allow => Hold::Go,
            crate::limits::Verdict::Reject(_) => Hold::Stop("ratelimit"),
        }
    }

    async fn answer_last(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        last: Last,
    ) -> Outcome {
        match last {
            Last::Envelope(env) => write_envelope(session, ctx, env).await,
            Last::Failure(failure) => {
                let state = AttemptState {
                    sent: ctx.sent,
                    idempotent: ctx.idempotent,
                };
                match ctx.pending.take().or_else(|| classify(&failure, state)) {
                    Some((code, msg)) => {
                        let env = Envelope::proxy(code, msg, &vendor.cfg.name, &ctx.request_id)
                            .with_attempts(ctx.attempts);
                        write_envelope(session, ctx, env).await
                    }
                    None => Outcome::Aborted(failure),
                }
            }
        }
    }

    /// One attempt. `Err` means no usable response arrived (to be classified); responses of
    /// any status are answered inside.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        req: Box<RequestHeader>,
        body: &Body,
    ) -> Result<Reply> {
        let cfg = &vendor.cfg;
        let addr = match vendor.resolver.pick(cfg.timeouts.connect).await {
            Ok(a) => a,
            Err(e) => {
                ctx.pending = Some((Code::UpstreamUnavailable, e.to_string()));
                return Error::e_explain(ErrorType::ConnectError, "upstream host unresolvable");
            }
        };
        // Boxed: 672 bytes that would otherwise sit in the request's state across every await.
        let peer = Box::new(vendor.peer(addr));
        ctx.pending = None;
        ctx.attempts += 1;
        ctx.sent = false;
        let mut up = self.upstreams.get(&peer).await?;
        // The connector leaves these unset; Pingora's own proxy loop copies them the same way.
        up.set_read_timeout(peer.options.read_timeout);
        up.set_write_timeout(peer.options.write_timeout);
        ctx.sent = true;
        ctx.upstream_started = Some(Instant::now());
        up.write_request_header(req).await?;
        let has_more = body.streaming;
        if !body.buffered.is_empty() {
            up.write_request_body(body.buffered.clone(), !has_more)
                .await?;
        }
        if has_more {
            Box::pin(stream_request_body(
                session,
                &mut up,
                cfg.max_request_body,
                ctx,
            ))
            .await?;
        }
        up.finish_request_body().await?;
        let resp = read_final_header(&mut up).await?;
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        let endpoint = vendor.router.name(ctx.endpoint);
        if let Some(t) = ctx.upstream_started {
            let took = t.elapsed();
            ctx.upstream_elapsed = Some(took);
            vendor
                .latency(ctx.endpoint)
                .upstream
                .observe(took.as_secs_f64());
        }
        self.metrics
            .upstream_attempts
            .with_label_values(&[&cfg.name, endpoint, &status.to_string()])
            .inc();

        let profile = &cfg.dialect;
        // Normalised 429s pause below, by canonical code (a 429 is not always a rate limit).
        let raw_429 = status == 429 && cfg.passthrough_errors;
        if raw_429 || hints::exhausted(&resp.headers, profile) {
            let hint = hints::hint(&resp.headers, profile, SystemTime::now());
            vendor
                .limits
                .vendor_said(ctx.limit_key, ctx.endpoint, raw_429, hint);
        }
        let success_candidate = (200..300).contains(&status)
            && profile.success_candidate(status, session.req_header().uri.path());
        if cfg.passthrough_errors || !(status >= 400 || success_candidate) {
            let outcome = stream_response(session, ctx, &mut up, resp).await;
            if matches!(outcome, Outcome::Answered) {
                Upstreams::release(up, &peer, cfg.timeouts.idle);
            }
            return Ok(Reply::Done(outcome));
        }

        let (bytes, truncated) = Box::pin(read_capped(&mut up)).await;
        let vr = VendorResponse {
            status,
            headers: &resp.headers,
            body: &bytes,
            truncated,
            path: session.req_header().uri.path(),
        };
        let now = SystemTime::now();
        let normalized = if success_candidate {
            normalize::success_error(profile, &cfg.name, &ctx.request_id, &vr, now)
        } else {
            Some(normalize::normalize(
                profile,
                &cfg.name,
                &ctx.request_id,
                &vr,
                now,
            ))
        };
        let reply = match normalized {
            Some(n) => {
                if n.envelope.error.code == Code::RateLimited {
                    vendor.limits.vendor_said(
                        ctx.limit_key,
                        ctx.endpoint,
                        true,
                        n.envelope.error.retry_after_s,
                    );
                }
                Reply::Error(Box::new(n), status)
            }
            // A success after all: what was read, then whatever is left, untouched.
            None => Reply::Done(
                Box::pin(write_inspected(
                    session,
                    ctx,
                    &mut up,
                    resp,
                    Bytes::from(bytes),
                    truncated,
                ))
                .await,
            ),
        };
        let written = matches!(reply, Reply::Done(Outcome::Answered));
        if !truncated || written && up.response_done() {
            Upstreams::release(up, &peer, cfg.timeouts.idle);
        }
        Ok(reply)
    }
}

impl VendorRuntime {
    /// The upstream peer for one resolved address.
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let cfg = &self.cfg;
        let mut peer = HttpPeer::new(addr, cfg.upstream.tls, cfg.upstream.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(cfg.timeouts.connect);
        o.total_connection_timeout = Some(cfg.timeouts.connect);
        o.read_timeout = Some(cfg.timeouts.response);
        o.write_timeout = Some(cfg.timeouts.response);
        o.idle_timeout = Some(cfg.timeouts.idle);
        peer
    }
}

/// Reads the request body: all of it when it fits the replay buffer, else the first part.
/// The inner `Err` is a body over the configured limit.
async fn read_body(session: &mut Session, limit: u64) -> Result<std::result::Result<Body, String>> {
    let h = &session.req_header().headers;
    let present = h.contains_key(http::header::CONTENT_LENGTH)
        || h.contains_key(http::header::TRANSFER_ENCODING);
    let mut buffered = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(chunk) = session.read_request_body().await? {
        total += chunk.len() as u64;
        if total > limit {
            return Ok(Err(too_large(limit)));
        }
        buffered.extend_from_slice(&chunk);
        if buffered.len() > REPLAY_LIMIT {
            return Ok(Ok(Body {
                buffered: buffered.freeze(),
                streaming: true,
                present,
            }));
        }
    }
    Ok(Ok(Body {
        buffered: buffered.freeze(),
        streaming: false,
        present,
    }))
}

fn too_large(limit: u64) -> String {
    format!("request body exceeds the limit of {limit} bytes")
}

/// The rest of a large request body, from the app straight to the vendor.
async fn stream_request_body(
    session: &mut Session,
    up: &mut UpstreamSession,
    limit: u64,
    ctx: &mut Ctx,
) -> Result<()> {
    let mut total = session.body_bytes_read() as u64;
    loop {
        let chunk = session.read_request_body().await?;
        match chunk {
            Some(c) => {
                total += c.len() as u64;
                if total > limit {
                    ctx.pending = Some((Code::PayloadTooLarge, too_large(limit)));
                    return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
                }
                up.write_request_body(c, false).await?;
            }
            None => return Ok(()),
        }
    }
}

/// The header sent upstream: the app's, with `Host` set to the vendor and hop-by-hop
/// headers dropped. A fully buffered body is sent with an exact `Content-Length`.
fn upstream_request(
    app: &RequestHeader,
    vendor: &VendorRuntime,
    body: &Body,
) -> Box<RequestHeader> {
    let mut req = Box::new(app.clone());
    let _ = req.insert_header(http::header::HOST, vendor.host.clone());
    headers::strip_request_hop_by_hop(&mut req);
    // The body is already here (or streams on); the vendor must not wait for a go-ahead.
    headers::remove(&mut req, &http::header::EXPECT);
    headers::remove(&mut req, &DEADLINE_HEADER);
    if !body.streaming && body.present {
        headers::remove(&mut req, &http::header::TRANSFER_ENCODING);
        let _ = req.insert_header(
            http::header::CONTENT_LENGTH,
            body.buffered.len().to_string(),
        );
    }
    req
}

/// Reads past informational (1xx) responses to the final header.
async fn read_final_header(up: &mut UpstreamSession) -> Result<ResponseHeader> {
    loop {
        up.read_response_header().await?;
        let Some(h) = up.response_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header");
        };
        let status = h.status.as_u16();
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok(h.clone());
    }
}

/// Reads an error body up to [`MAX_ERROR_BODY`]; `true` when more followed (or the
/// connection broke), in which case the connection is not reused.
async fn read_capped(up: &mut UpstreamSession) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, true);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return (body, false),
            Err(_) => return (body, true),
        }
    }
}

fn downstream_header(mut resp: ResponseHeader, ctx: &Ctx) -> ResponseHeader {
    headers::strip_response_hop_by_hop(&mut resp);
    let _ = resp.insert_header(headers::X_REQUEST_ID, &ctx.request_id);
    resp
}

/// Streams a response through unbuffered.
async fn stream_response(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut UpstreamSession,
    resp: ResponseHeader,
) -> Outcome {
    let status = resp.status.as_u16();
    let done = up.response_done();
    if let Err(e) = session
        .write_response_header(Box::new(downstream_header(resp, ctx)), done)
        .await
    {
        return Outcome::Aborted(e);
    }
    ctx.answered(status, None);
    if done {
        return finish(session).await;
    }
    copy_body(session, ctx, up).await
}

/// Copies the rest of the vendor's body to the app, chunk by chunk.
async fn copy_body(session: &mut Session, ctx: &mut Ctx, up: &mut UpstreamSession) -> Outcome {
    loop {
        match up.read_response_body().await {
            Ok(Some(chunk)) => {
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    return Outcome::Aborted(e);
                }
            }
            Ok(None) => return finish(session).await,
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "vendor failed mid-response; cutting the stream");
                return Outcome::Aborted(e);
            }
        }
    }
}

async fn finish(session: &mut Session) -> Outcome {
    match session.finish_body().await {
        Ok(()) => Outcome::Answered,
        Err(e) => Outcome::Aborted(e),
    }
}

/// Sends a 2xx that was inspected and found fine: the bytes already read, then the rest of
/// the vendor's body as it comes. Framing headers are the vendor's own, so they stay right.
async fn write_inspected(
    session: &mut Session,
    ctx: &mut Ctx,
    up: &mut UpstreamSession,
    resp: ResponseHeader,
    read: Bytes,
    more: bool,
) -> Outcome {
    let status = resp.status.as_u16();
    ctx.answered(status, None);
    if let Err(e) = session
        .write_response_header(Box::new(downstream_header(resp, ctx)), false)
        .await
    {
        return Outcome::Aborted(e);
    }
    if let Err(e) = session.write_response_body(Some(read), false).await {
        return Outcome::Aborted(e);
    }
    if more {
        return copy_body(session, ctx, up).await;
    }
    finish(session).await
}

/// Writes an envelope as the whole response.
pub async fn write_envelope(session: &mut Session, ctx: &mut Ctx, env: Envelope) -> Outcome {
    write_envelope_with(session, ctx, env, &[]).await
}

/// Writes an envelope as the whole response, with extra headers.
pub async fn write_envelope_with(
    session: &mut Session,
    ctx: &mut Ctx,
    env: Envelope,
    extra: &[(&'static str, String)],
) -> Outcome {
    let status = env.status();
    ctx.answered(status, Some(&env));
    let body = Bytes::from(env.to_json());
    let built = (|| -> Result<ResponseHeader> {
        let mut h = ResponseHeader::build(status, Some(8))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("cache-control", "no-store")?;
        for (k, v) in env.headers() {
            h.insert_header(k, v)?;
        }
        for (k, v) in extra {
            h.insert_header(*k, v)?;
        }
        Ok(h)
    })();
    let h = match built {
        Ok(h) => h,
        Err(e) => return Outcome::Aborted(e),
    };
    if let Err(e) = session.write_response_header(Box::new(h), false).await {
        return Outcome::Aborted(e);
    }
    match session.write_response_body(Some(body), true).await {
        Ok(()) => Outcome::Answered,
        Err(e) => Outcome::Aborted(e),
    }
}
