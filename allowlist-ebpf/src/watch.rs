//! The denied-source watch (see `allowlist_common::watch`): records the source of a
//! packet denied for `NotAllowlisted`, within a per-CPU budget.
//!
//! Under a flood the agent sets a sampling mask (`Settings::watch_sample_mask`, tested
//! in `finish`): a denied packet the sampling passes over costs a mask test. A packet
//! offered to a bucket that is empty costs one per-CPU array lookup (inlined
//! by the verifier), one load of `jiffies` (`bpf_jiffies64`, inlined too) and two
//! compares: it writes nothing. Only a new tick refills the bucket (with the coarse
//! clock), and only a recorded packet touches the LRU map.

use allowlist_common::watch::{self, DeniedSource, WatchSettings, WatchState};
use aya_ebpf::{
    Global,
    btf_maps::{Array, LruPerCpuHashMap, PerCpuArray},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

use crate::parse::Addr6;

#[btf_map]
static DENIED_SOURCES: LruPerCpuHashMap<watch::Key, DeniedSource, { watch::CAPACITY }> =
    LruPerCpuHashMap::new();
#[btf_map]
static WATCH_SETTINGS: Array<WatchSettings, 1> = Array::new();
#[btf_map]
static WATCH_STATE: PerCpuArray<WatchState, 1> = PerCpuArray::new();

/// Set to 0 at load time to leave the watch out of the program: the verifier sees a
/// constant and removes its code. Only for measuring what the watch costs; the agent
/// turns it off at run time with a rate of 0.
#[unsafe(no_mangle)]
static WATCH: Global<u32> = Global::new(1);

/// Records the source `key` (`Source::watch_key`) as denied at `port`, if this CPU's
/// budget allows (the caller has sampled it: `Settings::watch_sample_mask`).
#[inline(always)]
pub(crate) fn offer(key: Addr6, port: u16) {
    if WATCH.load() == 0 {
        return;
    }
    let Some(state) = WATCH_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; the program runs with migration
    // disabled and is the only writer, so nothing else touches it meanwhile.
    let state = unsafe { &mut *state };
    if state.credit < watch::COST {
        // SAFETY: a helper without arguments.
        let tick = unsafe { bpf_jiffies64() };
        if tick == state.tick {
            return;
        }
        refill(state, tick);
        if state.credit < watch::COST {
            return;
        }
    }
    record(state, key.bytes(), port);
}

/// Credits the bucket with the time since its last refill, once per tick.
#[inline(never)]
fn refill(state: &mut WatchState, tick: u64) {
    let rate = WATCH_SETTINGS.get(0).map_or(0, |s| s.rate);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    state.credit = watch::refill(state.credit, rate, now.wrapping_sub(state.refilled_ns));
    state.tick = tick;
    state.refilled_ns = now;
}

#[inline(never)]
fn record(state: &mut WatchState, key: watch::Key, port: u16) {
    // The agent may have lowered the rate, or turned the watch off, since the last
    // refill: what the bucket holds beyond the new rate's burst goes at once.
    let rate = WATCH_SETTINGS.get(0).map_or(0, |s| s.rate);
    let cap = watch::cap(rate);
    if state.credit > cap {
        state.credit = cap;
    }
    if state.credit < watch::COST {
        return;
    }
    state.credit -= watch::COST;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let recorded = match DENIED_SOURCES.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: this CPU's value of the entry, written only by this CPU. The
            // lookup also marks the entry as used, so the LRU keeps recurring sources.
            let entry = unsafe { &mut *entry };
            if entry.packets == 0 {
                entry.first_seen_ns = now;
            }
            entry.packets += 1;
            entry.last_seen_ns = now;
            entry.port = port;
            true
        }
        // Other CPUs' values of a new entry start zeroed.
        None => DENIED_SOURCES
            .insert(
                key,
                DeniedSource {
                    packets: 1,
                    first_seen_ns: now,
                    last_seen_ns: now,
                    port,
                    _pad: [0; 6],
                },
                0,
            )
            .is_ok(),
    };
    if recorded {
        state.recorded += 1;
    }
}
