//! Which kernel interface the workers use, decided once at start: io_uring where the kernel
//! allows it, epoll (readiness, batched `recvmmsg`/`sendmmsg`) where it does not or where the
//! operator asks for it. Containers under Docker's default seccomp profile, kernels with
//! `kernel.io_uring_disabled` set and many managed clouds refuse io_uring outright.

use std::fmt;

use io_uring::{IoUring, opcode};

use super::recv::RecvMemory;

/// What runs the workers' I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    IoUring,
    Epoll,
}

impl IoBackend {
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `workers.backend`: what the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSetting {
    /// The measured default where the kernel allows it, else the other one.
    Auto,
    IoUring,
    Epoll,
}

impl fmt::Display for BackendSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendSetting::Auto => "auto",
            BackendSetting::IoUring => "io_uring",
            BackendSetting::Epoll => "epoll",
        })
    }
}

/// What `auto` picks where io_uring works. See BENCHMARKS.md ("io_uring or epoll"): on every
/// scenario measured there io_uring forwards a packet for less CPU (epoll about 1.2×) and far
/// fewer system calls, with the same loss.
pub const AUTO_PREFERS: IoBackend = IoBackend::IoUring;

/// The backend that will run, and why (for the start-up log and `tuning/check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: IoBackend,
    pub reason: String,
}

/// Decides the backend for `setting`, probing io_uring where it matters (`probe` is
/// [`probe_io_uring`] outside tests). A forced `io_uring` the kernel refuses is an error whose
/// message says how to allow it or to choose epoll.
pub fn choose_backend(
    setting: BackendSetting,
    probe: impl FnOnce() -> Result<(), String>,
) -> Result<BackendChoice, String> {
    let choice = |backend, reason: String| Ok(BackendChoice { backend, reason });
    match setting {
        BackendSetting::Epoll => choice(IoBackend::Epoll, "workers.backend = \"epoll\"".into()),
        BackendSetting::IoUring => match probe() {
            Ok(()) => choice(IoBackend::IoUring, "workers.backend = \"io_uring\"".into()),
            Err(why) => Err(format!(
                "workers.backend = \"io_uring\", but {why}. Allow io_uring (`sysctl -w \
                 kernel.io_uring_disabled=0`; in a container, a seccomp profile that permits \
                 io_uring_setup, io_uring_enter and io_uring_register: `docker run \
                 --security-opt seccomp=PROFILE.json`), or set \
                 workers.backend = \"epoll\" (or \"auto\")"
            )),
        },
        BackendSetting::Auto if AUTO_PREFERS == IoBackend::Epoll => choice(
            IoBackend::Epoll,
            "workers.backend = \"auto\": epoll, the measured default (BENCHMARKS.md)".into(),
        ),
        BackendSetting::Auto => match probe() {
            Ok(()) => choice(
                IoBackend::IoUring,
                "workers.backend = \"auto\": the kernel allows io_uring".into(),
            ),
            Err(why) => choice(
                IoBackend::Epoll,
                format!("workers.backend = \"auto\": {why}, so the workers use epoll"),
            ),
        },
    }
}

/// Whether this process may use io_uring as the workers do: a ring with the set-up flags
/// they ask for (or a plain one), every opcode they submit, and a provided-buffer ring
/// (5.19+). `Err` says what was refused.
pub fn probe_io_uring() -> Result<(), String> {
    let ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return Err(format!(
                "io_uring is refused ({e}; kernel.io_uring_disabled or a seccomp filter)"
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            return Err(format!("the kernel has no io_uring ({e})"));
        }
        Err(e) => return Err(format!("setting up an io_uring failed ({e})")),
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring's opcode probe failed ({e})"))?;
    let needed = [
        (opcode::Send::CODE, "send"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::RecvMsg::CODE, "recvmsg"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Accept::CODE, "accept"),
        (opcode::Read::CODE, "read"),
        (opcode::AsyncCancel::CODE, "async cancel"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|&(_, name)| name)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "io_uring lacks the opcodes {} (kernel 6.0+ needed)",
            missing.join(", ")
        ));
    }
    let memory = RecvMemory::new(1).map_err(|e| e.to_string())?;
    // SAFETY: `memory.entries` is page-aligned memory for one entry, alive until after the
    // ring (and with it the registration) is dropped below.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(memory.entries as u64, 1, 0, 0)
    }
    .map_err(|e| format!("io_uring refuses provided-buffer rings ({e}; kernel 5.19+ needed)"))?;
    drop(ring);
    drop(memory);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_io_uring_that_is_refused_says_how_to_allow_it() {
        let refused = || Err("io_uring is refused (Operation not permitted)".to_string());
        let err = choose_backend(BackendSetting::IoUring, refused).unwrap_err();
        assert!(err.contains("kernel.io_uring_disabled=0"), "{err}");
        assert!(err.contains("seccomp"), "{err}");
        assert!(err.contains("workers.backend = \"epoll\""), "{err}");
    }

    #[test]
    fn auto_and_epoll_run_where_io_uring_is_refused() {
        let refused = || Err("io_uring is refused".to_string());
        for setting in [BackendSetting::Auto, BackendSetting::Epoll] {
            let choice = choose_backend(setting, refused).unwrap();
            assert_eq!(choice.backend, IoBackend::Epoll);
        }
        let allowed = || Ok(());
        let forced = choose_backend(BackendSetting::IoUring, allowed).unwrap();
        assert_eq!(forced.backend, IoBackend::IoUring);
    }
}
