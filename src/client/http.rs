//! A minimal HTTP/1.1 client for WHIP and WHEP: one request per connection, plain `http://`.
//! Enough for the load generator and for relay-to-relay republishing on a private network.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("`{0}` is not an http:// URL (https is not supported)")]
    BadUrl(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("reading the response from {0}: {1}")]
    Io(String, String),
    #[error("malformed response from {0}")]
    Malformed(String),
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `http://host:port/path` split into the address and the path.
pub fn split_url(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_string()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(HttpError::BadUrl(url.to_string()));
    }
    let host = if host.contains(':') || host.starts_with('[') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Resolves a `Location` header against the URL it answered.
pub fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    match split_url(base) {
        Ok((host, _)) if location.starts_with('/') => format!("http://{host}{location}"),
        _ => location.to_string(),
    }
}

pub async fn request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let (host, path) = split_url(url)?;
    let work = async {
        let mut stream = TcpStream::connect(&host)
            .await
            .map_err(|e| HttpError::Connect(host.clone(), e.to_string()))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let io = |e: std::io::Error| HttpError::Io(host.clone(), e.to_string());
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(body.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io)?;
        parse_response(&raw).ok_or_else(|| HttpError::Malformed(host.clone()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HttpError::Timeout(url.to_string()))?
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        body = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_locations_resolve() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/whip/cam").unwrap(),
            ("127.0.0.1:8080".into(), "/whip/cam".into())
        );
        assert_eq!(
            split_url("http://example.test").unwrap(),
            ("example.test:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
        assert_eq!(
            resolve("http://127.0.0.1:1/whip/a", "/session/3"),
            "http://127.0.0.1:1/session/3"
        );
        assert_eq!(resolve("http://a:1/x", "http://b:2/y"), "http://b:2/y");
    }

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nLocation: /s/1\r\n\r\nv=0\r\n").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/s/1"));
        assert_eq!(r.body, "v=0\r\n");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, "abcde");
        assert!(parse_response(b"garbage").is_none());
    }
}
