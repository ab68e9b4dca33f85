//! Wire formats: pure parse/build functions on byte slices. No I/O, no clock, and no
//! allocation on the packet path. One file per format.

pub mod demux;
pub mod framing;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod stun;
