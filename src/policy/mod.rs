//! Claim-based RBAC shaped like Istio's AuthorizationPolicy: rules with an `action`
//! (`ALLOW`, `DENY`, `AUDIT`), request conditions (`methods`, `paths`, `hosts` and their `not`
//! forms), conditions on the calling workload (`principals`, `namespaces`, `ipBlocks` and their
//! `not` forms: Istio's `from.source`, read from the mTLS peer certificate and the downstream
//! address) and identity conditions (`providers`, `requestPrincipals`, `when` on claims, against
//! fixed values or, with `valuesFrom`/`notValuesFrom`, a value of the request: a path capture,
//! a header, a query parameter).
//!
//! Semantics (Istio's): within a rule every present field must hold, and a field holds when
//! any of its values matches (`not*` fields: when none does). DENY rules are checked first and
//! any match denies; then, if there is at least one ALLOW rule, the request must match one;
//! AUDIT rules are only recorded. Dry-run rules (and the whole policy in `dryRun` mode) are
//! evaluated into a *shadow* outcome that is reported, never enforced.
//!
//! Rules are compiled at configure time: patterns, templates and claim paths are parsed once,
//! provider names become indices; evaluation allocates only the trace.

pub mod identity;
pub mod path;

use crate::config::error::ConfigError;
use crate::config::model::{RawClaimPath, RawRule, RawWhen};
use crate::policy::identity::{compile_header_to_add, HeaderToAdd};
use crate::token::claims::{claim_at, dotted};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::net::IpAddr;

// ---------------------------------------------------------------------------------------------
// Compiled form

/// A rule's action and the policy's mode are closed sets of the configuration model.
pub use crate::config::model::{Mode, RuleAction};

/// Istio string matching: exact, `prefix*`, `*suffix`, or `*` (present, any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

impl StrPattern {
    fn compile(p: &str) -> Result<StrPattern, String> {
        if p == "*" {
            return Ok(StrPattern::Any);
        }
        if p.is_empty() {
            return Err("must not be empty".into());
        }
        let stars = p.matches('*').count();
        match (stars, p.strip_suffix('*'), p.strip_prefix('*')) {
            (0, _, _) => Ok(StrPattern::Exact(p.into())),
            (1, Some(prefix), _) => Ok(StrPattern::Prefix(prefix.into())),
            (1, _, Some(suffix)) => Ok(StrPattern::Suffix(suffix.into())),
            _ => Err(format!(
                "{p:?}: '*' may only be the whole value, its first or its last character"
            )),
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            StrPattern::Exact(e) => s == e,
            StrPattern::Prefix(p) => s.starts_with(p.as_str()),
            StrPattern::Suffix(x) => s.ends_with(x.as_str()),
            StrPattern::Any => true,
        }
    }

    /// [`StrPattern::matches`], ASCII case-insensitively.
    fn matches_ignore_case(&self, s: &str) -> bool {
        let b = s.as_bytes();
        match self {
            StrPattern::Exact(e) => s.eq_ignore_ascii_case(e),
            StrPattern::Prefix(p) => b.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes())),
            StrPattern::Suffix(x) => b
                .len()
                .checked_sub(x.len())
                .and_then(|at| b.get(at..))
                .is_some_and(|t| t.eq_ignore_ascii_case(x.as_bytes())),
            StrPattern::Any => true,
        }
    }
}

/// The calling workload, as the proxy saw its connection: the peer certificate's SPIFFE ID
/// (only over mTLS) and the downstream IP. Both absent for a request that did not come over
/// a connection (the CLI without `--peer-principal` / `--source-ip`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The first URI SAN of the validated peer certificate, e.g.
    /// `spiffe://cluster.local/ns/web/sa/frontend`. None without mTLS.
    pub uri_san: Option<String>,
    /// The downstream connection's remote IP (Envoy `source.address`), IPv4-mapped IPv6
    /// addresses as IPv4. None when unknown, including when Envoy took the address from
    /// `X-Forwarded-For` (see [`Peer::from_connection`]).
    pub ip: Option<IpAddr>,
}

impl Peer {
    /// No connection facts at all.
    pub const NONE: Peer = Peer {
        uri_san: None,
        ip: None,
    };

    /// From Envoy's connection properties: `connection.mtls`, `connection.uri_san_peer_certificate`
    /// and `source.address` (`1.2.3.4:5678` or `[::1]:5678`). A URI SAN counts only when the
    /// connection is mTLS; anything unparsable is absent, never a wildcard.
    ///
    /// `source.address` is the connection's peer, except where Envoy's connection manager
    /// derived it from `X-Forwarded-For` (`use_remote_address: false`, Envoy's default, or
    /// `xff_num_trusted_hops`): then it carries port 0, as an XFF entry has no port, and a
    /// client may have written it. Such an address is unknown here.
    pub fn from_connection(mtls: bool, uri_san: Option<&str>, source_address: Option<&str>) -> Peer {
        let uri_san = uri_san
            .filter(|u| mtls && !u.is_empty() && u.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        let ip = source_address
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .filter(|sa| sa.port() != 0)
            .map(|sa| canonical_ip(sa.ip()));
        Peer { uri_san, ip }
    }

    /// Istio's `source.principal`: the SPIFFE ID without `spiffe://`
    /// (`cluster.local/ns/web/sa/frontend`); other URIs as they are.
    pub fn principal(&self) -> Option<&str> {
        let u = self.uri_san.as_deref()?;
        Some(u.strip_prefix("spiffe://").unwrap_or(u))
    }

    /// Istio's `source.namespace`: `NS` of `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (that exact
    /// shape; any other ID has no namespace).
    pub fn namespace(&self) -> Option<&str> {
        let id = self.uri_san.as_deref()?.strip_prefix("spiffe://")?;
        let mut parts = id.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Some(ns)
            }
            _ => None,
        }
    }
}

/// `1.2.3.4:80`, `[::1]:80`, or a bare address.
pub fn parse_socket_ip(s: &str) -> Option<IpAddr> {
    let ip = if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        sa.ip()
    } else {
        s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok()?
    };
    Some(canonical_ip(ip))
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    net: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(s: &str) -> Result<IpBlock, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let block = IpBlock { net, prefix };
        if block.masked(net) != net {
            return Err(format!(
                "{s:?} has address bits set past /{prefix} (the block is {}/{prefix})",
                block.masked(net)
            ));
        }
        Ok(block)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}` or `{*}` (None): exactly one non-empty segment. A name may be bound by a `when`
    /// condition (`valuesFrom: "path:name"`).
    One(Option<String>),
    /// `{**}`: any number of segments (last position only).
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Str(StrPattern),
    Template(Vec<Segment>),
}

impl PathPattern {
    fn compile(written: &str, lowercase: bool) -> Result<PathPattern, String> {
        if !written.starts_with('/') && !written.starts_with('*') {
            return Err(format!("{written:?} must start with / (or be a *suffix pattern)"));
        }
        let canonical = crate::policy::path::canonical_pattern(written)?;
        let p = canonical.as_str();
        if !p.contains('{') && !p.contains('}') {
            let p = if lowercase {
                p.to_ascii_lowercase()
            } else {
                p.to_string()
            };
            return StrPattern::compile(&p).map(PathPattern::Str);
        }
        // Literal segments follow `caseInsensitivePaths`; variable names keep their case (a
        // binding names them as written).
        let mut segs = Vec::new();
        let parts: Vec<&str> = p.split('/').skip(1).collect();
        for (i, s) in parts.iter().enumerate() {
            let seg = if s.starts_with('{') && s.ends_with('}') {
                let inner = s.get(1..s.len() - 1).unwrap_or("");
                if inner == "**" {
                    if i + 1 != parts.len() {
                        return Err(format!("{p:?}: {{**}} may only be the last segment"));
                    }
                    Segment::Rest
                } else if inner == "*" {
                    Segment::One(None)
                } else if is_variable_name(inner) {
                    Segment::One(Some(inner.to_string()))
                } else {
                    return Err(format!(
                        "{p:?}: template variable {s:?} must be {{name}}, {{*}} or {{**}}"
                    ));
                }
            } else if *s == "**" || *s == "*" {
                // `/tenants/{tenant}/**` (glob style): say what the template form is.
                return Err(format!(
                    "{p:?}: in a template, write {{{s}}} for {}",
                    if *s == "**" {
                        "any number of segments"
                    } else {
                        "one segment"
                    }
                ));
            } else if s.contains(['{', '}', '*']) {
                return Err(format!(
                    "{p:?}: a template segment must be a literal or a whole {{variable}}"
                ));
            } else if lowercase {
                Segment::Literal(s.to_ascii_lowercase())
            } else {
                Segment::Literal((*s).to_string())
            };
            segs.push(seg);
        }
        Ok(PathPattern::Template(segs))
    }

    /// The segment index (0 for the first after `/`) where the template captures `{name}`.
    fn capture_index(&self, name: &str) -> Result<usize, &'static str> {
        let PathPattern::Template(segs) = self else {
            return Err("is not a template");
        };
        let mut at = segs
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Segment::One(Some(n)) if n == name))
            .map(|(i, _)| i);
        match (at.next(), at.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err("defines it twice"),
            (None, _) => Err("does not define it"),
        }
    }

    fn matches(&self, path: &str) -> bool {
        self.matches_case(path, false)
    }

    /// [`PathPattern::matches`], with literal parts compared ASCII case-insensitively when
    /// `ignore_case`.
    fn matches_case(&self, path: &str, ignore_case: bool) -> bool {
        match self {
            PathPattern::Str(s) if ignore_case => s.matches_ignore_case(path),
            PathPattern::Str(s) => s.matches(path),
            PathPattern::Template(segs) => {
                let mut parts = path.split('/').skip(1);
                for seg in segs {
                    match seg {
                        Segment::Rest => return true,
                        Segment::One(_) => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => {
                            let same = parts
                                .next()
                                .is_some_and(|p| p == l || (ignore_case && p.eq_ignore_ascii_case(l)));
                            if !same {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// What a `when` condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Claim(Vec<String>),
    /// `iss/sub`, Istio's `request.auth.principal`.
    Principal,
    /// A request header, Istio's `request.headers[name]`.
    Header(String),
}

/// Where a binding reads the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestSource {
    /// `path:NAME`: the segment `{NAME}` captured, read from the served canonical path; `at`
    /// holds its segment index in each of the rule's `paths` (all of them define it).
    Path { name: String, at: Vec<usize> },
    /// `header:NAME` (lower-case): the header's value, byte for byte.
    Header(String),
    /// `query:NAME`: the query parameter's value, percent-decoded once.
    Query(String),
}

/// `valuesFrom` / `notValuesFrom`: the claim compared with a value taken from the request.
#[derive(Debug, Clone)]
pub struct Binding {
    pub from: RequestSource,
    /// As written (`path:tenant`), for traces.
    pub label: String,
    /// `notValuesFrom`: holds when no claim value equals the request's.
    pub negated: bool,
    /// `ignoreCase`: ASCII case-insensitive comparison.
    pub ignore_case: bool,
}

/// A request value a binding read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqValue<'a> {
    /// Not in the request (no such header or parameter), or empty.
    Absent,
    /// The request spells it in a way servers read differently: a repeated or differently
    /// cased query parameter, a bad escape, a capture that decodes to a separator or a control
    /// character. A DENY rule's binding then holds; any other rule's does not.
    Ambiguous,
    Value(Cow<'a, str>),
}

impl ReqValue<'_> {
    pub fn into_owned(self) -> ReqValue<'static> {
        match self {
            ReqValue::Absent => ReqValue::Absent,
            ReqValue::Ambiguous => ReqValue::Ambiguous,
            ReqValue::Value(v) => ReqValue::Value(Cow::Owned(v.into_owned())),
        }
    }
}

/// How many characters of a request value traces and log lines show; a longer value is cut
/// there and its length in bytes given.
pub const SHOWN_CHARS: usize = 64;

/// As traces and log lines show it: `absent`, `ambiguous`, or the value quoted with `"` and
/// escaped as Rust's `{:?}` escapes (quotes, backslashes, control and format characters
/// such as U+202E or U+2028), so that a value cannot end its field or its line, nor pass for
/// another field; at most [`SHOWN_CHARS`] characters of it (`"aaaa"... (4096 bytes)`).
impl std::fmt::Display for ReqValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReqValue::Absent => f.write_str("absent"),
            ReqValue::Ambiguous => f.write_str("ambiguous"),
            ReqValue::Value(v) => match v.char_indices().nth(SHOWN_CHARS) {
                None => write!(f, "{v:?}"),
                Some((cut, _)) => write!(f, "{:?}... ({} bytes)", v.get(..cut).unwrap_or_default(), v.len()),
            },
        }
    }
}

/// The request value one rule's binding compared, recorded for traces and decision lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundValue {
    pub rule: usize,
    /// The index of the `when` condition in the rule.
    pub when: usize,
    pub value: ReqValue<'static>,
}

#[derive(Debug, Clone)]
pub struct WhenCondition {
    pub source: Source,
    /// The condition as written, for traces.
    pub label: String,
    values: Vec<StrPattern>,
    not_values: Vec<StrPattern>,
    all_values: Vec<StrPattern>,
    /// `valuesFrom` / `notValuesFrom`.
    pub binding: Option<Binding>,
    /// Per provider index: whether this claim is a space-delimited set (`scope`, `scp`).
    space_delimited: Vec<bool>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: RuleAction,
    pub dry_run: bool,
    /// Matches without a token: the route needs no authentication.
    pub public: bool,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<PathPattern>,
    not_paths: Vec<PathPattern>,
    hosts: Vec<StrPattern>,
    not_hosts: Vec<StrPattern>,
    /// Peer conditions (Istio `from.source`), on [`Peer::principal`] / [`Peer::namespace`] / IP.
    principals: Vec<StrPattern>,
    not_principals: Vec<StrPattern>,
    namespaces: Vec<StrPattern>,
    not_namespaces: Vec<StrPattern>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
    providers: Vec<usize>,
    request_principals: Vec<StrPattern>,
    not_request_principals: Vec<StrPattern>,
    when: Vec<WhenCondition>,
    /// Headers an ALLOW rule adds when it admits a request.
    pub headers_to_add: Vec<HeaderToAdd>,
}

impl Rule {
    /// Whether the rule looks at the token (providers, principals, claim conditions).
    pub fn has_identity_conditions(&self) -> bool {
        !self.providers.is_empty()
            || !self.request_principals.is_empty()
            || !self.not_request_principals.is_empty()
            || self.when.iter().any(|w| !matches!(w.source, Source::Header(_)))
    }
}

/// The compiled rules and the mode they run in: part of a validated `Config`, never built
/// elsewhere.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) mode: Mode,
}

/// Facts about the provider a token came from that rules need.
pub struct ProviderInfo<'a> {
    pub name: &'a str,
    pub space_delimited_claims: &'a [String],
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn non_empty<T>(path: &str, field: &str, v: Option<Vec<T>>) -> Result<Vec<T>, ConfigError> {
    match v {
        Some(list) if list.is_empty() => Err(err(
            format!("{path}.{field}"),
            "must not be empty (omit it to not constrain)",
        )),
        Some(list) => Ok(list),
        None => Ok(Vec::new()),
    }
}

pub(crate) fn patterns(
    path: &str,
    field: &str,
    v: Option<Vec<String>>,
    lowercase: bool,
) -> Result<Vec<StrPattern>, ConfigError> {
    non_empty(path, field, v)?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = if lowercase { p.to_ascii_lowercase() } else { p.clone() };
            StrPattern::compile(&p).map_err(|e| err(format!("{path}.{field}[{i}]"), e))
        })
        .collect()
}

/// Principal patterns in Istio's form (`cluster.local/ns/web/sa/frontend`, `*/sa/gateway`);
/// a leading `spiffe://` is accepted and dropped, as the peer's principal drops it.
pub(crate) fn principal_patterns(
    path: &str,
    field: &str,
    v: Option<Vec<String>>,
) -> Result<Vec<StrPattern>, ConfigError> {
    non_empty(path, field, v)?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.strip_prefix("spiffe://").unwrap_or(p);
            StrPattern::compile(p).map_err(|e| err(format!("{path}.{field}[{i}]"), e))
        })
        .collect()
}

fn ip_blocks(path: &str, field: &str, v: Option<Vec<String>>) -> Result<Vec<IpBlock>, ConfigError> {
    non_empty(path, field, v)?
        .iter()
        .enumerate()
        .map(|(i, b)| IpBlock::parse(b).map_err(|e| err(format!("{path}.{field}[{i}]"), e)))
        .collect()
}

fn path_patterns(
    path: &str,
    field: &str,
    v: Option<Vec<String>>,
    lowercase: bool,
) -> Result<Vec<PathPattern>, ConfigError> {
    non_empty(path, field, v)?
        .iter()
        .enumerate()
        .map(|(i, p)| PathPattern::compile(p, lowercase).map_err(|e| err(format!("{path}.{field}[{i}]"), e)))
        .collect()
}

fn methods(path: &str, field: &str, v: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let list = non_empty(path, field, v)?;
    for (i, m) in list.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') {
            return Err(err(
                format!("{path}.{field}[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        }
    }
    Ok(list.into_iter().map(|m| m.to_ascii_uppercase()).collect())
}

/// Istio `when.key` forms: `request.auth.claims[a][b]`, `request.auth.principal`,
/// `request.auth.audiences`, `request.auth.presenter`, `request.headers[name]`.
fn istio_key(k: &str) -> Result<Source, String> {
    let brackets = |rest: &str| -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut r = rest;
        while !r.is_empty() {
            let inner = r.strip_prefix('[')?;
            let (seg, after) = inner.split_once(']')?;
            if seg.is_empty() {
                return None;
            }
            out.push(seg.to_string());
            r = after;
        }
        (!out.is_empty()).then_some(out)
    };
    if let Some(rest) = k.strip_prefix("request.auth.claims") {
        return brackets(rest)
            .map(Source::Claim)
            .ok_or_else(|| format!("{k:?}: expected request.auth.claims[name][...]"));
    }
    if let Some(rest) = k.strip_prefix("request.headers") {
        return match brackets(rest).as_deref() {
            Some([name]) => Ok(Source::Header(name.to_ascii_lowercase())),
            _ => Err(format!("{k:?}: expected request.headers[name]")),
        };
    }
    match k {
        "request.auth.principal" => Ok(Source::Principal),
        "request.auth.audiences" => Ok(Source::Claim(vec!["aud".into()])),
        "request.auth.presenter" => Ok(Source::Claim(vec!["azp".into()])),
        _ => Err(format!(
            "{k:?} is not supported; use request.auth.claims[...], request.auth.principal, request.auth.audiences, request.auth.presenter or request.headers[...]"
        )),
    }
}

pub(crate) fn compile_rules(
    raw: Vec<RawRule>,
    providers: &[ProviderInfo],
    case_insensitive_paths: bool,
) -> Result<Vec<Rule>, ConfigError> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("rules[{i}]");
        if r.name.trim().is_empty() {
            return Err(err(format!("{path}.name"), "must not be empty"));
        }
        if rules.iter().any(|q| q.name == r.name) {
            return Err(err(
                format!("{path}.name"),
                format!("{:?} is used by another rule", r.name),
            ));
        }
        let action = r.action.unwrap_or(RuleAction::Allow);
        let mut provider_idx = Vec::new();
        for (j, name) in non_empty(&path, "providers", r.providers)?.iter().enumerate() {
            match providers.iter().position(|p| p.name == name) {
                Some(ix) => provider_idx.push(ix),
                None => {
                    let known: Vec<&str> = providers.iter().map(|p| p.name).collect();
                    return Err(err(
                        format!("{path}.providers[{j}]"),
                        format!("no provider is named {name:?} (providers: {})", known.join(", ")),
                    ));
                }
            }
        }
        let written_paths = r.paths.clone().unwrap_or_default();
        let mut when = Vec::new();
        for (j, w) in non_empty(&path, "when", r.when)?.into_iter().enumerate() {
            when.push(compile_when(&format!("{path}.when[{j}]"), w, providers)?);
        }
        let rule = Rule {
            name: r.name,
            action,
            dry_run: r.dry_run,
            public: r.public,
            methods: methods(&path, "methods", r.methods)?,
            not_methods: methods(&path, "notMethods", r.not_methods)?,
            paths: path_patterns(&path, "paths", r.paths, case_insensitive_paths)?,
            not_paths: path_patterns(&path, "notPaths", r.not_paths, case_insensitive_paths)?,
            hosts: host_patterns(&path, "hosts", r.hosts)?,
            not_hosts: host_patterns(&path, "notHosts", r.not_hosts)?,
            principals: principal_patterns(&path, "principals", r.principals)?,
            not_principals: principal_patterns(&path, "notPrincipals", r.not_principals)?,
            namespaces: patterns(&path, "namespaces", r.namespaces, false)?,
            not_namespaces: patterns(&path, "notNamespaces", r.not_namespaces, false)?,
            ip_blocks: ip_blocks(&path, "ipBlocks", r.ip_blocks)?,
            not_ip_blocks: ip_blocks(&path, "notIpBlocks", r.not_ip_blocks)?,
            providers: provider_idx,
            request_principals: patterns(&path, "requestPrincipals", r.request_principals, false)?,
            not_request_principals: patterns(&path, "notRequestPrincipals", r.not_request_principals, false)?,
            when,
            headers_to_add: Vec::new(),
        };
        let mut rule = rule;
        resolve_path_bindings(&path, &mut rule, &written_paths)?;
        for (j, h) in non_empty(&path, "requestHeadersToAdd", r.request_headers_to_add)?
            .into_iter()
            .enumerate()
        {
            if rule.action != RuleAction::Allow {
                return Err(err(
                    format!("{path}.requestHeadersToAdd"),
                    "only an ALLOW rule admits requests, so only it can add headers",
                ));
            }
            rule.headers_to_add
                .push(compile_header_to_add(&format!("{path}.requestHeadersToAdd[{j}]"), h)?);
        }
        if rule.public {
            if rule.action != RuleAction::Allow {
                return Err(err(
                    format!("{path}.public"),
                    "only an ALLOW rule can make a route public",
                ));
            }
            if rule.has_identity_conditions() {
                return Err(err(
                    format!("{path}.public"),
                    "a public rule matches requests without a token, so it cannot have providers, requestPrincipals or claim conditions",
                ));
            }
            if rule.dry_run {
                return Err(err(
                    format!("{path}.public"),
                    "a public rule cannot be dry-run: it decides whether a token is needed at all",
                ));
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Each `path:NAME` binding of the rule: the segment index of `{NAME}` in every one of its
/// `paths`, or an error naming the first path that does not define it (a binding must read
/// the same capture whichever of the rule's paths the request matched).
fn resolve_path_bindings(path: &str, rule: &mut Rule, written: &[String]) -> Result<(), ConfigError> {
    let paths = &rule.paths;
    for (j, w) in rule.when.iter_mut().enumerate() {
        let Some(b) = &mut w.binding else { continue };
        let RequestSource::Path { name, at } = &mut b.from else {
            continue;
        };
        let field = if b.negated { "notValuesFrom" } else { "valuesFrom" };
        if paths.is_empty() {
            return Err(err(
                format!("{path}.when[{j}].{field}"),
                format!(
                    "{:?} binds a path capture, but the rule has no paths to define {{{name}}}",
                    b.label
                ),
            ));
        }
        for (k, p) in paths.iter().enumerate() {
            match p.capture_index(name) {
                Ok(i) => at.push(i),
                Err(why) => {
                    let written = written.get(k).map(String::as_str).unwrap_or("");
                    return Err(err(
                        format!("{path}.when[{j}].{field}"),
                        format!("{:?} binds {{{name}}}, but paths[{k}] {written:?} {why}", b.label),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn compile_when(path: &str, w: RawWhen, providers: &[ProviderInfo]) -> Result<WhenCondition, ConfigError> {
    let (source, label) = match (w.claim, w.key) {
        (Some(_), Some(_)) => return Err(err(path, "give either claim or key, not both")),
        (None, None) => {
            return Err(err(
                format!("{path}.claim"),
                "is required (or key, in Istio's request.auth.claims[...] form)",
            ))
        }
        (Some(RawClaimPath::Dotted(s)), None) => {
            let segs = dotted(&s).map_err(|e| err(format!("{path}.claim"), e))?;
            (Source::Claim(segs), s)
        }
        (Some(RawClaimPath::Segments(segs)), None) => {
            if segs.is_empty() || segs.iter().any(String::is_empty) {
                return Err(err(
                    format!("{path}.claim"),
                    "a claim path must have non-empty segments",
                ));
            }
            let label = segs.join(".");
            (Source::Claim(segs), label)
        }
        (None, Some(k)) => {
            let src = istio_key(&k).map_err(|e| err(format!("{path}.key"), e))?;
            (src, k)
        }
    };
    let lowercase_values = false;
    let values = patterns(path, "values", w.values, lowercase_values)?;
    let not_values = patterns(path, "notValues", w.not_values, lowercase_values)?;
    let all_values = patterns(path, "allValues", w.all_values, lowercase_values)?;
    let binding = match (w.values_from, w.not_values_from) {
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{path}.notValuesFrom"),
                "give valuesFrom or notValuesFrom, not both",
            ))
        }
        (Some(from), None) => Some(("valuesFrom", from, false)),
        (None, Some(from)) => Some(("notValuesFrom", from, true)),
        (None, None) => None,
    };
    let binding = match binding {
        None => {
            if w.ignore_case.is_some() {
                return Err(err(
                    format!("{path}.ignoreCase"),
                    "applies only to valuesFrom and notValuesFrom",
                ));
            }
            if values.is_empty() && not_values.is_empty() && all_values.is_empty() {
                return Err(err(
                    format!("{path}.values"),
                    "one of values, notValues, allValues, valuesFrom or notValuesFrom is required",
                ));
            }
            None
        }
        Some((field, from, negated)) => {
            if !(values.is_empty() && not_values.is_empty() && all_values.is_empty()) {
                return Err(err(
                    format!("{path}.{field}"),
                    "cannot be combined with values, notValues or allValues in one condition (write two)",
                ));
            }
            if matches!(source, Source::Header(_)) {
                return Err(err(
                    format!("{path}.key"),
                    format!("{field} compares a claim with the request; {label:?} is not a claim"),
                ));
            }
            let parsed = request_source(&from).map_err(|e| err(format!("{path}.{field}"), e))?;
            Some(Binding {
                from: parsed,
                label: from,
                negated,
                ignore_case: w.ignore_case.unwrap_or(false),
            })
        }
    };
    let space_delimited = providers
        .iter()
        .map(|p| match &source {
            Source::Claim(segs) => {
                segs.len() == 1 && segs.first().is_some_and(|s| p.space_delimited_claims.contains(s))
            }
            _ => false,
        })
        .collect();
    Ok(WhenCondition {
        source,
        label,
        values,
        not_values,
        all_values,
        binding,
        space_delimited,
    })
}

/// A `{name}` template variable: letters, digits, `_` and `-`.
fn is_variable_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `path:NAME`, `header:NAME` or `query:NAME`.
fn request_source(s: &str) -> Result<RequestSource, String> {
    let bad = || format!("{s:?}: expected path:NAME (a {{NAME}} of the rule's paths), header:NAME or query:NAME");
    let (kind, name) = s.split_once(':').ok_or_else(bad)?;
    match kind {
        "path" if is_variable_name(name) => Ok(RequestSource::Path {
            name: name.to_string(),
            at: Vec::new(),
        }),
        "header"
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
        {
            Ok(RequestSource::Header(name.to_ascii_lowercase()))
        }
        "query" if !name.is_empty() && !name.contains(['&', '=', '#', ' ']) => {
            Ok(RequestSource::Query(name.to_string()))
        }
        _ => Err(bad()),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// The request as policy sees it.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Normalised (see [`crate::policy::path::normalize`]).
    pub path: &'a str,
    /// The canonical path as the upstream is sent it (no query; its case and `;` parameters
    /// kept): where `path:NAME` bindings read their capture. Same segments as `path`.
    pub served_path: &'a str,
    /// The query as received (after `?`, empty without one): where `query:NAME` bindings read.
    pub query: &'a str,
    /// `:authority`, canonical ([`crate::policy::path::canonical_host`]: lower-cased, no trailing
    /// dots), computed once per request by whoever builds the facts.
    pub host: &'a str,
    pub headers: &'a [crate::token::Header<'a>],
    /// The calling workload (mTLS peer, downstream IP).
    pub peer: &'a Peer,
}

/// The verified identity as policy sees it.
pub struct Subject<'a> {
    pub provider: usize,
    pub principal: &'a str,
    pub claims: &'a Map<String, Value>,
}

/// Why a rule did not match: the first condition that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    Method,
    NotMethod,
    Path,
    NotPath,
    Host,
    NotHost,
    /// `principals`: the peer's principal (absent without mTLS) is not listed.
    PeerPrincipal,
    NotPeerPrincipal,
    Namespace,
    NotNamespace,
    IpBlock,
    NotIpBlock,
    /// The rule has IP conditions and the source IP is not known.
    UnknownIp,
    NoToken,
    Provider,
    Principal,
    NotPrincipal,
    /// `when[i]` failed.
    When(usize),
}

impl Mismatch {
    /// A failure of the request half (method, path, host): what [`Rule::request_matches`]
    /// returns, and a rule whose bindings therefore read nothing.
    pub fn is_request_half(self) -> bool {
        matches!(
            self,
            Mismatch::Method
                | Mismatch::NotMethod
                | Mismatch::Path
                | Mismatch::NotPath
                | Mismatch::Host
                | Mismatch::NotHost
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleResult {
    pub rule: usize,
    pub outcome: Result<(), Mismatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Allow {
        /// The ALLOW rule that admitted the request (None: no ALLOW rules exist).
        rule: Option<usize>,
    },
    Deny {
        /// The DENY rule that matched (None: no ALLOW rule matched).
        rule: Option<usize>,
        /// A request-matching ALLOW rule failed only on a scope-like claim.
        insufficient_scope: bool,
    },
}

impl Effect {
    pub fn is_allow(&self) -> bool {
        matches!(self, Effect::Allow { .. })
    }
}

/// The evaluator's answer: the enforced effect, the shadow effect if dry-run rules (or dry-run
/// mode) would have decided differently, and every rule's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub effect: Effect,
    /// What would have happened with every dry-run rule enforced (and `mode: enforce`), when
    /// that differs from `effect`.
    pub shadow: Option<Effect>,
    pub trace: Vec<RuleResult>,
}

fn host_matches(pattern: &StrPattern, host: &str) -> bool {
    // Port-tolerant: a pattern without a port compares against the host without its port.
    let host_only = strip_port(host);
    let pat_has_port = match pattern {
        StrPattern::Exact(p) | StrPattern::Prefix(p) | StrPattern::Suffix(p) => {
            crate::policy::path::split_port(p).1.is_some()
        }
        StrPattern::Any => false,
    };
    pattern.matches(if pat_has_port { host } else { host_only })
}

/// A canonical host ([`crate::policy::path::canonical_host`]) without its port.
fn strip_port(h: &str) -> &str {
    crate::policy::path::split_port(h).0
}

/// `hosts`/`notHosts` patterns, in the form requests are compared in
/// ([`crate::policy::path::canonical_host`]): `Internal.Example.com.` is the exact host
/// `internal.example.com`, `*.example.com.:0443` the suffix `.example.com:443`. A pattern no
/// canonical host could match (`user@host`, `host:x`) is refused rather than never matching.
fn host_patterns(path: &str, field: &str, v: Option<Vec<String>>) -> Result<Vec<StrPattern>, ConfigError> {
    use crate::policy::path::canonical_host;
    let compile = |p: &str| -> Result<StrPattern, String> {
        let refused = |e: crate::policy::path::HostError| format!("{p:?} {}", e.description());
        Ok(match StrPattern::compile(p)? {
            StrPattern::Any => StrPattern::Any,
            StrPattern::Exact(h) => StrPattern::Exact(canonical_host(&h).map_err(refused)?.into_owned()),
            // A host label in front makes the rest a whole host to canonicalise.
            StrPattern::Suffix(s) => {
                let whole = format!("x{s}");
                let whole = canonical_host(&whole).map_err(refused)?;
                StrPattern::Suffix(whole.get(1..).unwrap_or("").to_string())
            }
            StrPattern::Prefix(s) => {
                // `api.*`, `internal.example.com:*`, `[fd00:*`: lower-cased; only bytes a
                // canonical host has.
                if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b)) {
                    return Err(format!(
                        "{p:?} {}",
                        crate::policy::path::HostError::BadName.description()
                    ));
                }
                StrPattern::Prefix(s.to_ascii_lowercase())
            }
        })
    };
    non_empty(path, field, v)?
        .iter()
        .enumerate()
        .map(|(i, p)| compile(p).map_err(|e| err(format!("{path}.{field}[{i}]"), e)))
        .collect()
}

/// Whether request header `k` is the header `name` a rule reads: in any case, and with `_`
/// for `-` (`x_env` fills the same `HTTP_X_ENV` as `x-env` in CGI-style servers, so a rule
/// on `x-env` must see it too). The request layer refuses a request carrying two spellings.
pub fn same_header(k: &str, name: &str) -> bool {
    crate::base::abi::same_header_loosely(k.as_bytes(), name.as_bytes())
}

/// Calls `f` on each string form of a claim value: strings (split on spaces for
/// space-delimited claims), integers and booleans as their JSON text, array elements the same
/// way. Objects, floats and null never match. Returns whether `f` returned true for any.
fn any_value(v: &Value, split: bool, f: &mut dyn FnMut(&str) -> bool) -> bool {
    match v {
        // On the space (U+0020) alone, as RFC 6749 §3.3 delimits scopes and jwt_authn's
        // `space_delimited_claims` splits them: a tab or another Unicode space is part of a
        // scope token (`files.x<TAB>admin` is one scope, and never `admin`).
        Value::String(s) if split => s.split(' ').filter(|t| !t.is_empty()).any(f),
        Value::String(s) => f(s),
        Value::Bool(b) => f(if *b { "true" } else { "false" }),
        Value::Number(n) if n.is_i64() || n.is_u64() => f(&n.to_string()),
        // A list is already a set: its elements are compared whole, never split again
        // (`["orders:read orders:write"]` holds one odd scope, not two).
        Value::Array(items) => items.iter().any(|i| !i.is_array() && any_value(i, false, f)),
        _ => false,
    }
}

/// A component decoded once: `%XX` escapes (and `+` as a space, for a query). A bad escape,
/// a result that is not UTF-8 or holds a control character (or, for a path segment, a `/` or
/// `\\`) is ambiguous; an empty one absent.
pub(crate) fn decode_component(s: &str, plus_is_space: bool, segment: bool) -> ReqValue<'_> {
    if s.is_empty() {
        return ReqValue::Absent;
    }
    let value = if !(s.contains('%') || (plus_is_space && s.contains('+'))) {
        Cow::Borrowed(s)
    } else {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'%' => {
                    let digit = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
                    let (Some(h), Some(l)) = (digit(i + 1), digit(i + 2)) else {
                        return ReqValue::Ambiguous;
                    };
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                b'+' if plus_is_space => out.push(b' '),
                _ => out.push(b),
            }
            i += 1;
        }
        match String::from_utf8(out) {
            Ok(v) => Cow::Owned(v),
            Err(_) => return ReqValue::Ambiguous,
        }
    };
    if value
        .chars()
        .any(|c| c.is_control() || (segment && (c == '/' || c == '\\')))
    {
        return ReqValue::Ambiguous;
    }
    ReqValue::Value(value)
}

/// The value of query parameter `name`: absent when not given, ambiguous when given twice,
/// spelled in another case, or when any parameter name fails to decode; ambiguous too when
/// reading `;` as a second separator (Rails, and Python and Go before 2021, do) gives another
/// answer: `?user=alice&x=1;user=bob` and `?user=alice;bob`.
fn query_value<'a>(query: &'a str, name: &str) -> ReqValue<'a> {
    let amp = query_value_split(query, name, &['&']);
    if query.contains(';') && amp != ReqValue::Ambiguous && query_value_split(query, name, &['&', ';']) != amp {
        return ReqValue::Ambiguous;
    }
    amp
}

fn query_value_split<'a>(query: &'a str, name: &str, separators: &[char]) -> ReqValue<'a> {
    let mut found = ReqValue::Absent;
    for pair in query.split(separators).filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = match decode_component(n, true, false) {
            ReqValue::Value(n) => n,
            ReqValue::Absent => continue,
            ReqValue::Ambiguous => return ReqValue::Ambiguous,
        };
        if !n.eq_ignore_ascii_case(name) {
            continue;
        }
        if n != name || found != ReqValue::Absent {
            return ReqValue::Ambiguous;
        }
        found = match decode_component(v, true, false) {
            // Given, but empty: absent, yet a second spelling is still ambiguous.
            ReqValue::Absent => ReqValue::Value(Cow::Borrowed("")),
            other => other,
        };
    }
    match found {
        ReqValue::Value(v) if v.is_empty() => ReqValue::Absent,
        other => other,
    }
}

impl WhenCondition {
    /// For a binding, the request value it compares (`paths`: the rule's).
    fn request_value<'a>(&self, req: &RequestFacts<'a>, paths: &[PathPattern]) -> Option<ReqValue<'a>> {
        let b = self.binding.as_ref()?;
        Some(match &b.from {
            RequestSource::Path { at, .. } => {
                let index = paths.iter().position(|p| p.matches(req.path)).and_then(|k| at.get(k));
                match index.and_then(|i| req.served_path.split('/').nth(i + 1)) {
                    // The segment as rules see it: without `;` parameters.
                    Some(seg) => decode_component(seg.split(';').next().unwrap_or(seg), false, true),
                    None => ReqValue::Absent,
                }
            }
            RequestSource::Header(name) => match req.headers.iter().find(|(k, _)| same_header(k, name)) {
                Some((_, v)) if !v.is_empty() => ReqValue::Value(Cow::Borrowed(*v)),
                _ => ReqValue::Absent,
            },
            RequestSource::Query(name) => query_value(req.query, name),
        })
    }

    /// `paths`: the rule's (where a path binding finds its capture); `deny`: whether the rule
    /// is a DENY rule (an ambiguous request value holds for it, and for no other).
    fn holds(&self, req: &RequestFacts, subject: Option<&Subject>, paths: &[PathPattern], deny: bool) -> bool {
        let principal_value;
        let header_value;
        let (value, split): (Option<&Value>, bool) = match &self.source {
            Source::Claim(segs) => match subject {
                Some(s) => (
                    claim_at(s.claims, segs),
                    self.space_delimited.get(s.provider).copied().unwrap_or(false),
                ),
                None => (None, false),
            },
            Source::Principal => {
                principal_value = subject.map(|s| Value::String(s.principal.to_string()));
                (principal_value.as_ref(), false)
            }
            Source::Header(name) => {
                header_value = req
                    .headers
                    .iter()
                    .find(|(k, _)| same_header(k, name))
                    .map(|(_, v)| Value::String((*v).to_string()));
                (header_value.as_ref(), false)
            }
        };
        if let (Some(b), Some(bound)) = (&self.binding, self.request_value(req, paths)) {
            return match bound {
                ReqValue::Ambiguous => deny,
                // An absent request value matches nothing: `valuesFrom` fails, `notValuesFrom`
                // holds (as a missing claim satisfies notValues).
                ReqValue::Absent => b.negated,
                ReqValue::Value(r) => {
                    let equal = value.is_some_and(|v| {
                        any_value(v, split, &mut |s| {
                            if b.ignore_case {
                                s.eq_ignore_ascii_case(&r)
                            } else {
                                s == r
                            }
                        })
                    });
                    equal != b.negated
                }
            };
        }
        let matches_any = |pats: &[StrPattern]| match value {
            Some(v) => any_value(v, split, &mut |s| pats.iter().any(|p| p.matches(s))),
            None => false,
        };
        if !self.values.is_empty() && !matches_any(&self.values) {
            return false;
        }
        // Istio: a missing claim satisfies notValues.
        if !self.not_values.is_empty() && matches_any(&self.not_values) {
            return false;
        }
        if !self.all_values.is_empty() {
            let Some(v) = value else { return false };
            if !self
                .all_values
                .iter()
                .all(|p| any_value(v, split, &mut |s| p.matches(s)))
            {
                return false;
            }
        }
        true
    }

    fn is_scope(&self, provider: usize) -> bool {
        self.space_delimited.get(provider).copied().unwrap_or(false)
    }
}

impl Rule {
    /// The request half of the rule (method, path, host). Its failures are the ones
    /// [`Mismatch::is_request_half`] names.
    fn request_matches(&self, req: &RequestFacts) -> Result<(), Mismatch> {
        // Some requests reach the same handler as another spelling: HEAD runs the GET handler,
        // `/admin/` the `/admin` one in many routers (Express, Spring before 6), and `/ADMIN`
        // too in routers that ignore case by default (Express, ASP.NET Core). Where reading
        // the request as that other spelling makes the outcome stricter, it is read so: a
        // DENY rule's `methods`/`paths` and an ALLOW rule's `notMethods`/`notPaths` hold for
        // any of them. (An ALLOW rule's `methods`/`paths` and a DENY rule's `not` forms stay
        // exact: reading them broadly would admit more.)
        let broad = |deny: bool| (self.action == RuleAction::Deny) == deny;
        let as_get = req.method == "HEAD";
        let unslashed = req.path.strip_suffix('/').filter(|p| !p.is_empty());
        let method_in = |list: &[String], broadly: bool| {
            list.iter()
                .any(|m| m == req.method || (broadly && as_get && m == "GET"))
        };
        let path_in = |list: &[PathPattern], broadly: bool| {
            list.iter().any(|p| {
                p.matches_case(req.path, broadly) || (broadly && unslashed.is_some_and(|u| p.matches_case(u, true)))
            })
        };
        if !self.methods.is_empty() && !method_in(&self.methods, broad(true)) {
            return Err(Mismatch::Method);
        }
        if method_in(&self.not_methods, broad(false)) {
            return Err(Mismatch::NotMethod);
        }
        if !self.paths.is_empty() && !path_in(&self.paths, broad(true)) {
            return Err(Mismatch::Path);
        }
        if path_in(&self.not_paths, broad(false)) {
            return Err(Mismatch::NotPath);
        }
        let host = req.host;
        if !self.hosts.is_empty() && !self.hosts.iter().any(|p| host_matches(p, host)) {
            return Err(Mismatch::Host);
        }
        if self.not_hosts.iter().any(|p| host_matches(p, host)) {
            return Err(Mismatch::NotHost);
        }
        Ok(())
    }

    /// The calling-workload half (Istio `from.source`). An absent principal or namespace (no
    /// mTLS) never satisfies `principals`/`namespaces`, not even `*`; it satisfies their `not`
    /// forms, as in Istio.
    fn peer_matches(&self, req: &RequestFacts) -> Result<(), Mismatch> {
        let listed = |pats: &[StrPattern], v: Option<&str>| v.is_some_and(|v| pats.iter().any(|p| p.matches(v)));
        let principal = req.peer.principal();
        if !self.principals.is_empty() && !listed(&self.principals, principal) {
            return Err(Mismatch::PeerPrincipal);
        }
        if listed(&self.not_principals, principal) {
            return Err(Mismatch::NotPeerPrincipal);
        }
        let namespace = req.peer.namespace();
        if !self.namespaces.is_empty() && !listed(&self.namespaces, namespace) {
            return Err(Mismatch::Namespace);
        }
        if listed(&self.not_namespaces, namespace) {
            return Err(Mismatch::NotNamespace);
        }
        if self.ip_blocks.is_empty() && self.not_ip_blocks.is_empty() {
            return Ok(());
        }
        let Some(ip) = req.peer.ip else {
            // Unknown source IP (e.g. taken from a forgeable X-Forwarded-For): fail closed. A
            // DENY rule's IP conditions count as met, any other rule's as not.
            return if self.action == RuleAction::Deny {
                Ok(())
            } else {
                Err(Mismatch::UnknownIp)
            };
        };
        if !self.ip_blocks.is_empty() && !self.ip_blocks.iter().any(|b| b.contains(ip)) {
            return Err(Mismatch::IpBlock);
        }
        if self.not_ip_blocks.iter().any(|b| b.contains(ip)) {
            return Err(Mismatch::NotIpBlock);
        }
        Ok(())
    }

    fn identity_matches(&self, req: &RequestFacts, subject: Option<&Subject>) -> Result<(), Mismatch> {
        // A request without a token (only public routes and allowMissing providers let one
        // this far) never satisfies an ALLOW or AUDIT rule's conditions on the caller. A DENY
        // rule's conditions are read as Istio reads them, each on an absent identity: positive
        // ones fail and `not` ones hold, so `notRequestPrincipals: ["*"]` denies anonymous
        // requests (Istio's "deny without a token") instead of silently letting them by.
        if subject.is_none() && self.has_identity_conditions() && self.action != RuleAction::Deny {
            return Err(Mismatch::NoToken);
        }
        if !self.providers.is_empty() && !subject.is_some_and(|s| self.providers.contains(&s.provider)) {
            return Err(Mismatch::Provider);
        }
        if !self.request_principals.is_empty()
            && !subject.is_some_and(|s| self.request_principals.iter().any(|p| p.matches(s.principal)))
        {
            return Err(Mismatch::Principal);
        }
        if subject.is_some_and(|s| self.not_request_principals.iter().any(|p| p.matches(s.principal))) {
            return Err(Mismatch::NotPrincipal);
        }
        let deny = self.action == RuleAction::Deny;
        for (i, w) in self.when.iter().enumerate() {
            if !w.holds(req, subject, &self.paths, deny) {
                return Err(Mismatch::When(i));
            }
        }
        Ok(())
    }

    pub fn evaluate(&self, req: &RequestFacts, subject: Option<&Subject>) -> Result<(), Mismatch> {
        self.request_matches(req)?;
        self.peer_matches(req)?;
        self.identity_matches(req, subject)
    }

    /// True when the request half matches and every failing identity condition is a `when`
    /// on a space-delimited (scope) claim: the caller is right but lacks a scope.
    fn fails_only_on_scope(&self, req: &RequestFacts, subject: Option<&Subject>) -> bool {
        let Some(s) = subject else { return false };
        if self.request_matches(req).is_err() || self.peer_matches(req).is_err() {
            return false;
        }
        if !self.providers.is_empty() && !self.providers.contains(&s.provider) {
            return false;
        }
        if !self.request_principals.is_empty() && !self.request_principals.iter().any(|p| p.matches(s.principal)) {
            return false;
        }
        let mut failed_scope = false;
        for w in &self.when {
            if !w.holds(req, subject, &self.paths, false) {
                if !w.is_scope(s.provider) {
                    return false;
                }
                failed_scope = true;
            }
        }
        failed_scope
    }
}

impl Policy {
    /// The rules, in config order (what rule indices in traces and decisions refer to).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// `mode`: whether rules decide or only report.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The reserved characters the rules' path patterns name
    /// ([`crate::policy::path::PathOptions::named_reserved`]).
    pub fn named_reserved(&self) -> u128 {
        let literal = |p: &PathPattern| -> u128 {
            match p {
                PathPattern::Str(StrPattern::Exact(s) | StrPattern::Prefix(s) | StrPattern::Suffix(s)) => {
                    crate::policy::path::reserved_named(s)
                }
                PathPattern::Str(StrPattern::Any) => 0,
                PathPattern::Template(segs) => segs
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => crate::policy::path::reserved_named(l),
                        _ => 0,
                    })
                    .fold(0, |a, b| a | b),
            }
        };
        self.rules
            .iter()
            .flat_map(|r| r.paths.iter().chain(&r.not_paths))
            .map(literal)
            .fold(0, |a, b| a | b)
    }

    /// The request headers rules read (`request.headers[name]`, `header:name` bindings), as
    /// written (repeats included).
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| &r.when)
            .filter_map(|w| match (&w.source, &w.binding) {
                (Source::Header(name), _) => Some(name.as_str()),
                (
                    _,
                    Some(Binding {
                        from: RequestSource::Header(name),
                        ..
                    }),
                ) => Some(name.as_str()),
                _ => None,
            })
    }

    /// Whether an AUDIT rule exists (its matches are logged on every request).
    pub fn has_audit_rules(&self) -> bool {
        self.rules.iter().any(|r| r.action == RuleAction::Audit)
    }

    /// Whether any rule looks at the calling workload (principals, namespaces, IP blocks):
    /// the host reads the connection's properties only then (and for decision lines).
    pub fn uses_peer(&self) -> bool {
        self.rules.iter().any(|r| {
            !(r.principals.is_empty()
                && r.not_principals.is_empty()
                && r.namespaces.is_empty()
                && r.not_namespaces.is_empty()
                && r.ip_blocks.is_empty()
                && r.not_ip_blocks.is_empty())
        })
    }

    /// A public rule matching the request: the route needs no token. Every condition of the
    /// rule counts, its header conditions included (a public rule has no token conditions).
    pub fn public_rule(&self, req: &RequestFacts) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.public && r.evaluate(req, None).is_ok())
    }

    pub fn evaluate(&self, req: &RequestFacts, subject: Option<&Subject>) -> PolicyDecision {
        let trace: Vec<RuleResult> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleResult {
                rule: i,
                outcome: r.evaluate(req, subject),
            })
            .collect();
        let enforced = self.decide(&trace, req, subject, |r| !r.dry_run && self.mode == Mode::Enforce);
        let shadow_effect = self.decide(&trace, req, subject, |_| true);
        let (effect, shadow) = if self.mode == Mode::DryRun {
            (Effect::Allow { rule: None }, Some(shadow_effect))
        } else {
            (enforced.clone(), Some(shadow_effect))
        };
        let shadow =
            shadow.filter(|s| *s != effect && (self.mode == Mode::DryRun || self.rules.iter().any(|r| r.dry_run)));
        PolicyDecision { effect, shadow, trace }
    }

    /// The request values the bindings of `trace`'s rules compared (`trace`: what
    /// [`Policy::evaluate`] returned for `req`), for every rule whose method, path and host
    /// matched. Only asked for when they are shown (a decision or AUDIT line, `explain`): a
    /// request that is not reported pays nothing for them. Which rules matched that far is read
    /// off the trace, not matched again.
    pub fn bound_values(&self, req: &RequestFacts, trace: &[RuleResult]) -> Vec<BoundValue> {
        let mut bound = Vec::new();
        for t in trace {
            let request_half_failed = matches!(t.outcome, Err(m) if m.is_request_half());
            let Some(r) = self.rules.get(t.rule).filter(|_| !request_half_failed) else {
                continue;
            };
            for (j, w) in r.when.iter().enumerate() {
                if let Some(value) = w.request_value(req, &r.paths) {
                    bound.push(BoundValue {
                        rule: t.rule,
                        when: j,
                        value: value.into_owned(),
                    });
                }
            }
        }
        bound
    }

    fn decide(
        &self,
        trace: &[RuleResult],
        req: &RequestFacts,
        subject: Option<&Subject>,
        counts: impl Fn(&Rule) -> bool,
    ) -> Effect {
        let considered = || {
            trace
                .iter()
                .filter_map(|t| self.rules.get(t.rule).map(|r| (t, r)))
                .filter(|(_, r)| counts(r))
        };
        if let Some((t, _)) = considered().find(|(t, r)| r.action == RuleAction::Deny && t.outcome.is_ok()) {
            return Effect::Deny {
                rule: Some(t.rule),
                insufficient_scope: false,
            };
        }
        let mut any_allow = false;
        for (t, _) in considered().filter(|(_, r)| r.action == RuleAction::Allow) {
            any_allow = true;
            if t.outcome.is_ok() {
                return Effect::Allow { rule: Some(t.rule) };
            }
        }
        if !any_allow {
            return Effect::Allow { rule: None };
        }
        let insufficient_scope = considered()
            .filter(|(_, r)| r.action == RuleAction::Allow)
            .any(|(_, r)| r.fails_only_on_scope(req, subject));
        Effect::Deny {
            rule: None,
            insufficient_scope,
        }
    }

    /// Human-readable reason for a rule result, for logs and `explain`.
    /// `bound`: the decision's [`PolicyDecision::bound`], whose values are shown.
    pub fn describe(&self, r: &RuleResult, bound: &[BoundValue]) -> String {
        let Some(rule) = self.rules.get(r.rule) else {
            return String::new();
        };
        let bindings = || {
            let shown: Vec<String> = bound
                .iter()
                .filter(|b| b.rule == r.rule)
                .filter_map(|b| rule.when.get(b.when).map(|w| (b, w)))
                .map(|(b, w)| format!("when[{}] {}", b.when, self.bound_text(w, &b.value)))
                .collect();
            if shown.is_empty() {
                String::new()
            } else {
                format!(" ({})", shown.join("; "))
            }
        };
        match r.outcome {
            Ok(()) => format!("{} {}: matched{}", rule.action.name(), rule.name, bindings()),
            Err(m) => {
                let why = match m {
                    Mismatch::Method => "method not in methods".to_string(),
                    Mismatch::NotMethod => "method in notMethods".into(),
                    Mismatch::Path => "path not in paths".into(),
                    Mismatch::NotPath => "path in notPaths".into(),
                    Mismatch::Host => "host not in hosts".into(),
                    Mismatch::NotHost => "host in notHosts".into(),
                    Mismatch::PeerPrincipal => "peer principal not in principals".into(),
                    Mismatch::NotPeerPrincipal => "peer principal in notPrincipals".into(),
                    Mismatch::Namespace => "peer namespace not in namespaces".into(),
                    Mismatch::NotNamespace => "peer namespace in notNamespaces".into(),
                    Mismatch::IpBlock => "source IP not in ipBlocks".into(),
                    Mismatch::NotIpBlock => "source IP in notIpBlocks".into(),
                    Mismatch::UnknownIp => "source IP unknown (ipBlocks need the connection's own address)".into(),
                    Mismatch::NoToken => "no token".into(),
                    Mismatch::Provider => "token from another provider".into(),
                    Mismatch::Principal => "principal not in requestPrincipals".into(),
                    Mismatch::NotPrincipal => "principal in notRequestPrincipals".into(),
                    Mismatch::When(i) => match rule.when.get(i) {
                        Some(w) if w.binding.is_some() => {
                            let value = bound
                                .iter()
                                .find(|b| b.rule == r.rule && b.when == i)
                                .map(|b| b.value.clone())
                                .unwrap_or(ReqValue::Absent);
                            format!("when[{i}] ({}) does not hold", self.bound_text(w, &value))
                        }
                        Some(w) => format!("when[{i}] ({}) does not hold", w.label),
                        None => format!("when[{i}] does not hold"),
                    },
                };
                format!("{} {}: {why}", rule.action.name(), rule.name)
            }
        }
    }

    /// A binding with the request value it compared: `tenant valuesFrom path:tenant = "acme"`.
    pub fn bound_text(&self, w: &WhenCondition, value: &ReqValue) -> String {
        match &w.binding {
            Some(b) => format!(
                "{} {} {} = {value}{}",
                w.label,
                if b.negated { "notValuesFrom" } else { "valuesFrom" },
                b.label,
                if b.ignore_case { " (ignoreCase)" } else { "" }
            ),
            None => w.label.clone(),
        }
    }

    /// One compared binding, for decision lines: `tenant-members when[0]: tenant valuesFrom
    /// path:tenant = "acme"`.
    pub fn bound_line(&self, b: &BoundValue) -> Option<String> {
        let rule = self.rules.get(b.rule)?;
        let w = rule.when.get(b.when)?;
        Some(format!(
            "{} when[{}]: {}",
            rule.name,
            b.when,
            self.bound_text(w, &b.value)
        ))
    }

    pub fn rule_name(&self, i: usize) -> &str {
        self.rules.get(i).map(|r| r.name.as_str()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::crypto::alg::Alg;
    use crate::policy::path::normalize;
    use claimguard_testkeys::TestKey;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        try_config(extra).unwrap()
    }

    /// The test config with `extra`'s top-level fields in place of its own.
    fn try_config(extra: Value) -> Result<Config, ConfigError> {
        let k = TestKey::generate(Alg::ES256, "k");
        let mut cfg = json!({
            "providers": [
                {"name": "idp", "issuer": "https://idp.example", "jwks": k.jwks()},
                {"name": "partner", "issuer": "https://partner.example", "jwks": k.jwks(), "spaceDelimitedClaims": ["perms"]}
            ],
            "rules": [
                {"name": "public-health", "public": true, "methods": ["GET"], "paths": ["/healthz", "/docs/*"]},
                {"name": "blocked-tenant", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked-co"]}]},
                {"name": "admins-delete", "methods": ["DELETE"], "paths": ["/orders/{id}"], "when": [{"claim": "realm_access.roles", "values": ["admin"]}]},
                {"name": "readers", "methods": ["GET", "HEAD"], "paths": ["/orders", "/orders/*"], "when": [{"claim": "scope", "values": ["orders:read"]}]},
                {"name": "writers", "methods": ["POST"], "paths": ["/orders"], "when": [{"claim": "scope", "allValues": ["orders:read", "orders:write"]}]},
                {"name": "admin-area", "paths": ["/admin/*"], "hosts": ["api.example.com"], "when": [{"claim": "cognito:groups", "values": ["ops"]}]},
                {"name": "audit-deletes", "action": "AUDIT", "methods": ["DELETE"]},
                {"name": "partner-reports", "providers": ["partner"], "paths": ["/reports/{**}"], "requestPrincipals": ["https://partner.example/svc-*"]},
                {"name": "partner-perms", "providers": ["partner"], "paths": ["/perms"], "when": [{"claim": "perms", "values": ["p2"]}]},
                {"name": "emails", "paths": ["/me"], "when": [{"claim": "email", "values": ["*@example.com"]}, {"claim": "email_verified", "values": ["true"]}]},
                {"name": "not-contractors", "paths": ["/internal/*"], "when": [{"claim": "groups", "notValues": ["contractors"]}]},
                {"name": "dotted-key", "paths": ["/ns"], "when": [{"claim": "https://example\\.com/roles", "values": ["ns-reader"]}]},
                {"name": "segments-key", "paths": ["/seg"], "when": [{"claim": ["https://example.com/roles"], "values": ["seg-reader"]}]},
                {"name": "istio-key", "paths": ["/istio"], "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["istio"]}]},
                {"name": "principal-key", "paths": ["/principal"], "when": [{"key": "request.auth.principal", "values": ["https://idp.example/alice"]}]},
                {"name": "legacy", "paths": ["/legacy/*"]},
                {"name": "legacy-sunset", "action": "DENY", "dryRun": true, "paths": ["/legacy/*"]},
                {"name": "header-cond", "paths": ["/hdr"], "when": [{"key": "request.headers[x-env]", "values": ["prod"]}]},
                {"name": "files", "methods": ["GET"], "paths": ["/files/*"], "notPaths": ["/files/secret*"], "notMethods": ["TRACE"]},
                {"name": "not-staging", "paths": ["/host-check"], "notHosts": ["*.staging.example.com"]},
                {"name": "numbers", "paths": ["/level"], "when": [{"claim": "level", "values": ["3"]}]},
                {"name": "scope-prefix", "paths": ["/billing/*"], "when": [{"claim": "scp", "values": ["billing.*"]}]}
            ]
        });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                cfg[k] = v;
            }
        }
        Config::from_json(cfg.to_string().as_bytes())
    }

    /// Runs one request through path normalisation and policy; returns "allow[:rule]",
    /// "deny[:rule]", "scope" (insufficient_scope), "reject" (path refused) or "public".
    fn run(
        c: &Config,
        method: &str,
        raw_path: &str,
        host: &str,
        token: Option<(usize, Value)>,
        headers: &[(&str, &str)],
    ) -> String {
        let Ok(path) = normalize(raw_path, &c.path) else {
            return "reject".into();
        };
        let Ok(host) = crate::policy::path::canonical_host(host) else {
            return "reject".into();
        };
        let host = &*host;
        let h: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let h_refs = crate::token::header_refs(&h);
        let facts = RequestFacts {
            method,
            path: &path,
            served_path: &path,
            query: "",
            host,
            headers: &h_refs,
            peer: &Peer::NONE,
        };
        let principal;
        let claims;
        let subject = match &token {
            Some((p, v)) => {
                claims = v.as_object().cloned().unwrap();
                let iss = &c.providers[*p].issuer;
                principal = format!("{iss}/{}", v["sub"].as_str().unwrap_or(""));
                Some(Subject {
                    provider: *p,
                    principal: &principal,
                    claims: &claims,
                })
            }
            None => {
                if c.policy.public_rule(&facts).is_some() {
                    return "public".into();
                }
                None
            }
        };
        let d = c.policy.evaluate(&facts, subject.as_ref());
        match d.effect {
            Effect::Allow { rule: Some(r) } => format!("allow:{}", c.policy.rule_name(r)),
            Effect::Allow { rule: None } => "allow".into(),
            Effect::Deny { rule: Some(r), .. } => format!("deny:{}", c.policy.rule_name(r)),
            Effect::Deny {
                insufficient_scope: true,
                ..
            } => "scope".into(),
            Effect::Deny { .. } => "deny".into(),
        }
    }

    #[test]
    fn claims_by_requests_by_rules() {
        let c = config(json!({}));
        let idp = |claims: Value| {
            let mut v = json!({"iss": "https://idp.example", "sub": "alice"});
            v.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
            Some((0usize, v))
        };
        let partner = |sub: &str, claims: Value| {
            let mut v = json!({"iss": "https://partner.example", "sub": sub});
            v.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
            Some((1usize, v))
        };
        let h = "api.example.com";
        #[rustfmt::skip]
        type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<(usize, Value)>, &'a str);
        let cases: Vec<Case> = vec![
            // name, method, path, host, token, expected
            ("public health, no token", "GET", "/healthz", h, None, "public"),
            ("public docs prefix", "GET", "/docs/api/v1", h, None, "public"),
            ("public is GET only", "POST", "/healthz", h, None, "deny"),
            ("no token elsewhere", "GET", "/orders", h, None, "deny"),
            (
                "reader reads",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": "openid orders:read"})),
                "allow:readers",
            ),
            (
                "reader reads one",
                "GET",
                "/orders/42",
                h,
                idp(json!({"scope": "orders:read"})),
                "allow:readers",
            ),
            (
                "HEAD is listed",
                "HEAD",
                "/orders/42",
                h,
                idp(json!({"scope": "orders:read"})),
                "allow:readers",
            ),
            (
                "scope as array",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": ["openid", "orders:read"]})),
                "allow:readers",
            ),
            (
                "scope substring is not a scope",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": "orders:read-all"})),
                "scope",
            ),
            (
                "scope missing",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": "openid"})),
                "scope",
            ),
            ("scope claim absent", "GET", "/orders", h, idp(json!({})), "scope"),
            (
                "scope wrong type",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": {"orders:read": true}})),
                "scope",
            ),
            ("scope number", "GET", "/orders", h, idp(json!({"scope": 5})), "scope"),
            (
                "writer needs both",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": "orders:write"})),
                "scope",
            ),
            (
                "writer has both",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": "orders:write orders:read"})),
                "allow:writers",
            ),
            (
                "writer extra spaces",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": "  orders:write   orders:read "})),
                "allow:writers",
            ),
            (
                // RFC 6749 §3.3: scopes are separated by spaces; a tab is inside a scope.
                "a tab does not separate scopes",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": "orders:write\torders:read"})),
                "scope",
            ),
            (
                // A list of scopes (Azure AD's `roles`, Okta's `scp`) is a set already.
                "a scope list's elements are not split",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": ["orders:write orders:read"]})),
                "scope",
            ),
            (
                "a scope list",
                "POST",
                "/orders",
                h,
                idp(json!({"scope": ["orders:write", "orders:read"]})),
                "allow:writers",
            ),
            (
                "another Unicode space does not separate scopes",
                "GET",
                "/orders",
                h,
                idp(json!({"scope": "openid\u{3000}orders:read"})),
                "scope",
            ),
            (
                "PUT matches nothing",
                "PUT",
                "/orders",
                h,
                idp(json!({"scope": "orders:write orders:read"})),
                "deny",
            ),
            (
                "admin deletes",
                "DELETE",
                "/orders/42",
                h,
                idp(json!({"realm_access": {"roles": ["user", "admin"]}})),
                "allow:admins-delete",
            ),
            (
                "non-admin delete",
                "DELETE",
                "/orders/42",
                h,
                idp(json!({"realm_access": {"roles": ["user"]}})),
                "deny",
            ),
            (
                "delete template one segment",
                "DELETE",
                "/orders/42/items",
                h,
                idp(json!({"realm_access": {"roles": ["admin"]}})),
                "deny",
            ),
            (
                "delete template empty id",
                "DELETE",
                "/orders/",
                h,
                idp(json!({"realm_access": {"roles": ["admin"]}})),
                "deny",
            ),
            (
                "nested path not object",
                "DELETE",
                "/orders/1",
                h,
                idp(json!({"realm_access": "admin"})),
                "deny",
            ),
            (
                "roles as string",
                "DELETE",
                "/orders/1",
                h,
                idp(json!({"realm_access": {"roles": "admin"}})),
                "allow:admins-delete",
            ),
            (
                "blocked tenant denied first",
                "GET",
                "/orders",
                h,
                idp(json!({"tenant": "blocked-co", "scope": "orders:read"})),
                "deny:blocked-tenant",
            ),
            (
                "blocked tenant even on admin",
                "DELETE",
                "/orders/1",
                h,
                idp(json!({"tenant": "blocked-co", "realm_access": {"roles": ["admin"]}})),
                "deny:blocked-tenant",
            ),
            (
                "tenant in array",
                "GET",
                "/orders",
                h,
                idp(json!({"tenant": ["x", "blocked-co"], "scope": "orders:read"})),
                "deny:blocked-tenant",
            ),
            (
                "other tenant fine",
                "GET",
                "/orders",
                h,
                idp(json!({"tenant": "good-co", "scope": "orders:read"})),
                "allow:readers",
            ),
            (
                "admin area ops",
                "GET",
                "/admin/users",
                h,
                idp(json!({"cognito:groups": ["ops"]})),
                "allow:admin-area",
            ),
            (
                "admin area port tolerant",
                "GET",
                "/admin/users",
                "api.example.com:8443",
                idp(json!({"cognito:groups": ["ops"]})),
                "allow:admin-area",
            ),
            (
                "admin area host case",
                "GET",
                "/admin/users",
                "API.Example.COM",
                idp(json!({"cognito:groups": ["ops"]})),
                "allow:admin-area",
            ),
            (
                "admin area other host",
                "GET",
                "/admin/users",
                "evil.example.com",
                idp(json!({"cognito:groups": ["ops"]})),
                "deny",
            ),
            (
                "admin area no group",
                "GET",
                "/admin/users",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "deny",
            ),
            (
                "bypass //admin",
                "GET",
                "//admin/users",
                h,
                idp(json!({"cognito:groups": ["dev"], "scope": "orders:read"})),
                "deny",
            ),
            (
                "bypass /./admin",
                "GET",
                "/./admin/users",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "deny",
            ),
            (
                "bypass dot-dot",
                "GET",
                "/orders/../admin/users",
                h,
                idp(json!({"cognito:groups": ["dev"], "scope": "orders:read"})),
                "deny",
            ),
            (
                "bypass encoded dot",
                "GET",
                "/orders/%2e%2e/admin/users",
                h,
                idp(json!({"cognito:groups": ["dev"], "scope": "orders:read"})),
                "deny",
            ),
            (
                "bypass %2F rejected",
                "GET",
                "/admin%2Fusers",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "reject",
            ),
            (
                "bypass encoded letter",
                "GET",
                "/%61dmin/users",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "deny",
            ),
            (
                "bypass query",
                "GET",
                "/admin/users?x=/orders",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "deny",
            ),
            (
                "bypass fragment: a request target has none, so it is refused",
                "GET",
                "/admin/users#/orders",
                h,
                idp(json!({"cognito:groups": ["dev"]})),
                "reject",
            ),
            (
                "case matters: /ADMIN is another path",
                "GET",
                "/ADMIN/users",
                h,
                idp(json!({"cognito:groups": ["ops"]})),
                "deny",
            ),
            ("audit never decides", "DELETE", "/nothing", h, idp(json!({})), "deny"),
            (
                "partner reports",
                "GET",
                "/reports/2024/q1",
                h,
                partner("svc-reports", json!({})),
                "allow:partner-reports",
            ),
            (
                "partner reports root",
                "GET",
                "/reports",
                h,
                partner("svc-reports", json!({})),
                "allow:partner-reports",
            ),
            (
                "partner wrong principal",
                "GET",
                "/reports/x",
                h,
                partner("human", json!({})),
                "deny",
            ),
            (
                "idp token on partner rule",
                "GET",
                "/reports/x",
                h,
                idp(json!({"sub": "svc-reports"})),
                "deny",
            ),
            (
                "partner space-delimited perms",
                "GET",
                "/perms",
                h,
                partner("svc", json!({"perms": "p1 p2"})),
                "allow:partner-perms",
            ),
            (
                "idp scope claim not split for partner",
                "GET",
                "/orders",
                h,
                partner("svc", json!({"scope": "orders:read x"})),
                "deny",
            ),
            (
                "emails both conditions",
                "GET",
                "/me",
                h,
                idp(json!({"email": "a@example.com", "email_verified": true})),
                "allow:emails",
            ),
            (
                "email unverified",
                "GET",
                "/me",
                h,
                idp(json!({"email": "a@example.com", "email_verified": false})),
                "deny",
            ),
            (
                "email other domain",
                "GET",
                "/me",
                h,
                idp(json!({"email": "a@example.com.evil", "email_verified": true})),
                "deny",
            ),
            (
                "email verified as string",
                "GET",
                "/me",
                h,
                idp(json!({"email": "a@example.com", "email_verified": "true"})),
                "allow:emails",
            ),
            (
                "notValues missing claim holds",
                "GET",
                "/internal/x",
                h,
                idp(json!({})),
                "allow:not-contractors",
            ),
            (
                "notValues other group",
                "GET",
                "/internal/x",
                h,
                idp(json!({"groups": ["staff"]})),
                "allow:not-contractors",
            ),
            (
                "notValues hit",
                "GET",
                "/internal/x",
                h,
                idp(json!({"groups": ["staff", "contractors"]})),
                "deny",
            ),
            (
                "notValues empty array",
                "GET",
                "/internal/x",
                h,
                idp(json!({"groups": []})),
                "allow:not-contractors",
            ),
            (
                "dotted escaped key",
                "GET",
                "/ns",
                h,
                idp(json!({"https://example.com/roles": ["ns-reader"]})),
                "allow:dotted-key",
            ),
            (
                "dotted key not nested",
                "GET",
                "/ns",
                h,
                idp(json!({"https://example": {"com/roles": ["ns-reader"]}})),
                "deny",
            ),
            (
                "segments key",
                "GET",
                "/seg",
                h,
                idp(json!({"https://example.com/roles": "seg-reader"})),
                "allow:segments-key",
            ),
            (
                "istio key form",
                "GET",
                "/istio",
                h,
                idp(json!({"realm_access": {"roles": ["istio"]}})),
                "allow:istio-key",
            ),
            (
                "principal key",
                "GET",
                "/principal",
                h,
                idp(json!({})),
                "allow:principal-key",
            ),
            (
                "principal key other sub",
                "GET",
                "/principal",
                h,
                idp(json!({"sub": "bob"})),
                "deny",
            ),
            (
                "dry-run deny not enforced",
                "GET",
                "/legacy/x",
                h,
                idp(json!({})),
                "allow:legacy",
            ),
            (
                "files allowed",
                "GET",
                "/files/report.pdf",
                h,
                idp(json!({})),
                "allow:files",
            ),
            (
                "files notPaths",
                "GET",
                "/files/secret-plans",
                h,
                idp(json!({})),
                "deny",
            ),
            (
                "notHosts staging",
                "GET",
                "/host-check",
                "a.staging.example.com",
                idp(json!({})),
                "deny",
            ),
            (
                "notHosts prod",
                "GET",
                "/host-check",
                h,
                idp(json!({})),
                "allow:not-staging",
            ),
            (
                "integer claim as text",
                "GET",
                "/level",
                h,
                idp(json!({"level": 3})),
                "allow:numbers",
            ),
            (
                "float claim never matches",
                "GET",
                "/level",
                h,
                idp(json!({"level": 3.0})),
                "deny",
            ),
            (
                "string claim matches",
                "GET",
                "/level",
                h,
                idp(json!({"level": "3"})),
                "allow:numbers",
            ),
            ("null claim", "GET", "/level", h, idp(json!({"level": null})), "deny"),
            (
                "scp prefix pattern",
                "GET",
                "/billing/invoices",
                h,
                idp(json!({"scp": "billing.read other"})),
                "allow:scope-prefix",
            ),
            (
                "scp lacking",
                "GET",
                "/billing/invoices",
                h,
                idp(json!({"scp": "other"})),
                "scope",
            ),
        ];
        assert!(cases.len() >= 60);
        for (name, method, path, host, token, want) in cases {
            assert_eq!(run(&c, method, path, host, token, &[]), want, "{name}");
        }
    }

    #[test]
    fn header_conditions() {
        let c = config(json!({}));
        let t = || Some((0usize, json!({"iss": "https://idp.example", "sub": "a"})));
        assert_eq!(
            run(&c, "GET", "/hdr", "h", t(), &[("x-env", "prod")]),
            "allow:header-cond"
        );
        assert_eq!(run(&c, "GET", "/hdr", "h", t(), &[("x-env", "dev")]), "deny");
    }

    #[test]
    fn case_insensitive_paths_and_escaped_slash_actions() {
        let c = config(json!({"caseInsensitivePaths": true}));
        let ops_dev = Some((
            0usize,
            json!({"iss": "https://idp.example", "sub": "a", "cognito:groups": ["dev"]}),
        ));
        assert_eq!(
            run(&c, "GET", "/ADMIN/users", "api.example.com", ops_dev.clone(), &[]),
            "deny"
        );
        let ops = Some((
            0usize,
            json!({"iss": "https://idp.example", "sub": "a", "cognito:groups": ["ops"]}),
        ));
        assert_eq!(
            run(&c, "GET", "/Admin/Users", "api.example.com", ops, &[]),
            "allow:admin-area"
        );
        let c = config(json!({"pathWithEscapedSlashesAction": "UNESCAPE_AND_FORWARD"}));
        assert_eq!(
            run(&c, "GET", "/admin%2Fusers", "api.example.com", ops_dev.clone(), &[]),
            "deny"
        );
        let c = config(json!({"pathWithEscapedSlashesAction": "KEEP_UNCHANGED"}));
        // Kept encoded, "/admin%2Fusers" is one segment: not under /admin/, so admin-area does
        // not apply, and no other rule admits it either.
        assert_eq!(
            run(&c, "GET", "/admin%2Fusers", "api.example.com", ops_dev, &[]),
            "deny"
        );
    }

    #[test]
    fn dry_run_shadow_and_mode() {
        let c = config(json!({}));
        let claims = json!({"iss": "https://idp.example", "sub": "a"});
        let subject = Subject {
            provider: 0,
            principal: "https://idp.example/a",
            claims: claims.as_object().unwrap(),
        };
        let facts = RequestFacts {
            method: "GET",
            path: "/legacy/x",
            served_path: "/legacy/x",
            query: "",
            host: "h",
            headers: &[],
            peer: &Peer::NONE,
        };
        let d = c.policy.evaluate(&facts, Some(&subject));
        assert!(d.effect.is_allow());
        let sunset = c.policy.rules.iter().position(|r| r.name == "legacy-sunset").unwrap();
        assert_eq!(
            d.shadow,
            Some(Effect::Deny {
                rule: Some(sunset),
                insufficient_scope: false
            })
        );

        let c = config(json!({"mode": "dryRun"}));
        let facts = RequestFacts {
            method: "GET",
            path: "/orders",
            served_path: "/orders",
            query: "",
            host: "h",
            headers: &[],
            peer: &Peer::NONE,
        };
        let d = c.policy.evaluate(&facts, Some(&subject));
        assert_eq!(d.effect, Effect::Allow { rule: None });
        assert_eq!(
            d.shadow,
            Some(Effect::Deny {
                rule: None,
                insufficient_scope: true
            })
        );
        // Without dry-run rules or mode, no shadow is reported.
        let plain = Config::from_json(
            json!({"providers": [{"issuer": "i", "jwks": TestKey::generate(Alg::ES256, "k").jwks()}],
            "rules": [{"name": "r", "paths": ["/x"]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let d = plain.policy.evaluate(&facts, Some(&subject));
        assert_eq!(
            (d.effect, d.shadow),
            (
                Effect::Deny {
                    rule: None,
                    insufficient_scope: false
                },
                None
            )
        );
    }

    #[test]
    fn no_rules_allows_any_verified_token() {
        let c = Config::from_json(
            json!({"providers": [{"issuer": "i", "jwks": TestKey::generate(Alg::ES256, "k").jwks()}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let facts = RequestFacts {
            method: "GET",
            path: "/",
            served_path: "/",
            query: "",
            host: "h",
            headers: &[],
            peer: &Peer::NONE,
        };
        let d = c.policy.evaluate(&facts, None);
        assert_eq!(d.effect, Effect::Allow { rule: None });
        assert!(d.trace.is_empty());
    }

    #[test]
    fn trace_says_why() {
        let c = config(json!({}));
        let claims = json!({"iss": "https://idp.example", "sub": "a", "scope": "x"});
        let subject = Subject {
            provider: 0,
            principal: "https://idp.example/a",
            claims: claims.as_object().unwrap(),
        };
        let facts = RequestFacts {
            method: "GET",
            path: "/orders",
            served_path: "/orders",
            query: "",
            host: "h",
            headers: &[],
            peer: &Peer::NONE,
        };
        let d = c.policy.evaluate(&facts, Some(&subject));
        let lines: Vec<String> = d.trace.iter().map(|t| c.policy.describe(t, &[])).collect();
        assert!(
            lines.contains(&"ALLOW readers: when[0] (scope) does not hold".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"ALLOW admins-delete: method not in methods".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"DENY blocked-tenant: when[0] (tenant) does not hold".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_paths() {
        let k = TestKey::generate(Alg::ES256, "k");
        let base =
            |rules: Value| json!({"providers": [{"name": "idp", "issuer": "i", "jwks": k.jwks()}], "rules": rules});
        let cases = vec![
            (
                json!([{"name": "a", "providers": ["nope"]}]),
                "rules[0].providers[0]: no provider is named \"nope\"",
            ),
            (
                json!([{"name": "a", "paths": ["/users/{id/orders"]}]),
                "rules[0].paths[0]",
            ),
            (json!([{"name": "a", "paths": ["/a/{**}/b"]}]), "rules[0].paths[0]"),
            (json!([{"name": "a", "paths": ["/a*b"]}]), "rules[0].paths[0]"),
            (json!([{"name": "a", "paths": ["users"]}]), "rules[0].paths[0]"),
            (
                json!([{"name": "a", "when": [{"claim": "g", "values": []}]}]),
                "rules[0].when[0].values: must not be empty",
            ),
            (
                json!([{"name": "a", "when": [{"claim": "g"}]}]),
                "rules[0].when[0].values: one of values",
            ),
            (
                json!([{"name": "a", "when": [{"values": ["x"]}]}]),
                "rules[0].when[0].claim: is required",
            ),
            (
                json!([{"name": "a", "when": [{"claim": "a..b", "values": ["x"]}]}]),
                "rules[0].when[0].claim",
            ),
            (
                json!([{"name": "a", "when": [{"key": "source.ip", "values": ["x"]}]}]),
                "rules[0].when[0].key",
            ),
            (
                json!([{"name": "a", "when": [{"claim": "g", "valuez": ["x"]}]}]),
                "rules[0].when[0].valuez: unknown field",
            ),
            (json!([{"name": "a", "action": "PERMIT"}]), "rules[0].action"),
            (json!([{"name": "a"}, {"name": "a"}]), "rules[1].name"),
            (json!([{"name": ""}]), "rules[0].name"),
            (
                json!([{"name": "a", "methods": []}]),
                "rules[0].methods: must not be empty",
            ),
            (json!([{"name": "a", "methods": ["G T"]}]), "rules[0].methods[0]"),
            (
                json!([{"name": "a", "public": true, "action": "DENY"}]),
                "rules[0].public",
            ),
            (
                json!([{"name": "a", "public": true, "when": [{"claim": "g", "values": ["x"]}]}]),
                "rules[0].public",
            ),
            (json!([{"name": "a", "hosts": ["a*b"]}]), "rules[0].hosts[0]"),
        ];
        for (rules, want) in cases {
            let e = Config::from_json(base(rules.clone()).to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{rules}: {e}");
        }
        let e = Config::from_json(
            json!({"providers": [{"issuer": "i", "jwks": k.jwks()}], "mode": "audit"})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.path, "mode");
    }

    #[test]
    fn string_patterns() {
        assert_eq!(StrPattern::compile("*").unwrap(), StrPattern::Any);
        assert_eq!(StrPattern::compile("a*").unwrap(), StrPattern::Prefix("a".into()));
        assert_eq!(StrPattern::compile("*a").unwrap(), StrPattern::Suffix("a".into()));
        assert!(StrPattern::compile("**").is_err());
        assert!(StrPattern::compile("").is_err());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
        assert_eq!(strip_port("h"), "h");
        assert!(host_matches(&StrPattern::Exact("h:80".into()), "h:80"));
        assert!(!host_matches(&StrPattern::Exact("h:80".into()), "h:81"));
        assert_eq!(dotted("a\\.b.c").unwrap(), vec!["a.b", "c"]);
        assert!(dotted("a\\x").is_err());
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
    const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";
    const LEGACY: &str = "spiffe://cluster.local/ns/legacy/sa/old";
    const SANDBOX: &str = "spiffe://cluster.local/ns/sandbox/sa/tool";
    const JOBS: &str = "spiffe://cluster.local/ns/jobs/sa/nightly";
    const MONITORING: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";

    fn peer_config() -> Config {
        let k = TestKey::generate(Alg::ES256, "k");
        Config::from_json(
            json!({
                "providers": [{"name": "idp", "issuer": "https://idp.example", "jwks": k.jwks()}],
                "rules": [
                    {"name": "frontend-buyers", "paths": ["/orders"], "principals": ["cluster.local/ns/web/sa/frontend"],
                     "when": [{"claim": "groups", "values": ["buyers"]}]},
                    {"name": "web-reads", "methods": ["GET"], "paths": ["/catalog"], "namespaces": ["web"]},
                    {"name": "any-mtls", "paths": ["/internal"], "principals": ["*"]},
                    {"name": "jobs-prefix", "paths": ["/batch"], "principals": ["spiffe://cluster.local/ns/jobs/*"]},
                    {"name": "gateway-suffix", "paths": ["/gw"], "principals": ["*/sa/istio-ingressgateway"]},
                    {"name": "not-legacy", "paths": ["/new"], "notPrincipals": ["cluster.local/ns/legacy/*"], "notNamespaces": ["sandbox"]},
                    {"name": "v4-loopback", "paths": ["/v4"], "ipBlocks": ["127.0.0.0/8"]},
                    {"name": "v6-loopback", "paths": ["/v6"], "ipBlocks": ["::1/128"]},
                    {"name": "nets", "paths": ["/net"], "ipBlocks": ["10.0.0.0/8", "192.168.1.7"], "notIpBlocks": ["10.1.0.0/16"]},
                    {"name": "no-sandbox", "action": "DENY", "paths": ["/catalog"], "namespaces": ["sandbox"]},
                    {"name": "blocked-net", "action": "DENY", "paths": ["/net"], "ipBlocks": ["10.66.0.0/16"]},
                    {"name": "metrics", "public": true, "paths": ["/metrics"], "namespaces": ["monitoring"]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    /// Like `run`, for a request from `peer`: "public", "allow:RULE", "deny:RULE" or "deny".
    fn run_from(c: &Config, method: &str, path: &str, peer: &Peer, claims: Option<Value>) -> String {
        let facts = RequestFacts {
            method,
            path,
            served_path: path,
            query: "",
            host: "h",
            headers: &[],
            peer,
        };
        let claims = claims.map(|v| v.as_object().cloned().unwrap());
        let subject = claims.as_ref().map(|claims| Subject {
            provider: 0,
            principal: "https://idp.example/alice",
            claims,
        });
        if subject.is_none() && c.policy.public_rule(&facts).is_some() {
            return "public".into();
        }
        match c.policy.evaluate(&facts, subject.as_ref()).effect {
            Effect::Allow { rule: Some(r) } => format!("allow:{}", c.policy.rule_name(r)),
            Effect::Allow { rule: None } => "allow".into(),
            Effect::Deny { rule: Some(r), .. } => format!("deny:{}", c.policy.rule_name(r)),
            Effect::Deny { .. } => "deny".into(),
        }
    }

    #[test]
    fn peers_by_rules() {
        let c = peer_config();
        let mtls = |id: &str| Peer::from_connection(true, Some(id), Some("127.0.0.1:5000"));
        let plain = Peer::from_connection(false, None, Some("127.0.0.1:5000"));
        // TLS without a client certificate: the URI SAN property, if any, does not count.
        let tls_no_peer = Peer::from_connection(false, Some(FRONTEND), Some("127.0.0.1:5000"));
        let ip = |a: &str| Peer::from_connection(false, None, Some(a));
        let buyer = || Some(json!({"sub": "alice", "groups": ["buyers"]}));
        let guest = || Some(json!({"sub": "bob", "groups": ["guests"]}));
        type Case<'a> = (&'a str, &'a str, &'a str, Peer, Option<Value>, &'a str);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // principal × claims
            ("frontend + buyer", "POST", "/orders", mtls(FRONTEND), buyer(), "allow:frontend-buyers"),
            ("frontend + guest", "POST", "/orders", mtls(FRONTEND), guest(), "deny"),
            ("other workload + buyer", "POST", "/orders", mtls(GATEWAY), buyer(), "deny"),
            ("plain text + buyer", "POST", "/orders", plain.clone(), buyer(), "deny"),
            ("TLS without client cert + buyer", "POST", "/orders", tls_no_peer.clone(), buyer(), "deny"),
            ("frontend, no token", "POST", "/orders", mtls(FRONTEND), None, "deny"),
            // namespaces
            ("web namespace reads", "GET", "/catalog", mtls(FRONTEND), guest(), "allow:web-reads"),
            ("web namespace, wrong method", "POST", "/catalog", mtls(FRONTEND), guest(), "deny"),
            ("other namespace", "GET", "/catalog", mtls(GATEWAY), guest(), "deny"),
            ("no namespace without mTLS", "GET", "/catalog", plain.clone(), guest(), "deny"),
            ("DENY on namespace", "GET", "/catalog", mtls(SANDBOX), guest(), "deny:no-sandbox"),
            ("non-SPIFFE-shaped ID has no namespace", "GET", "/catalog", mtls("spiffe://cluster.local/web"), guest(), "deny"),
            // * means any present principal, never an absent one
            ("* with a peer", "GET", "/internal", mtls(LEGACY), guest(), "allow:any-mtls"),
            ("* without a peer", "GET", "/internal", plain.clone(), guest(), "deny"),
            ("* with TLS but no client cert", "GET", "/internal", tls_no_peer, guest(), "deny"),
            // prefix (written with spiffe://) and suffix
            ("prefix match", "GET", "/batch", mtls(JOBS), guest(), "allow:jobs-prefix"),
            ("prefix mismatch", "GET", "/batch", mtls(FRONTEND), guest(), "deny"),
            ("suffix match", "GET", "/gw", mtls(GATEWAY), guest(), "allow:gateway-suffix"),
            ("suffix mismatch", "GET", "/gw", mtls(FRONTEND), guest(), "deny"),
            // not* forms: absent principal satisfies them (Istio)
            ("notPrincipals, other peer", "GET", "/new", mtls(FRONTEND), guest(), "allow:not-legacy"),
            ("notPrincipals, listed peer", "GET", "/new", mtls(LEGACY), guest(), "deny"),
            ("notNamespaces, listed namespace", "GET", "/new", mtls(SANDBOX), guest(), "deny"),
            ("not* without a peer", "GET", "/new", plain.clone(), guest(), "allow:not-legacy"),
            // ipBlocks
            ("v4 loopback", "GET", "/v4", ip("127.0.0.1:4000"), guest(), "allow:v4-loopback"),
            ("v4 block, other address", "GET", "/v4", ip("10.0.0.1:4000"), guest(), "deny"),
            ("v4 block, v6 loopback", "GET", "/v4", ip("[::1]:4000"), guest(), "deny"),
            ("v4-mapped v6 address is v4", "GET", "/v4", ip("[::ffff:127.0.0.9]:4000"), guest(), "allow:v4-loopback"),
            ("v6 loopback", "GET", "/v6", ip("[::1]:4000"), guest(), "allow:v6-loopback"),
            ("v6 block, v4 loopback", "GET", "/v6", ip("127.0.0.1:4000"), guest(), "deny"),
            ("no address", "GET", "/v4", Peer::NONE, guest(), "deny"),
            ("in 10/8", "GET", "/net", ip("10.2.3.4:1"), guest(), "allow:nets"),
            ("single address", "GET", "/net", ip("192.168.1.7:1"), guest(), "allow:nets"),
            ("neighbour of single address", "GET", "/net", ip("192.168.1.8:1"), guest(), "deny"),
            ("in notIpBlocks", "GET", "/net", ip("10.1.9.9:1"), guest(), "deny"),
            ("DENY ipBlocks", "GET", "/net", ip("10.66.1.1:1"), guest(), "deny:blocked-net"),
            // Unknown IP (X-Forwarded-For-derived: port 0): ALLOW IP rules fail, DENY ones hold.
            ("XFF-derived address", "GET", "/v4", ip("127.0.0.1:0"), guest(), "deny"),
            ("unknown IP, DENY rule", "GET", "/net", Peer::NONE, guest(), "deny:blocked-net"),
            ("unknown IP, rule without IP conditions", "GET", "/catalog", Peer::NONE, guest(), "deny"),
            // public rules may be limited to peers
            ("public from monitoring", "GET", "/metrics", mtls(MONITORING), None, "public"),
            ("public, other namespace", "GET", "/metrics", mtls(FRONTEND), None, "deny"),
            ("public, no peer", "GET", "/metrics", plain, None, "deny"),
        ];
        for (name, method, path, peer, claims, want) in cases {
            assert_eq!(run_from(&c, method, path, &peer, claims), want, "{name}");
        }
    }

    #[test]
    fn trace_names_the_peer_condition() {
        let c = peer_config();
        let peer = Peer::from_connection(true, Some(GATEWAY), Some("127.0.0.1:1"));
        let claims = json!({"sub": "a", "groups": ["buyers"]});
        let facts = RequestFacts {
            method: "POST",
            path: "/orders",
            served_path: "/orders",
            query: "",
            host: "h",
            headers: &[],
            peer: &peer,
        };
        let subject = Subject {
            provider: 0,
            principal: "https://idp.example/a",
            claims: claims.as_object().unwrap(),
        };
        let d = c.policy.evaluate(&facts, Some(&subject));
        let lines: Vec<String> = d.trace.iter().map(|t| c.policy.describe(t, &[])).collect();
        assert!(
            lines.contains(&"ALLOW frontend-buyers: peer principal not in principals".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn peer_facts_from_connection_properties() {
        let p = Peer::from_connection(true, Some(FRONTEND), Some("[::1]:443"));
        assert_eq!(p.principal(), Some("cluster.local/ns/web/sa/frontend"));
        assert_eq!(p.namespace(), Some("web"));
        assert_eq!(p.ip, Some("::1".parse().unwrap()));
        // Port 0: Envoy took the address from X-Forwarded-For; bare addresses are not sockets.
        assert_eq!(Peer::from_connection(false, None, Some("10.0.0.1:0")).ip, None);
        assert_eq!(Peer::from_connection(false, None, Some("10.0.0.1")).ip, None);
        assert_eq!(
            Peer::from_connection(false, None, Some("[::ffff:10.0.0.1]:9")).ip,
            Some("10.0.0.1".parse().unwrap())
        );
        let p = Peer::from_connection(true, Some("https://example.com/x"), Some("10.0.0.1:80"));
        assert_eq!(p.principal(), Some("https://example.com/x"));
        assert_eq!(p.namespace(), None);
        for odd in [
            "spiffe://td/ns//sa/x",
            "spiffe://td/ns/a/sa/",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/sa/b/ns/a",
        ] {
            assert_eq!(Peer::from_connection(true, Some(odd), None).namespace(), None, "{odd}");
        }
        // Empty, control characters, or not mTLS: no principal.
        assert_eq!(Peer::from_connection(true, Some(""), None).principal(), None);
        assert_eq!(
            Peer::from_connection(true, Some("spiffe://a\n"), None).principal(),
            None
        );
        assert_eq!(Peer::from_connection(false, Some(FRONTEND), None).principal(), None);
        // Addresses: v4, v6, v4-mapped, bare, junk.
        assert_eq!(parse_socket_ip("127.0.0.1:80"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            parse_socket_ip("[::ffff:10.0.0.1]:80"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_socket_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(parse_socket_ip("envoy://internal_client_address/"), None);
        assert_eq!(parse_socket_ip(""), None);
    }

    #[test]
    fn cidr_blocks() {
        let b = |s: &str| IpBlock::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(b("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!b("0.0.0.0/0").contains(ip("::1")));
        assert!(b("::/0").contains(ip("2001:db8::1")));
        assert!(b("10.0.0.0/8").contains(ip("10.255.255.255")));
        assert!(!b("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(b("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!b("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(b("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!b("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(b("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "",
            "10.0.0.0/8/8",
        ] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
        assert!(IpBlock::parse("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
    }

    #[test]
    fn bad_peer_conditions_are_refused_with_paths() {
        let k = TestKey::generate(Alg::ES256, "k");
        let cases = vec![
            (
                json!({"rules": [{"name": "a", "principals": []}]}),
                "rules[0].principals",
            ),
            (
                json!({"rules": [{"name": "a", "principals": ["a*b"]}]}),
                "rules[0].principals[0]",
            ),
            (
                json!({"rules": [{"name": "a", "notPrincipals": [""]}]}),
                "rules[0].notPrincipals[0]",
            ),
            (
                json!({"rules": [{"name": "a", "namespaces": ["*a*"]}]}),
                "rules[0].namespaces[0]",
            ),
            (
                json!({"rules": [{"name": "a", "ipBlocks": ["10.0.0.1/8"]}]}),
                "rules[0].ipBlocks[0]",
            ),
            (
                json!({"rules": [{"name": "a", "notIpBlocks": ["10.0.0.0/8", "nope"]}]}),
                "rules[0].notIpBlocks[1]",
            ),
            (
                json!({"rules": [{"name": "a", "remoteIpBlocks": ["10.0.0.0/8"]}]}),
                "rules[0]",
            ),
            (
                json!({"trustedPrincipals": ["x**"]}),
                "providers[0].trustedPrincipals[0]",
            ),
            (json!({"trustedPrincipals": []}), "providers[0].trustedPrincipals"),
        ];
        for (extra, want) in cases {
            let mut cfg = json!({"providers": [{"name": "idp", "issuer": "i", "jwks": k.jwks()}]});
            if let Some(r) = extra.get("rules") {
                cfg["rules"] = r.clone();
            }
            if let Some(t) = extra.get("trustedPrincipals") {
                cfg["providers"][0]["trustedPrincipals"] = t.clone();
            }
            let e = Config::from_json(cfg.to_string().as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    /// A glob-style `**` (or `*`) segment in a template is refused with the template form to
    /// write instead, not matched as a literal `**` that no request has.
    #[test]
    fn glob_segments_in_templates_say_what_to_write() {
        let e = PathPattern::compile("/tenants/{tenant}/**", false).err().unwrap();
        assert!(
            e.ends_with("in a template, write {**} for any number of segments"),
            "{e}"
        );
        let e = PathPattern::compile("/tenants/{tenant}/*/x", false).err().unwrap();
        assert!(e.ends_with("in a template, write {*} for one segment"), "{e}");
        assert!(PathPattern::compile("/tenants/{tenant}/{**}", false).is_ok());
        let e = PathPattern::compile("/tenants/{tenant}/a*", false).err().unwrap();
        assert!(e.contains("a template segment must be a literal"), "{e}");
    }

    /// A request value as lines show it: quoted and escaped, so that it cannot end its field,
    /// its line or pass for another field, and cut to [`SHOWN_CHARS`] characters.
    #[test]
    fn request_values_are_shown_escaped_and_cut() {
        let shown = |v: &str| ReqValue::Value(Cow::Owned(v.to_string())).to_string();
        assert_eq!(shown("acme"), r#""acme""#);
        assert_eq!(ReqValue::Absent.to_string(), "absent");
        assert_eq!(ReqValue::Ambiguous.to_string(), "ambiguous");
        // Quotes, backslashes, line breaks, control and format characters are escaped.
        assert_eq!(
            shown("a\",\"decision\":\"allow\\\n\r\u{0}\u{202e}\u{2028}\u{feff}jörg"),
            r#""a\",\"decision\":\"allow\\\n\r\0\u{202e}\u{2028}\u{feff}jörg""#
        );
        let exact = "x".repeat(SHOWN_CHARS);
        assert_eq!(shown(&exact), format!("\"{exact}\""));
        // Longer: the first SHOWN_CHARS characters (never half of one), then the length.
        let long = format!("{exact}y");
        assert_eq!(shown(&long), format!("\"{exact}\"... ({} bytes)", SHOWN_CHARS + 1));
        let wide = "ö".repeat(10_000);
        assert_eq!(
            shown(&wide),
            format!("\"{}\"... (20000 bytes)", "ö".repeat(SHOWN_CHARS))
        );
        // However a value is made up, what is shown stays short and on one line.
        for v in ["\n".repeat(10_000), "\u{202e}".repeat(10_000), "\"".repeat(10_000)] {
            let s = shown(&v);
            assert!(s.len() <= SHOWN_CHARS * 10 + 32, "{}", s.len());
            assert!(!s.chars().any(|c| c.is_control() || c == '\u{202e}'), "{s}");
        }
    }

    /// The bound values are read off the trace (rules whose method, path and host matched)
    /// rather than by matching each rule again: the same values, in the same order, as matching
    /// the request half again gives, over requests of every shape.
    #[test]
    fn bound_values_come_from_the_trace() {
        let c = config(json!({
            "pathWithParametersAction": "MATCH_WITHOUT_PARAMETERS",
            "rules": [
                {"name": "cross-tenant", "action": "DENY", "methods": ["GET", "POST"], "paths": ["/t/{tenant}/{**}"],
                 "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
                {"name": "members", "paths": ["/t/{tenant}", "/t/{tenant}/{**}"], "hosts": ["api.example.com"],
                 "when": [{"claim": "groups", "values": ["staff"]}, {"claim": "tenants", "valuesFrom": "path:tenant", "ignoreCase": true}]},
                {"name": "owner", "paths": ["/u/{sub}/{**}"], "principals": ["spiffe://x"],
                 "when": [{"claim": "sub", "valuesFrom": "path:sub"}]},
                {"name": "reports", "notMethods": ["DELETE"], "paths": ["/reports"],
                 "when": [{"claim": "org", "valuesFrom": "header:x-tenant-id"}, {"claim": "sub", "notValuesFrom": "query:not"}]},
                {"name": "audit", "action": "AUDIT", "notPaths": ["/t/x/{**}"],
                 "when": [{"claim": "sub", "valuesFrom": "query:user"}]},
                {"name": "plain", "paths": ["/{**}"]}
            ]
        }));
        let claims = json!({"sub": "alice", "tenants": ["acme"], "groups": ["staff"], "org": "acme"});
        let subject = Subject {
            provider: 0,
            principal: "https://idp.example/alice",
            claims: claims.as_object().unwrap(),
        };
        let mut compared = 0;
        for method in ["GET", "DELETE", "PUT"] {
            for host in ["api.example.com", "other.example.com"] {
                for path in [
                    "/t/acme/x",
                    "/t/ACME",
                    "/t/globex/x?user=alice",
                    "/t/x/y",
                    "/u/alice/p",
                    "/u/bob/p?not=alice",
                    "/reports?not=bob&user=bob",
                    "/reports",
                    "/t/acme;v=1/x",
                    "/other?user=alice",
                ] {
                    let (raw, query) = path.split_once('?').unwrap_or((path, ""));
                    let normalized = normalize(raw, &c.path).unwrap();
                    let headers = [("x-tenant-id", "acme")];
                    let facts = RequestFacts {
                        method,
                        path: &normalized,
                        served_path: raw,
                        query,
                        host,
                        headers: &headers,
                        peer: &Peer::NONE,
                    };
                    for subject in [Some(&subject), None] {
                        let d = c.policy.evaluate(&facts, subject);
                        // What evaluation used to compute for every request, matching again.
                        let mut again = Vec::new();
                        for (i, r) in c.policy.rules.iter().enumerate() {
                            if r.request_matches(&facts).is_err() {
                                continue;
                            }
                            for (j, w) in r.when.iter().enumerate() {
                                if let Some(value) = w.request_value(&facts, &r.paths) {
                                    again.push(BoundValue {
                                        rule: i,
                                        when: j,
                                        value: value.into_owned(),
                                    });
                                }
                            }
                        }
                        let from_trace = c.policy.bound_values(&facts, &d.trace);
                        assert_eq!(from_trace, again, "{method} {host} {path}");
                        compared += from_trace.len();
                    }
                }
            }
        }
        assert!(compared > 50, "{compared}");
    }

    // Other spellings of the same request, each of which escaped a rule before (security
    // review, 2026-12-05). Each case states the outcome a server reading the request would
    // need: the rule holds, or the request is refused (400, "reject" here).

    fn tok() -> Option<(usize, Value)> {
        Some((0usize, json!({"iss": "https://idp.example", "sub": "alice"})))
    }

    /// `internal.example.com:` (an empty port, RFC 3986 §3.2.3) is the host
    /// `internal.example.com`; a port that is not a number is one servers cut differently.
    #[test]
    fn hosts_with_empty_or_malformed_ports_do_not_escape_hosts_or_not_hosts() {
        let c = config(json!({"rules": [
            {"name": "no-internal", "action": "DENY", "hosts": ["internal.example.com"]},
            {"name": "public-docs", "public": true, "paths": ["/docs/*"], "notHosts": ["internal.example.com"]},
            {"name": "any", "paths": ["*"]}
        ]}));
        let mut wrong = Vec::new();
        for (h, want) in [
            ("internal.example.com", "deny:no-internal"),
            ("INTERNAL.example.com.", "deny:no-internal"),
            ("internal.example.com:443", "deny:no-internal"),
            ("internal.example.com.:443", "deny:no-internal"),
            ("internal.example.com:0443", "deny:no-internal"),
            ("internal.example.com:", "deny:no-internal"),
            ("internal.example.com.:", "deny:no-internal"),
            ("INTERNAL.EXAMPLE.COM:", "deny:no-internal"),
            ("internal.example.com:80:80", "reject"),
            ("internal.example.com:x", "reject"),
            ("u@internal.example.com", "reject"),
            ("internal%2Eexample.com", "reject"),
        ] {
            for (path, token) in [("/orders/1", tok()), ("/docs/x", None)] {
                let got = run(&c, "GET", path, h, token.clone(), &[]);
                if got != want {
                    wrong.push(format!(
                        "GET {path} host {h:?} token {}: {got}, want {want}",
                        token.is_some()
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert_eq!(run(&c, "GET", "/docs/x", "docs.example.com:", None, &[]), "public");
    }

    /// A reserved character a rule names (`:cancel`, `$batch`, `@admin`) escaped in the
    /// request (`%3A`), which most frameworks decode before routing: refused, as `%2F` is.
    /// Escapes of characters no rule names stay as they were.
    #[test]
    fn escaped_reserved_characters_that_a_rule_names_are_refused() {
        let c = config(json!({"rules": [
            {"name": "no-cancel", "action": "DENY", "paths": ["*:cancel"]},
            {"name": "no-batch", "action": "DENY", "paths": ["/odata/$batch"]},
            {"name": "no-at-admin", "action": "DENY", "notPaths": ["/public/*"], "paths": ["/@admin/*"]},
            {"name": "any", "paths": ["*"]}
        ]}));
        assert_eq!(
            c.path.named_reserved,
            [b':', b'$', b'@'].iter().fold(0, |m, b| m | 1u128 << b)
        );
        let h = "api.example.com";
        for (m, p, want) in [
            ("POST", "/v1/jobs/7:cancel", "deny:no-cancel"),
            ("POST", "/odata/$batch", "deny:no-batch"),
            ("GET", "/@admin/users", "deny:no-at-admin"),
            ("POST", "/v1/jobs/7%3Acancel", "reject"),
            ("POST", "/v1/jobs/7%3acancel", "reject"),
            ("POST", "/odata/%24batch", "reject"),
            ("GET", "/%40admin/users", "reject"),
            ("GET", "/files/a%3Ab", "reject"),
            // Not named by any rule: kept escaped, judged and served so.
            ("GET", "/files/a%2Bb", "allow:any"),
            ("GET", "/files/a%26b", "allow:any"),
            ("GET", "/files/caf%C3%A9", "allow:any"),
        ] {
            assert_eq!(run(&c, m, p, h, tok(), &[]), want, "{m} {p}");
        }
        // No rule names a reserved character: nothing more is refused than before.
        let plain = config(json!({"rules": [{"name": "any", "paths": ["/files/*"]}]}));
        assert_eq!(plain.path.named_reserved, 0);
        assert_eq!(run(&plain, "GET", "/files/a%3Ab", h, tok(), &[]), "allow:any");
    }

    /// Rule patterns are compared in the form requests are: `%7E` is `~`, `%c3%a9` is
    /// `%C3%A9`, `é` is `%C3%A9`, a host's trailing dot and case go; a pattern no canonical
    /// request could match is refused with its field named.
    #[test]
    fn rule_patterns_are_canonical_or_refused() {
        let c = config(json!({"rules": [
            {"name": "no-tilde", "action": "DENY", "paths": ["/files/%7Eroot/*"]},
            {"name": "no-cafe", "action": "DENY", "paths": ["/caf%c3%a9", "/th\u{e9}"]},
            {"name": "no-dot-host", "action": "DENY", "hosts": ["Internal.Example.com.", "*.Corp.Example.:0443"]},
            {"name": "any", "paths": ["*"]}
        ]}));
        for (p, host, want) in [
            ("/files/%7Eroot/x", "api.example.com", "deny:no-tilde"),
            ("/files/~root/x", "api.example.com", "deny:no-tilde"),
            ("/caf%c3%a9", "api.example.com", "deny:no-cafe"),
            ("/caf%C3%A9", "api.example.com", "deny:no-cafe"),
            ("/th%C3%A9", "api.example.com", "deny:no-cafe"),
            ("/x", "internal.example.com.", "deny:no-dot-host"),
            ("/x", "internal.example.com", "deny:no-dot-host"),
            ("/x", "a.corp.example:443", "deny:no-dot-host"),
            ("/x", "a.corp.example.:443", "deny:no-dot-host"),
            ("/x", "a.corp.example", "allow:any"),
        ] {
            assert_eq!(run(&c, "GET", p, host, tok(), &[]), want, "GET {p} host {host}");
        }
        for (field, pattern, says) in [
            ("paths", "/v1/jobs/*%3Acancel", "write ':' rather than %3A"),
            ("paths", "/a/../admin", "\"..\" segment"),
            ("paths", "/a/./b", "\".\" segment"),
            ("paths", "/a//b", "empty segment"),
            ("notPaths", "/a?x=1", "without its query"),
            ("paths", "/a#b", "without its query"),
            ("paths", "/a\\b", "backslash"),
            ("paths", "/a b", "space or control"),
            ("paths", "/a%zz", "invalid percent-escape"),
            ("paths", "/users/{id}/%40me", "write '@' rather than %40"),
            ("hosts", "u@internal.example.com", "is not a host name"),
            ("notHosts", "internal.example.com:x", "port that is not a number"),
            ("hosts", "internal example.com*", "is not a host name"),
        ] {
            let raw = json!({"rules": [{"name": "r", "action": "DENY", field: [pattern]}]});
            let e = try_config(raw)
                .err()
                .unwrap_or_else(|| panic!("{field} {pattern:?} accepted"));
            assert_eq!(e.path, format!("rules[0].{field}[0]"), "{pattern:?}: {e:?}");
            assert!(e.message.contains(says), "{pattern:?}: {}", e.message);
        }
    }

    /// HEAD runs the GET handler: an ALLOW rule that excludes GET excludes HEAD too, as a
    /// DENY rule on GET holds for HEAD. An ALLOW rule for GET does not admit HEAD.
    #[test]
    fn head_is_get_wherever_that_is_stricter() {
        let c = config(json!({"rules": [
            {"name": "ingest-writes-only", "paths": ["/data/*"], "notMethods": ["GET"]},
            {"name": "no-get-secret", "action": "DENY", "paths": ["/secret"], "methods": ["GET"]},
            {"name": "no-writes-but-get", "action": "DENY", "paths": ["/ro/*"], "notMethods": ["GET"]},
            {"name": "reads", "paths": ["/reads/*", "/secret", "/ro/*"], "methods": ["GET"]}
        ]}));
        let h = "api.example.com";
        for (m, p, want) in [
            ("GET", "/data/x", "deny"),
            ("HEAD", "/data/x", "deny"),
            ("POST", "/data/x", "allow:ingest-writes-only"),
            ("GET", "/secret", "deny:no-get-secret"),
            ("HEAD", "/secret", "deny:no-get-secret"),
            ("HEAD", "/reads/x", "deny"),
            ("GET", "/reads/x", "allow:reads"),
            // A DENY rule's notMethods stays exact: HEAD is not exempted by GET.
            ("HEAD", "/ro/x", "deny:no-writes-but-get"),
            ("GET", "/ro/x", "allow:reads"),
        ] {
            assert_eq!(run(&c, m, p, h, tok(), &[]), want, "{m} {p}");
        }
    }

    /// `/ADMIN/users` reaches the `/admin/*` handler where routing ignores case (Express's and
    /// ASP.NET Core's default): a DENY rule's paths and an ALLOW rule's notPaths hold in any
    /// case; an ALLOW rule's paths stay case-sensitive unless `caseInsensitivePaths`.
    #[test]
    fn path_case_does_not_escape_deny_paths_or_allow_not_paths() {
        let c = config(json!({"rules": [
            {"name": "no-admin", "action": "DENY", "paths": ["/admin/*", "/orders/{id}/refund", "*.BAK", "/exact"]},
            {"name": "no-but-public", "action": "DENY", "paths": ["/x/*"], "notPaths": ["/x/public"]},
            {"name": "api-but-internal", "paths": ["/api/*", "/x/*", "/Exact", "/orders/*"], "notPaths": ["/api/internal/*", "/api/users/{id}/keys"]}
        ]}));
        let h = "api.example.com";
        for (p, want) in [
            ("/admin/users", "deny:no-admin"),
            ("/ADMIN/users", "deny:no-admin"),
            ("/Admin/Users/", "deny:no-admin"),
            ("/orders/7/REFUND", "deny:no-admin"),
            ("/orders/7/Refund/", "deny:no-admin"),
            ("/orders/7/x.bak", "deny:no-admin"),
            ("/EXACT", "deny:no-admin"),
            ("/Exact", "deny:no-admin"),
            // A DENY rule's notPaths stay exact: `/X/PUBLIC` is not exempted.
            ("/x/public", "allow:api-but-internal"),
            ("/x/PUBLIC", "deny:no-but-public"),
            // An ALLOW rule's notPaths exclude any case, its paths stay exact.
            ("/api/orders", "allow:api-but-internal"),
            ("/api/INTERNAL/x", "deny"),
            ("/api/Users/7/KEYS", "deny"),
            ("/API/orders", "deny"),
            ("/orders/7", "allow:api-but-internal"),
        ] {
            assert_eq!(run(&c, "GET", p, h, tok(), &[]), want, "GET {p}");
        }
    }

    /// `/orders/42/` reaches the `/orders/{id}` handler in many routers: a DENY rule's paths
    /// and an ALLOW rule's notPaths hold for the path with its trailing slash; an ALLOW
    /// rule's paths and a DENY rule's notPaths stay exact.
    #[test]
    fn a_trailing_slash_does_not_escape_deny_paths_or_allow_not_paths() {
        let c = config(json!({"rules": [
            {"name": "no-delete", "action": "DENY", "methods": ["DELETE"], "paths": ["/orders/{id}", "/admin", "*.bak"]},
            {"name": "no-internal", "action": "DENY", "paths": ["/api/*"], "notPaths": ["/api/health"]},
            {"name": "api-but-admin", "paths": ["/api/*", "/orders/*", "/admin", "/x.bak"], "notPaths": ["/api/admin", "/api/users/{id}"]},
            {"name": "exact", "paths": ["/exact"]}
        ]}));
        let h = "api.example.com";
        for (m, p, want) in [
            ("DELETE", "/orders/42", "deny:no-delete"),
            ("DELETE", "/orders/42/", "deny:no-delete"),
            ("DELETE", "/admin/", "deny:no-delete"),
            ("DELETE", "/x.bak/", "deny:no-delete"),
            ("GET", "/orders/42/", "allow:api-but-admin"),
            ("GET", "/api/health", "allow:api-but-admin"),
            ("GET", "/api/health/", "deny:no-internal"),
            ("GET", "/exact", "allow:exact"),
            ("GET", "/exact/", "deny"),
            ("GET", "/", "deny"),
        ] {
            assert_eq!(run(&c, m, p, h, tok(), &[]), want, "{m} {p}");
        }
        let c = config(json!({"rules": [
            {"name": "api-but-admin", "paths": ["/api/*"], "notPaths": ["/api/admin", "/api/users/{id}"]}
        ]}));
        for (p, want) in [
            ("/api/admin", "deny"),
            ("/api/admin/", "deny"),
            ("/api/users/7/", "deny"),
            ("/api/users/7/keys", "allow:api-but-admin"),
            ("/api/other/", "allow:api-but-admin"),
        ] {
            assert_eq!(run(&c, "GET", p, h, tok(), &[]), want, "GET {p}");
        }
    }
}
