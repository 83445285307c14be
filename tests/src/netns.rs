//! Network namespaces for tests, removed on drop even when the test fails.
//!
//! Code runs inside a namespace on a thread that has joined it (`setns` only changes
//! the calling thread), and child processes join it before `exec`. Only the network
//! namespace changes: unlike `ip netns exec`, the mount namespace stays the host's, so
//! the agent and the CLI see the same bpffs.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

/// A name no other test (or concurrent test run) uses: short enough for interface
/// names (15 bytes) with a one-letter suffix.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("al{:05x}{:02x}", std::process::id() & 0xfffff, n & 0xff)
}

pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`, panicking with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            enter(&path).expect("join the network namespace");
            f()
        })
        .join()
        .expect("thread inside the namespace panicked")
    }

    /// Starts a thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path).expect("join the network namespace");
            f()
        })
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let path = self.path();
        // SAFETY: only async-signal-safe calls (open, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || enter(&path));
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Joins the network namespace at `path` (this thread only).
pub fn enter(path: &std::path::Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: a valid namespace descriptor; setns only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether this process is root, as tests that load XDP programs or create network
/// namespaces need: they skip with a message when not, and fail under CI.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root (BPF, network namespaces); CI must run it as root"
    );
    eprintln!(
        "SKIPPED: this test needs root (BPF, network namespaces); run `cargo xtask test` as root"
    );
    false
}
