//! Media socket set-up: bind one UDP port with the configured buffer sizes, and find out what
//! the kernel actually grants (it silently clamps to `net.core.rmem_max` / `wmem_max`).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

pub fn bind_udp(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(recv_buffer)?;
    socket.set_send_buffer_size(send_buffer)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// What the kernel grants a UDP socket that asks for the configured buffer sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantedBuffers {
    pub recv_requested: usize,
    pub recv_granted: usize,
    pub send_requested: usize,
    pub send_granted: usize,
}

impl GrantedBuffers {
    pub fn probe(ip: IpAddr, recv_buffer: usize, send_buffer: usize) -> io::Result<GrantedBuffers> {
        let socket = bind_udp(ip, 0, recv_buffer, send_buffer)?;
        let socket = Socket::from(socket);
        // Linux reports twice the usable size it granted (it reserves room for bookkeeping).
        Ok(GrantedBuffers {
            recv_requested: recv_buffer,
            recv_granted: socket.recv_buffer_size()? / 2,
            send_requested: send_buffer,
            send_granted: socket.send_buffer_size()? / 2,
        })
    }

    /// Logs the granted sizes, with the sysctl to raise any that were clamped.
    pub fn log(&self) {
        tracing::info!(
            recv_requested = self.recv_requested,
            recv_granted = self.recv_granted,
            send_requested = self.send_requested,
            send_granted = self.send_granted,
            "UDP socket buffers"
        );
        if self.recv_granted < self.recv_requested {
            tracing::warn!(
                "media.udp_recv_buffer asks for {} bytes but the kernel grants {}: raise it with `sysctl -w net.core.rmem_max={}`",
                self.recv_requested,
                self.recv_granted,
                self.recv_requested
            );
        }
        if self.send_granted < self.send_requested {
            tracing::warn!(
                "media.udp_send_buffer asks for {} bytes but the kernel grants {}: raise it with `sysctl -w net.core.wmem_max={}`",
                self.send_requested,
                self.send_granted,
                self.send_requested
            );
        }
    }
}
