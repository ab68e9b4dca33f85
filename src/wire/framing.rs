//! RFC 4571 framing: RTP, RTCP, STUN and DTLS over a TCP stream, each packet behind a 2-byte
//! big-endian length (RFC 6544 §3 for ICE-TCP).
//!
//! Reading cuts frames out of each read in place: a frame that lies wholly inside one read is
//! handed out as a slice of the receive buffer, never copied. Only a frame that spans reads is
//! gathered in the reader's own buffer (at most one per read). Writing puts the length into
//! the 2 bytes of headroom every egress buffer reserves, so no packet is copied to be framed.

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// No packet the relay handles is this long; the stream is out of step or hostile.
    #[error("frame length {0} exceeds the largest packet accepted ({1})")]
    TooLong(usize, usize),
}

/// Reassembles frames from a stream's reads.
#[derive(Debug)]
pub struct FrameReader {
    max_frame: usize,
    /// Bytes of a frame that began in an earlier read, length prefix included.
    partial: Vec<u8>,
}

/// An empty reader that accepts nothing; it allocates nothing, so it can stand in while the
/// real one is borrowed out.
impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            max_frame: 0,
            partial: Vec::new(),
        }
    }
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader {
            max_frame,
            partial: Vec::with_capacity(PREFIX_LEN + max_frame),
        }
    }

    /// The bytes of a half-read frame (its length prefix included), taken out: the stream
    /// continues elsewhere (an ICE-TCP connection moving to another worker).
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// Whether a frame is half-read.
    pub fn is_mid_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds one read; calls `on_frame` for every complete frame, in stream order. Zero-length
    /// frames are skipped. After an error the stream cannot be trusted and must be closed.
    pub fn feed(
        &mut self,
        mut data: &mut [u8],
        mut on_frame: impl FnMut(&mut [u8]),
    ) -> Result<(), FramingError> {
        if !self.partial.is_empty() {
            // Complete the length prefix, then the frame, from the front of this read.
            if self.partial.len() < PREFIX_LEN {
                let take = (PREFIX_LEN - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &mut data[take..];
                if self.partial.len() < PREFIX_LEN {
                    return Ok(());
                }
            }
            let len = u16::from_be_bytes([self.partial[0], self.partial[1]]) as usize;
            if len > self.max_frame {
                return Err(FramingError::TooLong(len, self.max_frame));
            }
            let missing = PREFIX_LEN + len - self.partial.len();
            let take = missing.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &mut data[take..];
            if take < missing {
                return Ok(());
            }
            if len > 0 {
                on_frame(&mut self.partial[PREFIX_LEN..]);
            }
            self.partial.clear();
        }
        while !data.is_empty() {
            if data.len() < PREFIX_LEN {
                self.partial.extend_from_slice(data);
                return Ok(());
            }
            let len = u16::from_be_bytes([data[0], data[1]]) as usize;
            if len > self.max_frame {
                return Err(FramingError::TooLong(len, self.max_frame));
            }
            if data.len() < PREFIX_LEN + len {
                self.partial.extend_from_slice(data);
                return Ok(());
            }
            let (frame, rest) = data.split_at_mut(PREFIX_LEN + len);
            if len > 0 {
                on_frame(&mut frame[PREFIX_LEN..]);
            }
            data = rest;
        }
        Ok(())
    }
}

/// Writes the length prefix of the `len`-byte packet that starts at `buffer[PREFIX_LEN]`;
/// the frame is then `buffer[..PREFIX_LEN + len]`.
pub fn write_prefix(buffer: &mut [u8], len: usize) {
    debug_assert!(len <= u16::MAX as usize);
    buffer[..PREFIX_LEN].copy_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; PREFIX_LEN + payload.len()];
        f[PREFIX_LEN..].copy_from_slice(payload);
        write_prefix(&mut f, payload.len());
        f
    }

    /// Feeds `stream` cut at `cuts` and returns the frames seen.
    fn read_all(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut reader = FrameReader::new(max);
        let mut frames = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            let mut chunk = stream[start..end].to_vec();
            reader.feed(&mut chunk, |f| frames.push(f.to_vec()))?;
            start = end;
        }
        assert!(!reader.is_mid_frame());
        Ok(frames)
    }

    #[test]
    fn several_frames_in_one_read_come_out_in_order() {
        let stream = [frame(b"one"), frame(b"two"), frame(b"three")].concat();
        assert_eq!(
            read_all(&stream, &[], 1500).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let stream = [frame(b"hello"), frame(&[7u8; 300]), frame(b"x")].concat();
        for cut in 1..stream.len() {
            let frames = read_all(&stream, &[cut], 1500).unwrap();
            assert_eq!(frames.len(), 3, "cut at {cut}");
            assert_eq!(frames[1], vec![7u8; 300]);
        }
        // One byte per read, the length prefix split too.
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(read_all(&stream, &cuts, 1500).unwrap().len(), 3);
    }

    #[test]
    fn zero_length_frames_are_skipped_and_maximum_length_frames_pass() {
        let big = vec![1u8; 1500];
        let stream = [frame(b""), frame(&big), frame(b""), frame(b"z")].concat();
        let frames = read_all(&stream, &[3, 700], 1500).unwrap();
        assert_eq!(frames, vec![big, b"z".to_vec()]);
    }

    #[test]
    fn a_length_beyond_the_maximum_is_an_error() {
        let stream = frame(&[0u8; 1501]);
        assert_eq!(
            read_all(&stream, &[], 1500),
            Err(FramingError::TooLong(1501, 1500))
        );
        // Also when the prefix arrives split.
        assert_eq!(
            read_all(&stream, &[1], 1500),
            Err(FramingError::TooLong(1501, 1500))
        );
        // Garbage reads as an absurd length.
        assert!(read_all(b"GET / HTTP/1.1\r\n", &[], 1500).is_err());
    }

    #[test]
    fn whole_frames_are_handed_out_in_place() {
        let mut stream = [frame(b"abc"), frame(b"def")].concat();
        let base = stream.as_ptr() as usize;
        let mut reader = FrameReader::new(100);
        let mut offsets = Vec::new();
        reader
            .feed(&mut stream, |f| offsets.push(f.as_ptr() as usize - base))
            .unwrap();
        assert_eq!(offsets, vec![2, 7]);
    }
}
