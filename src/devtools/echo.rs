//! An upstream that answers every request with the request it received, as JSON:
//! `{"method": ..., "path": ..., "headers": {"name": "value", ...}}` (repeated headers are
//! joined with `,`). It lets tests and the demo see exactly what the filter let through.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub struct EchoUpstream {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl EchoUpstream {
    /// Listens on 127.0.0.1 at `port` (0 = any free port).
    pub fn start(port: u16) -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let served = served2.clone();
                    thread::spawn(move || serve(c, &served));
                }
            }
        });
        Ok(EchoUpstream { port, stop, served })
    }

    /// How many requests reached the upstream.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

/// One parsed HTTP/1.1 request head (and its body, read and discarded).
pub(crate) struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub close: bool,
}

/// One line, bytes that are not UTF-8 (HTTP's obs-text) replaced; None at EOF or on error.
fn read_line_lossy(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut raw = Vec::new();
    if reader.read_until(b'\n', &mut raw).ok()? == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// Reads one request from a keep-alive connection; None at EOF or on error.
pub(crate) fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RequestHead> {
    let request_line = read_line_lossy(reader)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = serde_json::Map::new();
    let mut content_length = 0usize;
    let mut close = false;
    loop {
        let line = read_line_lossy(reader)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                content_length = v.parse().unwrap_or(0);
            }
            if k == "connection" && v.eq_ignore_ascii_case("close") {
                close = true;
            }
            let joined = match headers.get(&k).and_then(|x| x.as_str()) {
                Some(prev) => format!("{prev},{v}"),
                None => v,
            };
            headers.insert(k, serde_json::Value::String(joined));
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(RequestHead {
        method,
        path,
        headers,
        close,
    })
}

fn serve(conn: TcpStream, served: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        served.fetch_add(1, Ordering::SeqCst);
        let out = serde_json::json!({"method": req.method, "path": req.path, "headers": req.headers}).to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() || req.close {
            return;
        }
    }
}
