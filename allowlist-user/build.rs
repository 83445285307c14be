//! Builds the XDP program (the `allowlist-ebpf` crate) for the BPF target and leaves
//! it in OUT_DIR, where `datapath::program` embeds it.
//!
//! The BPF build needs Debian's rustc with matching core sources, linked as the rustup
//! toolchain `bpf-debian`, and bpf-linker; `cargo xtask setup` installs both. With
//! `AYA_BUILD_SKIP=1` (clippy, docs) an empty placeholder is embedded instead.

use std::{env, fs, path::PathBuf, process::Command};

const TOOLCHAIN: &str = "bpf-debian";
const SETUP_HINT: &str = "run `cargo xtask setup` (or any `cargo xtask` command) to install it, or set AYA_BUILD_SKIP=1 to build without the XDP program";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("allowlist");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(&object, [])?;
        return Ok(());
    }
    if let Some(missing) = missing_toolchain() {
        println!("cargo::error=cannot build the XDP program: {missing}; {SETUP_HINT}");
        return Ok(());
    }
    // Debian's rustc is a stable compiler; build-std needs its unstable flags. The
    // inner cargo's progress lines would each become a cargo warning: keep it quiet
    // (its errors still come through).
    // SAFETY: build scripts are single-threaded here, before anything else runs.
    unsafe {
        env::set_var("RUSTC_BOOTSTRAP", "1");
        env::set_var("CARGO_TERM_QUIET", "true");
    }
    let root_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .expect("workspace root")
        .join("allowlist-ebpf");
    let root_dir = root_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "allowlist-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
}

/// Names what the BPF build lacks, if anything.
fn missing_toolchain() -> Option<String> {
    let toolchains = Command::new("rustup").args(["toolchain", "list"]).output();
    match toolchains {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with(TOOLCHAIN)) => {}
        Ok(_) => return Some(format!("the rustup toolchain `{TOOLCHAIN}` is not linked")),
        Err(err) => return Some(format!("rustup could not be run ({err})")),
    }
    let linker = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !linker {
        return Some("bpf-linker is not on PATH".to_owned());
    }
    if !PathBuf::from("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        return Some("Debian's core sources (package rust-web-src) are not installed".to_owned());
    }
    None
}
