//! What the process needs before anything else runs: SIGHUP held until the reload
//! handler exists, the stop signals, and an allocator that gives large blocks back.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};

/// The future that ends the agent: SIGTERM or SIGINT. Its handlers are installed
/// when this is called (so call it first), not when it is first polled; it resolves
/// to the signal's name. `main` passes it to [`run`], which hands it on to every
/// long task (mini-redis' `server::run(listener, shutdown)`).
pub(crate) fn shutdown_signal() -> Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// The reload signal's stream, installed before anything else so that no SIGHUP sent
/// during start-up (during the first fetch, say) is lost: the stream keeps one
/// pending notification until the loop reads it.
pub(super) fn reload_signal() -> Result<tokio::signal::unix::Signal> {
    let hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // A SIGHUP held since the process started is delivered to the handler now.
    set_reload_signal_blocked(false);
    Ok(hup)
}

/// Blocks SIGHUP in the calling thread and every thread it starts later; call it
/// first thing in `main`. [`run`] unblocks it once its handler is in place.
pub(crate) fn hold_reload_signal() {
    set_reload_signal_blocked(true);
}

/// Undoes [`hold_reload_signal`] for the commands that are not the agent.
pub(crate) fn release_reload_signal() {
    set_reload_signal_blocked(false);
}

/// glibc's allocator has no fixed size above which it maps a block of its own: each
/// time a mapped block is freed, it raises the threshold to that block's size, and
/// blocks below the threshold come from the heap, which keeps what is freed. A load
/// of 100,000 prefixes builds lists of megabytes and frees them, so after the first
/// refreshes the agent kept them all: 46 MiB resident where 34 MiB were in use
/// (`cargo xtask bench -- --only agent`). Fixing the threshold at glibc's default
/// (128 KiB) turns the raising off: large blocks are always mapped and go back to the
/// system when freed. Call it in `main` before any thread exists.
pub(crate) fn return_large_blocks_when_freed() {
    #[cfg(target_env = "gnu")]
    {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) } != 1 {
            // Not fatal: the agent works the same, holding more memory.
            eprintln!("allowlist: could not fix the allocator's mmap threshold");
        }
    }
}

fn set_reload_signal_blocked(blocked: bool) {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}
