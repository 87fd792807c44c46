//! A JWKS endpoint under a test's control: serve a key set (and swap it for a rotation), or
//! misbehave on demand: an error status, a hang, garbage, a huge body, a dropped connection.
//! It records when each request came, so tests can count fetches and measure backoff.

use super::echo::read_request;
use serde_json::Value;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the current key set.
    Serve,
    /// This status, with a small body.
    Status(u16),
    /// Accept, then say nothing until the client gives up.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a multi-megabyte body.
    Huge,
    /// Close the connection without answering.
    Drop,
}

struct State {
    jwks: Value,
    mode: Mode,
    cache_control: Option<String>,
    hits: Vec<(Instant, String)>,
    /// Path → body served as text (e.g. ALB public keys as PEM at `/KID`). When any is set,
    /// other paths get 404 instead of the key set.
    files: std::collections::HashMap<String, String>,
}

pub struct JwksServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    pub fn start(jwks: Value) -> std::io::Result<JwksServer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State {
            jwks,
            mode: Mode::Serve,
            cache_control: None,
            hits: Vec::new(),
            files: std::collections::HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let (st, sp) = (st.clone(), sp.clone());
                    thread::spawn(move || serve(c, &st, &sp));
                }
            }
        });
        Ok(JwksServer { port, state, stop })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn set_jwks(&self, jwks: Value) {
        self.with(|s| s.jwks = jwks);
    }

    /// Serves `body` as `text/plain` at `path` (and 404 on paths with nothing set).
    pub fn set_file(&self, path: &str, body: &str) {
        self.with(|s| s.files.insert(path.to_string(), body.to_string()));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.with(|s| s.mode = mode);
    }

    pub fn set_cache_control(&self, cc: Option<&str>) {
        self.with(|s| s.cache_control = cc.map(str::to_owned));
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.with(|s| s.hits.len())
    }

    /// When each request arrived, and its path.
    pub fn hit_log(&self) -> Vec<(Instant, String)> {
        self.with(|s| s.hits.clone())
    }

    /// Waits until at least `n` requests arrived (or `timeout`); returns the count.
    pub fn wait_for_hits(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.hits();
            if h >= n || Instant::now() > deadline {
                return h;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let (mode, mut body, cc, file) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.hits.push((Instant::now(), req.path.clone()));
            let file = match (s.files.is_empty(), s.files.get(&req.path)) {
                (true, _) => None,
                (false, f) => Some(f.cloned()),
            };
            (s.mode.clone(), s.jwks.to_string(), s.cache_control.clone(), file)
        };
        if let (Mode::Serve, Some(file)) = (&mode, file) {
            let resp = match file {
                Some(f) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{f}",
                    f.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found".to_string(),
            };
            if writer.write_all(resp.as_bytes()).is_err() || req.close {
                return;
            }
            continue;
        }
        if req.path.ends_with("/.well-known/openid-configuration") {
            // OIDC discovery: point at this server's JWKS, under the host the client used.
            let host = req.headers.get("host").and_then(|h| h.as_str()).unwrap_or("localhost");
            body =
                serde_json::json!({"issuer": format!("http://{host}"), "jwks_uri": format!("http://{host}/jwks.json")})
                    .to_string();
        }
        let extra = cc.map(|c| format!("cache-control: {c}\r\n")).unwrap_or_default();
        let resp = match mode {
            Mode::Serve => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                body.len()
            ),
            Mode::Status(code) => format!("HTTP/1.1 {code} Oops\r\ncontent-length: 5\r\n\r\noops!"),
            Mode::Garbage => {
                let junk = "<html>oops</html>";
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{junk}",
                    junk.len()
                )
            }
            Mode::Huge => {
                let big = "a".repeat(3 * 1024 * 1024);
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
                    big.len()
                )
            }
            Mode::Hang => {
                let until = Instant::now() + Duration::from_secs(20);
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Mode::Drop => return,
        };
        if writer.write_all(resp.as_bytes()).is_err() || req.close {
            return;
        }
    }
}
