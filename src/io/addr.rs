//! Socket addresses in the form the kernel reads and writes them.

use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A socket address in the form the kernel takes, stored where a send can point at it.
#[derive(Clone, Copy)]
pub struct RawAddr {
    pub(super) storage: libc::sockaddr_in6,
    pub(super) len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_in6 (plain integers).
        let mut storage: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits inside sockaddr_in6 and both are plain data.
                unsafe {
                    std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin);
                }
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                storage.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                storage.sin6_port = v6.port().to_be();
                storage.sin6_addr.s6_addr = v6.ip().octets();
                storage.sin6_flowinfo = v6.flowinfo();
                storage.sin6_scope_id = v6.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// An address nothing is sent to: the placeholder in tables filled before a send.
    pub(super) fn unspecified() -> RawAddr {
        RawAddr::new(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// The address in a `sockaddr` the kernel wrote; `None` when it is not IPv4 or IPv6.
pub(super) fn sockaddr_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    if name.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([name[0], name[1]]) as i32;
    match family {
        libc::AF_INET if name.len() >= 8 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let ip = Ipv4Addr::new(name[4], name[5], name[6], name[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if name.len() >= 24 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let octets: [u8; 16] = name[8..24].try_into().expect("16 bytes");
            let ip = Ipv6Addr::from(octets);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_round_trip() {
        for s in ["127.0.0.1:31000", "[::1]:4000"] {
            let addr: SocketAddr = s.parse().unwrap();
            let raw = RawAddr::new(addr);
            // SAFETY: reading the plain-data storage as bytes, within its length.
            let bytes = unsafe {
                std::slice::from_raw_parts(&raw.storage as *const _ as *const u8, raw.len as usize)
            };
            assert_eq!(sockaddr_from_bytes(bytes), Some(addr));
        }
    }
}
