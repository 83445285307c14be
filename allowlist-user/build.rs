//! Builds the XDP program (the `allowlist-ebpf` crate) for the BPF target and leaves
//! it in OUT_DIR, where `datapath` embeds it (see allowlist-build).

fn main() -> anyhow::Result<()> {
    allowlist_build::build_ebpf("allowlist-ebpf", "allowlist-ebpf", "allowlist")
}
