//! corecast: a WebRTC media relay (SFU) for bare-metal Linux. ARCHITECTURE.md in the
//! repository describes the layers, the threads and one packet's walk through them.
//!
//! Layers, bottom up: [`media`] (shared vocabulary), [`wire`] (pure formats, SRTP included),
//! [`session`] (sans-IO state machines), [`io`] (io_uring and sockets: the only `unsafe`),
//! [`worker`] (the data plane), [`control`] (signaling and lifecycle), [`client`].
//!
//! `unsafe` is denied everywhere but [`io`], which keeps io_uring's "valid until completion"
//! contract itself, so code outside it cannot break it.
//!
//! The worker loop's invariants: a worker never blocks except in its ring's wait (which has a
//! deadline); each turn's work is bounded; a socket is closed only once no operation queued on
//! the ring can still name its descriptor, and only then is its port reported free; an egress
//! buffer is never written while the kernel may read it.
//!
//! Panics: nothing a peer sends is meant to make the relay panic (the parsers are fuzzed):
//! malformed, unexpected or unauthenticated input is a counted drop (`worker::stats`), errors
//! are values. The workers panic only where
//! going on would break an invariant above (an egress slot used while in flight, a GSO or TCP
//! send reused while in flight): a bug, caught before it becomes memory corruption.

#![deny(unsafe_code)]
// What is `pub` is reachable from outside; what is not is `pub(crate)` or narrower. (Not in
// test builds: test modules' helpers need not care.)
#![cfg_attr(not(test), warn(unreachable_pub))]

pub mod client;
pub mod cluster;
pub mod config;
pub mod control;
mod dtls;
#[allow(unsafe_code)]
pub mod io;
pub mod logging;
pub mod media;
pub mod ports;
pub mod sdp;
pub mod server;
pub mod session;
pub mod util;
pub mod wire;
pub mod worker;
