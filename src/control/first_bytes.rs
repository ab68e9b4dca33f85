//! The HTTP listener's first read of a connection, with `media.tcp_on_http`: reads a few bytes
//! within a deadline, asks `sniff` what they are, and for an ICE-TCP connection reads its
//! first frame whole. What was read is given back: replayed to the HTTP(S) server
//! ([`Rewound`]), or handed with the socket to a session's worker.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::sniff::{MAX_FIRST_FRAME, SNIFF_BYTES, Sniffed, sniff};

/// How long a connection has to say what it is: a browser's ICE check and a client's request
/// or ClientHello come at once after the connect.
pub const SNIFF_DEADLINE: Duration = Duration::from_secs(2);

/// What a connection turned out to be, with the bytes read from it.
pub enum FirstBytes {
    Http(Vec<u8>),
    Tls(Vec<u8>),
    /// `bytes` holds the first frame whole (`frame_len` bytes, prefix included) and perhaps
    /// more.
    IceTcp {
        bytes: Vec<u8>,
        frame_len: usize,
    },
    /// Sent something else, or closed first.
    Unknown,
    /// Did not say within the deadline.
    TimedOut,
}

/// Reads `stream`'s first bytes, at most [`MAX_FIRST_FRAME`] of them, for at most `deadline`.
pub async fn read_first_bytes(stream: &mut TcpStream, deadline: Duration) -> FirstBytes {
    match tokio::time::timeout(deadline, classify(stream)).await {
        Ok(first) => first,
        Err(_) => FirstBytes::TimedOut,
    }
}

async fn classify(stream: &mut TcpStream) -> FirstBytes {
    let mut buf = vec![0u8; MAX_FIRST_FRAME];
    let mut filled = 0;
    loop {
        let verdict = sniff(&buf[..filled]);
        let wanted = match verdict {
            Sniffed::NeedMore => SNIFF_BYTES,
            Sniffed::IceTcp { frame_len } if filled < frame_len => frame_len,
            Sniffed::IceTcp { frame_len } => {
                buf.truncate(filled);
                return FirstBytes::IceTcp {
                    bytes: buf,
                    frame_len,
                };
            }
            Sniffed::Http => {
                buf.truncate(filled);
                return FirstBytes::Http(buf);
            }
            Sniffed::Tls => {
                buf.truncate(filled);
                return FirstBytes::Tls(buf);
            }
            Sniffed::Unknown => return FirstBytes::Unknown,
        };
        // Never past what the verdict needs, so an HTTP request's body is not read here.
        let n = match stream.read(&mut buf[filled..wanted.max(filled + 1)]).await {
            Ok(0) | Err(_) => return FirstBytes::Unknown,
            Ok(n) => n,
        };
        filled += n;
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Rewound<S> {
    prefix: Vec<u8>,
    at: usize,
    stream: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Vec<u8>, stream: S) -> Self {
        Rewound {
            prefix,
            at: 0,
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let rest = &self.prefix[self.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_request_is_replayed_whole_and_its_body_left_unread() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(b"POST /whip/cam HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let FirstBytes::Http(prefix) = read_first_bytes(&mut server, SNIFF_DEADLINE).await else {
            panic!("not HTTP");
        };
        assert!(prefix.len() <= SNIFF_BYTES, "only what the verdict needed");
        let mut replayed = Rewound::new(prefix, server);
        let mut all = vec![0u8; 49];
        replayed.read_exact(&mut all).await.unwrap();
        assert!(all.starts_with(b"POST /whip/cam HTTP/1.1\r\n") && all.ends_with(b"abc"));
    }

    #[tokio::test]
    async fn silence_times_out_and_garbage_is_unknown() {
        let (_client, mut server) = pair().await;
        let first = read_first_bytes(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(first, FirstBytes::TimedOut));
        let (mut client, mut server) = pair().await;
        client.write_all(b"\xff\xfe garbage").await.unwrap();
        let first = read_first_bytes(&mut server, SNIFF_DEADLINE).await;
        assert!(matches!(first, FirstBytes::Unknown));
        // A slow half-request is a timeout, not a verdict.
        let (mut client, mut server) = pair().await;
        client.write_all(b"GE").await.unwrap();
        let first = read_first_bytes(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(first, FirstBytes::TimedOut));
    }
}
