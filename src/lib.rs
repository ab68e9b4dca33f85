//! corecast: a WebRTC media relay (SFU) for bare-metal Linux. See DESIGN.md in the shared folder
//! for the architecture; this crate's modules follow its layers.

pub mod client;
pub mod config;
pub mod control;
pub mod logging;
pub mod negotiation;
pub mod net;
pub mod ports;
pub mod server;
pub mod session;
pub mod srtp;
pub mod wire;
pub mod worker;
