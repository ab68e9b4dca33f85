//! The eventfd other threads wake a worker with, while it waits in its ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An eventfd a worker keeps a read armed on (the ring owns it and the read's buffer once the
/// worker starts: see [`super::Ring::new`]).
pub struct WakeFd {
    pub(super) fd: OwnedFd,
}

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WakeFd {
            // SAFETY: `fd` is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A handle other threads write to.
    pub fn notifier(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// Writes to a worker's eventfd.
pub fn notify(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd; failure (counter full) still wakes.
    unsafe {
        libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
    }
}
