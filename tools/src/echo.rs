//! An upstream that answers every request with the request it received, as JSON:
//! `{"method": ..., "path": ..., "headers": {"name": "value", ...}, "rawPath": ...,
//! "headerList": [[name, value], ...]}`. `headers` joins repeated headers with `,`;
//! `rawPath` is the request target exactly as it arrived (query included) and `headerList`
//! keeps every header line in order, repeats and all. It also keeps the last requests it
//! served ([`EchoUpstream::received`]), so a test can tell what a proxy let through, and
//! that a refused request never arrived.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How many served requests an [`EchoUpstream`] remembers (the demo runs for hours).
const REMEMBERED: usize = 512;

pub struct EchoUpstream {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    received: Arc<Mutex<VecDeque<Received>>>,
}

/// One request as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// The request target byte for byte (query included); bytes that are not UTF-8 show as
    /// U+FFFD.
    pub raw_path: String,
    /// Header lines in arrival order, repeats kept: name lower-cased, value without the
    /// surrounding whitespace HTTP ignores.
    pub header_list: Vec<(String, String)>,
}

impl Received {
    /// Every value of header `name` (lower-case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.header_list
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of header `name` when it arrived exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.header_values(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl EchoUpstream {
    /// Listens on 127.0.0.1 at `port` (0 = any free port).
    pub fn start(port: u16) -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(VecDeque::new()));
        let (stop2, served2, received2) = (stop.clone(), served.clone(), received.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let (served, received) = (served2.clone(), received2.clone());
                    thread::spawn(move || serve(c, &served, &received));
                }
            }
        });
        Ok(EchoUpstream {
            port,
            stop,
            served,
            received,
        })
    }

    /// How many requests reached the upstream.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// The last requests served (at most 512), oldest first. A request is recorded before
    /// its answer is written, so it is here by the time its client has the response.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The most recent request served.
    pub fn last_received(&self) -> Option<Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).back().cloned()
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
    /// The request target as sent (between the request line's first and last space).
    pub raw_target: String,
    /// Header lines in order, repeats kept (name lower-cased, value trimmed).
    pub header_list: Vec<(String, String)>,
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
    // `METHOD SP request-target SP HTTP-version`: the target is what lies between the first
    // and the last space, whatever it contains.
    let line = request_line.trim_end_matches(['\r', '\n']);
    let raw_target = match (line.find(' '), line.rfind(' ')) {
        (Some(a), Some(b)) if a < b => line.get(a + 1..b).unwrap_or_default().to_string(),
        _ => path.clone(),
    };
    let mut header_list = Vec::new();
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
            header_list.push((k.clone(), v.clone()));
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
        raw_target,
        header_list,
        close,
    })
}

fn serve(conn: TcpStream, served: &AtomicU64, received: &Mutex<VecDeque<Received>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        {
            let mut log = received.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == REMEMBERED {
                log.pop_front();
            }
            log.push_back(Received {
                method: req.method.clone(),
                raw_path: req.raw_target.clone(),
                header_list: req.header_list.clone(),
            });
        }
        served.fetch_add(1, Ordering::SeqCst);
        let out = serde_json::json!({
            "method": req.method,
            "path": req.path,
            "headers": req.headers,
            "rawPath": req.raw_target,
            "headerList": req.header_list,
        })
        .to_string();
        // A response to HEAD carries the length of the body it would have, and no body.
        let body = if req.method == "HEAD" { "" } else { out.as_str() };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            out.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() || req.close {
            return;
        }
    }
}
