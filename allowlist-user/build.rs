//! Builds the XDP program (the `allowlist-ebpf` crate) for the BPF target and leaves
//! it in OUT_DIR, where `datapath` embeds it (see allowlist-build).

// A build-dependency only so that cargo rebuilds when the program's sources change.
use allowlist_ebpf as _;

fn main() -> anyhow::Result<()> {
    allowlist_build::build_ebpf("allowlist-ebpf", "allowlist-ebpf", "allowlist")
}
