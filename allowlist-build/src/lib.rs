//! How a build script builds one of the workspace's eBPF crates for the BPF target
//! and leaves the object in OUT_DIR, where the host crate embeds it.
//!
//! The BPF build needs Debian's rustc with matching core sources, linked as the rustup
//! toolchain `bpf-debian`, and bpf-linker; `cargo xtask setup` installs both. Without
//! them the build stops with one line that says so. With `AYA_BUILD_SKIP=1` (clippy,
//! docs) an empty placeholder is left instead.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const TOOLCHAIN: &str = "bpf-debian";
const SETUP_HINT: &str = "run `cargo xtask setup` (or any `cargo xtask` command) to install it, or set AYA_BUILD_SKIP=1 to build without the XDP program";

/// Builds the eBPF crate `package` in the workspace directory `dir` (relative to the
/// workspace root); its binary `object` ends up as OUT_DIR/`object`.
pub fn build_ebpf(package: &str, dir: &str, object: &str) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join(object), [])?;
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
    let root = workspace_root()?;
    let root_dir = root.join(dir);
    let root_dir = root_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(TOOLCHAIN),
    )
}

/// The workspace root: this crate's parent directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("allowlist-build is not inside a workspace"))
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
