//! The exchange: the one attempt loop every proxied request goes through.
//!
//! limits → read the body → send → classify (normalize) → decide (retry) → answer.
//!
//! Pingora's proxy loop writes the response header downstream before any of the body is
//! read, so it cannot answer a vendor error with the *canonical* status that only the body
//! reveals (TryVox `DELIVERY_FAILED` 502 stays 502, a bare gateway 502 becomes 503). The
//! exchange therefore drives the vendor itself: it sends the request over the pooled
//! upstream connections (`http`), reads the response header, and then either streams a
//! success through untouched or reads the (capped) error body, normalises it, and lets
//! `retry` decide whether to send again. Writing the answer is `respond`'s job.
//!
//! The request's deadline (`retry.deadline`, shortened by `X-Switchboard-Deadline`) bounds
//! every attempt up to the vendor's response header — lookup, connect, send, wait — and
//! the read of an error body; each attempt's connect and read timeouts are cut to what is
//! left, retry waits and a retry's wait for a rate-limit token end by it. A 2xx whose
//! header arrived in time streams to its end. Not bounded by it: the first rate-limit
//! queue wait, before the request body is read (`max_wait` bounds that).
//!
//! It does not care what accepted the request: it needs the downstream session's header
//! and body, and a place to write the answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;

use super::error::Failure;
use super::respond::{self, Written};
use super::{Ctx, VendorRuntime};
use crate::envelope::{Code, Envelope};
use crate::http::body::{self, RequestBody};
use crate::http::client::Conn;
use crate::http::headers;
use crate::http::pool::Upstreams;
use crate::http::upstream::{self, Prefix};
use crate::lifecycle::Lifecycle;
use crate::limits::Verdict;
use crate::metrics::Metrics;
use crate::normalize::{self, hints, Normalized, VendorResponse, MAX_ERROR_BODY};
use crate::retry::{self, GiveUp};

/// Header a caller uses to shorten its own deadline, in milliseconds. Never forwarded.
pub const DEADLINE_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-switchboard-deadline");

/// The app's choice of error format for one request (`envelope` or `vendor`); not forwarded.
pub const ERRORS_HEADER: http::HeaderName = crate::config::ERRORS_HEADER;

/// Switchboard's own request headers: read here, never sent to the vendor.
pub static OWN_HEADERS: [http::HeaderName; 2] = [DEADLINE_HEADER, ERRORS_HEADER];

/// Drives requests to the vendor over pooled upstream connections.
pub struct Exchange {
    upstreams: Upstreams,
    lifecycle: Arc<Lifecycle>,
    metrics: Metrics,
}

/// What one attempt produced, when it was not a transport failure.
enum Reply {
    /// A response was written to the app (or the app went away): nothing more to do.
    Done(Written),
    /// The vendor answered with an error, normalised and not yet written; with the vendor's
    /// own response when the app gets that (`errors: vendor`).
    Error(Box<Normalized>, u16, Option<Box<respond::AsSent>>),
}

/// What is left of the request's deadline, or the deadline failure when nothing is.
fn until(deadline: Instant, budget: Duration) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Deadline(budget));
    }
    Ok(left)
}

/// What [`Exchange::hold_for_retry`] allows.
enum Hold {
    /// Send again.
    Go,
    /// Answer with the last outcome.
    Stop(GiveUp),
    /// An answer was already written (the retry line was full).
    Answered(Written),
}

/// The answer to give if retrying stops now.
enum Last {
    Envelope(Box<Envelope>),
    /// The vendor's response as sent, with the envelope it was classified as.
    AsSent(Box<Envelope>, Box<respond::AsSent>),
    Failure(Failure),
}

impl Exchange {
    /// An exchange with its own connection pool; `lifecycle` tells waiting requests that a
    /// shutdown started, and counts requests in flight.
    pub fn new(upstreams: Upstreams, lifecycle: Arc<Lifecycle>, metrics: Metrics) -> Self {
        Exchange {
            upstreams,
            lifecycle,
            metrics,
        }
    }

    /// The process lifecycle.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The pooled upstream connections.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Checks made before anything is read or sent: framing, declared size, rate limits.
    /// `Some` when the request was answered here.
    pub async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
    ) -> Option<Written> {
        let req = session.req_header();
        // Request smuggling guard: Pingora drops Content-Length when Transfer-Encoding is
        // also present; such a request is malformed and never forwarded.
        let smuggled = req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && session
                .as_http1()
                .is_some_and(|s| headers::raw_has_content_length(&s.get_headers_raw_bytes()));
        if smuggled {
            return Some(respond::failure(session, ctx, vendor, Failure::Smuggling).await);
        }
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let limit = vendor.cfg.max_request_body;
        if declared.is_some_and(|n| n > limit) {
            return Some(respond::failure(session, ctx, vendor, Failure::TooLarge(limit)).await);
        }
        let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
        // An endpoint with a cost is decided once its body is read (`run`).
        if vendor.cost_of(ep).is_some() {
            return None;
        }
        let mut verdict = Verdict::Allow;
        if vendor.limits.applies(ep) {
            verdict = vendor.limits.admit(key, ep).await;
        }
        // The fleet's shared buckets only for what this pod's own let through.
        if let (Verdict::Allow, Some(shared)) = (verdict, &vendor.shared) {
            if shared.applies(ep) {
                // Boxed: the store's decision future is large, and would otherwise sit in
                // every request's state (and be copied with it) even with no shared limit.
                let headers = &session.req_header().headers;
                verdict = Box::pin(shared.admit(headers, key, ep)).await;
                if let Verdict::Reject(_) = verdict {
                    // All or nothing: this pod's token goes back.
                    vendor.limits.refund_n(key, ep, 1);
                }
            }
        }
        if let Verdict::Reject(r) = verdict {
            let (env, extra) =
                Envelope::rate_limited_locally(&r, &vendor.cfg.name, &ctx.request.id);
            return Some(respond::local(session, ctx, vendor, env, &extra, true).await);
        }
        None
    }

    /// Forwards the request in `session` and answers it. Every path writes exactly one
    /// response, or reports why none could be written.
    pub async fn run(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
    ) -> Written {
        let policy = &vendor.cfg.retry;
        let h = &session.req_header().headers;
        let idempotency_key = h.contains_key(&policy.idempotency_header);
        let idempotent_method = session.req_header().method.is_idempotent();
        // The caller may shorten (never lengthen) the deadline.
        let asked = h.get(&DEADLINE_HEADER);
        ctx.request.had_deadline = asked.is_some();
        let budget = asked
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(policy.deadline, |ms| {
                policy.deadline.min(Duration::from_millis(ms))
            });
        let deadline = ctx.request.started + budget;
        (ctx.request.deadline, ctx.request.budget) = (deadline, budget);
        ctx.request.idempotent = idempotent_method || idempotency_key;
        session.set_read_timeout(Some(vendor.cfg.timeouts.response.min(budget)));
        let body = match body::read(session, vendor.cfg.max_request_body).await {
            Ok(b) => b,
            Err(e) => return Box::pin(respond::failure(session, ctx, vendor, e.into())).await,
        };
        if let Some(spec) = vendor.cost_of(ctx.route.endpoint) {
            if let Some(written) = Box::pin(self.charge(session, ctx, vendor, spec, &body)).await {
                return written;
            }
        }
        // Concurrency slots are taken once the body is in hand (a slow upload holds none),
        // for the first attempt; a retry takes its own.
        if has_slots(vendor, ctx.route.endpoint) {
            match Box::pin(take_slots(session, ctx, vendor, deadline.into())).await {
                Ok(held) => ctx.attempt.slots = held,
                Err(full) => {
                    // The rate tokens taken for it go back (this pod's; the fleet's stay
                    // spent: which of the store or the local share took them is not known
                    // here, and giving Redis tokens it never gave would be looser).
                    let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
                    vendor.limits.refund_n(key, ep, ctx.request.cost);
                    let env =
                        Envelope::concurrency_limited(&full, &vendor.cfg.name, &ctx.request.id);
                    return Box::pin(respond::envelope(session, ctx, vendor, env, &[])).await;
                }
            }
        }
        vendor.retry_budget.request(retry::now());
        loop {
            ctx.attempt.elapsed = None;
            // Answered attempts are counted (status, latency) inside, as soon as the
            // vendor's header arrives: before the app can see the answer.
            let made = ctx.attempt.made;
            let result = {
                let _at_vendor = AtVendor::new(&vendor.series(ctx.route.endpoint).at_vendor);
                self.attempt(session, ctx, vendor, &body).await
            };
            ctx.attempt.observed = true;
            let (outcome, last) = match result {
                Ok(Reply::Done(written)) => return written,
                Ok(Reply::Error(n, status, as_sent)) => {
                    let mut outcome = n.outcome(status);
                    let e = &n.envelope.error;
                    // Only the vendor's stated facts pause a key, never a message's words;
                    // a retry waits at least as long as the pause it caused.
                    if outcome.vendor_throttled() {
                        let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
                        vendor.limits.vendor_said(key, ep, true, e.retry_after_s);
                        if let Some(shared) = &vendor.shared {
                            shared
                                .fallback()
                                .vendor_said(key, ep, true, e.retry_after_s);
                            // Every replica waits, not only the one the vendor told.
                            if let Some(h) = e.retry_after_s.filter(|h| *h > 0) {
                                let headers = &session.req_header().headers;
                                shared.pause(headers, Duration::from_secs(h)).await;
                            }
                        }
                        outcome = outcome.or_hint(crate::limits::UNHINTED_PAUSE);
                    }
                    let mut env = Box::new(n.envelope);
                    env.error.attempts = ctx.attempt.made;
                    match as_sent {
                        Some(raw) => (outcome, Last::AsSent(env, raw)),
                        None => (outcome, Last::Envelope(env)),
                    }
                }
                // The app's body went over the limit on the way: nothing to retry.
                Err(f @ Failure::TooLarge(_)) => {
                    return Box::pin(respond::failure(session, ctx, vendor, f)).await
                }
                Err(failure) => {
                    let sent = ctx.attempt.sent;
                    if ctx.attempt.made > made {
                        vendor
                            .series(ctx.route.endpoint)
                            .count_attempt(Err(failure.unanswered(sent)));
                    }
                    let outcome = match sent {
                        true => retry::Outcome::Lost,
                        false => retry::Outcome::NotSent,
                    };
                    (outcome, Last::Failure(failure))
                }
            };
            let attempt = retry::Attempt {
                made: ctx.attempt.made,
                idempotent_method,
                idempotency_key,
                replayable: body.replayable(),
                time_left: deadline.saturating_duration_since(Instant::now()),
            };
            let decision = retry::decide(policy, &attempt, &outcome, |ceiling| {
                let ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::random_range(0..=ns))
            });
            let stop = match decision {
                retry::Decision::Stop(g) => g,
                retry::Decision::Retry { after, reason } => {
                    // The last attempt is over: nothing of it is held while waiting.
                    ctx.attempt.slots = None;
                    match Box::pin(self.hold_for_retry(session, ctx, vendor, after)).await {
                        Hold::Go => {
                            self.count(&self.metrics.retries, vendor, ctx, reason.as_str());
                            continue;
                        }
                        Hold::Stop(why) => why,
                        Hold::Answered(written) => return written,
                    }
                }
            };
            if stop != GiveUp::Final {
                self.count(&self.metrics.retry_giveups, vendor, ctx, stop.as_str());
            }
            return match last {
                Last::Envelope(env) => {
                    Box::pin(respond::envelope(session, ctx, vendor, *env, &[])).await
                }
                Last::AsSent(env, raw) => {
                    let written = Box::pin(respond::as_sent(session, ctx, &env, *raw)).await;
                    ctx.attempt.slots = None;
                    written
                }
                Last::Failure(f) => Box::pin(respond::failure(session, ctx, vendor, f)).await,
            };
        }
    }

    /// The rate-limit decision of an endpoint with a cost, on the body just read: what the
    /// request costs (an unreadable body, or one too large to buffer, costs 1 and is
    /// counted), refused at once when no bucket could ever hold that many, else taken from
    /// every bucket, local then shared, all or nothing. `Some` when it was answered here.
    async fn charge(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        spec: &crate::limits::Cost,
        body: &RequestBody,
    ) -> Option<Written> {
        let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
        let headers = &session.req_header().headers;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let read = match body.streaming {
            // Past the replay buffer: the parse is bounded by it, so the text is not all here.
            true => Err(crate::limits::Unreadable::Body),
            false => crate::limits::cost(spec, content_type, &body.buffered),
        };
        let cost = read.unwrap_or_else(|_| {
            vendor.series(ep).cost_unreadable.inc();
            1
        });
        ctx.request.cost = cost;
        let most = [
            vendor.limits.most_cost(ep),
            vendor.shared.as_ref().and_then(|s| s.most_cost(ep)),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(most) = most.filter(|m| cost > *m) {
            let env = Envelope::proxy(
                Code::PayloadTooLarge,
                format!(
                    "this request costs {cost} tokens (SMS segments × recipients), more than the {most} its rate limit allows at once (burst): it could never be sent; split it"
                ),
                &vendor.cfg.name,
                &ctx.request.id,
            );
            return Some(respond::envelope(session, ctx, vendor, env, &[]).await);
        }
        let mut verdict = Verdict::Allow;
        if vendor.limits.applies(ep) {
            verdict = vendor.limits.admit_n(key, ep, cost).await;
        }
        if let (Verdict::Allow, Some(shared)) = (verdict, &vendor.shared) {
            if shared.applies(ep) {
                let headers = &session.req_header().headers;
                verdict = Box::pin(shared.admit_n(headers, key, ep, cost)).await;
                if let Verdict::Reject(_) = verdict {
                    vendor.limits.refund_n(key, ep, cost);
                }
            }
        }
        match verdict {
            Verdict::Allow => None,
            Verdict::Reject(r) => {
                let (env, extra) =
                    Envelope::rate_limited_locally(&r, &vendor.cfg.name, &ctx.request.id);
                Some(respond::envelope(session, ctx, vendor, env, &extra).await)
            }
        }
    }

    fn count(
        &self,
        family: &prometheus::IntCounterVec,
        vendor: &VendorRuntime,
        ctx: &Ctx,
        label: &str,
    ) {
        let endpoint = vendor.router.name(ctx.route.endpoint);
        family
            .with_label_values(&[&vendor.cfg.name, endpoint, label])
            .inc();
    }

    /// Everything between deciding to retry and sending again: room in the budget, a place
    /// in the bounded retry line (full: `overloaded` is answered here), the wait (cut short
    /// by a shutdown), and rate-limit tokens, which a retry takes like a new request (waiting
    /// for one in queue mode no longer than the deadline). The budget is spent last, and
    /// given back when no token comes: only a retry that is sent spends it.
    async fn hold_for_retry(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        after: Duration,
    ) -> Hold {
        if !vendor.retry_budget.has_room(retry::now()) {
            return Hold::Stop(GiveUp::Budget);
        }
        let Ok(_place) = vendor.retry_queue.try_acquire() else {
            self.count(
                &self.metrics.retry_giveups,
                vendor,
                ctx,
                GiveUp::Overloaded.as_str(),
            );
            let env = Envelope::proxy(
                Code::Overloaded,
                "too many requests are waiting to be retried; try again shortly",
                &vendor.cfg.name,
                &ctx.request.id,
            )
            .with_attempts(ctx.attempt.made)
            .with_retry_after(Some(1));
            return Hold::Answered(respond::envelope(session, ctx, vendor, env, &[]).await);
        };
        self.metrics.queue_depth_retry(&vendor.cfg.name, 1);
        let waited = self
            .lifecycle
            .sleep_unless_draining(tokio::time::Instant::now() + after)
            .await;
        self.metrics.queue_depth_retry(&vendor.cfg.name, -1);
        if !waited {
            return Hold::Stop(GiveUp::Shutdown);
        }
        // The budget is taken just before the token, and given back if no token comes:
        // only a retry that is sent spends either.
        if !vendor.retry_budget.try_retry(retry::now()) {
            return Hold::Stop(GiveUp::Budget);
        }
        let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
        let until = ctx.request.deadline.into();
        let headers = &session.req_header().headers;
        let cost = ctx.request.cost;
        let both = async {
            match vendor.limits.admit_n(key, ep, cost).await {
                Verdict::Allow => match &vendor.shared {
                    Some(shared) => match shared.admit_n(headers, key, ep, cost).await {
                        Verdict::Reject(r) => {
                            vendor.limits.refund_n(key, ep, cost);
                            Verdict::Reject(r)
                        }
                        allow => allow,
                    },
                    None => Verdict::Allow,
                },
                reject => reject,
            }
        };
        let admitted = tokio::time::timeout_at(until, both).await;
        let stop = match admitted {
            Ok(Verdict::Allow) if has_slots(vendor, ep) => {
                match Box::pin(take_slots(session, ctx, vendor, until)).await {
                    Ok(held) => {
                        ctx.attempt.slots = held;
                        return Hold::Go;
                    }
                    Err(_) => {
                        vendor.limits.refund_n(key, ep, cost);
                        GiveUp::RateLimit
                    }
                }
            }
            Ok(Verdict::Allow) => return Hold::Go,
            Ok(Verdict::Reject(_)) => GiveUp::RateLimit,
            Err(_elapsed) => GiveUp::Deadline,
        };
        vendor.retry_budget.refund(retry::now());
        Hold::Stop(stop)
    }

    /// One attempt, bounded by `deadline`. `Err` means no usable response arrived (to be
    /// classified); responses of any status are dealt with inside.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        body: &RequestBody,
    ) -> Result<Reply, Failure> {
        let cfg = &vendor.cfg;
        let (deadline, budget) = (ctx.request.deadline, ctx.request.budget);
        ctx.attempt.sent = false;
        // Held until this attempt is over: its answer streamed, or its failure known.
        let slots = ctx.attempt.slots.take();
        // None left: not an attempt, nothing was tried.
        let left = until(deadline, budget)?;
        // Counted before the lookup: a vendor whose name does not resolve still ends at
        // `max_attempts`, not only at the deadline.
        ctx.attempt.made += 1;
        // The deadline header was looked up already: dropped only when it was there.
        let own = match ctx.request.had_deadline {
            true => &OWN_HEADERS[..],
            false => &OWN_HEADERS[1..],
        };
        // Each step up to the response header is timed by what is left of the deadline when
        // it starts, so the last one ends by it: the lookup, the connect, the writes (header
        // and buffered body; a streamed body's many writes each get that much), and the
        // wait for the final header. No timer is added: these are the timeouts the connector
        // and the client take anyway, cut short.
        let addr = vendor
            .resolver
            .pick(cfg.timeouts.connect.min(left))
            .await
            .map_err(|e| Failure::Unresolvable(e.to_string()))?;
        let left = until(deadline, budget)?;
        // Boxed: 672 bytes that would otherwise sit in the request's state across every await.
        let peer = Box::new(vendor.peer(addr, left));
        let mut up = self.upstreams.get(&peer).await?;
        // A connection starts with no I/O timeouts of its own.
        up.set_write_timeout(Some(cfg.timeouts.response.min(until(deadline, budget)?)));
        ctx.attempt.sent = true;
        ctx.attempt.started = Some(Instant::now());
        up.send_request(session.req_header(), &vendor.host, own, body)
            .await?;
        body::send(session, &mut up, body, cfg.max_request_body).await?;
        // The header (past any 1xx) within one timer: the read timeout would restart with
        // every read, and a vendor trickling bytes or 1xx lines would outlast the deadline.
        let wait = cfg.timeouts.response.min(until(deadline, budget)?);
        up.set_read_timeout(None);
        let resp = match pingora::prelude::timeout(wait, up.read_header()).await {
            Ok(r) => r?,
            Err(_) if wait < cfg.timeouts.response => return Err(Failure::Deadline(budget)),
            Err(_) => {
                return Err(Failure::Transport(pingora::Error::explain(
                    pingora::ErrorType::ReadTimedout,
                    "no response header within timeouts.response",
                )))
            }
        };
        // Later reads (the body) are timed one by one, as configured.
        up.set_read_timeout(Some(cfg.timeouts.response));
        let status = resp.status.as_u16();
        // Upgrades are relayed elsewhere; a switch to a request that asked for none would
        // leave the app's connection speaking a protocol it never chose.
        if status == 101 {
            return Err(Failure::Transport(pingora::Error::explain(
                pingora::ErrorType::InvalidHTTPHeader,
                "101 Switching Protocols to a request that asked for no upgrade",
            )));
        }
        ctx.attempt.status = Some(status);
        if let Some(t) = ctx.attempt.started {
            let took = t.elapsed();
            ctx.attempt.elapsed = Some(took);
            vendor
                .series(ctx.route.endpoint)
                .upstream
                .observe(took.as_secs_f64());
        }
        vendor
            .series(ctx.route.endpoint)
            .count_attempt(Ok(resp.status));

        let profile = &cfg.dialect;
        // 429s pause in the loop, by the vendor's stated facts (a 429 is not always a rate
        // limit); here only a quota the vendor says is exhausted.
        if hints::exhausted(&resp.headers, profile) {
            let hint = hints::hint(&resp.headers, profile, SystemTime::now());
            let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
            vendor.limits.vendor_said(key, ep, false, hint);
        }
        let success_candidate = (200..300).contains(&status)
            && profile.success_candidate(status, session.req_header().uri.path());
        if !(status >= 400 || success_candidate) {
            let written = respond::stream(session, ctx, &mut up, resp).await;
            if written.is_ok() {
                Upstreams::release(up, &peer, cfg.timeouts.idle);
            }
            return Ok(Reply::Done(written));
        }
        let reply = Box::pin(self.inspect(session, ctx, vendor, up, &peer, resp)).await;
        // An error sent on as the vendor sent it still has its rest to stream from the
        // vendor (in the loop, once no retry is due): its slots stay held until then.
        if let Ok(Reply::Error(_, _, Some(_))) = &reply {
            ctx.attempt.slots = slots;
        }
        reply
    }

    /// Reads the first part of an error (or a 2xx that may hide one), normalises it, and
    /// either hands the error back to the loop or sends the success on, byte for byte.
    async fn inspect(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        vendor: &VendorRuntime,
        mut up: Conn,
        peer: &pingora::prelude::HttpPeer,
        resp: ResponseHeader,
    ) -> Result<Reply, Failure> {
        let cfg = &vendor.cfg;
        let status = resp.status.as_u16();
        // An error's body is read by the deadline (what came by then is normalised); a 2xx
        // arrived in time and may hide nothing, so it is read to the cap whatever the time.
        let until = (status >= 300).then_some(ctx.request.deadline);
        let prefix: Prefix = upstream::read_prefix(&mut up, MAX_ERROR_BODY, until).await;
        let (bytes, truncated) = prefix.inspected(MAX_ERROR_BODY);
        let vr = VendorResponse {
            status,
            headers: &resp.headers,
            body: bytes,
            truncated,
            path: session.req_header().uri.path(),
        };
        let (now, rid) = (SystemTime::now(), ctx.request.id.as_str());
        let normalized = if status < 300 {
            normalize::success_error(&cfg.dialect, &cfg.name, rid, &vr, now)
        } else {
            Some(normalize::normalize(&cfg.dialect, &cfg.name, rid, &vr, now))
        };
        let reply = match normalized {
            Some(n) => {
                let vendor_format = cfg.errors.for_request(&session.req_header().headers)
                    == crate::config::ErrorFormat::Vendor;
                let rest = if prefix.complete {
                    Upstreams::release(up, peer, cfg.timeouts.idle);
                    None
                } else {
                    // Only the app that gets the vendor's bytes needs the rest of them.
                    vendor_format.then_some(up)
                };
                let as_sent =
                    vendor_format.then(|| Box::new(respond::AsSent { resp, prefix, rest }));
                return Ok(Reply::Error(Box::new(n), status, as_sent));
            }
            // A success after all: every byte read, then whatever is left, untouched.
            None => Reply::Done(respond::inspected(session, ctx, &mut up, resp, prefix).await),
        };
        if matches!(reply, Reply::Done(Ok(()))) && up.body_done() {
            Upstreams::release(up, peer, cfg.timeouts.idle);
        }
        Ok(reply)
    }
}

/// Counts a request in `switchboard_inflight` while it is at the vendor.
struct AtVendor<'a>(&'a prometheus::IntGauge);

impl<'a> AtVendor<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        AtVendor(g)
    }
}

impl Drop for AtVendor<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether endpoint `ep` has a concurrency limit, this pod's or the fleet's.
#[inline]
fn has_slots(vendor: &VendorRuntime, ep: usize) -> bool {
    vendor.in_flight.applies(ep) || vendor.shared_slots.as_ref().is_some_and(|s| s.applies(ep))
}

/// The concurrency slots of one attempt, all or nothing: this pod's, then the fleet's leases
/// (a full fleet bucket gives this pod's slots back), waiting no later than `until`.
async fn take_slots(
    session: &Session,
    ctx: &Ctx,
    vendor: &VendorRuntime,
    until: tokio::time::Instant,
) -> Result<Option<Box<crate::limits::Held>>, crate::limits::Full> {
    let (key, ep) = (ctx.route.limit_key, ctx.route.endpoint);
    let local = vendor.in_flight.acquire(key, ep, until, |_| {}).await?;
    let fleet = match vendor.shared_slots.as_ref().filter(|s| s.applies(ep)) {
        Some(shared) => {
            let headers = &session.req_header().headers;
            Some(shared.acquire(headers, key, ep, until).await?)
        }
        None => None,
    };
    Ok(Some(Box::new(crate::limits::Held { local, fleet })))
}
