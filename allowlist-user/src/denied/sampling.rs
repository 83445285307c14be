//! How much of a flood the denied-source watch is offered: one denied packet in the
//! power of two that brings the denied rate since the last read under half the
//! budget of all CPUs, so that under a flood most denied packets cost the drop path
//! a mask test and no more (see `allowlist_common::Settings::watch_sample_mask`).
//! The budget bounds what is recorded either way.

use std::time::Instant;

/// The sampling in force, and the count it was last computed from.
#[derive(Debug, Default)]
pub(crate) struct Sampling {
    /// The denied packets counted at the last read of the watch, and when.
    last: Option<(u64, Instant)>,
    /// One denied packet in this many is offered to the watch's budget (0: not set
    /// yet, the datapath's default of 1 is in force).
    one_in: u32,
}

/// A sampling to put in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Change {
    pub(crate) one_in: u32,
    pub(crate) denied_per_second: f64,
}

impl Sampling {
    /// Takes the datapath's denied count (recorded and not) at this read; returns the
    /// sampling to set when it differs from the one in force. The caller reports
    /// whether setting it worked ([`Sampling::set`]).
    pub(crate) fn observe(&mut self, denied: u64, rate_per_cpu: u32, cpus: u32) -> Option<Change> {
        let now = Instant::now();
        let (before, then) = self.last.replace((denied, now))?;
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds <= 0.0 || denied < before {
            return None;
        }
        let rate = (denied - before) as f64 / seconds;
        let half_budget = f64::from(rate_per_cpu) * f64::from(cpus.max(1)) / 2.0;
        let one_in = one_in(rate, half_budget);
        (one_in != self.one_in).then_some(Change {
            one_in,
            denied_per_second: rate,
        })
    }

    /// The datapath took `one_in`.
    pub(crate) fn set(&mut self, one_in: u32) {
        self.one_in = one_in;
    }
}

/// One denied packet in how many to offer the watch's budget so that `rate` packets a
/// second come under `half_budget`: 1, or a power of two (at most 2^20).
fn one_in(rate: f64, half_budget: f64) -> u32 {
    if rate <= half_budget || half_budget <= 0.0 {
        return 1;
    }
    let needed = (rate / half_budget).ceil().min(f64::from(1u32 << 20)) as u32;
    needed.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_watch_is_offered_a_sample_only_above_half_its_budget() {
        assert_eq!(one_in(0.0, 2000.0), 1);
        assert_eq!(one_in(2000.0, 2000.0), 1);
        assert_eq!(one_in(2001.0, 2000.0), 2);
        assert_eq!(one_in(1_400_000.0, 2000.0), 1024);
        assert_eq!(one_in(1e12, 2000.0), 1 << 20);
        assert_eq!(one_in(5000.0, 0.0), 1);
    }

    #[test]
    fn a_change_is_offered_once_and_only_from_a_second_read() {
        let mut sampling = Sampling::default();
        assert_eq!(sampling.observe(0, 1000, 2), None, "no rate from one read");
        std::thread::sleep(Duration::from_millis(20));
        // Far over 1,000 a second on 2 CPUs.
        let change = sampling.observe(1_000_000, 1000, 2).expect("a flood");
        assert!(
            change.one_in > 1 && change.one_in.is_power_of_two(),
            "{change:?}"
        );
        sampling.set(change.one_in);
        std::thread::sleep(Duration::from_millis(20));
        // A counter that went down (the maps were replaced) says nothing.
        assert_eq!(sampling.observe(10, 1000, 2), None);
        std::thread::sleep(Duration::from_millis(20));
        let quiet = sampling.observe(10, 1000, 2).expect("back to every packet");
        assert_eq!(quiet.one_in, 1);
        sampling.set(1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(sampling.observe(10, 1000, 2), None, "already in force");
    }
}
