//! Logging set-up: the `RUST_LOG` filter, and a limit on repeated warnings.
//!
//! What a client sends must not decide how much the relay writes to disk. The DTLS library
//! logs a warning for every extension it does not know (about 30 per Firefox handshake), so its
//! warnings are off by default (its failures reach the log as the session's end reason); and
//! any warning or error that repeats from one place in the code is let through at most
//! `BURST` times per `WINDOW`, then summed up in one line when the window has passed.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,webrtc_dtls=error";
/// Warnings (and errors) let through from one call site per window.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);

/// Log lines suppressed as repeats since start.
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Installs the global subscriber: `RUST_LOG` (or [`DEFAULT_FILTER`]) and the repeat limit.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::registry()
        // The level filter first, so only lines that would be written count as repeats.
        .with(tracing_subscriber::fmt::layer().with_filter(filter.and(RepeatLimit::default())))
        .init();
}

/// Per call site: when its window started, and what it let through and held back in it.
struct Window {
    started: Instant,
    passed: u32,
    suppressed: u64,
}

/// A filter that lets each warning or error call site through `BURST` times per `WINDOW`.
#[derive(Default)]
pub struct RepeatLimit {
    windows: Mutex<HashMap<Identifier, Window>>,
}

/// What the repeat limit decides for one event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Pass, after a summary of the repeats the previous window held back.
    PassAfterSuppressing(u64),
    Suppress,
}

impl RepeatLimit {
    fn judge(&self, callsite: Identifier, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(callsite).or_insert(Window {
            started: now,
            passed: 0,
            suppressed: 0,
        });
        let mut held_back = 0;
        if now.saturating_duration_since(window.started) >= WINDOW {
            held_back = std::mem::take(&mut window.suppressed);
            window.started = now;
            window.passed = 0;
        }
        if window.passed < BURST {
            window.passed += 1;
            if held_back > 0 {
                Verdict::PassAfterSuppressing(held_back)
            } else {
                Verdict::Pass
            }
        } else {
            window.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        match self.judge(meta.callsite(), Instant::now()) {
            Verdict::Pass => true,
            Verdict::PassAfterSuppressing(n) => {
                // Written directly: logging from inside the subscriber would re-enter it.
                let _ = writeln!(
                    std::io::stdout(),
                    "{} corecast: {n} repeats of the next warning ({}:{}) were suppressed",
                    meta.level(),
                    meta.file().unwrap_or("?"),
                    meta.line().unwrap_or(0)
                );
                true
            }
            Verdict::Suppress => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not zero-sized: two statics must have distinct addresses (identifiers).
    struct Site(#[allow(dead_code)] u8);
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("the limit only uses the identifier")
        }
    }
    static FIRST: Site = Site(1);
    static SECOND: Site = Site(2);

    #[test]
    fn a_repeated_warning_passes_a_burst_per_window_then_reports_what_it_held_back() {
        let limit = RepeatLimit::default();
        let start = Instant::now();
        let first = || Identifier(&FIRST);
        for _ in 0..BURST {
            assert_eq!(limit.judge(first(), start), Verdict::Pass);
        }
        for _ in 0..25 {
            assert_eq!(limit.judge(first(), start), Verdict::Suppress);
        }
        // Another call site has a window of its own.
        assert_eq!(limit.judge(Identifier(&SECOND), start), Verdict::Pass);
        let later = start + WINDOW;
        assert_eq!(
            limit.judge(first(), later),
            Verdict::PassAfterSuppressing(25)
        );
        assert_eq!(limit.judge(first(), later), Verdict::Pass);
    }
}
