//! corecast: a WebRTC media relay (SFU) for bare-metal Linux. ARCHITECTURE.md in the
//! repository describes the layers, the threads and one packet's walk through them.
//!
//! Layers, bottom up: [`media`] (shared vocabulary), [`wire`] and [`srtp`] (pure formats),
//! [`session`] (sans-IO state machines), [`io`] (io_uring and sockets: the only `unsafe`),
//! [`worker`] (the data plane), [`control`] (signaling and lifecycle), [`client`].
//!
//! `unsafe` is denied everywhere but [`io`], which keeps io_uring's "valid until completion"
//! contract itself, so code outside it cannot break it.

#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod control;
#[allow(unsafe_code)]
pub mod io;
pub mod media;
pub mod negotiation;
pub mod ports;
pub mod server;
pub mod session;
pub mod srtp;
pub mod wire;
pub mod worker;

/// Socket set-up's old path: it lives in [`io::socket`] now.
pub use io::socket as net;
