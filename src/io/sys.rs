//! Small safe wrappers over libc calls that callers outside this layer need.

/// The kernel's clock ticks per second (`_SC_CLK_TCK`), the unit of /proc's CPU times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks.max(1) as u64
}
