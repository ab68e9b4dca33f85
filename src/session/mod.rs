//! Session logic: state machines that take `(now, input)` and say what to send and when to
//! wake. No sockets and no clock of their own, so tests drive them with a fake `Instant`.

pub mod bwe;
pub mod ice;
pub mod keyframe;
pub mod mux_table;
pub mod nack;
pub mod path;
pub mod player;
pub mod publisher;
pub mod publisher_link;
pub mod receive_stats;
pub mod retransmit;
pub mod sequence;
pub mod simulcast;
pub mod twcc;
