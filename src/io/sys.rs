//! Small safe wrappers over libc calls that callers outside this layer need.

/// The kernel's clock ticks per second (`_SC_CLK_TCK`), the unit of /proc's CPU times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks.max(1) as u64
}

/// Sets the calling thread's nice value (on Linux a thread's own): the DTLS handshake pool
/// runs behind the workers, so a crowd of handshakes never takes a core from the media.
pub fn set_this_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
