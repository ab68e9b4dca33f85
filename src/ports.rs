//! The media port range: each session takes one port (BUNDLE and rtcp-mux put all its media on
//! it) and gives it back when its socket is closed. Ports in use by other programs are skipped.

use std::io;

use crate::config::PortRange;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error(
        "media port range {range} is exhausted ({in_use} ports in use by sessions, {busy} taken by other programs)"
    )]
    Exhausted {
        range: PortRange,
        in_use: usize,
        busy: usize,
    },
}

pub struct PortAllocator {
    range: PortRange,
    in_use: Vec<bool>,
    /// Where the next search starts, so a freed port is not reused at once.
    cursor: usize,
    count: usize,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        PortAllocator {
            range,
            in_use: vec![false; range.len()],
            cursor: 0,
            count: 0,
        }
    }

    /// Finds a free port that `bind` accepts; `bind` failing with "address in use" moves on to
    /// the next port, any other error is returned.
    pub fn allocate<T>(
        &mut self,
        mut bind: impl FnMut(u16) -> io::Result<T>,
    ) -> Result<io::Result<(u16, T)>, PortError> {
        let len = self.in_use.len();
        let mut busy = 0;
        for step in 0..len {
            let i = (self.cursor + step) % len;
            if self.in_use[i] {
                continue;
            }
            let port = self.range.first + i as u16;
            match bind(port) {
                Ok(t) => {
                    self.in_use[i] = true;
                    self.count += 1;
                    self.cursor = (i + 1) % len;
                    return Ok(Ok((port, t)));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => busy += 1,
                Err(e) => return Ok(Err(e)),
            }
        }
        Err(PortError::Exhausted {
            range: self.range,
            in_use: self.count,
            busy,
        })
    }

    pub fn release(&mut self, port: u16) {
        if self.range.contains(port) {
            let i = (port - self.range.first) as usize;
            if std::mem::replace(&mut self.in_use[i], false) {
                self.count -= 1;
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.count
    }

    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn allocates_every_port_once_then_reports_exhaustion() {
        let mut ports = PortAllocator::new(range(5000, 5002));
        let mut got: Vec<u16> = (0..3)
            .map(|_| ports.allocate(Ok).unwrap().unwrap().0)
            .collect();
        got.sort();
        assert_eq!(got, vec![5000, 5001, 5002]);
        let err = ports.allocate(Ok).unwrap_err();
        assert_eq!(
            err,
            PortError::Exhausted {
                range: range(5000, 5002),
                in_use: 3,
                busy: 0
            }
        );
        assert!(err.to_string().contains("5000-5002"));
        ports.release(5001);
        assert_eq!(ports.allocate(Ok).unwrap().unwrap().0, 5001);
    }

    #[test]
    fn ports_busy_elsewhere_are_skipped_and_counted() {
        let mut ports = PortAllocator::new(range(6000, 6002));
        let first = ports
            .allocate(|p| {
                if p == 6000 {
                    Err(io::ErrorKind::AddrInUse.into())
                } else {
                    Ok(p)
                }
            })
            .unwrap()
            .unwrap();
        assert_eq!(first.0, 6001);
        let err = ports
            .allocate(|_| Err::<u16, _>(io::ErrorKind::AddrInUse.into()))
            .unwrap_err();
        assert_eq!(
            err,
            PortError::Exhausted {
                range: range(6000, 6002),
                in_use: 1,
                busy: 2
            }
        );
    }

    #[test]
    fn released_port_is_not_reused_immediately_when_others_are_free() {
        let mut ports = PortAllocator::new(range(7000, 7003));
        let a = ports.allocate(Ok).unwrap().unwrap().0;
        ports.release(a);
        assert_ne!(ports.allocate(Ok).unwrap().unwrap().0, a);
        assert_eq!(ports.in_use(), 1);
        ports.release(9999); // outside the range: ignored
        assert_eq!(ports.capacity(), 4);
    }
}
