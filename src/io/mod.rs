//! The I/O layer, and the only module allowed `unsafe`: one [`Ring`] per worker (an io_uring,
//! or where the kernel refuses io_uring an epoll set: [`IoBackend`], chosen once at start) and
//! every piece of memory the kernel reads or writes while an operation is in flight.
//!
//! The contract io_uring imposes ("a buffer stays valid and untouched until its completion")
//! is kept here and cannot be broken from outside: [`Ring`] owns the egress buffers, the GSO
//! and TCP send headers, the receive buffers' memory and the wake-up buffer, drops them only
//! after the kernel's ring is gone, and refuses (panics) to hand out or reuse an egress slot
//! whose send is still in flight. The worker sees typed [`Completion`]s, never `user_data`
//! bits.
//!
//! One file per mechanism: `ring` (the one interface the worker uses, over either backend),
//! `backend` (choosing and probing), `uring` (the io_uring backend: submissions, its backlog,
//! decoding completions), `epoll` (the readiness backend: batched syscalls whose results
//! become the same completions), `recv` (provided receive buffers), `egress` (the egress
//! pool), `gso` (UDP segmentation offload sends), `tcp` (gathered ICE-TCP sends, accepts),
//! `wake` (the eventfd), `addr` (socket addresses as the kernel takes them), `socket`
//! (binding media ports), `sys` (small safe wrappers over libc calls).

mod addr;
mod backend;
mod completion;
mod egress;
mod epoll;
mod gso;
mod recv;
mod ring;
pub mod socket;
pub mod sys;
mod tcp;
mod uring;
mod wake;

pub use addr::RawAddr;
pub use backend::{
    AUTO_PREFERS, BackendChoice, BackendSetting, IoBackend, choose_backend, probe_io_uring,
};
pub use completion::{Completion, Pending, Received, Token};
pub use egress::{EGRESS_BUFFER_SIZE, EGRESS_HEADROOM};
pub use gso::{MAX_GSO_SEGMENTS, udp_gso_supported};
pub use recv::{RECV_BUFFER_SIZE, RecvBuffer, RecvBuffers};
pub use ring::{Ring, RingSizes};
pub use tcp::MAX_SEND_BATCH;
pub use wake::{WakeFd, notify};

/// Re-exported from [`crate::media`], its home.
pub use crate::media::MAX_PACKET;
