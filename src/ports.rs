//! The media port range: each session takes one port (BUNDLE and rtcp-mux put all its media on
//! it, UDP and ICE-TCP alike) and gives it back when its sockets are closed. Ports in use by
//! other programs are skipped.
//!
//! The range is split into one contiguous share per worker, so a port says which worker owns
//! it: deployers can steer each share's packets to that worker's core (NIC flow rules, RPS).

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
    /// `shares[w]` is worker `w`'s part of the range, as indices into `in_use`.
    shares: Vec<std::ops::Range<usize>>,
    /// Per share, where the next search starts, so a freed port is not reused at once.
    cursors: Vec<usize>,
    count: usize,
}

impl PortAllocator {
    /// Splits `range` among `workers` (at least one port each; the config checks that).
    pub fn new(range: PortRange, workers: usize) -> Self {
        let len = range.len();
        let workers = workers.clamp(1, len);
        let shares: Vec<_> = (0..workers)
            .map(|w| (w * len / workers)..((w + 1) * len / workers))
            .collect();
        PortAllocator {
            range,
            in_use: vec![false; len],
            cursors: shares.iter().map(|s| s.start).collect(),
            shares,
            count: 0,
        }
    }

    /// The worker whose share holds `port`.
    pub fn worker_of(&self, port: u16) -> Option<usize> {
        let i = port.checked_sub(self.range.first)? as usize;
        self.shares.iter().position(|s| s.contains(&i))
    }

    /// Finds a free port that `bind` accepts, trying the workers' shares in `preference`
    /// order; returns the port, its worker and what `bind` made. `bind` failing with "address
    /// in use" moves on to the next port; any other error is returned.
    pub fn allocate<T>(
        &mut self,
        preference: impl IntoIterator<Item = usize>,
        mut bind: impl FnMut(u16) -> io::Result<T>,
    ) -> Result<io::Result<(u16, usize, T)>, PortError> {
        let mut busy = 0;
        for worker in preference {
            let Some(share) = self.shares.get(worker).cloned() else {
                continue;
            };
            for step in 0..share.len() {
                let i = share.start + (self.cursors[worker] - share.start + step) % share.len();
                if self.in_use[i] {
                    continue;
                }
                let port = self.range.first + i as u16;
                match bind(port) {
                    Ok(t) => {
                        self.in_use[i] = true;
                        self.count += 1;
                        self.cursors[worker] = if i + 1 == share.end {
                            share.start
                        } else {
                            i + 1
                        };
                        return Ok(Ok((port, worker, t)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => busy += 1,
                    Err(e) => return Ok(Err(e)),
                }
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

    fn one(ports: &mut PortAllocator) -> u16 {
        ports.allocate([0], Ok).unwrap().unwrap().0
    }

    #[test]
    fn allocates_every_port_once_then_reports_exhaustion() {
        let mut ports = PortAllocator::new(range(5000, 5002), 1);
        let mut got: Vec<u16> = (0..3).map(|_| one(&mut ports)).collect();
        got.sort();
        assert_eq!(got, vec![5000, 5001, 5002]);
        let err = ports.allocate([0], Ok).unwrap_err();
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
        assert_eq!(one(&mut ports), 5001);
    }

    #[test]
    fn shares_are_contiguous_per_worker_and_fall_back_to_others_when_full() {
        let mut ports = PortAllocator::new(range(8000, 8004), 2);
        assert_eq!(ports.worker_of(8000), Some(0));
        assert_eq!(ports.worker_of(8001), Some(0));
        assert_eq!(ports.worker_of(8002), Some(1));
        assert_eq!(ports.worker_of(8004), Some(1));
        assert_eq!(ports.worker_of(7999), None);
        let (port, worker, _) = ports.allocate([1, 0], Ok).unwrap().unwrap();
        assert_eq!((port, worker), (8002, 1));
        for _ in 0..2 {
            assert_eq!(ports.allocate([0], Ok).unwrap().unwrap().1, 0);
        }
        // Worker 0's share is full: its sessions go to worker 1's ports.
        let (port, worker, _) = ports.allocate([0, 1], Ok).unwrap().unwrap();
        assert_eq!(worker, 1);
        assert_eq!(ports.worker_of(port), Some(1));
    }

    #[test]
    fn ports_busy_elsewhere_are_skipped_and_counted() {
        let mut ports = PortAllocator::new(range(6000, 6002), 1);
        let first = ports
            .allocate([0], |p| {
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
            .allocate([0], |_| Err::<u16, _>(io::ErrorKind::AddrInUse.into()))
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
        let mut ports = PortAllocator::new(range(7000, 7003), 1);
        let a = one(&mut ports);
        ports.release(a);
        assert_ne!(one(&mut ports), a);
        assert_eq!(ports.in_use(), 1);
        ports.release(9999); // outside the range: ignored
        assert_eq!(ports.capacity(), 4);
    }
}
