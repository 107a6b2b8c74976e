//! Switchboard: a sidecar reverse proxy for telephony and voice-AI vendor APIs.
//!
//! Each concern has its own module; [`proxy`] only orchestrates them inside Pingora's hooks.
//! Vendor knowledge lives in `config/profiles/*.yaml`, never in Rust.

pub mod access;
pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diag;
pub mod envelope;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod normalize;
pub mod pointer;
pub mod proxy;
pub mod quota;
pub mod redact;
pub mod reload;
pub mod retry;
pub mod routing;
pub mod server;
pub mod simulator;
