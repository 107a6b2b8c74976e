//! Normalisation: turning whatever went wrong into the canonical envelope's code.
//!
//! `transport` classifies failures Switchboard saw itself (connect, DNS, TLS, timeouts, lost
//! responses). Vendor error *bodies* are mapped by vendor profiles (a later stage).

pub mod transport;
