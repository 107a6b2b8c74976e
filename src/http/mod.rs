//! HTTP mechanics of the request path, and nothing else: the request body read from the app
//! ([`body`]), the vendor's HTTP/1 connection ([`client`]), the inspected start of a
//! response body ([`upstream`]), the per-thread
//! connection cache ([`pool`]) and header hygiene ([`headers`]).
//!
//! No policy lives here (no codes, no retry rules, no limits) and no metrics: callers in
//! `proxy` decide what a status or a failure means. What these functions promise is
//! mechanical: bytes are never dropped, reads are bounded, framing stays the vendor's.

pub mod body;
pub mod client;
pub mod headers;
pub mod pool;
pub mod upstream;
