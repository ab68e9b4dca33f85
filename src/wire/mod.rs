//! Wire formats: pure parse/build functions on byte slices. No I/O, no clock, and no
//! allocation on the packet path. One file per format.

pub mod demux;
pub mod framing;
pub mod keyframe;
pub mod nack;
pub mod remb;
pub mod rtcp;
pub mod rtcp_report;
pub mod rtp;
pub mod rtx;
pub mod srtp;
pub mod stun;
pub mod twcc;
