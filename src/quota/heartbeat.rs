//! The replica heartbeat: every few seconds each store adds its `replica_id` with Redis's
//! time to one sorted set, drops members not seen for [`LIVE_FOR`], and counts the rest.
//! The count is N for the local share while Redis is unreachable (with `expected_replicas`
//! as the floor), and the replicas gauge, which an alert compares with `expected_replicas`.

use std::time::Duration;

/// How often a store heartbeats.
pub const EVERY: Duration = Duration::from_secs(3);

/// How long a replica counts as live after its last heartbeat.
pub const LIVE_FOR: Duration = Duration::from_secs(30);

/// The sorted set of replicas (one per Redis: replicas of one fleet share it).
pub const KEY: &str = "sb:replicas";
