//! A deliberately small HTTP/1.1 client for tests and readiness checks: one request per
//! connection, bounded by a timeout, always to a loopback address.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request to `port` on 127.0.0.1 and reads the whole response. `path` is the
/// request target and goes out byte for byte (backslashes, `;`, `%`, `..`, `#` and all), after a
/// `host: 127.0.0.1:PORT` and a `connection: close` header.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send_raw(port, req.as_bytes())
}

/// Sends `request_line` and then `header_lines` exactly as given, each ended with CRLF, then
/// the blank line: no header is added, so the caller writes its own `host` (or none), can
/// repeat a header, put a tab in a value or name a header in any case.
pub fn request_lines(port: u16, request_line: &str, header_lines: &[&str]) -> Result<Response, String> {
    let mut req = format!("{request_line}\r\n");
    for line in header_lines {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    send_raw(port, req.as_bytes())
}

/// Writes `raw` (a complete request head, and body if any) to `port` on 127.0.0.1 as is,
/// for bytes a `&str` cannot carry, and reads the whole response.
pub fn send_raw(port: u16, raw: &[u8]) -> Result<Response, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(raw).map_err(|e| e.to_string())?;
    // Read until the response is complete (Content-Length or the last chunk), not until EOF:
    // Envoy holds a connection open for up to its delayed-close timeout (1 s) after a local
    // reply, and waiting for that would make every denial look slow.
    // A response to HEAD has no body whatever its Content-Length says.
    let head_only = raw.starts_with(b"HEAD ");
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if response_complete(&raw, head_only) {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
    parse_response(&raw)
}

fn response_complete(raw: &[u8], head_only: bool) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head_only {
        return true;
    }
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    request(port, "GET", path, headers)
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("response has no header end")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
