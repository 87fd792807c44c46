//! An upstream that answers every request with the request it received, as JSON:
//! `{"method": ..., "path": ..., "headers": {"name": "value", ...}, "rawPath": ...,
//! "headerList": [[name, value], ...]}`. `headers` joins repeated headers with `,`;
//! `rawPath` is the request target exactly as it arrived (query included) and `headerList`
//! keeps every header line in order, repeats and all. It also keeps the last requests it
//! served ([`EchoUpstream::received`]), so a test can tell what a proxy let through, and
//! that a refused request never arrived.
//!
//! [`EchoUpstream::relay`] is the same server playing an application that calls another
//! service on its user's behalf (`make demo-chain`): it records the request, makes its own
//! call through its sidecar's outbound listener with some of the request's headers (the
//! user's token), and answers with what it received and what the other service said.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How many served requests an [`EchoUpstream`] remembers (the demo runs for hours).
const REMEMBERED: usize = 512;

pub struct EchoUpstream {
    pub port: u16,
    /// A relay's outbound port (see [`EchoUpstream::set_relay_port`]).
    relay_port: Option<Arc<AtomicU16>>,
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

/// What the server answers.
#[derive(Debug, Clone)]
enum Responder {
    /// The request, as JSON.
    Echo,
    Relay(Relay),
}

/// An application's call to another service, made for each request it serves.
#[derive(Debug, Clone)]
struct Relay {
    /// Named in the answer (`{"app": NAME, ...}`).
    name: String,
    /// Its sidecar's outbound listener on 127.0.0.1 (0 until known: the call then fails).
    outbound_port: Arc<AtomicU16>,
    /// The call's path: this, then the request's path.
    path_prefix: String,
    /// Request headers passed on to the call (lower-case names), e.g. `authorization`.
    forward: Vec<String>,
}

impl Relay {
    /// Makes the call; answers with its status (502 if it failed) and
    /// `{"app", "received": {method, path, headers}, "called": {path, status, reason, body}}`,
    /// `reason` being the other side's `x-claimguard-reason`, if any.
    fn answer(&self, req: &RequestHead) -> (u16, String) {
        let path = format!("{}{}", self.path_prefix, req.path);
        let headers: Vec<(&str, &str)> = req
            .header_list
            .iter()
            .filter(|(k, _)| self.forward.contains(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, called) =
            match crate::http::request(self.outbound_port.load(Ordering::SeqCst), &req.method, &path, &headers) {
                Ok(r) => {
                    let body = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::String(r.body.clone()));
                    let reason = r.header("x-claimguard-reason").map(str::to_owned);
                    (
                        r.status,
                        serde_json::json!({"path": path, "status": r.status, "reason": reason, "body": body}),
                    )
                }
                Err(e) => (502, serde_json::json!({"path": path, "error": e})),
            };
        let body = serde_json::json!({
            "app": self.name,
            "received": {"method": req.method, "path": req.path, "headers": req.headers},
            "called": called,
        });
        (status, body.to_string())
    }
}

impl EchoUpstream {
    /// Listens on 127.0.0.1 at `port` (0 = any free port).
    pub fn start(port: u16) -> std::io::Result<EchoUpstream> {
        EchoUpstream::serve_with(port, Responder::Echo)
    }

    /// An application named `name` on any free port of 127.0.0.1 that, for each request,
    /// calls `PATH_PREFIX + path` with the same method through 127.0.0.1:`outbound_port`,
    /// passing on the request's `forward` headers (lower-case names), and answers with that
    /// call's status and a JSON account of both (see the module's documentation). The port
    /// may be given later ([`EchoUpstream::set_relay_port`]): a sidecar needs the app's port
    /// before it starts, and the app the sidecar's outbound port.
    pub fn relay(name: &str, outbound_port: u16, path_prefix: &str, forward: &[&str]) -> std::io::Result<EchoUpstream> {
        let port = Arc::new(AtomicU16::new(outbound_port));
        let mut app = EchoUpstream::serve_with(
            0,
            Responder::Relay(Relay {
                name: name.to_string(),
                outbound_port: port.clone(),
                path_prefix: path_prefix.to_string(),
                forward: forward.iter().map(|h| h.to_ascii_lowercase()).collect(),
            }),
        )?;
        app.relay_port = Some(port);
        Ok(app)
    }

    /// Where a relay's calls go from now on (nothing for an echo upstream).
    pub fn set_relay_port(&self, port: u16) {
        if let Some(p) = &self.relay_port {
            p.store(port, Ordering::SeqCst);
        }
    }

    fn serve_with(port: u16, responder: Responder) -> std::io::Result<EchoUpstream> {
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
                    let (served, received, responder) = (served2.clone(), received2.clone(), responder.clone());
                    thread::spawn(move || serve(c, &served, &received, &responder));
                }
            }
        });
        Ok(EchoUpstream {
            port,
            relay_port: None,
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

fn serve(conn: TcpStream, served: &AtomicU64, received: &Mutex<VecDeque<Received>>, responder: &Responder) {
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
        let (status, out) = match responder {
            Responder::Echo => (
                200,
                serde_json::json!({
                    "method": req.method,
                    "path": req.path,
                    "headers": req.headers,
                    "rawPath": req.raw_target,
                    "headerList": req.header_list,
                })
                .to_string(),
            ),
            Responder::Relay(relay) => relay.answer(&req),
        };
        // A response to HEAD carries the length of the body it would have, and no body.
        let body = if req.method == "HEAD" { "" } else { out.as_str() };
        let resp = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            if status == 200 { "OK" } else { "Relayed" },
            out.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() || req.close {
            return;
        }
    }
}
