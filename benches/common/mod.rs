//! Settings shared by the criterion benches.

use std::time::Duration;

use criterion::Criterion;

/// Short warm-up and measurement: the cases are nanoseconds to microseconds, and the
/// machine is shared; longer runs did not narrow the intervals.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
