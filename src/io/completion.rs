//! What the worker asks the ring to do, and what comes back: `user_data` is encoded and
//! decoded here only.

use std::net::TcpStream;

use super::recv::RecvBuffer;

/// Which of the worker's objects an operation belongs to: its slot in the worker's table and
/// the slot's generation (24 bits), so a completion for an object that has since gone is
/// recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub slot: usize,
    pub generation: u32,
}

/// The operation tags: the top byte of `user_data` says what completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    Recv = 1,
    Send = 2,
    Wake = 3,
    Cancel = 4,
    Accept = 5,
    TcpRecv = 6,
    TcpSend = 7,
    GsoSend = 8,
}

impl Op {
    fn from_tag(tag: u8) -> Option<Op> {
        Some(match tag {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::Wake,
            4 => Op::Cancel,
            5 => Op::Accept,
            6 => Op::TcpRecv,
            7 => Op::TcpSend,
            8 => Op::GsoSend,
            _ => return None,
        })
    }
}

/// `user_data` for `op` on slot `slot` of generation `generation`.
pub(super) fn user_data(op: Op, slot: usize, generation: u32) -> u64 {
    ((op as u64) << 56) | ((generation as u64 & 0xff_ffff) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The operation, slot and generation `user_data` names.
pub(super) fn decode(user_data: u64) -> Option<(Op, usize, u32)> {
    let op = Op::from_tag((user_data >> 56) as u8)?;
    let slot = (user_data & 0xffff_ffff) as usize;
    let generation = ((user_data >> 32) & 0xff_ffff) as u32;
    Some((op, slot, generation))
}

/// An operation still queued or in flight that can be cancelled.
#[derive(Debug, Clone, Copy)]
pub enum Pending {
    /// A session's multishot UDP receive.
    Recv(Token),
    /// A session's multishot accept.
    Accept(Token),
    /// A connection's multishot receive.
    TcpRecv(Token),
    /// A connection's gathered send.
    TcpSend(Token),
}

/// A multishot receive's completion: the buffer the kernel filled (give it back with
/// [`super::RecvBuffers::recycle`]), the kernel's result, and whether the receive stays armed.
pub struct Received {
    pub buffer: Option<RecvBuffer>,
    /// Bytes received, 0 for a stream's end, or a negated errno.
    pub result: i32,
    pub more: bool,
}

/// A completed operation, as the worker needs to know it.
pub enum Completion {
    /// A datagram (or an error) on a session's UDP socket.
    Datagram { session: Token, received: Received },
    /// Bytes (or the end, or an error) on an ICE-TCP connection.
    TcpData { conn: Token, received: Received },
    /// A plain UDP send finished; its egress slot is already free again.
    Sent { result: i32 },
    /// A GSO send finished; its egress slots are the worker's again (to free or resend).
    GsoSent { index: usize, result: i32 },
    /// A connection's gathered send finished; its egress slots are the worker's again.
    TcpSent { conn: Token, result: i32 },
    /// A connection accepted on a session's listener (`None`: accept failed), and whether the
    /// accept stays armed.
    Accepted {
        session: Token,
        stream: Option<TcpStream>,
        more: bool,
    },
    /// The wake-up eventfd was written to; re-arm it.
    Woken,
    /// A cancellation finished (nothing to do: the cancelled operation completes itself).
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for op in [Op::Recv, Op::Accept, Op::TcpSend, Op::GsoSend] {
            let ud = user_data(op, 4095, 0x12_3456);
            assert_eq!(decode(ud), Some((op, 4095, 0x12_3456)));
        }
        assert_eq!(decode(0), None);
    }
}
