//! The agent's links: the check that re-attaches and reports, and what wakes it.
//!
//! [`LinkEvents`] wakes the agent when an interface appears, goes away, is renamed or changes state:
//! an rtnetlink socket subscribed to link notifications (`RTMGRP_LINK`), in the
//! network namespace the agent runs in.
//!
//! The messages are not parsed: any of them means "check the links now". A periodic
//! check runs beside it, so a missed or overflowing notification only delays the
//! check, never skips it.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};
use tracing::{error, info, warn};

use super::running::republish;
use crate::{
    config::Config,
    datapath::{Filter, InterfaceState},
    observe::metrics::SharedStatus,
};

pub(crate) struct LinkEvents {
    socket: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    pub(crate) fn subscribe() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open and
        // unchanged for its whole life.
        let socket = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { socket })
    }

    /// Waits for the next batch of link notifications and drains it.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        let mut guard = self.socket.readable().await?;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.socket.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n > 0 {
                continue;
            }
            if n == 0 {
                guard.clear_ready();
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Ok(());
                }
                io::ErrorKind::Interrupted => {}
                // ENOBUFS: notifications were lost; a check is due all the same.
                _ if err.raw_os_error() == Some(libc::ENOBUFS) => {}
                _ => return Err(err),
            }
        }
    }
}

/// The link check: re-attaches where it can, reports what changed, and updates the
/// interfaces in the published status. A free function over the fields it needs, so
/// that it also runs while a refresh holds the refresher.
pub(super) fn check_links_only(
    filter: &mut Filter,
    config: &Config,
    shared: &SharedStatus,
    write_failures: &mut u64,
) {
    let changes = filter.reconcile(&config.interfaces);
    if changes.is_empty() {
        return;
    }
    report_interface_changes(&changes);
    republish(
        shared,
        &config.state_dir,
        Some(filter.interfaces().to_vec()),
        write_failures,
    );
}

/// Logs how the interfaces' states changed: an interface that stops being filtered is
/// an error, one filtered again an info.
pub(super) fn report_interface_changes(changes: &[(Option<InterfaceState>, InterfaceState)]) {
    for (before, after) in changes {
        let was_attached = before.as_ref().is_some_and(|b| b.attached);
        match (was_attached, after.attached) {
            (_, false) => {
                error!(interface = %after.name, error = after.error.as_deref().unwrap_or_default(), "the interface is NOT filtered")
            }
            (false, true) => info!(interface = %after.name, "the interface is filtered"),
            (true, true) => {}
        }
        let was_named = before.as_ref().and_then(|b| b.now_named.as_ref());
        if after.now_named.as_ref() != was_named
            && let Some(now) = &after.now_named
        {
            warn!(interface = %after.name, now_named = %now, "the interface was renamed; the filter follows the device");
        }
    }
}
