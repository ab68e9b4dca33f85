//! Media socket set-up: bind one UDP port with the configured buffer sizes, and find out what
//! the kernel actually grants (it silently clamps to `net.core.rmem_max` / `wmem_max`).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

pub fn bind_udp(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<UdpSocket> {
    bind_udp_with(ip, port, recv_buffer, send_buffer, false)
}

/// Whether single-port mode's shared port is free before the workers bind it: each binds with
/// `SO_REUSEPORT`, which would as well let them share the port with another process of the
/// same user holding it that way (a second corecast started by mistake), and the kernel would
/// then split the clients between the two. Bound here once without it, and let go.
pub fn check_port_free(ip: IpAddr, port: u16, udp: bool, tcp: bool) -> io::Result<()> {
    if udp {
        drop(bind_udp_with(ip, port, 4096, 4096, false)?);
    }
    if tcp {
        drop(bind_tcp_listener_with(ip, port, 4096, 4096, false)?);
    }
    Ok(())
}

/// One worker's UDP socket on single-port mode's shared port: every worker binds its own with
/// `SO_REUSEPORT`, and the kernel spreads the remote addresses over them.
pub fn bind_shared_udp(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<UdpSocket> {
    bind_udp_with(ip, port, recv_buffer, send_buffer, true)
}

fn bind_udp_with(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
    shared: bool,
) -> io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(shared)?;
    socket.set_recv_buffer_size(recv_buffer)?;
    socket.set_send_buffer_size(send_buffer)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// An ICE-TCP listener on a session's port (RFC 6544 passive candidate). Accepted connections
/// inherit the buffer sizes.
pub fn bind_tcp_listener(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<TcpListener> {
    bind_tcp_listener_with(ip, port, recv_buffer, send_buffer, false)
}

/// One worker's ICE-TCP listener on single-port mode's shared port (`SO_REUSEPORT`: the
/// kernel spreads new connections over the workers' listeners).
pub fn bind_shared_tcp_listener(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
) -> io::Result<TcpListener> {
    bind_tcp_listener_with(ip, port, recv_buffer, send_buffer, true)
}

fn bind_tcp_listener_with(
    ip: IpAddr,
    port: u16,
    recv_buffer: usize,
    send_buffer: usize,
    shared: bool,
) -> io::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier session on this port may linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(shared)?;
    socket.set_recv_buffer_size(recv_buffer)?;
    socket.set_send_buffer_size(send_buffer)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    // Browsers open a few connections per session; more wait in the backlog (a shared
    // listener takes every session's).
    socket.listen(if shared { 1024 } else { 16 })?;
    Ok(socket.into())
}

/// A session's sockets on its port: UDP, an ICE-TCP listener, or both, per `media.protocol`.
pub struct MediaSockets {
    pub udp: Option<UdpSocket>,
    pub tcp: Option<TcpListener>,
}

/// Binds what `media.protocol` asks for on one port; fails if any of it fails.
pub fn bind_media(media: &crate::config::MediaConfig, port: u16) -> io::Result<MediaSockets> {
    let udp = if media.protocol.udp() {
        Some(bind_udp(
            media.bind_ip,
            port,
            media.udp_recv_buffer,
            media.udp_send_buffer,
        )?)
    } else {
        None
    };
    let tcp = if media.protocol.tcp() {
        Some(bind_tcp_listener(
            media.bind_ip,
            port,
            media.tcp_recv_buffer,
            media.tcp_send_buffer,
        )?)
    } else {
        None
    };
    Ok(MediaSockets { udp, tcp })
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
    /// Probes a UDP socket with these sizes.
    pub fn probe_udp(
        ip: IpAddr,
        recv_buffer: usize,
        send_buffer: usize,
    ) -> io::Result<GrantedBuffers> {
        Self::read_back(
            Socket::from(bind_udp(ip, 0, recv_buffer, send_buffer)?),
            recv_buffer,
            send_buffer,
        )
    }

    /// Probes a TCP socket with these sizes.
    pub fn probe_tcp(
        ip: IpAddr,
        recv_buffer: usize,
        send_buffer: usize,
    ) -> io::Result<GrantedBuffers> {
        let listener = bind_tcp_listener(ip, 0, recv_buffer, send_buffer)?;
        Self::read_back(Socket::from(listener), recv_buffer, send_buffer)
    }

    fn read_back(
        socket: Socket,
        recv_buffer: usize,
        send_buffer: usize,
    ) -> io::Result<GrantedBuffers> {
        // Linux reports twice the usable size it granted (it reserves room for bookkeeping).
        Ok(GrantedBuffers {
            recv_requested: recv_buffer,
            recv_granted: socket.recv_buffer_size()? / 2,
            send_requested: send_buffer,
            send_granted: socket.send_buffer_size()? / 2,
        })
    }

    /// Logs the granted sizes for `what` ("UDP" or "TCP"), with the sysctl to raise any
    /// that were clamped.
    pub fn log(&self, what: &str) {
        let key = what.to_ascii_lowercase();
        tracing::info!(
            transport = what,
            recv_requested = self.recv_requested,
            recv_granted = self.recv_granted,
            send_requested = self.send_requested,
            send_granted = self.send_granted,
            "media socket buffers granted"
        );
        if self.recv_granted < self.recv_requested {
            tracing::warn!(
                "media.{key}_recv_buffer asks for {} bytes but the kernel grants {}: raise it with `sysctl -w net.core.rmem_max={}`",
                self.recv_requested,
                self.recv_granted,
                self.recv_requested
            );
        }
        if self.send_granted < self.send_requested {
            tracing::warn!(
                "media.{key}_send_buffer asks for {} bytes but the kernel grants {}: raise it with `sysctl -w net.core.wmem_max={}`",
                self.send_requested,
                self.send_granted,
                self.send_requested
            );
        }
    }
}
