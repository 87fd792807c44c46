//! What the tests that send raw requests through Envoy under each path setting share
//! (`tests/envoy_request_shapes.rs`, `tests/envoy_tenancy.rs`): the settings, the contract's
//! canonical form as the tests read it, cases with what each setting must do to them, and
//! running a list of cases under every setting against an upstream that records what it
//! received. Included with `#[path = "common/shapes.rs"] mod shapes;`.

#![allow(dead_code)]

use claimguard_tools::echo::{EchoUpstream, Received};
use claimguard_tools::envoy::{Envoy, EnvoyOptions, PathNormalization};
use claimguard_tools::http::{self, Response};
use serde_json::Value;
use std::time::Duration;

/// The settings every table runs under (Istio's `NONE` renders what Envoy's defaults are).
pub const SETTINGS: [PathNormalization; 4] = [
    PathNormalization::EnvoyDefaults,
    PathNormalization::IstioBase,
    PathNormalization::IstioMergeSlashes,
    PathNormalization::IstioDecodeAndMergeSlashes,
];

/// The host every case sends unless it names one.
pub const HOST: &str = "app.example.com";

// ---- the contract's canonical form, as the tests read it -------------------------------

/// The opt-in path actions a config sets (`pathWithParametersAction: MATCH_WITHOUT_PARAMETERS`,
/// `pathWithBackslashAction: CONVERT_TO_SLASH`).
#[derive(Clone, Copy, Default)]
pub struct PathActions {
    pub match_without_parameters: bool,
    pub backslash_to_slash: bool,
    /// The reserved characters the config's path patterns name (`:` for `*:cancel`): a path
    /// escaping one of them is refused.
    pub named_reserved: &'static str,
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The canonical path the upstream must receive for `target`'s path (before `?`), or why
/// the request must be refused (400).
pub fn canonical(target: &str, actions: PathActions) -> Result<String, &'static str> {
    if target.contains('#') {
        return Err("fragment");
    }
    let path = target.split('?').next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err("not starting with /");
    }
    if path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err("byte outside printable ASCII");
    }
    let path = match (path.contains('\\'), actions.backslash_to_slash) {
        (false, _) => path.to_string(),
        (true, true) => path.replace('\\', "/"),
        (true, false) => return Err("backslash"),
    };
    if path.contains(';') && !actions.match_without_parameters {
        return Err("path parameters");
    }
    let b = path.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'%' {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&x| hex(x)), b.get(i + 2).and_then(|&x| hex(x))) else {
            return Err("malformed escape");
        };
        let v = h * 16 + l;
        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
            out.push(char::from(v));
        } else if v == b'/' || v == b'\\' {
            return Err("escaped slash");
        } else if actions.named_reserved.as_bytes().contains(&v) {
            return Err("escaped reserved character that a rule names");
        } else {
            out.push_str(&format!("%{v:02X}"));
        }
        i += 3;
    }
    // `%25` before `2e`/`2f`/`5c`, whether sent so or spelt `%25%32%65`: a dot or slash for an
    // upstream that decodes twice.
    let lower = out.to_ascii_lowercase();
    if ["%252e", "%252f", "%255c"].iter().any(|d| lower.contains(d)) {
        return Err("double-encoded dot or slash");
    }
    if actions.match_without_parameters {
        for seg in out.split('/').skip(1) {
            if let Some((name, _)) = seg.split_once(';') {
                if matches!(name, "" | "." | "..") {
                    return Err("dot or empty segment with parameters");
                }
            }
        }
    }
    let mut merged = String::new();
    for ch in remove_dot_segments(&out).chars() {
        if !(ch == '/' && merged.ends_with('/')) {
            merged.push(ch);
        }
    }
    Ok(merged)
}

/// RFC 3986 §5.2.4, literally: an empty segment is a segment (`/a//../b` is `/a/b`).
pub fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    let pop = |out: &mut String| {
        let cut = out.rfind('/').unwrap_or(0);
        out.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("/./") {
            input = format!("/{rest}");
        } else if input == "/." {
            input = "/".into();
        } else if let Some(rest) = input.strip_prefix("/../") {
            input = format!("/{rest}");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input
                .get(start..)
                .and_then(|r| r.find('/'))
                .map_or(input.len(), |e| e + start);
            output.push_str(input.get(..end).unwrap_or_default());
            input = input.get(end..).unwrap_or_default().to_string();
        }
    }
    output
}

// ---- cases ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Want {
    /// Answered by the proxy with this status; the upstream never sees the request.
    Refused(u16),
    /// 401 `invalid_token` with an RFC 6750 challenge, the upstream never reached.
    InvalidToken,
    /// 401 as for a request without a token (RFC 6750 §3.1: another scheme, or no
    /// credentials, get a challenge with no error code), the upstream never reached.
    NoBearer,
    /// Served; the upstream received exactly this request target.
    Served(&'static str),
}

pub fn refused(status: u16) -> Want {
    Want::Refused(status)
}

pub fn served(path: &'static str) -> Want {
    Want::Served(path)
}

pub struct Case {
    pub name: &'static str,
    pub method: &'static str,
    pub target: Vec<u8>,
    pub host: &'static str,
    /// Header lines as sent; `{name}` placeholders stand for what the test's `fill` puts there
    /// (a token).
    pub headers: Vec<&'static str>,
    /// Under Envoy's defaults: the filter sees the target as sent.
    pub want: Want,
    /// When Envoy normalises the path first (BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES),
    /// if that changes the outcome.
    pub normalized: Option<Want>,
    /// Under DECODE_AND_MERGE_SLASHES (Envoy decodes `%2F`/`%5C` first), if different again.
    pub decoded: Option<Want>,
    /// Headers the upstream must have received, with every value in order (empty: absent).
    pub upstream_headers: Vec<(&'static str, Vec<&'static str>)>,
}

pub fn req(name: &'static str, method: &'static str, target: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        method,
        target: target.as_ref().to_vec(),
        host: HOST,
        headers: Vec::new(),
        want: Want::Refused(0),
        normalized: None,
        decoded: None,
        upstream_headers: Vec::new(),
    }
}

pub fn get(name: &'static str, target: impl AsRef<[u8]>) -> Case {
    req(name, "GET", target)
}

impl Case {
    pub fn header(mut self, line: &'static str) -> Case {
        self.headers.push(line);
        self
    }

    pub fn host(mut self, host: &'static str) -> Case {
        self.host = host;
        self
    }

    pub fn want(mut self, want: Want) -> Case {
        self.want = want;
        self
    }

    pub fn normalized(mut self, want: Want) -> Case {
        self.normalized = Some(want);
        self
    }

    pub fn decoded(mut self, want: Want) -> Case {
        self.decoded = Some(want);
        self
    }

    pub fn upstream_header(mut self, name: &'static str, values: &[&'static str]) -> Case {
        self.upstream_headers.push((name, values.to_vec()));
        self
    }

    pub fn want_under(&self, setting: PathNormalization) -> &Want {
        match (&self.decoded, &self.normalized) {
            (Some(w), _) if setting.decodes_slashes() => w,
            (_, Some(w)) if setting.normalizes() => w,
            _ => &self.want,
        }
    }

    pub fn repeats_a_header(&self) -> bool {
        let names: Vec<String> = self
            .headers
            .iter()
            // `x_env` is `x-env` to the rules (and to CGI-style servers).
            .map(|h| {
                h.split(':')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .replace('_', "-")
            })
            .collect();
        names
            .iter()
            .enumerate()
            .any(|(i, n)| names.get(..i).is_some_and(|seen| seen.contains(n)))
    }

    pub fn target_text(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }
}

// ---- sending a case and checking what happened -------------------------------------------

/// Sends `case` as one raw HTTP/1.1 request, its header lines passed through `fill` (which
/// puts tokens in for their placeholders).
pub fn send(case: &Case, envoy: &Envoy, fill: &dyn Fn(&str) -> String) -> Result<Response, String> {
    let mut raw = format!("{} ", case.method).into_bytes();
    raw.extend_from_slice(&case.target);
    raw.extend_from_slice(format!(" HTTP/1.1\r\nhost: {}\r\n", case.host).as_bytes());
    for line in &case.headers {
        raw.extend_from_slice(fill(line).as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"connection: close\r\n\r\n");
    http::send_raw(envoy.port, &raw)
}

/// Sends `case` under `setting` and checks it: what reached the upstream (if anything) holds
/// to `invariants` whatever the case expects, and the outcome is the one the case wants
/// under `setting`: refused with the status and the upstream not reached, or served with
/// exactly the expected request target and headers.
pub fn check(
    case: &Case,
    setting: PathNormalization,
    envoy: &Envoy,
    upstream: &EchoUpstream,
    fill: &dyn Fn(&str) -> String,
    invariants: &dyn Fn(&Case, &Received) -> Result<(), String>,
) -> Result<(), String> {
    let before = upstream.served();
    let r = send(case, envoy, fill)?;
    let arrived = upstream.served() - before;
    let last = if arrived > 0 { upstream.last_received() } else { None };
    // Whatever the case says, what did arrive must be canonical and allowed to arrive.
    if let Some(got) = &last {
        invariants(case, got)?;
    }
    let body = || r.body.chars().take(160).collect::<String>();
    match case.want_under(setting) {
        Want::Refused(status) => {
            if r.status != *status || arrived != 0 {
                return Err(format!(
                    "want {status}, upstream not reached; got {} ({}), upstream reached {arrived}x{}",
                    r.status,
                    body(),
                    last.map(|g| format!(" with {:?}", g.raw_path)).unwrap_or_default()
                ));
            }
            let json = r.json();
            if *status == 400 && !json.is_null() && json["error"] != "bad_request" {
                return Err(format!("400 from the filter should say bad_request: {}", body()));
            }
            if *status == 401 && !r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")) {
                return Err(format!("401 without a Bearer challenge: {:?}", r.headers));
            }
        }
        Want::InvalidToken => {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            if r.status != 401 || arrived != 0 || r.json()["error"] != "invalid_token" {
                return Err(format!(
                    "want 401 invalid_token, upstream not reached; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            }
            if !(challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\"")) {
                return Err(format!("no RFC 6750 invalid_token challenge: {challenge:?}"));
            }
        }
        Want::NoBearer => {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            if r.status != 401 || arrived != 0 || r.json()["error"] != "missing_token" {
                return Err(format!(
                    "want 401 missing_token, upstream not reached; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            }
            if !challenge.starts_with("Bearer realm=") || challenge.contains("error=") {
                return Err(format!(
                    "want an RFC 6750 challenge without an error code: {challenge:?}"
                ));
            }
        }
        Want::Served(path) => {
            let Some(got) = last.filter(|_| r.status == 200 && arrived == 1) else {
                return Err(format!(
                    "want 200 with the upstream receiving {path:?}; got {} ({}), upstream reached {arrived}x",
                    r.status,
                    body()
                ));
            };
            if got.raw_path != *path {
                return Err(format!("upstream received {:?}, want {path:?}", got.raw_path));
            }
            if case.method != "HEAD" && r.json()["rawPath"] != got.raw_path.as_str() {
                return Err(format!("the echoed rawPath is not the recorded one: {}", body()));
            }
            for (name, values) in &case.upstream_headers {
                let seen = got.header_values(name);
                if seen != *values {
                    return Err(format!("upstream header {name}: {seen:?}, want {values:?}"));
                }
            }
        }
    }
    Ok(())
}

/// Runs `cases` under every setting in [`SETTINGS`], one Envoy each with `config`: the number
/// of checks made, how many failed, and each failure, named with its setting.
pub fn run_under_settings(
    config: &Value,
    cases: &[Case],
    fill: &dyn Fn(&str) -> String,
    invariants: &dyn Fn(&Case, &Received) -> Result<(), String>,
) -> (usize, usize, Vec<String>) {
    let mut failures = Vec::new();
    let (mut checks, mut failed) = (0, 0);
    for setting in SETTINGS {
        let upstream = EchoUpstream::start(0).expect("upstream");
        let mut opts = EnvoyOptions::new(config, upstream.port);
        opts.path_normalization = setting;
        let envoy = match Envoy::start(&opts, Duration::from_secs(60)) {
            Ok(envoy) => envoy,
            Err(e) => {
                checks += cases.len();
                failed += cases.len();
                let why: Vec<&str> = e.log.lines().filter(|l| l.contains("claimguard")).take(2).collect();
                failures.push(format!(
                    "[{setting}] all {} cases: Envoy did not start ({}): {}",
                    cases.len(),
                    e.message,
                    why.join(" | ")
                ));
                continue;
            }
        };
        for case in cases {
            checks += 1;
            if let Err(problem) = check(case, setting, &envoy, &upstream, fill, invariants) {
                failed += 1;
                failures.push(format!(
                    "[{setting}] {}: {} {:?}: {problem}",
                    case.name,
                    case.method,
                    case.target_text()
                ));
            }
        }
    }
    (checks, failed, failures)
}
