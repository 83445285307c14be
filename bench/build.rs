//! Builds the baseline XDP programs (the `allowlist-bench-ebpf` crate) exactly as
//! allowlist-user's build.rs builds the allowlist program (see allowlist-build).

// A build-dependency only so that cargo rebuilds when the programs' sources change.
use allowlist_bench_ebpf as _;

fn main() -> anyhow::Result<()> {
    allowlist_build::build_ebpf(
        "allowlist-bench-ebpf",
        "bench/allowlist-bench-ebpf",
        "allowlist-bench",
    )
}
