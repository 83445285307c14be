//! Rebuilds the XDP program when the `bpf-linker` binary changes, as aya-template
//! does: the crate depends on that linker without cargo knowing it (artifact
//! dependencies would say it, but are unstable). A linker put earlier on PATH than
//! the one recorded here is not noticed; watching all of PATH would rebuild far too
//! often.

fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(e) => {
            println!("cargo:warning=bpf-linker not found on PATH ({e}): run `cargo xtask setup`");
            // Where `cargo install` puts it: a file that does not exist yet makes cargo
            // run this again, so the warning goes once setup has installed it.
            let cargo_home = (std::env::var_os("CARGO_HOME").map(std::path::PathBuf::from))
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo"))
                });
            if let Some(home) = cargo_home {
                println!(
                    "cargo:rerun-if-changed={}",
                    home.join("bin/bpf-linker").display()
                );
            }
        }
    }
}
