//! The denied-source watch (see `allowlist_common::watch`): records the source of a
//! packet denied for `NotAllowlisted`, within a per-CPU budget.
//!
//! A denied packet that finds the bucket empty costs one per-CPU array lookup (inlined
//! by the verifier), one load of `jiffies` (`bpf_jiffies64`, inlined too) and two
//! compares: it writes nothing. Only a new tick refills the bucket (with the coarse
//! clock), and only a recorded packet touches the LRU map.

use allowlist_common::watch::{self, DeniedSource, WatchSettings, WatchState};
use aya_ebpf::{
    btf_maps::{Array, LruPerCpuHashMap, PerCpuArray},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

use crate::parse::Source;

#[btf_map]
static DENIED_SOURCES: LruPerCpuHashMap<watch::Key, DeniedSource, { watch::CAPACITY }> =
    LruPerCpuHashMap::new();
#[btf_map]
static WATCH_SETTINGS: Array<WatchSettings, 1> = Array::new();
#[btf_map]
static WATCH_STATE: PerCpuArray<WatchState, 1> = PerCpuArray::new();

/// Records `src` as denied at `port`, if this CPU's budget allows.
#[inline(always)]
pub(crate) fn denied(src: Source, port: u16) {
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
    record(state, src, port);
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
fn record(state: &mut WatchState, src: Source, port: u16) {
    // The agent may have turned the watch off since the last refill.
    if WATCH_SETTINGS.get(0).is_none_or(|s| s.rate == 0) {
        state.credit = 0;
        return;
    }
    state.credit -= watch::COST;
    let key = match src {
        Source::V4(addr) => watch::key_v4(addr),
        Source::V6(addr) => watch::key_v6(addr),
    };
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
