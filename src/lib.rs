//! corecast: a WebRTC media relay (SFU) for bare-metal Linux. See DESIGN.md in the shared folder
//! for the architecture; this crate's modules follow its layers.

pub mod client;
pub mod config;
pub mod control;
pub mod logging;
pub mod net;
pub mod ports;
pub mod sdp;
pub mod server;
pub mod session;
pub mod srtp;
pub mod wire;
pub mod worker;

// The module's old name, for code on other branches that still says `negotiation`.
pub use self::sdp as negotiation;
