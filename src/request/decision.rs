//! One request's outcome, start to finish: normalise the path, let CORS preflights and public
//! routes through, find and verify the token (401 on failure), evaluate the policy (403 on
//! denial), and describe the exact response the client gets (RFC 6750 `WWW-Authenticate`, a
//! short JSON body). Pure: the host layer only carries out the [`Decision`].

use crate::config::model::MalformedTokenHeader;
use crate::config::Config;
use crate::keys::jwk::KeySet;
use crate::policy::identity::{render, ArrayFormat, HeaderOps, HeaderToAdd, Rendered};
use crate::policy::path::{canonical_host, canonicalize, is_canonical_method};
pub use crate::policy::Peer;
use crate::policy::{BoundValue, Effect, PolicyDecision, RequestFacts, Subject};
use crate::request::cache::{CachedToken, TokenOwner, VerifiedTokenCache};
use crate::token::claims::claim_at;
use crate::token::{extract, parse, Header, Jwt, Location, Request};
use crate::verify::provider::Provider;
use crate::verify::{claimed_issuer, verify_signed, AuthError, ClaimChecks};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::rc::Rc;

/// The longest `txn` a decision line carries, in bytes: a transaction id is a UUID (36) or
/// so; the rest of a longer one (it comes from a token) is cut off at a character boundary.
pub const TXN_MAX_BYTES: usize = 128;

/// Who the verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
///
/// Its strings are shared (`Rc`) with the verified-token cache entry they were made for: a
/// cached request builds its identity without allocating.
pub struct Identity {
    pub provider: Rc<str>,
    pub provider_index: usize,
    pub issuer: Rc<str>,
    pub subject: Option<Rc<str>>,
    /// `iss/sub`, as Istio's `request.auth.principal`.
    pub principal: Rc<str>,
    /// Shared with the verified-token cache (`claimAliases` applied).
    pub claims: Rc<Map<String, Value>>,
    /// The verified payload exactly as signed (base64url), for `outputPayloadToHeader`.
    pub payload_b64: Rc<str>,
    /// The header the token came in, when it came in one (removed unless forwarded).
    pub token_header: Option<Rc<str>>,
    /// The token's time checks, as the verified-token cache holds them (what the decision
    /// memo re-checks on every hit).
    pub checks: crate::verify::ClaimChecks,
}

/// An HTTP request as the filter sees it: pseudo-headers included, names lower-case.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// `:path` as received (query included).
    pub path: &'a str,
    /// `:authority` (or `host`).
    pub host: &'a str,
    pub headers: &'a [Header<'a>],
    /// The calling workload: mTLS peer identity and downstream IP (none unless the host says).
    pub peer: Peer,
}

impl<'a> HttpRequest<'a> {
    /// Reads `:method`, `:path` and `:authority` out of Envoy's header map.
    pub fn from_headers(headers: &'a [Header<'a>]) -> HttpRequest<'a> {
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        HttpRequest {
            method: get(":method").unwrap_or("GET"),
            path: get(":path").unwrap_or("/"),
            host: get(":authority").or_else(|| get("host")).unwrap_or(""),
            headers,
            peer: Peer::NONE,
        }
    }

    /// The same request, arriving from `peer`.
    pub fn with_peer(self, peer: Peer) -> HttpRequest<'a> {
        HttpRequest { peer, ..self }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method.
    pub fn is_cors_preflight(&self) -> bool {
        self.method == "OPTIONS"
            && self.header("origin").is_some()
            && self.header("access-control-request-method").is_some()
    }
}

/// Everything known about one request's evaluation: the decision, and what led to it (for
/// logs, metrics and `explain`).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub decision: Decision,
    /// The path policy was evaluated on (None when the path itself was refused).
    pub normalized_path: Option<String>,
    /// The canonical path (no query) when it differs from the one received: an allowed
    /// request goes upstream with `:path` rewritten to it (query kept).
    pub canonical_path: Option<String>,
    /// Let through as a CORS preflight (`allowCorsPreflight`).
    pub cors_preflight: bool,
    /// The public rule that made a token optional.
    pub public_rule: Option<usize>,
    /// The policy evaluation (None when the request was refused before policy).
    pub policy: Option<PolicyDecision>,
    /// For an allowed request: headers to set and remove, filter state to publish.
    pub header_ops: HeaderOps,
    /// Verified issuer and subject (also for a valid token the policy refused).
    pub issuer: Option<Rc<str>>,
    pub subject: Option<Rc<str>>,
    /// The verified token's `txn` (RFC 8417 transaction id, as Transaction Tokens carry it),
    /// when it is a string: at most [`TXN_MAX_BYTES`] of it, for the decision line.
    pub txn: Option<String>,
    /// Where the token was, if one was sent (an index in `token_locations`): only ever used
    /// for [`Evaluation::token_fingerprint`]. The token itself is never logged nor kept.
    token_at: Option<usize>,
    /// With a cache: Some(true) when the token's signature was already verified, Some(false)
    /// when it was verified now.
    pub token_cache: Option<bool>,
    /// Each token-handling step and its result: only filled by [`evaluate_traced`] (the
    /// filter never pays for it), for `claimguard explain`.
    pub auth_steps: Vec<AuthStep>,
}

impl Evaluation {
    /// First 16 hex digits of the SHA-256 of the token, if one was sent: lets logs correlate
    /// requests without ever holding the token.
    pub fn token_fingerprint(&self, config: &Config, req: &HttpRequest) -> Option<String> {
        self.token_at?;
        let headers = unmanaged(config, req.headers);
        let token_req = Request {
            headers: &headers,
            path: req.path,
        };
        match find_token(config, &token_req) {
            Ok(Some((at, token))) if Some(at) == self.token_at => Some(token_fingerprint(&token)),
            _ => None,
        }
    }
}

/// One step of finding and verifying the token, as `claimguard explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStep {
    /// `token`, `parse`, `provider`, `keys`, `algorithm`, `typ`, `key`, `signature`, `iss`,
    /// `exp`, `nbf`, `iat`, `token_use`, `aud`, ...
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Continue upstream. `None` when no token was sent and a provider allows that.
    Allow {
        identity: Option<Identity>,
    },
    Deny(Denial),
    /// The token's provider has no usable keys yet, or lacks the token's `kid`: the host may
    /// pause the request while the keys are (re)fetched, then evaluate again with
    /// `final_attempt` set.
    NeedKeys {
        provider: usize,
        kid: Option<String>,
    },
}

/// The key set each provider verifies with right now.
pub trait KeyLookup {
    /// None: the provider has no usable keys (remote keys never fetched, or past `maxStale`).
    fn key_set(&self, provider: usize) -> Option<&KeySet>;

    /// Changes whenever the provider's key set changes: cached verifications are only trusted
    /// under the generation they were made under.
    fn generation(&self, _provider: usize) -> u64 {
        0
    }
}

/// Inline keys only: what a config without `jwksUri` always uses.
impl KeyLookup for Config {
    fn key_set(&self, provider: usize) -> Option<&KeySet> {
        self.providers.get(provider).map(|p| &p.keys).filter(|k| !k.is_empty())
    }
}

/// A local reply: status, headers and body, plus why (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub reason: &'static str,
    pub description: String,
    pub provider: Option<String>,
}

impl Denial {
    fn json(
        status: u32,
        headers: Vec<(String, String)>,
        code: &str,
        description: String,
        reason: &'static str,
        extra: Option<(&str, &str)>,
    ) -> Denial {
        let mut body = json!({"error": code, "message": description});
        if let (Some((k, v)), Some(m)) = (extra, body.as_object_mut()) {
            m.insert(k.to_string(), json!(v));
        }
        let mut headers = headers;
        headers.push(("content-type".into(), "application/json".into()));
        headers.push(("cache-control".into(), "no-store".into()));
        Denial {
            status,
            headers,
            body: body.to_string(),
            reason,
            description,
            provider: None,
        }
    }

    /// 403: a valid token the policy refuses. `insufficient_scope` adds the RFC 6750 header.
    pub fn forbidden(realm: &str, insufficient_scope: bool, rule: Option<&str>, provider: Option<&str>) -> Denial {
        let (code, description, reason) = if insufficient_scope {
            (
                "insufficient_scope",
                "the token lacks a scope this request needs",
                "insufficient_scope",
            )
        } else {
            ("forbidden", "access denied by policy", "policy_denied")
        };
        let headers = if insufficient_scope {
            vec![(
                "www-authenticate".to_string(),
                format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{description}\""),
            )]
        } else {
            Vec::new()
        };
        let mut d = Denial::json(
            403,
            headers,
            code,
            description.to_string(),
            reason,
            rule.map(|r| ("rule", r)),
        );
        d.provider = provider.map(str::to_owned);
        d
    }

    /// 403: a valid token that did not arrive through one of its provider's
    /// `trustedPrincipals`.
    pub fn untrusted_peer(provider: &str) -> Denial {
        let mut d = Denial::json(
            403,
            Vec::new(),
            "forbidden",
            "tokens of this issuer are only accepted through a trusted workload".to_string(),
            "untrusted_peer",
            None,
        );
        d.provider = Some(provider.to_owned());
        d
    }

    /// 503: the issuer's keys could not be had (never fetched, or stale past `maxStale`).
    pub fn jwks_unavailable(provider: Option<&str>) -> Denial {
        let mut d = Denial::json(
            503,
            vec![("retry-after".to_string(), "5".to_string())],
            "jwks_unavailable",
            "signing keys for the token's issuer are not available".to_string(),
            "jwks_unavailable",
            None,
        );
        d.provider = provider.map(str::to_owned);
        d
    }

    /// 400: a request path that cannot be evaluated safely.
    pub fn bad_path(description: &str) -> Denial {
        Denial::bad_request(description, "bad_path")
    }

    /// 400 for a request claimguard cannot judge as its upstream would serve it (`reason`:
    /// `bad_path`, `bad_method`, `bad_host`, `repeated_header`).
    pub fn bad_request(description: &str, reason: &'static str) -> Denial {
        Denial::json(400, Vec::new(), "bad_request", description.to_string(), reason, None)
    }

    pub fn unauthenticated(realm: &str, error: &AuthError, provider: Option<&str>) -> Denial {
        let description = header_safe(&error.description());
        let (status, code, www) = match error {
            // RFC 6750 §3.1: with no authentication information at all, send no error code.
            AuthError::Missing => (401, "missing_token", format!("Bearer realm=\"{realm}\"")),
            AuthError::MultipleTokens => (
                400,
                "invalid_request",
                format!("Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{description}\""),
            ),
            _ => (
                401,
                "invalid_token",
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""),
            ),
        };
        let body = json!({"error": code, "message": description}).to_string();
        Denial {
            status,
            headers: vec![
                ("www-authenticate".into(), www),
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body,
            reason: error.reason(),
            description,
            provider: provider.map(str::to_owned),
        }
    }
}

/// Descriptions are built from fixed text, but they go into a quoted-string of a response
/// header: keep them to printable ASCII without quotes or backslashes, whatever changes later.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (' '..='~').contains(&c) && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Evaluates one request at time `now` (seconds since the epoch): the whole filter, minus I/O.
///
/// With `final_attempt` false, a token whose keys are missing yields [`Decision::NeedKeys`];
/// with it true (after waiting, or when no fetch can help), the answer is 401 for an unknown
/// `kid` and 503 `jwks_unavailable` when the provider has no keys at all.
pub fn evaluate(config: &Config, keys: &dyn KeyLookup, req: &HttpRequest, now: u64, final_attempt: bool) -> Evaluation {
    evaluate_cached(config, keys, None, req, now, final_attempt)
}

/// [`evaluate`] as a last attempt (no waiting for keys), recording every token-handling step
/// in [`Evaluation::auth_steps`]: the same code path as the filter, with notes taken.
pub fn evaluate_traced(config: &Config, keys: &dyn KeyLookup, req: &HttpRequest, now: u64) -> Evaluation {
    evaluate_inner(config, keys, None, req, now, true, true)
}

/// [`evaluate`] with a verified-token cache (the filter keeps one per VM).
pub fn evaluate_cached(
    config: &Config,
    keys: &dyn KeyLookup,
    cache: Option<&mut VerifiedTokenCache>,
    req: &HttpRequest,
    now: u64,
    final_attempt: bool,
) -> Evaluation {
    evaluate_inner(config, keys, cache, req, now, final_attempt, false)
}

/// [`evaluate_request`], plus the `decisionHeader` on a local reply.
fn evaluate_inner(
    config: &Config,
    keys: &dyn KeyLookup,
    cache: Option<&mut VerifiedTokenCache>,
    req: &HttpRequest,
    now: u64,
    final_attempt: bool,
    traced: bool,
) -> Evaluation {
    let mut ev = evaluate_request(config, keys, cache, req, now, final_attempt, traced);
    if config.decision_header {
        if let Decision::Deny(d) = &mut ev.decision {
            d.headers.push(("x-claimguard-reason".into(), d.reason.to_string()));
        }
    }
    ev
}

fn evaluate_request(
    config: &Config,
    keys: &dyn KeyLookup,
    cache: Option<&mut VerifiedTokenCache>,
    req: &HttpRequest,
    now: u64,
    final_attempt: bool,
    traced: bool,
) -> Evaluation {
    let mut ev = Evaluation {
        decision: Decision::Allow { identity: None },
        normalized_path: None,
        canonical_path: None,
        cors_preflight: false,
        public_rule: None,
        policy: None,
        header_ops: HeaderOps::default(),
        issuer: None,
        subject: None,
        txn: None,
        token_at: None,
        token_cache: None,
        auth_steps: Vec::new(),
    };
    // The request is judged as its upstream will serve it: one canonical method, path and
    // host, or a 400 for spellings that mean different things to different servers.
    if !is_canonical_method(req.method) {
        ev.decision = Decision::Deny(Denial::bad_request(
            "request method must be an upper-case token",
            "bad_method",
        ));
        return ev;
    }
    let canonical = match canonicalize(req.path, &config.path) {
        Ok(c) => c,
        Err(e) => {
            ev.decision = Decision::Deny(Denial::bad_path(e.description()));
            return ev;
        }
    };
    let path = canonical.matched;
    // Path bindings read the path as served (its case kept): the canonical path, only copied
    // when it differs from the one received.
    let served_path = canonical.canonical.clone();
    ev.canonical_path = canonical.canonical;
    let path_rewrite = canonical.rewrite;
    let host = match canonical_host(req.host) {
        Ok(h) => h,
        Err(e) => {
            ev.decision = Decision::Deny(Denial::bad_request(
                &format!("request host {}", e.description()),
                "bad_host",
            ));
            ev.normalized_path = Some(path);
            return ev;
        }
    };
    let overrides = match method_overrides(req) {
        Ok(o) => o,
        Err(why) => {
            ev.decision = Decision::Deny(Denial::bad_request(why, "bad_method"));
            ev.normalized_path = Some(path);
            return ev;
        }
    };
    if config.allow_cors_preflight && req.is_cors_preflight() {
        ev.cors_preflight = true;
        if let Some(p) = path_rewrite {
            ev.header_ops.set.push((":path".into(), p));
        }
        // Browsers send no credentials on a preflight: a token header on one did not come
        // from a browser, and is removed rather than passed on unverified.
        for loc in &config.token_locations {
            if let Location::Header { name, .. } = loc {
                if req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) && !ev.header_ops.remove.contains(name)
                {
                    ev.header_ops.remove.push(Rc::clone(name));
                }
            }
        }
        ev.normalized_path = Some(path);
        return ev;
    }
    // Managed headers never count as the client's.
    let headers = unmanaged(config, req.headers);
    let headers = &*headers;
    // A header a rule reads, sent twice: servers disagree on which copy they read (first,
    // last, or both joined), so no copy can be the one the rule judged.
    if let Some(name) = config.policy.header_names().find(|n| {
        headers
            .iter()
            .filter(|(k, _)| crate::policy::same_header(k, n))
            .nth(1)
            .is_some()
    }) {
        ev.decision = Decision::Deny(Denial::bad_request(
            &header_safe(&format!("request repeats the {name} header, which a rule reads")),
            "repeated_header",
        ));
        ev.normalized_path = Some(path);
        return ev;
    }
    let facts = request_facts(req, &path, served_path.as_deref(), &host, headers);
    ev.public_rule = config.policy.public_rule(&facts);
    // Public only if public under every method a server may read the request as.
    if ev.public_rule.is_some()
        && overrides.iter().any(|m| {
            config
                .policy
                .public_rule(&RequestFacts { method: m, ..facts })
                .is_none()
        })
    {
        ev.public_rule = None;
    }
    // A token header in a form no provider reads is never passed on as "no token".
    let unreadable = crate::token::unreadable_token_headers(
        &config.token_locations,
        &Request {
            headers,
            path: req.path,
        },
    );
    let mut removed_headers: Vec<Rc<str>> = Vec::new();
    let kept: Vec<Header>;
    let headers = match (unreadable.first(), config.malformed_token_header) {
        (None, _) => headers,
        // The first one speaks for the request (the others would be refused the same way).
        (Some(&(name, kind)), MalformedTokenHeader::RejectRequest) => {
            let e = match kind {
                // Another scheme (`Basic …`) or nothing: as a request without a token.
                crate::token::Unreadable::NotBearer => AuthError::Missing,
                crate::token::Unreadable::Malformed => AuthError::UnreadableHeader {
                    header: name.to_string(),
                    prefix: config
                        .token_locations
                        .iter()
                        .find_map(|l| match l {
                            Location::Header { name: n, prefix } if n == name && !prefix.is_empty() => {
                                Some(format!("{} ", prefix.trim_end()))
                            }
                            _ => None,
                        })
                        .unwrap_or_default(),
                },
            };
            ev.decision = Decision::Deny(Denial::unauthenticated(&config.realm, &e, None));
            ev.normalized_path = Some(path);
            return ev;
        }
        (Some(_), MalformedTokenHeader::RemoveHeader) => {
            removed_headers = unreadable.iter().map(|(name, _)| Rc::clone(name)).collect();
            kept = headers
                .iter()
                .filter(|(k, _)| !removed_headers.iter().any(|r| k.eq_ignore_ascii_case(r)))
                .copied()
                .collect();
            &kept
        }
    };
    let token_req = Request {
        headers,
        path: req.path,
    };
    let mut notes = TokenNotes {
        steps: traced.then(Vec::new),
        ..TokenNotes::default()
    };
    let identity = find_and_verify(
        config,
        keys,
        &token_req,
        now,
        ev.public_rule.is_some(),
        cache,
        &mut notes,
    );
    ev.token_at = notes.token_at;
    ev.token_cache = notes.cache_hit;
    ev.auth_steps = notes.steps.unwrap_or_default();
    let identity = match identity {
        Ok(id) => id,
        Err(f) => {
            ev.decision = failure_decision(config, f, final_attempt);
            ev.normalized_path = Some(path);
            return ev;
        }
    };
    ev.issuer = identity.as_ref().map(|i| i.issuer.clone());
    ev.subject = identity.as_ref().and_then(|i| i.subject.clone());
    ev.txn = identity.as_ref().and_then(|i| i.claims.get("txn")?.as_str()).map(|t| {
        let mut n = t.len().min(TXN_MAX_BYTES);
        while !t.is_char_boundary(n) {
            n -= 1;
        }
        t.get(..n).unwrap_or_default().to_owned()
    });
    // Trusted hop: a valid token of a provider with trustedPrincipals counts only when it came
    // through one of those workloads. 403, not 401: the token is fine and a new one would not
    // help; where it came from is what is refused (a pod replaying a user's token).
    if let Some(id) = &identity {
        let trusted = config.providers.get(id.provider_index).is_some_and(|p| {
            p.trusted_principals.is_empty()
                || req
                    .peer
                    .principal()
                    .is_some_and(|pr| p.trusted_principals.iter().any(|t| t.matches(pr)))
        });
        let listed = config
            .providers
            .get(id.provider_index)
            .is_some_and(|p| !p.trusted_principals.is_empty());
        if traced && listed && !cfg!(target_arch = "wasm32") {
            ev.auth_steps.push(AuthStep {
                step: "peer",
                ok: trusted,
                detail: format!(
                    "peer {} {} the provider's trustedPrincipals",
                    req.peer.principal().unwrap_or("(none: no mTLS)"),
                    if trusted { "is in" } else { "is not in" }
                ),
            });
        }
        if !trusted {
            ev.decision = Decision::Deny(Denial::untrusted_peer(&id.provider));
            ev.normalized_path = Some(path);
            return ev;
        }
    }
    let subject = identity.as_ref().map(|id| Subject {
        provider: id.provider_index,
        principal: &id.principal,
        claims: &id.claims,
    });
    let mut pd = config.policy.evaluate(&facts, subject.as_ref());
    // Allowed only if allowed under every method a server may read the request as.
    if pd.effect.is_allow() {
        for m in &overrides {
            let other = config
                .policy
                .evaluate(&RequestFacts { method: m, ..facts }, subject.as_ref());
            if !other.effect.is_allow() {
                pd = other;
                break;
            }
        }
    }
    ev.decision = match pd.effect {
        Effect::Deny {
            rule,
            insufficient_scope,
        } => {
            let rule_name = rule
                .filter(|_| config.expose_rule_names)
                .map(|r| config.policy.rule_name(r));
            let provider = identity.as_ref().map(|i| &*i.provider);
            Decision::Deny(Denial::forbidden(
                &config.realm,
                insufficient_scope,
                rule_name,
                provider,
            ))
        }
        Effect::Allow { rule } => {
            ev.header_ops = header_ops(config, identity.as_ref(), rule.or(ev.public_rule));
            ev.header_ops.remove.extend(removed_headers);
            if let Some(p) = path_rewrite {
                ev.header_ops.set.push((":path".into(), p));
            }
            Decision::Allow { identity }
        }
    };
    ev.policy = Some(pd);
    ev.normalized_path = Some(path);
    ev
}

/// Headers some frameworks take a request's method from instead of the request line, on a
/// POST at least: Rails (`Rack::MethodOverride`), Laravel and Symfony, ASP.NET Core's
/// `HttpMethodOverride`, Express's `method-override`. Matched case-insensitively and with `_`
/// for `-` (Rack reads `HTTP_X_HTTP_METHOD_OVERRIDE`, which `x_http_method_override` also fills).
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The methods, other than its own, that a server may read `req` as: each method-override
/// header's value and each `_method` query parameter (Spring's `HiddenHttpMethodFilter`,
/// Laravel, Symfony; any case, percent-decoded, `&` or `;` separated), upper-cased as
/// frameworks do. Every one is a reading the request is judged under, so a repeat or another
/// spelling adds readings rather than choosing one. A value that is not a method is refused.
/// (`_method` in a form body is out of a header filter's sight.)
fn method_overrides(req: &HttpRequest) -> Result<Vec<String>, &'static str> {
    const NOT_A_METHOD: &str = "request has a method override that is not a method";
    let mut out: Vec<String> = Vec::new();
    let mut add = |v: &str| -> Result<(), &'static str> {
        let m = v.trim_matches(|c| c == ' ' || c == '\t').to_ascii_uppercase();
        if m.is_empty() {
            return Ok(());
        }
        if !is_canonical_method(&m) {
            return Err(NOT_A_METHOD);
        }
        if m != req.method && !out.contains(&m) {
            out.push(m);
        }
        Ok(())
    };
    for (k, v) in req.headers {
        if METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| crate::base::abi::same_header_loosely(k.as_bytes(), h.as_bytes()))
        {
            add(v)?;
        }
    }
    if let Some((_, query)) = req.path.split_once('?') {
        use crate::policy::{decode_component, ReqValue};
        for pair in query.split(['&', ';']) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let is_method = name.len() >= 7
                && matches!(decode_component(name, true, false), ReqValue::Value(n) if n.eq_ignore_ascii_case("_method"));
            if is_method {
                match decode_component(value, true, false) {
                    ReqValue::Absent => {}
                    ReqValue::Value(v) => add(&v)?,
                    // A bad escape or a control character: no server reads a method there.
                    ReqValue::Ambiguous => return Err(NOT_A_METHOD),
                }
            }
        }
    }
    Ok(out)
}

/// The request as the rules judge it, from what evaluation computed: `path` (as rules match
/// it), `served` (the canonical path, when it differs from the one received: where path
/// bindings read), `host` (canonical) and `headers` (without managed ones). Query bindings
/// read the query as received. [`bound_values`] builds the same facts again from the
/// evaluation, so both go through here.
fn request_facts<'f>(
    req: &'f HttpRequest<'_>,
    path: &'f str,
    served: Option<&'f str>,
    host: &'f str,
    headers: &'f [Header<'f>],
) -> RequestFacts<'f> {
    let (received_path, query) = req.path.split_once('?').unwrap_or((req.path, ""));
    RequestFacts {
        method: req.method,
        path,
        served_path: served.unwrap_or(received_path),
        query,
        host,
        headers,
        peer: &req.peer,
    }
}

/// The request values `ev`'s claim bindings compared ([`crate::policy::Policy::bound_values`]),
/// for the lines and traces that show them. Evaluation does not keep them: they are read again
/// from `req` (the request `ev` is the evaluation of) only for a request that is reported, so
/// one that is not pays nothing for them.
pub fn bound_values(config: &Config, req: &HttpRequest, ev: &Evaluation) -> Vec<BoundValue> {
    let (Some(pd), Some(path)) = (&ev.policy, &ev.normalized_path) else {
        return Vec::new();
    };
    let Ok(host) = canonical_host(req.host) else {
        // Refused before any rule ran: no rule compared a value.
        return Vec::new();
    };
    let headers = unmanaged(config, req.headers);
    let facts = request_facts(req, path, ev.canonical_path.as_deref(), &host, &headers);
    config.policy.bound_values(&facts, &pd.trace)
}

/// A verified token's claims and payload, ready to cache and to share with its requests.
fn verified_token(p: &Provider, claims: Map<String, Value>, payload_b64: &str) -> CachedToken {
    let claims = Rc::new(claims);
    let identity_claims = if p.claim_aliases.is_empty() {
        Rc::clone(&claims)
    } else {
        let mut aliased = (*claims).clone();
        apply_aliases(p, &mut aliased);
        Rc::new(aliased)
    };
    let subject: Option<Rc<str>> = claims.get("sub").and_then(Value::as_str).map(Rc::from);
    let who = TokenOwner {
        provider: Rc::from(p.name.as_str()),
        issuer: Rc::from(p.issuer.as_str()),
        principal: {
            // Not `format!`: its machinery was a sixth of this function in V8 (host_profile).
            let sub = subject.as_deref().unwrap_or("");
            let mut s = String::with_capacity(p.issuer.len() + 1 + sub.len());
            s.push_str(&p.issuer);
            s.push('/');
            s.push_str(sub);
            Rc::from(s)
        },
        subject,
    };
    CachedToken {
        checks: ClaimChecks::new(p, &claims),
        claims,
        identity_claims,
        payload_b64: payload_b64.into(),
        who,
    }
}

/// `claimAliases`: each alias claim becomes a copy of its target (or is removed when the
/// target is absent), so a rule on the alias always reads what the provider means by it.
fn apply_aliases(p: &Provider, claims: &mut Map<String, Value>) {
    for (alias, target) in &p.claim_aliases {
        match claim_at(claims, target).cloned() {
            Some(v) => {
                claims.insert(alias.clone(), v);
            }
            None => {
                claims.remove(alias);
            }
        }
    }
}

/// First 16 hex digits of the token's SHA-256.
pub use crate::request::cache::token_fingerprint;

/// The managed headers (ones claimguard sets) present in a request, and any managed or token
/// header spelled with `_` for `-` (or the reverse: `x_user_email`, `x_access_token`), which
/// CGI-style upstreams read as the same header: the host removes them before anything else,
/// on every request. Each is named as the host must remove it: a managed header by its own
/// name, another spelling as it arrived (lower-cased).
pub fn managed_present(config: &Config, headers: &[Header]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, _) in headers {
        let name = if let Some(m) = config.managed_headers.iter().find(|m| k.eq_ignore_ascii_case(m)) {
            m.clone()
        } else if is_other_spelling(config, k) {
            k.to_ascii_lowercase()
        } else {
            continue;
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// `k` is a watched name ([`Config::underscore_watched`]) spelled with `_` and `-` swapped
/// somewhere, not the name itself.
fn is_other_spelling(config: &Config, k: &str) -> bool {
    k.contains(['-', '_'])
        && config
            .underscore_watched
            .iter()
            .any(|w| crate::base::abi::same_header_loosely(k.as_bytes(), w.as_bytes()) && !k.eq_ignore_ascii_case(w))
}

/// What an allowed request carries upstream: the provider's claim headers and payload
/// header, the admitting rule's additions; the token header removed unless forwarded.
fn header_ops(config: &Config, identity: Option<&Identity>, rule: Option<usize>) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let max = config.claim_header_max_bytes;
    let empty = Map::new();
    let claims = identity.map_or(&empty, |i| i.claims.as_ref());
    if let Some(id) = identity {
        if let Some(p) = config.providers.get(id.provider_index) {
            for h in &p.claim_headers {
                ops.claim(claims, h, max);
            }
            if let Some(ph) = &p.payload_header {
                ops.set.push((ph.clone(), id.payload_b64.to_string()));
            }
            if let (false, Some(th)) = (p.forward_original_token, &id.token_header) {
                ops.remove.push(th.clone());
            }
            if config.filter_state {
                ops.filter_state.push(("claimguard.provider".into(), p.name.clone()));
                ops.filter_state
                    .push(("claimguard.issuer".into(), id.issuer.to_string()));
                ops.filter_state
                    .push(("claimguard.principal".into(), id.principal.to_string()));
                if let Some(sub) = &id.subject {
                    ops.filter_state.push(("claimguard.subject".into(), sub.to_string()));
                }
            }
            for (label, path) in &p.filter_state_claims {
                if let Rendered::Value(v) = render(claim_at(claims, path), &ArrayFormat::Join(",".into()), max) {
                    ops.filter_state.push((format!("claimguard.claim.{label}"), v));
                }
            }
        }
    }
    if let Some(r) = rule.and_then(|r| config.policy.rules.get(r)) {
        if config.filter_state {
            ops.filter_state.push(("claimguard.rule".into(), r.name.clone()));
        }
        for h in &r.headers_to_add {
            match h {
                HeaderToAdd::Fixed { header, value } => ops.set.push((header.clone(), value.clone())),
                HeaderToAdd::Claim(c) => ops.claim(claims, c, max),
            }
        }
    }
    ops
}

/// Authentication alone (no path handling, no policy), with inline keys.
pub fn authenticate(config: &Config, req: &Request, now: u64) -> Decision {
    match find_and_verify(config, config, req, now, false, None, &mut TokenNotes::default()) {
        Ok(identity) => Decision::Allow { identity },
        Err(f) => failure_decision(config, f, true),
    }
}

/// What token handling learned besides the identity.
#[derive(Default)]
struct TokenNotes {
    token_at: Option<usize>,
    cache_hit: Option<bool>,
    /// Some: record each step (explain); None: the filter, which never formats them.
    steps: Option<Vec<AuthStep>>,
}

impl TokenNotes {
    fn step(&mut self, step: &'static str, ok: bool, detail: impl FnOnce() -> String) {
        // The filter never traces: compile the notes out of the wasm module entirely.
        if cfg!(target_arch = "wasm32") {
            return;
        }
        if let Some(steps) = &mut self.steps {
            steps.push(AuthStep {
                step,
                ok,
                detail: detail(),
            });
        }
    }

    /// The signature-related steps, read off `verify_signed`'s single result.
    fn signed_steps(&mut self, p: &Provider, keys: &KeySet, jwt: &Jwt, result: &Result<(), AuthError>) {
        if cfg!(target_arch = "wasm32") || self.steps.is_none() {
            return;
        }
        let algs = || p.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
        if let Err(AuthError::AlgNotAllowed(a)) = result {
            self.step("algorithm", false, || {
                format!("{a} is not in the provider's algorithms ({})", algs())
            });
            return;
        }
        self.step("algorithm", true, || {
            format!("{} is in the provider's algorithms ({})", jwt.alg, algs())
        });
        if let Some(want) = &p.token_type {
            let ok = *result != Err(AuthError::WrongType);
            self.step("typ", ok, || format!("tokenType requires typ {want:?}"));
            if !ok {
                return;
            }
        }
        if let Err(e @ AuthError::InvalidClaim { .. }) = result {
            self.step("claim types", false, || e.description());
            return;
        }
        let fitting: Vec<&crate::keys::jwk::VerificationKey> = match &jwt.kid {
            Some(kid) => keys.find_by_kid(kid).filter(|k| k.supports(jwt.alg)).collect(),
            None => keys.keys.iter().filter(|k| k.supports(jwt.alg)).collect(),
        };
        let chosen = || {
            let described: Vec<String> = fitting
                .iter()
                .map(|k| format!("{} (kid {})", k.description, k.kid.as_deref().unwrap_or("-")))
                .collect();
            match &jwt.kid {
                Some(kid) if described.is_empty() => {
                    format!(
                        "kid {kid:?} names no {} key; tried the key set's kid-less keys",
                        jwt.alg
                    )
                }
                Some(kid) => format!("kid {kid:?} with {} selects {}", jwt.alg, described.join(", ")),
                None => format!("no kid: every {} key tried: {}", jwt.alg, described.join(", ")),
            }
        };
        match result {
            Err(e @ (AuthError::UnknownKid | AuthError::KeyAlgMismatch)) => {
                let n = keys.keys.len();
                self.step("key", false, || format!("{} ({n} key(s) in the set)", e.description()));
            }
            Err(AuthError::BadSignature) => {
                self.step("key", true, chosen);
                self.step("signature", false, || AuthError::BadSignature.description());
            }
            Err(e) => self.step("signature", false, || e.description()),
            Ok(()) => {
                self.step("key", true, chosen);
                self.step("signature", true, || format!("valid {} signature", jwt.alg));
            }
        }
    }

    /// The registered-claim steps, in `check_claims`' order, up to the one that failed.
    fn claim_steps(&mut self, p: &Provider, claims: &Map<String, Value>, now: u64, result: &Result<(), AuthError>) {
        if cfg!(target_arch = "wasm32") || self.steps.is_none() {
            return;
        }
        let failed: Option<&'static str> = match result {
            Ok(()) => None,
            Err(AuthError::UnknownIssuer) => Some("iss"),
            Err(AuthError::Expired | AuthError::MissingExpiration) => Some("exp"),
            Err(AuthError::NotYetValid) => Some("nbf"),
            Err(AuthError::IssuedInFuture) => Some("iat"),
            Err(AuthError::LifetimeTooLong { .. }) => Some("lifetime"),
            Err(AuthError::WrongTokenUse) => Some("token_use"),
            Err(AuthError::WrongSubject) => Some("sub"),
            Err(AuthError::MissingClaim(_)) => Some("claims"),
            Err(AuthError::InvalidClaim { claim, .. }) if *claim != "aud" && *claim != "client_id" => {
                Some("claim types")
            }
            Err(_) => Some("aud"),
        };
        let skew = p.clock_skew_seconds;
        let date = |name: &str| claims.get(name).and_then(|v| crate::verify::numeric_date(v, name));
        let time = |name: &str| -> String {
            match date(name) {
                Some(t) if t == now => format!("{name} {t} (now; clock skew {skew}s)"),
                Some(t) if t > now => format!("{name} {t} (in {}s; clock skew {skew}s)", t - now),
                Some(t) => format!("{name} {t} ({}s ago; clock skew {skew}s)", now - t),
                None => format!("no {name}"),
            }
        };
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("").to_string();
        let mut order: Vec<(&'static str, String)> = vec![
            ("iss", format!("{iss:?}, provider issuer {:?}", p.issuer)),
            (
                "exp",
                if p.require_expiration {
                    time("exp")
                } else {
                    format!("{} (exp optional)", time("exp"))
                },
            ),
            ("nbf", time("nbf")),
            ("iat", time("iat")),
        ];
        if let Some(max) = p.max_lifetime_seconds {
            let lifetime = match (date("iat"), date("exp")) {
                (Some(iat), Some(exp)) => format!("exp - iat = {}s", exp.saturating_sub(iat)),
                _ => "no iat or no exp".into(),
            };
            order.push(("lifetime", format!("{lifetime}, maxLifetime {max}s")));
        }
        if let Some(want) = &p.token_use {
            order.push(("token_use", format!("must be {:?}", want.name())));
        }
        if !p.subjects.is_empty() {
            let sub = claims.get("sub").map_or_else(|| "none".to_string(), Value::to_string);
            order.push(("sub", format!("{sub} against subjects")));
        }
        let aud = match claims.get("aud") {
            Some(v) => v.to_string(),
            None => "none".into(),
        };
        let aud_detail = if p.audiences.is_empty() && p.client_ids.is_empty() {
            format!("aud {aud}; not checked (no audiences or clientIds configured)")
        } else if claims.get("aud").is_none() && !p.client_ids.is_empty() {
            let client = claims
                .get("client_id")
                .map(Value::to_string)
                .unwrap_or_else(|| "none".into());
            format!("no aud; client_id {client} against clientIds {:?}", p.client_ids)
        } else {
            format!(
                "aud {aud} against audiences {:?} and clientIds {:?}",
                p.audiences, p.client_ids
            )
        };
        order.push(("aud", aud_detail));
        if !p.required_claims.is_empty() {
            order.push(("claims", format!("required: {}", p.required_claims.join(", "))));
        }
        if failed == Some("claim types") {
            if let Err(e) = result {
                self.step("claim types", false, || e.description());
            }
            return;
        }
        for (name, detail) in order {
            if Some(name) == failed {
                let why = result.as_ref().err().map(AuthError::description).unwrap_or_default();
                self.step(name, false, || format!("{why}: {detail}"));
                return;
            }
            self.step(name, true, || detail);
        }
    }
}

/// Why no identity: an authentication error (and the provider), or keys that are missing.
enum Failure<'c> {
    Auth(AuthError, Option<&'c str>),
    NoKeys { provider: usize, kid: Option<String> },
}

fn failure_decision(config: &Config, f: Failure, final_attempt: bool) -> Decision {
    match f {
        Failure::Auth(e, provider) => Decision::Deny(Denial::unauthenticated(&config.realm, &e, provider)),
        Failure::NoKeys { provider, kid } if !final_attempt => Decision::NeedKeys { provider, kid },
        Failure::NoKeys { provider, kid } => {
            let name = config.providers.get(provider).map(|p| p.name.as_str());
            match kid {
                Some(_) => Decision::Deny(Denial::unauthenticated(&config.realm, &AuthError::UnknownKid, name)),
                None => Decision::Deny(Denial::jwks_unavailable(name)),
            }
        }
    }
}

/// Finds the one token in the request and verifies it with the provider its `iss` names.
/// `Ok(None)`: no token, and none is needed (`token_optional` or a provider's `allowMissing`).
fn find_and_verify<'c>(
    config: &'c Config,
    keys: &dyn KeyLookup,
    req: &Request,
    now: u64,
    token_optional: bool,
    cache: Option<&mut VerifiedTokenCache>,
    notes: &mut TokenNotes,
) -> Result<Option<Identity>, Failure<'c>> {
    let locations = &config.token_locations;
    let searched = || locations.iter().map(|l| l.describe()).collect::<Vec<_>>().join(", ");
    let found = match find_token(config, req) {
        Ok(found) => found,
        Err((first, second)) => {
            notes.step("token", false, || {
                let at = |i: usize| locations.get(i).map(Location::describe).unwrap_or_default();
                format!("more than one token: in {} and in {}", at(first), at(second))
            });
            return Err(Failure::Auth(AuthError::MultipleTokens, None));
        }
    };
    let Some((at, raw)) = found else {
        return if token_optional || config.providers.iter().any(|p| p.allow_missing) {
            notes.step("token", true, || {
                let why = if token_optional {
                    "a public rule matches the request"
                } else {
                    "a provider sets allowMissing"
                };
                format!("none in {}; not required: {why}", searched())
            });
            Ok(None)
        } else {
            notes.step("token", false, || format!("none in {}", searched()));
            Err(Failure::Auth(AuthError::Missing, None))
        };
    };
    notes.step("token", true, || {
        let loc = locations.get(at).map(Location::describe).unwrap_or_default();
        format!("found in {loc} ({} bytes)", raw.len())
    });
    let result = verify_found(config, keys, at, &raw, now, cache, notes);
    // Where it was, for the decision line's fingerprint (found again only if a line is
    // written: most requests never pay for a copy of the token).
    notes.token_at = Some(at);
    result
}

/// A request's one token: where it was (index in `config.token_locations`) and what it is.
type FoundToken<'a> = (usize, Cow<'a, str>);

/// The one token of the request, or the indices of two locations that both hold one.
fn find_token<'a>(config: &Config, req: &Request<'a>) -> Result<Option<FoundToken<'a>>, (usize, usize)> {
    // Every distinct location any provider reads, and what it holds.
    let locations = &config.token_locations;
    let mut found: Option<FoundToken> = None;
    for (at, loc) in locations.iter().enumerate() {
        for token in extract(loc, req) {
            // `{"name": "authorization"}` beside `{"name": "authorization", "prefix": "Bearer "}`
            // accepts raw tokens as well as Bearer ones (API Gateway REST clients send them
            // raw): a value the prefixed entry reads is not a second token.
            if let Location::Header { name, prefix } = loc {
                let taken_by_prefixed = prefix.is_empty()
                    && locations.iter().any(|other| {
                        matches!(other, Location::Header { name: n, prefix: p }
                            if n == name && !p.is_empty()
                                && token.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p)))
                    });
                if taken_by_prefixed {
                    continue;
                }
            }
            if let Some((first, _)) = &found {
                return Err((*first, at));
            }
            found = Some((at, token));
        }
    }
    Ok(found)
}

/// The request's headers without managed ones: the host removes those before anything else,
/// so evaluation never sees them.
fn unmanaged<'h, 'a>(config: &Config, headers: &'h [Header<'a>]) -> Cow<'h, [Header<'a>]> {
    if managed_present(config, headers).is_empty() {
        Cow::Borrowed(headers)
    } else {
        Cow::Owned(
            headers
                .iter()
                .filter(|(k, _)| {
                    !config.managed_headers.iter().any(|m| k.eq_ignore_ascii_case(m)) && !is_other_spelling(config, k)
                })
                .copied()
                .collect(),
        )
    }
}

/// Verifies the one token found at `loc` (with the cache), for the providers reading there.
fn verify_found<'c>(
    config: &'c Config,
    keys: &dyn KeyLookup,
    at: usize,
    raw: &str,
    now: u64,
    mut cache: Option<&mut VerifiedTokenCache>,
    notes: &mut TokenNotes,
) -> Result<Option<Identity>, Failure<'c>> {
    let readers = || {
        config
            .location_readers
            .get(at)
            .into_iter()
            .flatten()
            .filter_map(|&i| config.providers.get(i).map(|p| (i, p)))
    };
    let token_header = match config.token_locations.get(at) {
        Some(Location::Header { name, .. }) => Some(Rc::clone(name)),
        _ => None,
    };
    let identity = |index: usize, verified: &CachedToken| Identity {
        provider: Rc::clone(&verified.who.provider),
        provider_index: index,
        issuer: Rc::clone(&verified.who.issuer),
        subject: verified.who.subject.clone(),
        principal: Rc::clone(&verified.who.principal),
        claims: Rc::clone(&verified.identity_claims),
        payload_b64: Rc::clone(&verified.payload_b64),
        token_header: token_header.clone(),
        checks: verified.checks.clone(),
    };

    // An ALB's user claims token: its own encoding, header checks and keys by kid.
    if let Some((index, p, alb)) = readers().find_map(|(i, p)| p.alb.as_ref().map(|a| (i, p, a))) {
        let name = Some(p.name.as_str());
        let t = match crate::verify::alb::parse(raw, p.max_token_bytes) {
            Ok(t) => t,
            Err(e) => {
                notes.step("parse", false, || format!("ALB token: {}", e.description()));
                return Err(Failure::Auth(e, name));
            }
        };
        notes.step("parse", true, || {
            format!(
                "ALB token for provider {}: ES256, kid {} (padding kept as received)",
                p.name, t.kid
            )
        });
        // Signer, client, issuer and expiry first: a token no key could make acceptable never
        // causes a key fetch.
        if let Err(e) = crate::verify::alb::check(p, alb, &t, now) {
            notes.step("claims", false, || e.description());
            return Err(Failure::Auth(e, name));
        }
        notes.step("claims", true, || {
            let signer = t.header.get("signer").and_then(Value::as_str).unwrap_or_default();
            format!("signer {signer} is accepted; client, iss and exp hold")
        });
        let generation = keys.generation(index);
        let verified = match cache.as_deref_mut().and_then(|c| c.get(raw, index, generation, now)) {
            Some(v) => {
                notes.cache_hit = Some(true);
                v
            }
            None => {
                // Configured keys first, then the ones fetched by kid.
                let empty = KeySet::default();
                let fetched = keys.key_set(index).unwrap_or(&empty);
                let result = match crate::verify::alb::verify_signature(&p.keys, &t) {
                    Err(AuthError::UnknownKid) => crate::verify::alb::verify_signature(fetched, &t),
                    other => other,
                };
                match result {
                    Ok(()) => {}
                    Err(AuthError::UnknownKid) => {
                        notes.step("keys", false, || {
                            format!("no key for kid {} yet (fetched from alb.keysUri)", t.kid)
                        });
                        return Err(Failure::NoKeys {
                            provider: index,
                            kid: Some(t.kid.clone()),
                        });
                    }
                    Err(e) => {
                        notes.step("signature", false, || e.description());
                        return Err(Failure::Auth(e, name));
                    }
                }
                notes.step("signature", true, || format!("ES256 with the key of kid {}", t.kid));
                let v = verified_token(p, t.claims.clone(), t.payload_b64);
                if let Some(c) = cache.as_deref_mut() {
                    notes.cache_hit = Some(false);
                    // Useful until the earlier of the header's and the payload's exp.
                    let valid_until = [t.header.get("exp"), t.claims.get("exp")]
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_u64)
                        .min()
                        .map_or(u64::MAX, |exp| exp.saturating_add(p.clock_skew_seconds));
                    c.insert(raw, index, generation, v.clone(), valid_until);
                }
                v
            }
        };
        let issuer = crate::verify::alb::issuer_of(&t);
        let mut id = identity(index, &verified);
        id.principal = format!("{issuer}/{}", id.subject.as_deref().unwrap_or("")).into();
        id.issuer = issuer.into();
        return Ok(Some(id));
    }

    // The same bytes verified before, under the same keys: skip parsing and the signature,
    // never the claim checks (time moves on).
    if let Some(c) = cache.as_deref_mut() {
        // The cache holds one provider's verification of a token: at most one reader hits.
        for (index, p) in readers() {
            if let Some(hit) = c.get(raw, index, keys.generation(index), now) {
                notes.cache_hit = Some(true);
                notes.step("signature", true, || {
                    format!("verified earlier for provider {:?} (verified-token cache)", p.name)
                });
                let checked = hit.checks.at(p, now);
                notes.claim_steps(p, &hit.claims, now, &checked);
                match checked {
                    Ok(()) => return Ok(Some(identity(index, &hit))),
                    // Another provider naming this issuer (other audiences, say) may accept
                    // it: verified in full below, where each of them is tried.
                    Err(_) if readers().any(|(i, q)| i != index && q.issuer == p.issuer) => break,
                    Err(e) => return Err(Failure::Auth(e, Some(p.name.as_str()))),
                }
            }
        }
    }
    // Every provider's key generation: a remembered rejection holds only while none changed.
    let generations: Vec<u64> = (0..config.providers.len()).map(|i| keys.generation(i)).collect();
    if let Some(c) = cache.as_deref_mut() {
        if let Some(index) = c.rejected(raw, at, &generations, now) {
            notes.cache_hit = Some(true);
            let name = config.providers.get(index).map(|p| p.name.as_str());
            return Err(Failure::Auth(AuthError::BadSignature, name));
        }
    }

    let max = readers().map(|(_, p)| p.max_token_bytes).max().unwrap_or(0);
    let jwt = match parse(raw, max) {
        Ok(jwt) => jwt,
        Err(e) => {
            let e = AuthError::from(e);
            notes.step("parse", false, || e.description());
            return Err(Failure::Auth(e, None));
        }
    };
    notes.step("parse", true, || {
        let typ = jwt.header.get("typ").and_then(Value::as_str).unwrap_or("-");
        format!(
            "header alg {}, kid {}, typ {typ}",
            jwt.alg,
            jwt.kid
                .as_deref()
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|| "none".into())
        )
    });
    let iss = claimed_issuer(&jwt);
    if !cfg!(target_arch = "wasm32") && notes.steps.is_some() {
        let names: Vec<String> = readers()
            .filter(|(_, p)| Some(p.issuer.as_str()) == iss)
            .map(|(_, p)| format!("{:?}", p.name))
            .collect();
        let shown = iss.map(|i| format!("{i:?}")).unwrap_or_else(|| "(none)".into());
        if names.is_empty() {
            notes.step("provider", false, || {
                let loc = config
                    .token_locations
                    .get(at)
                    .map(Location::describe)
                    .unwrap_or_default();
                format!("iss {shown} matches no provider reading {loc}")
            });
        } else {
            notes.step("provider", true, || format!("iss {shown} selects {}", names.join(", ")));
        }
    }
    let mut first_error: Option<Failure> = None;
    // The first refusal of a provider whose signature held: it speaks for the token over
    // another provider's key or signature failure.
    let mut claims_error: Option<Failure> = None;
    let mut bad_signature: Option<usize> = None;
    // Every provider naming the token's issuer, in order: the first that accepts it (signature
    // and claims) wins, as with jwt_authn's `requires_any`; a token one of them refuses for its
    // claims (another audience, say) may still be another's.
    let candidates: Vec<(usize, &Provider)> = readers().filter(|(_, p)| Some(p.issuer.as_str()) == iss).collect();
    let mut jwt = jwt;
    for (n, &(index, p)) in candidates.iter().enumerate() {
        let Some(set) = keys.key_set(index) else {
            notes.step("keys", false, || {
                format!("provider {:?} has no usable keys yet", p.name)
            });
            // Remote keys not (yet) available: worth waiting for only if the token is
            // otherwise acceptable to look at.
            first_error.get_or_insert(Failure::NoKeys {
                provider: index,
                kid: None,
            });
            continue;
        };
        notes.step("keys", true, || {
            format!("provider {:?}: {} key(s)", p.name, set.keys.len())
        });
        let result = if raw.len() > p.max_token_bytes {
            Err(AuthError::TooLarge {
                limit: p.max_token_bytes,
            })
        } else {
            verify_signed(p, set, &jwt)
        };
        if let Err(e @ AuthError::TooLarge { .. }) = &result {
            notes.step("size", false, || e.description());
        } else {
            notes.signed_steps(p, set, &jwt, &result);
        }
        if result == Err(AuthError::UnknownKid) && p.remote.is_some() {
            first_error.get_or_insert(Failure::NoKeys {
                provider: index,
                kid: jwt.kid.clone(),
            });
            continue;
        }
        match result {
            Ok(()) => {
                // `signing_input` is `header.payload` (one dot); `find_byte`, not memchr.
                let payload_b64 = crate::token::find_byte(jwt.signing_input.as_bytes(), b'.')
                    .and_then(|i| jwt.signing_input.get(i + 1..))
                    .unwrap_or("");
                // The parsed claims move into the cache entry (copied while another provider
                // may still need them).
                let claims = if n + 1 == candidates.len() {
                    std::mem::take(&mut jwt.claims)
                } else {
                    jwt.claims.clone()
                };
                let verified = verified_token(p, claims, payload_b64);
                // The signature holds: remember that, whatever the claims say now.
                if let Some(c) = cache.as_deref_mut() {
                    notes.cache_hit = Some(false);
                    // Useful until the token expires (its exp as the claim checks read it,
                    // in whole seconds).
                    let valid_until = verified
                        .checks
                        .exp()
                        .map_or(u64::MAX, |exp| exp.saturating_add(p.clock_skew_seconds));
                    if valid_until >= now {
                        c.insert(raw, index, keys.generation(index), verified.clone(), valid_until);
                    }
                }
                let checked = verified.checks.at(p, now);
                notes.claim_steps(p, &verified.claims, now, &checked);
                match checked {
                    Ok(()) => return Ok(Some(identity(index, &verified))),
                    Err(e) => {
                        claims_error.get_or_insert(Failure::Auth(e, Some(p.name.as_str())));
                    }
                }
            }
            Err(e) => {
                if first_error.is_none() && e == AuthError::BadSignature {
                    bad_signature = Some(index);
                }
                first_error.get_or_insert(Failure::Auth(e, Some(p.name.as_str())));
            }
        }
    }
    if let Some(refused) = claims_error {
        return Err(refused);
    }
    // No provider accepted it and the first one found its signature bad: remember that, briefly.
    if let (Some(index), Some(c)) = (bad_signature, cache) {
        if matches!(first_error, Some(Failure::Auth(AuthError::BadSignature, _))) {
            notes.cache_hit = Some(false);
            c.insert_rejected(raw, at, index, generations, now);
        }
    }
    Err(first_error.unwrap_or(Failure::Auth(AuthError::UnknownIssuer, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::alg::Alg;
    use claimguard_testkeys::{unsigned_token, TestKey};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn config(extra: Value) -> (Config, TestKey, TestKey) {
        let a = TestKey::generate(Alg::ES256, "a1");
        let b = TestKey::generate(Alg::EdDSA, "b1");
        let mut cfg = json!({"providers": [
            {"name": "idp-a", "issuer": "https://a", "audiences": ["api"], "jwks": a.jwks()},
            {"name": "idp-b", "issuer": "https://b", "audiences": ["api"], "jwks": b.jwks(),
             "fromHeaders": [{"name": "x-jwt"}, {"name": "authorization", "prefix": "Bearer "}]}
        ]});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                cfg["providers"][0][k] = v;
            }
        }
        (Config::from_json(cfg.to_string().as_bytes()).unwrap(), a, b)
    }

    fn claims(iss: &str) -> Value {
        json!({"iss": iss, "aud": "api", "sub": "alice", "exp": NOW + 60})
    }

    fn run(c: &Config, headers: &[(&str, &str)], path: &str) -> Decision {
        let h: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let h_refs = crate::token::header_refs(&h);
        authenticate(c, &Request { headers: &h_refs, path }, NOW)
    }

    fn denial(d: Decision) -> Denial {
        match d {
            Decision::Deny(d) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// A config compiled from JSON (that must be valid).
    fn compiled(cfg: Value) -> Config {
        Config::from_json(cfg.to_string().as_bytes()).unwrap()
    }

    /// The owned headers of `GET /` with one more header.
    fn get_root_with(name: &str, value: &str) -> Vec<(String, String)> {
        vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/".into()),
            (name.into(), value.into()),
        ]
    }

    #[test]
    fn prefixes_spelled_in_another_case_are_one_location() {
        // One provider writes `bearer `, the other has the default `Bearer `: one place, one
        // token (it was found twice, and every request got 400 multiple_tokens).
        let a = TestKey::generate(Alg::ES256, "a1");
        let b = TestKey::generate(Alg::ES256, "b1");
        let c = compiled(json!({"providers": [
            {"name": "idp-a", "issuer": "https://a", "jwks": a.jwks(),
             "fromHeaders": [{"name": "authorization", "prefix": "bearer "}]},
            {"name": "idp-b", "issuer": "https://b", "jwks": b.jwks()}
        ]}));
        assert_eq!(c.token_locations.len(), 1, "{:?}", c.token_locations);
        for (key, iss, want) in [(&a, "https://a", "idp-a"), (&b, "https://b", "idp-b")] {
            let t = format!("Bearer {}", key.sign(&claims(iss)));
            match run(&c, &[("authorization", &t)], "/") {
                Decision::Allow { identity: Some(id) } => assert_eq!(&*id.provider, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_rejection_remembered_in_one_location_is_not_another_locations_answer() {
        // One issuer, two providers with their own keys and headers. A token whose signature
        // the first found bad in its header is still the second's to verify in its own:
        // the remembered rejection was about the first header's providers only.
        use crate::request::cache::VerifiedTokenCache;
        let a = TestKey::generate(Alg::ES256, "a1");
        let b = TestKey::generate(Alg::ES256, "b1");
        let c = compiled(json!({"providers": [
            {"name": "edge", "issuer": "https://a", "jwks": a.jwks()},
            {"name": "mesh", "issuer": "https://a", "jwks": b.jwks(),
             "fromHeaders": [{"name": "x-jwt"}]}
        ]}));
        // No kid: each provider tries every key it has.
        let t = b.sign_raw(r#"{"alg":"ES256"}"#, &claims("https://a").to_string());
        let mut cache = VerifiedTokenCache::new(16, 7);
        let eval = |cache: &mut VerifiedTokenCache, h: (&str, String)| {
            let h = get_root_with(h.0, &h.1);
            let h_refs = crate::token::header_refs(&h);
            evaluate_cached(&c, &c, Some(cache), &HttpRequest::from_headers(&h_refs), NOW, true).decision
        };
        let d = denial(eval(&mut cache, ("authorization", format!("Bearer {t}"))));
        assert_eq!(d.reason, "bad_signature");
        match eval(&mut cache, ("x-jwt", t.clone())) {
            Decision::Allow { identity: Some(id) } => assert_eq!(&*id.provider, "mesh"),
            other => panic!("{other:?}"),
        }
        // And the first header's answer is still remembered for the first header.
        let d = denial(eval(&mut cache, ("authorization", format!("Bearer {t}"))));
        assert_eq!(d.reason, "bad_signature");
    }

    #[test]
    fn picks_the_provider_by_issuer() {
        let (c, a, b) = config(json!({}));
        let ta = format!("Bearer {}", a.sign(&claims("https://a")));
        let tb = b.sign(&claims("https://b"));
        match run(&c, &[("authorization", &ta)], "/") {
            Decision::Allow { identity: Some(id) } => {
                assert_eq!(&*id.provider, "idp-a");
                assert_eq!(id.subject.as_deref(), Some("alice"));
            }
            other => panic!("{other:?}"),
        }
        match run(&c, &[("x-jwt", &tb)], "/") {
            Decision::Allow { identity: Some(id) } => assert_eq!(&*id.provider, "idp-b"),
            other => panic!("{other:?}"),
        }
        // idp-a does not read x-jwt, so its token there has no provider.
        let d = denial(run(&c, &[("x-jwt", &a.sign(&claims("https://a")))], "/"));
        assert_eq!(d.reason, "unknown_issuer");
    }

    #[test]
    fn missing_token_is_rfc6750_without_error_code() {
        let (c, _, _) = config(json!({}));
        let d = denial(run(&c, &[], "/"));
        assert_eq!(d.status, 401);
        assert_eq!(
            d.headers[0],
            ("www-authenticate".into(), "Bearer realm=\"claimguard\"".into())
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "missing_token", "message": "a bearer token is required"})
        );
    }

    #[test]
    fn an_empty_part_beside_a_token_is_folding_not_a_credential() {
        // `Bearer <token>,` (a proxy folding an empty repeat, or a client's stray comma): the
        // token is read, as jwt_authn reads it; an empty part alone is no token.
        let (c, a, _) = config(json!({}));
        let t = a.sign(&claims("https://a"));
        let eval = |v: &str| {
            let h = get_root_with("authorization", v);
            let h_refs = crate::token::header_refs(&h);
            evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), NOW, true).decision
        };
        for v in [format!("Bearer {t},"), format!("Bearer {t}, "), format!(",Bearer {t}")] {
            match eval(&v) {
                Decision::Allow { identity: Some(id) } => assert_eq!(&*id.provider, "idp-a", "{v:?}"),
                other => panic!("{v:?}: {other:?}"),
            }
        }
        for v in ["", " ", ",", " , "] {
            let d = denial(eval(v));
            assert_eq!((d.status, d.reason), (401, "missing_token"), "{v:?}");
        }
        // Another scheme beside the token still speaks for the request.
        let d = denial(eval(&format!("Bearer {t}, Basic YTpi")));
        assert_eq!((d.status, d.reason), (401, "missing_token"));
    }

    #[test]
    fn allow_missing_lets_anonymous_through_but_not_bad_tokens() {
        let (c, _, _) = config(json!({"allowMissing": true}));
        assert_eq!(run(&c, &[], "/"), Decision::Allow { identity: None });
        let d = denial(run(&c, &[("authorization", "Bearer x.y.z")], "/"));
        assert_eq!(d.status, 401);
        assert_eq!(d.reason, "malformed");
    }

    #[test]
    fn invalid_tokens_get_invalid_token_with_description() {
        let (c, a, _) = config(json!({}));
        let expired = a.sign(&json!({"iss": "https://a", "aud": "api", "exp": NOW - 3600}));
        let d = denial(run(&c, &[("authorization", &format!("Bearer {expired}"))], "/"));
        assert_eq!(d.status, 401);
        assert_eq!(d.provider.as_deref(), Some("idp-a"));
        assert_eq!(
            d.headers[0].1,
            "Bearer realm=\"claimguard\", error=\"invalid_token\", error_description=\"token has expired\""
        );
        assert!(!d.body.contains(&expired));
        let none = unsigned_token(&json!({"alg": "none"}), &claims("https://a"), "");
        let d = denial(run(&c, &[("authorization", &format!("Bearer {none}"))], "/"));
        assert_eq!(
            d.reason, "malformed",
            "an empty signature part is malformed before alg is read"
        );
        let none = unsigned_token(&json!({"alg": "none"}), &claims("https://a"), "c2ln");
        let d = denial(run(&c, &[("authorization", &format!("Bearer {none}"))], "/"));
        assert_eq!(d.reason, "alg_none");
    }

    #[test]
    fn descriptions_are_header_safe() {
        assert_eq!(header_safe("a\"b\\c\r\nd é"), "a?b?c??d ?");
    }

    #[test]
    fn two_tokens_are_refused() {
        let (c, a, _) = config(
            json!({"fromParams": ["access_token"], "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}]}),
        );
        let t = a.sign(&claims("https://a"));
        let d = denial(run(
            &c,
            &[("authorization", &format!("Bearer {t}"))],
            &format!("/?access_token={t}"),
        ));
        assert_eq!((d.status, d.reason), (400, "multiple_tokens"));
        let d = denial(run(
            &c,
            &[
                ("authorization", &format!("Bearer {t}")),
                ("authorization", &format!("Bearer {t}")),
            ],
            "/",
        ));
        assert_eq!(d.reason, "multiple_tokens");
    }

    fn http(c: &Config, method: &str, path: &str, headers: &[(&str, &str)]) -> Evaluation {
        let mut h: Vec<(String, String)> = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.example.com".into()),
        ];
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let h_refs = crate::token::header_refs(&h);
        evaluate(c, c, &HttpRequest::from_headers(&h_refs), NOW, true)
    }

    /// [`http`], and the bound values a line about it would show.
    fn http_bound(c: &Config, method: &str, path: &str, headers: &[(&str, &str)]) -> (Evaluation, Vec<BoundValue>) {
        let mut h: Vec<(String, String)> = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.example.com".into()),
        ];
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let h_refs = crate::token::header_refs(&h);
        let req = HttpRequest::from_headers(&h_refs);
        let ev = evaluate(c, c, &req, NOW, true);
        let bound = bound_values(c, &req, &ev);
        (ev, bound)
    }

    fn policy_config(extra: Value) -> (Config, TestKey) {
        let k = TestKey::generate(Alg::ES256, "k1");
        let mut cfg = json!({
            "providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks()}],
            "rules": [
                {"name": "health", "public": true, "paths": ["/healthz"]},
                {"name": "blocked", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked"]}]},
                {"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["read"]}]}
            ]
        });
        if let Value::Object(m) = extra {
            for (key, v) in m {
                cfg[key] = v;
            }
        }
        (Config::from_json(cfg.to_string().as_bytes()).unwrap(), k)
    }

    fn bearer(k: &TestKey, extra: Value) -> String {
        let mut c = claims("https://a");
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        format!("Bearer {}", k.sign(&c))
    }

    #[test]
    fn public_routes_need_no_token_but_refuse_bad_ones() {
        let (c, _) = policy_config(json!({}));
        let ev = http(&c, "GET", "/healthz", &[]);
        assert_eq!(ev.decision, Decision::Allow { identity: None });
        assert_eq!(ev.public_rule, Some(0));
        let d = denial(http(&c, "GET", "/healthz", &[("authorization", "Bearer a.b.c")]).decision);
        assert_eq!(d.status, 401);
        assert_eq!(denial(http(&c, "GET", "/orders", &[]).decision).reason, "missing_token");
    }

    /// Issue 20's classes at the decision level: each spelling of a request is judged as its
    /// upstream will serve it, or refused. (status, reason, :path sent upstream when allowed).
    /// name, method, `:path`, headers, status, reason, `:path` rewritten upstream.
    type SpellingCase<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, String)>,
        u32,
        &'a str,
        Option<&'a str>,
    );

    #[test]
    fn spellings_are_judged_as_served() {
        let rules = json!({"rules": [
            {"name": "health", "public": true, "methods": ["GET"], "paths": ["/healthz", "/docs/*"]},
            {"name": "probe", "public": true, "paths": ["/status/*"], "when": [{"key": "request.headers[x-probe]", "values": ["yes"]}]},
            {"name": "no-admin", "action": "DENY", "paths": ["/admin/*"]},
            {"name": "no-internal", "action": "DENY", "hosts": ["internal.example.com"]},
            {"name": "no-get-secret", "action": "DENY", "methods": ["GET"], "paths": ["/secret"]},
            {"name": "no-prod", "action": "DENY", "paths": ["/env/*"], "when": [{"key": "request.headers[x-env]", "values": ["prod"]}]},
            {"name": "env", "paths": ["/env/*"]},
            {"name": "readers", "paths": ["/orders*", "/secret", "/admin/*"], "when": [{"claim": "scope", "values": ["read"]}]}
        ]});
        let (c, k) = policy_config(rules.clone());
        let tok = bearer(&k, json!({"scope": "read"}));
        let raw_jwt = tok.trim_start_matches("Bearer ").to_string();
        let tab = format!("Bearer\t{raw_jwt}");
        let lower = format!("bearer {raw_jwt}");
        let t = |v: &str| ("authorization", v.to_string());
        #[rustfmt::skip]
        let cases: Vec<SpellingCase> = vec![
            // name, method, :path, headers, status, reason, :path rewritten upstream
            ("public as sent", "GET", "/docs/a", vec![], 200, "", None),
            ("public, dots resolved, rewritten", "GET", "/docs/./a/../b", vec![], 200, "", Some("/docs/b")),
            ("rfc: // then .. stays under docs", "GET", "/docs//../orders/1", vec![], 200, "", Some("/docs/orders/1")),
            ("encoded dots out of docs need a token", "GET", "/docs/%2e%2e/orders/1", vec![], 401, "missing_token", None),
            ("dots out of docs, with token, rewritten", "GET", "/docs/../orders/1", vec![t(&tok)], 200, "", Some("/orders/1")),
            ("tomcat ..; refused", "GET", "/docs/..;/orders/1", vec![], 400, "bad_path", None),
            ("backslash refused", "GET", "/docs/x\\..\\..\\orders\\1", vec![], 400, "bad_path", None),
            ("matrix parameter on a denied prefix refused", "GET", "/admin;x=1/users", vec![t(&tok)], 400, "bad_path", None),
            ("double-encoded dots refused", "GET", "/docs/%252e%252e/orders", vec![], 400, "bad_path", None),
            ("fragment refused", "GET", "/docs/a#/../../admin", vec![], 400, "bad_path", None),
            ("dots into admin denied", "GET", "/orders/../admin/x", vec![t(&tok)], 403, "policy_denied", None),
            ("merged slashes into admin denied", "GET", "//admin//x", vec![t(&tok)], 403, "policy_denied", None),
            ("query kept, not resolved", "GET", "/docs/./a?next=/../admin", vec![], 200, "", Some("/docs/a?next=/../admin")),
            ("lower-case method refused", "get", "/docs/a", vec![], 400, "bad_method", None),
            ("mixed-case method refused", "Delete", "/orders/1", vec![t(&tok)], 400, "bad_method", None),
            ("HEAD is GET to a DENY", "HEAD", "/secret", vec![t(&tok)], 403, "policy_denied", None),
            ("GET denied", "GET", "/secret", vec![t(&tok)], 403, "policy_denied", None),
            ("POST not denied", "POST", "/secret", vec![t(&tok)], 200, "", None),
            ("public needs its header condition", "GET", "/status/a", vec![], 401, "missing_token", None),
            ("public with its header", "GET", "/status/a", vec![("x-probe", "yes".into())], 200, "", None),
            ("repeated header a rule reads", "GET", "/env/a", vec![t(&tok), ("x-env", "dev".into()), ("x-env", "prod".into())], 400, "repeated_header", None),
            ("repeated header, other case", "GET", "/env/a", vec![t(&tok), ("x-env", "dev".into()), ("X-Env", "prod".into())], 400, "repeated_header", None),
            ("one header, denied", "GET", "/env/a", vec![t(&tok), ("x-env", "prod".into())], 403, "policy_denied", None),
            ("one header, allowed", "GET", "/env/a", vec![t(&tok), ("x-env", "dev".into())], 200, "", None),
            ("repeats of other headers are fine", "GET", "/env/a", vec![t(&tok), ("x-other", "1".into()), ("x-other", "2".into())], 200, "", None),
            ("tab after scheme on a public route", "GET", "/healthz", vec![t(&tab)], 401, "malformed_header", None),
            ("raw token on a public route", "GET", "/healthz", vec![t(&raw_jwt)], 401, "malformed_header", None),
            // Another scheme, or nothing: RFC 6750 §3.1's answer to a request without a token.
            ("basic on a public route", "GET", "/healthz", vec![t("Basic dXNlcjpwYXNz")], 401, "missing_token", None),
            ("empty token header on a public route", "GET", "/healthz", vec![t("")], 401, "missing_token", None),
            ("basic on a protected route", "GET", "/orders/1", vec![t("Basic dXNlcjpwYXNz")], 401, "missing_token", None),
            ("a good token and junk folded into one header", "GET", "/orders/1", vec![t(&format!("{tok}, junk"))], 401, "malformed_header", None),
            ("bearer with nothing after it", "GET", "/healthz", vec![t("Bearer ")], 401, "malformed_header", None),
            ("raw token on a protected route", "GET", "/orders/1", vec![t(&raw_jwt)], 401, "malformed_header", None),
            ("lower-case scheme is the same scheme", "GET", "/orders/1", vec![t(&lower)], 200, "", None),
        ];
        for (name, method, path, headers, status, reason, rewrite) in &cases {
            let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let ev = http(&c, method, path, &hs);
            match &ev.decision {
                Decision::Allow { .. } => {
                    assert_eq!(*status, 200, "{name}: allowed");
                    let set = ev
                        .header_ops
                        .set
                        .iter()
                        .find(|(h, _)| h == ":path")
                        .map(|(_, v)| v.as_str());
                    assert_eq!(set, *rewrite, "{name}: :path upstream");
                }
                Decision::Deny(d) => {
                    assert_eq!((d.status, d.reason), (*status, *reason), "{name}: {d:?}");
                    if d.status == 401 {
                        assert!(
                            d.headers
                                .iter()
                                .any(|(h, v)| h == "www-authenticate" && v.starts_with("Bearer realm=")),
                            "{name}"
                        );
                    }
                }
                other => panic!("{name}: {other:?}"),
            }
        }

        // Hosts: case, trailing dots and ports are one host.
        for host in [
            "internal.example.com",
            "INTERNAL.example.com",
            "internal.example.com.",
            "internal.example.com:8080",
            "internal.example.com.:443",
        ] {
            let h: Vec<(String, String)> = vec![
                (":method".into(), "GET".into()),
                (":path".into(), "/orders/1".into()),
                (":authority".into(), host.into()),
                ("authorization".into(), tok.clone()),
            ];
            let h_refs = crate::token::header_refs(&h);
            let ev = evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), NOW, true);
            assert_eq!(denial(ev.decision).reason, "policy_denied", "{host}");
        }

        // malformedTokenHeaderAction: REMOVE_HEADER drops the header and goes on without it.
        let mut removing = rules.clone();
        removing["malformedTokenHeaderAction"] = json!("REMOVE_HEADER");
        let (c, _) = policy_config(removing);
        let ev = http(&c, "GET", "/healthz", &[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(ev.decision, Decision::Allow { identity: None });
        assert!(
            ev.header_ops.remove.iter().any(|h| &**h == "authorization"),
            "{:?}",
            ev.header_ops
        );
        assert_eq!(
            denial(http(&c, "GET", "/orders/1", &[("authorization", &raw_jwt)]).decision).reason,
            "missing_token"
        );

        // allowMissing routes: no token passes, a token header in another form does not.
        let k = TestKey::generate(Alg::ES256, "k2");
        let c = Config::from_json(
            json!({"providers": [{"issuer": "https://a", "jwks": k.jwks(), "allowMissing": true}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(http(&c, "GET", "/x", &[]).decision, Decision::Allow { identity: None });
        for (v, reason) in [
            ("Basic dXNlcjpwYXNz", "missing_token"),
            ("", "missing_token"),
            ("Bearer\tabc", "malformed_header"),
            ("abc.def.ghi", "malformed_header"),
        ] {
            let d = denial(http(&c, "GET", "/x", &[("authorization", v)]).decision);
            assert_eq!((d.status, d.reason), (401, reason), "{v:?}");
        }
    }

    /// Anonymous requests (an allowMissing provider) against DENY rules on the caller: Istio
    /// reads each condition on an absent identity, so `not` conditions hold and the DENY
    /// applies; positive ones fail. ALLOW rules on the caller never admit them.
    #[test]
    fn deny_rules_on_the_caller_hold_for_anonymous_requests_as_in_istio() {
        let k = TestKey::generate(Alg::ES256, "k3");
        let c = Config::from_json(
            json!({
                "providers": [{"issuer": "https://a", "jwks": k.jwks(), "allowMissing": true}],
                "rules": [
                    {"name": "deny-anonymous", "action": "DENY", "paths": ["/private/*"], "notRequestPrincipals": ["*"]},
                    {"name": "acme-only", "action": "DENY", "paths": ["/acme/*"], "when": [{"claim": "tenant", "notValues": ["acme"]}]},
                    {"name": "deny-blocked", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked"]}]},
                    {"name": "not-banned", "paths": ["/members/*"], "when": [{"claim": "group", "notValues": ["banned"]}]},
                    {"name": "open", "paths": ["/private/*", "/acme/*", "/open/*"]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let token = |claims: Value| {
            let mut c = json!({"iss": "https://a", "sub": "u", "exp": NOW + 60});
            c.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
            format!("Bearer {}", k.sign(&c))
        };
        let acme = token(json!({"tenant": "acme"}));
        let other = token(json!({"tenant": "globex"}));
        let status = |path: &str, auth: Option<&str>| {
            let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            match http(&c, "GET", path, &h).decision {
                Decision::Allow { .. } => 200,
                Decision::Deny(d) => d.status,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            status("/private/x", None),
            403,
            "notRequestPrincipals: [*] denies anonymous"
        );
        assert_eq!(status("/private/x", Some(&other)), 200);
        assert_eq!(status("/acme/x", None), 403, "a missing claim satisfies notValues");
        assert_eq!(status("/acme/x", Some(&other)), 403);
        assert_eq!(status("/acme/x", Some(&acme)), 200);
        assert_eq!(
            status("/open/x", None),
            200,
            "a positive claim condition fails without a token"
        );
        assert_eq!(
            status("/members/x", None),
            403,
            "an ALLOW on the caller never admits anonymous"
        );
        assert_eq!(status("/members/x", Some(&other)), 200);
    }

    #[test]
    fn policy_denials_are_403_without_policy_details() {
        let (c, k) = policy_config(json!({}));
        let ok = http(
            &c,
            "GET",
            "/orders/1",
            &[("authorization", &bearer(&k, json!({"scope": "read"})))],
        );
        assert!(matches!(ok.decision, Decision::Allow { identity: Some(_) }));

        let d = denial(
            http(
                &c,
                "GET",
                "/orders/1",
                &[("authorization", &bearer(&k, json!({"scope": "write"})))],
            )
            .decision,
        );
        assert_eq!((d.status, d.reason), (403, "insufficient_scope"));
        assert_eq!(d.headers[0].1, "Bearer realm=\"claimguard\", error=\"insufficient_scope\", error_description=\"the token lacks a scope this request needs\"");
        assert_eq!(
            serde_json::from_str::<Value>(&d.body).unwrap(),
            json!({"error": "insufficient_scope", "message": "the token lacks a scope this request needs"})
        );

        let d = denial(
            http(
                &c,
                "GET",
                "/orders/1",
                &[(
                    "authorization",
                    &bearer(&k, json!({"scope": "read", "tenant": "blocked"})),
                )],
            )
            .decision,
        );
        assert_eq!((d.status, d.reason), (403, "policy_denied"));
        assert!(d.headers.iter().all(|(k, _)| k != "www-authenticate"));
        assert_eq!(
            serde_json::from_str::<Value>(&d.body).unwrap(),
            json!({"error": "forbidden", "message": "access denied by policy"})
        );

        let (c, k) = policy_config(json!({"exposeRuleNames": true}));
        let d = denial(
            http(
                &c,
                "GET",
                "/orders/1",
                &[(
                    "authorization",
                    &bearer(&k, json!({"scope": "read", "tenant": "blocked"})),
                )],
            )
            .decision,
        );
        assert_eq!(serde_json::from_str::<Value>(&d.body).unwrap()["rule"], "blocked");
    }

    #[test]
    fn invalid_token_is_401_before_policy() {
        let (c, k) = policy_config(json!({}));
        let mut expired = claims("https://a");
        expired["exp"] = json!(NOW - 3600);
        expired["tenant"] = json!("blocked");
        let ev = http(
            &c,
            "GET",
            "/orders",
            &[("authorization", &format!("Bearer {}", k.sign(&expired)))],
        );
        assert!(ev.policy.is_none());
        assert_eq!(denial(ev.decision).status, 401);
    }

    #[test]
    fn cors_preflight_only_by_switch_and_only_real_preflights() {
        let pre = [
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ];
        let (c, _) = policy_config(json!({}));
        assert_eq!(denial(http(&c, "OPTIONS", "/orders", &pre).decision).status, 401);
        let (c, _) = policy_config(json!({"allowCorsPreflight": true}));
        let ev = http(&c, "OPTIONS", "/orders", &pre);
        assert!(ev.cors_preflight);
        assert_eq!(ev.decision, Decision::Allow { identity: None });
        assert!(ev.header_ops.remove.is_empty(), "{:?}", ev.header_ops);
        // A token header on a preflight (no browser sends one) is removed, unverified.
        let forged = [pre[0], pre[1], ("Authorization", "Bearer forged.token.here")];
        let ev = http(&c, "OPTIONS", "/orders", &forged);
        assert!(ev.cors_preflight);
        assert_eq!(ev.decision, Decision::Allow { identity: None });
        assert_eq!(ev.header_ops.remove, [Rc::from("authorization")]);
        // An OPTIONS without the preflight headers is an ordinary request.
        assert_eq!(
            denial(http(&c, "OPTIONS", "/orders", &[("origin", "x")]).decision).status,
            401
        );
    }

    #[test]
    fn unsafe_paths_are_400() {
        let (c, k) = policy_config(json!({}));
        let d = denial(
            http(
                &c,
                "GET",
                "/orders%2F..%2Fadmin",
                &[("authorization", &bearer(&k, json!({"scope": "read"})))],
            )
            .decision,
        );
        assert_eq!((d.status, d.reason), (400, "bad_path"));
        assert_eq!(
            serde_json::from_str::<Value>(&d.body).unwrap()["message"],
            "request path contains an escaped slash"
        );
    }

    #[test]
    fn verified_token_cache_skips_the_signature_not_the_clock() {
        use crate::request::cache::VerifiedTokenCache;
        let (c, a, _) = config(json!({}));
        let mut cache = VerifiedTokenCache::new(16, 7);
        let t = format!("Bearer {}", a.sign(&claims("https://a")));
        let h: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/".into()),
            ("authorization".into(), t),
        ];
        let h_refs = crate::token::header_refs(&h);
        let req = HttpRequest::from_headers(&h_refs);
        let first = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW, true);
        assert_eq!(first.token_cache, Some(false));
        let second = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW, true);
        assert_eq!(second.token_cache, Some(true));
        assert!(matches!(second.decision, Decision::Allow { identity: Some(_) }));
        // An hour later the token has expired: its entry is dropped, and the claims are
        // checked again (and an expired token is not cached anew).
        let later = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW + 3600, true);
        assert_eq!(later.token_cache, Some(false));
        assert_eq!(denial(later.decision).reason, "expired");
        assert!(cache.is_empty());
    }

    #[test]
    fn providers_sharing_an_issuer_are_each_tried() {
        use crate::request::cache::VerifiedTokenCache;
        // One identity provider, two audiences, configured as two providers (as Istio allows
        // with two jwtRules): a token for the second is refused by the first for its
        // audience and must still be accepted by the second, cached or not.
        let k = TestKey::generate(Alg::ES256, "k1");
        let c = compiled(json!({"providers": [
            {"name": "web", "issuer": "https://idp", "audiences": ["web"], "jwks": k.jwks()},
            {"name": "mobile", "issuer": "https://idp", "audiences": ["mobile"], "jwks": k.jwks()}
        ]}));
        let token = |aud: &str| {
            let t = k.sign(&json!({"iss": "https://idp", "aud": aud, "sub": "alice", "exp": NOW + 60}));
            format!("Bearer {t}")
        };
        let mut cache = VerifiedTokenCache::new(16, 7);
        for (aud, want) in [("web", Some("web")), ("mobile", Some("mobile")), ("other", None)] {
            let h = get_root_with("authorization", &token(aud));
            let h_refs = crate::token::header_refs(&h);
            let req = HttpRequest::from_headers(&h_refs);
            for (round, cached) in [(0, Some(false)), (1, Some(true)), (2, Some(true))] {
                let ev = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW, true);
                match (&ev.decision, want) {
                    (Decision::Allow { identity: Some(id) }, Some(p)) => assert_eq!(&*id.provider, p, "{aud}"),
                    // Refused by both: the first provider's reason. (The cache holds one
                    // provider's verification of a token, so this one is verified again.)
                    (Decision::Deny(d), None) => {
                        assert_eq!(d.reason, "wrong_audience", "{aud}");
                        assert_eq!(d.provider.as_deref(), Some("web"), "{aud}");
                    }
                    (other, _) => panic!("{aud} round {round}: {other:?}"),
                }
                let cached = if want.is_some() { cached } else { Some(false) };
                assert_eq!(ev.token_cache, cached, "{aud} round {round}");
            }
        }
        // Without a cache too.
        let d = run(&c, &[("authorization", &token("mobile"))], "/");
        assert!(
            matches!(d, Decision::Allow { identity: Some(ref id) } if &*id.provider == "mobile"),
            "{d:?}"
        );
    }

    #[test]
    fn verified_token_cache_checks_the_clock_on_every_hit() {
        use crate::request::cache::VerifiedTokenCache;
        let (c, a, _) = config(json!({}));
        let mut cache = VerifiedTokenCache::new(16, 7);
        // Not valid before NOW + 600 (beyond the 60 s skew): verified, cached, still refused.
        let mut early = claims("https://a");
        early["nbf"] = json!(NOW + 600);
        early["exp"] = json!(NOW + 3600);
        let h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/".to_string()),
            ("authorization".to_string(), format!("Bearer {}", a.sign(&early))),
        ];
        let h_refs = crate::token::header_refs(&h);
        let req = HttpRequest::from_headers(&h_refs);
        let first = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW, true);
        assert_eq!(
            (first.token_cache, denial(first.decision).reason),
            (Some(false), "not_yet_valid")
        );
        let again = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW, true);
        assert_eq!(
            (again.token_cache, denial(again.decision).reason),
            (Some(true), "not_yet_valid")
        );
        let later = evaluate_cached(&c, &c, Some(&mut cache), &req, NOW + 600, true);
        assert_eq!(later.token_cache, Some(true));
        assert!(matches!(later.decision, Decision::Allow { identity: Some(_) }));
    }

    #[test]
    fn bad_signatures_are_remembered_for_seconds_only() {
        use crate::request::cache::{VerifiedTokenCache, NEGATIVE_TTL_SECONDS};
        let (c, _, _) = config(json!({}));
        let stranger = TestKey::generate(Alg::ES256, "a1");
        let mut cache = VerifiedTokenCache::new(16, 7);
        let h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/".to_string()),
            (
                "authorization".to_string(),
                format!("Bearer {}", stranger.sign(&claims("https://a"))),
            ),
        ];
        let h_refs = crate::token::header_refs(&h);
        let req = HttpRequest::from_headers(&h_refs);
        let run = |cache: &mut VerifiedTokenCache, at: u64| {
            let ev = evaluate_cached(&c, &c, Some(cache), &req, at, true);
            let d = denial(ev.decision);
            assert_eq!((d.status, d.reason), (401, "bad_signature"));
            assert!(d.body.contains("token signature is invalid"), "{}", d.body);
            ev.token_cache
        };
        assert_eq!(run(&mut cache, NOW), Some(false));
        assert_eq!(run(&mut cache, NOW + 1), Some(true), "answered from the cache");
        assert_eq!(
            run(&mut cache, NOW + NEGATIVE_TTL_SECONDS),
            Some(false),
            "window over: checked again"
        );
        assert!(cache.is_empty(), "no positive entry ever");
    }

    /// `evaluate_traced` (what `claimguard explain` runs) decides exactly as `evaluate` does;
    /// only the recorded steps differ, and the last step names the failure.
    #[test]
    fn traced_evaluation_decides_like_the_filter() {
        let (c, a, b) = config(json!({}));
        let stranger = TestKey::generate(Alg::ES256, "a1");
        let good = a.sign(&claims("https://a"));
        let expired = a.sign(&json!({"iss": "https://a", "aud": "api", "sub": "alice", "exp": NOW - 3600}));
        let wrong_aud = b.sign(&json!({"iss": "https://b", "aud": "other", "exp": NOW + 60}));
        let forged = stranger.sign(&claims("https://a"));
        let unknown_iss = a.sign(&claims("https://nobody"));
        let bearer = |t: &str| format!("Bearer {t}");
        // (extra request headers, the last step and whether it passed)
        type Case<'a> = (Vec<(String, String)>, Option<(&'a str, bool)>);
        let cases: Vec<Case> = vec![
            (vec![("authorization".into(), bearer(&good))], Some(("aud", true))),
            (vec![("authorization".into(), bearer(&expired))], Some(("exp", false))),
            (vec![("x-jwt".into(), wrong_aud.clone())], Some(("aud", false))),
            (
                vec![("authorization".into(), bearer(&forged))],
                Some(("signature", false)),
            ),
            (
                vec![("authorization".into(), bearer(&unknown_iss))],
                Some(("provider", false)),
            ),
            (
                vec![("authorization".into(), "Bearer not.a.jwt".into())],
                Some(("parse", false)),
            ),
            (vec![], Some(("token", false))),
            (
                vec![("authorization".into(), bearer(&good)), ("x-jwt".into(), wrong_aud)],
                Some(("token", false)),
            ),
        ];
        for (extra, last) in cases {
            let mut h: Vec<(String, String)> = vec![(":method".into(), "GET".into()), (":path".into(), "/x".into())];
            h.extend(extra);
            let h_refs = crate::token::header_refs(&h);
            let req = HttpRequest::from_headers(&h_refs);
            let plain = evaluate(&c, &c, &req, NOW, true);
            let mut traced = evaluate_traced(&c, &c, &req, NOW);
            let steps = std::mem::take(&mut traced.auth_steps);
            assert_eq!(plain, traced, "{h:?}");
            assert!(plain.auth_steps.is_empty());
            let (step, ok) = last.unwrap();
            let l = steps.last().unwrap();
            assert_eq!((l.step, l.ok), (step, ok), "{steps:#?}");
            // Every step before the last succeeded.
            assert!(steps.iter().rev().skip(1).all(|s| s.ok), "{steps:#?}");
        }
    }

    const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

    /// A request from `peer` (mTLS when a SPIFFE ID is given) at 127.0.0.1.
    fn from_peer(c: &Config, peer: Option<&str>, path: &str, auth: Option<&str>) -> Evaluation {
        let mut h: Vec<(String, String)> = vec![
            (":method".into(), "GET".into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.example.com".into()),
        ];
        if let Some(a) = auth {
            h.push(("authorization".into(), a.into()));
        }
        let peer = Peer::from_connection(peer.is_some(), peer, Some("127.0.0.1:40000"));
        let h_refs = crate::token::header_refs(&h);
        evaluate(c, c, &HttpRequest::from_headers(&h_refs).with_peer(peer), NOW, true)
    }

    #[test]
    fn trusted_hop_accepts_tokens_only_from_listed_workloads() {
        let k = TestKey::generate(Alg::ES256, "k1");
        let c = Config::from_json(
            json!({
                "providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                               "trustedPrincipals": [GATEWAY]}],
                "rules": [{"name": "health", "public": true, "paths": ["/healthz"]}, {"name": "all", "paths": ["/*"]}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let good = bearer(&k, json!({}));
        let expired = format!(
            "Bearer {}",
            k.sign(&json!({"iss": "https://a", "aud": "api", "sub": "u", "exp": NOW - 3600}))
        );
        let other = Some("spiffe://cluster.local/ns/web/sa/frontend");
        // name, peer, path, token, (status, reason)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            Option<(u32, &'a str)>,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("through the gateway", Some(GATEWAY), "/orders", Some(&good), None),
            ("replayed from another pod", other, "/orders", Some(&good), Some((403, "untrusted_peer"))),
            ("replayed over plain text", None, "/orders", Some(&good), Some((403, "untrusted_peer"))),
            ("a bad token is still 401", other, "/orders", Some(&expired), Some((401, "expired"))),
            ("no token is still 401", other, "/orders", None, Some((401, "missing_token"))),
            ("public route without a token", None, "/healthz", None, None),
            ("public route, replayed token", other, "/healthz", Some(&good), Some((403, "untrusted_peer"))),
        ];
        for (name, peer, path, auth, want) in cases {
            let ev = from_peer(&c, peer, path, auth);
            match (want, ev.decision) {
                (None, Decision::Allow { .. }) => {}
                (Some((status, reason)), Decision::Deny(d)) => {
                    assert_eq!((d.status, d.reason), (status, reason), "{name}");
                    if reason == "untrusted_peer" {
                        assert!(d.headers.iter().all(|(k, _)| k != "www-authenticate"), "{name}");
                        assert!(d.body.contains("trusted workload"), "{name}: {}", d.body);
                        assert_eq!(d.provider.as_deref(), Some("idp"), "{name}");
                    }
                }
                (want, got) => panic!("{name}: wanted {want:?}, got {got:?}"),
            }
        }
        // A provider setting, not a rule: dry-run mode does not turn it off.
        let dry = Config::from_json(
            json!({
                "providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                               "trustedPrincipals": [GATEWAY]}],
                "rules": [{"name": "all", "paths": ["/*"]}],
                "mode": "dryRun"
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            denial(from_peer(&dry, other, "/orders", Some(&good)).decision).reason,
            "untrusted_peer"
        );
        assert!(matches!(
            from_peer(&dry, Some(GATEWAY), "/orders", Some(&good)).decision,
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn rules_see_the_peer_and_tokens_together() {
        let k = TestKey::generate(Alg::ES256, "k1");
        let c = Config::from_json(
            json!({
                "providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks()}],
                "rules": [{"name": "gw-readers", "paths": ["/orders"], "principals": ["*/sa/istio-ingressgateway-service-account"],
                           "ipBlocks": ["127.0.0.0/8"], "when": [{"claim": "scope", "values": ["read"]}]}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let reader = bearer(&k, json!({"scope": "read"}));
        let writer = bearer(&k, json!({"scope": "write"}));
        assert!(matches!(
            from_peer(&c, Some(GATEWAY), "/orders", Some(&reader)).decision,
            Decision::Allow { .. }
        ));
        let d = denial(from_peer(&c, Some(GATEWAY), "/orders", Some(&writer)).decision);
        assert_eq!((d.status, d.reason), (403, "insufficient_scope"));
        // The right scope from the wrong workload is a plain denial, not a scope problem.
        let d = denial(from_peer(&c, None, "/orders", Some(&reader)).decision);
        assert_eq!((d.status, d.reason), (403, "policy_denied"));
        let d = denial(from_peer(&c, None, "/orders", Some(&writer)).decision);
        assert_eq!((d.status, d.reason), (403, "policy_denied"));
    }

    // --- claims bound to the request (valuesFrom / notValuesFrom) ---------------------------

    fn tenancy_config(extra: Value) -> (Config, TestKey) {
        let mut e = json!({"rules": [
            {"name": "cross-tenant", "action": "DENY", "paths": ["/tenants/{tenant}/{**}"],
             "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
            {"name": "tenant-members", "paths": ["/tenants/{tenant}/{**}"],
             "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]},
            {"name": "own-user", "paths": ["/users/{sub}", "/users/{sub}/{**}"],
             "when": [{"claim": "sub", "valuesFrom": "path:sub"}]},
            {"name": "support", "paths": ["/users/{sub}/{**}"], "when": [{"claim": "groups", "values": ["support"]}]},
            {"name": "header-tenant", "paths": ["/reports"], "when": [{"claim": "org.id", "valuesFrom": "header:X-Tenant-Id"}]},
            {"name": "query-tenant", "paths": ["/search"], "when": [{"claim": "tenant", "valuesFrom": "query:tenant"}]},
            {"name": "numeric", "paths": ["/accounts/{n}"], "when": [{"claim": "account", "valuesFrom": "path:n"}]},
            {"name": "flag", "paths": ["/flags/{f}"], "when": [{"claim": "beta", "valuesFrom": "path:f"}]},
            {"name": "any-case", "paths": ["/ci/{t}"], "when": [{"claim": "tenant", "valuesFrom": "path:t", "ignoreCase": true}]}
        ]});
        if let Value::Object(m) = extra {
            for (key, v) in m {
                e[key] = v;
            }
        }
        policy_config(e)
    }

    fn tenant_token(k: &TestKey) -> String {
        bearer(
            k,
            json!({"tenants": ["acme", "globex"], "tenant": "acme", "org": {"id": "acme"},
                   "account": 42, "beta": true, "groups": ["staff"]}),
        )
    }

    /// "allow:RULE", "deny:RULE" (the DENY rule that matched), "deny" (no ALLOW rule) or the
    /// status of a refusal before policy.
    /// "allow", or a denial's status and reason ("403 policy_denied").
    fn status_reason(d: &Decision) -> String {
        match d {
            Decision::Allow { .. } => "allow".to_string(),
            Decision::Deny(d) => format!("{} {}", d.status, d.reason),
            other => format!("{other:?}"),
        }
    }

    fn outcome(c: &Config, path: &str, headers: &[(&str, &str)]) -> String {
        let ev = http(c, "GET", path, headers);
        match (&ev.decision, ev.policy.as_ref().map(|p| &p.effect)) {
            (Decision::Allow { .. }, Some(Effect::Allow { rule: Some(r) })) => {
                format!("allow:{}", c.policy.rule_name(*r))
            }
            (Decision::Deny(_), Some(Effect::Deny { rule: Some(r), .. })) => format!("deny:{}", c.policy.rule_name(*r)),
            (Decision::Deny(_), Some(Effect::Deny { rule: None, .. })) => "deny".into(),
            (Decision::Deny(d), None) => d.status.to_string(),
            (d, e) => format!("{d:?} {e:?}"),
        }
    }

    #[test]
    fn path_captures_bind_claims_to_the_served_segment() {
        let (c, k) = tenancy_config(json!({}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        for (path, want) in [
            ("/tenants/acme/orders", "allow:tenant-members"),
            ("/tenants/globex", "allow:tenant-members"),
            ("/tenants/acme/", "allow:tenant-members"),
            ("/tenants/initech/orders", "deny:cross-tenant"),
            // Case: exact unless a rule says otherwise.
            ("/tenants/ACME/orders", "deny:cross-tenant"),
            ("/tenants/Acme", "deny:cross-tenant"),
            // Unreserved escapes are decoded once, by canonicalisation.
            ("/tenants/%61cme/orders", "allow:tenant-members"),
            ("/tenants/acm%65", "allow:tenant-members"),
            // Dot segments and double slashes: the capture is the segment served.
            ("/tenants/initech/../acme/orders", "allow:tenant-members"),
            ("/tenants/acme/../initech/orders", "deny:cross-tenant"),
            ("/tenants/acme/%2e%2e/initech/x", "deny:cross-tenant"),
            ("/tenants/acme/%2e%2e/../initech/x", "deny"),
            ("/tenants//acme/orders", "allow:tenant-members"),
            ("//tenants//initech//orders", "deny:cross-tenant"),
            ("/tenants/./initech", "deny:cross-tenant"),
            // Refused before policy, as everywhere.
            ("/tenants/acme%2Finitech/orders", "400"),
            ("/tenants/acme;x=1/orders", "400"),
            ("/tenants/initech;acme/orders", "400"),
            ("/tenants/acme%252e%252e/initech", "400"),
            // Non-ASCII and reserved escapes: decoded once, compared as UTF-8.
            ("/tenants/acme%20/orders", "deny:cross-tenant"),
            ("/tenants/acme%00/orders", "deny:cross-tenant"),
            ("/tenants/acme%FF/orders", "deny:cross-tenant"),
        ] {
            assert_eq!(outcome(&c, path, &auth), want, "{path}");
        }
        // Per-user resources: the token's own sub, or the support group.
        for (path, groups, want) in [
            ("/users/alice", json!([]), "allow:own-user"),
            ("/users/alice/settings", json!([]), "allow:own-user"),
            ("/users/bob/settings", json!([]), "deny"),
            ("/users/Alice/settings", json!([]), "deny"),
            ("/users/alice/../bob/settings", json!([]), "deny"),
            ("/users/bob/settings", json!(["support"]), "allow:support"),
            ("/users/bob", json!(["support"]), "allow:support"),
        ] {
            let t = bearer(&k, json!({"groups": groups}));
            assert_eq!(outcome(&c, path, &[("authorization", &t)]), want, "{path} {groups}");
        }
        // A UTF-8 sub, percent-encoded in the path.
        let t = bearer(&k, json!({"sub": "jörg"}));
        assert_eq!(
            outcome(&c, "/users/j%C3%B6rg/x", &[("authorization", &t)]),
            "allow:own-user"
        );
        assert_eq!(
            outcome(&c, "/users/j%c3%b6rg/x", &[("authorization", &t)]),
            "allow:own-user"
        );
        assert_eq!(outcome(&c, "/users/jorg/x", &[("authorization", &t)]), "deny");
    }

    #[test]
    fn path_captures_under_the_path_options() {
        // Matrix parameters: the capture is the segment without them.
        let (c, k) = tenancy_config(json!({"pathWithParametersAction": "MATCH_WITHOUT_PARAMETERS"}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(outcome(&c, "/tenants/acme;v=1/orders", &auth), "allow:tenant-members");
        assert_eq!(outcome(&c, "/tenants/initech;acme/orders", &auth), "deny:cross-tenant");
        assert_eq!(outcome(&c, "/tenants/initech;/orders", &auth), "deny:cross-tenant");
        // Escaped slashes kept in the segment: a capture decoding to a separator is ambiguous,
        // which a DENY binding counts as holding.
        let (c, k) = tenancy_config(json!({"pathWithEscapedSlashesAction": "KEEP_UNCHANGED"}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(
            outcome(&c, "/tenants/acme%2Finitech/orders", &auth),
            "deny:cross-tenant"
        );
        assert_eq!(outcome(&c, "/tenants/acme%5C/orders", &auth), "deny:cross-tenant");
        // Decoded into separators: the capture is the segment they make.
        let (c, k) = tenancy_config(json!({"pathWithEscapedSlashesAction": "UNESCAPE_AND_FORWARD"}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(outcome(&c, "/tenants%2Facme/orders", &auth), "allow:tenant-members");
        assert_eq!(outcome(&c, "/tenants%2Finitech%2Forders", &auth), "deny:cross-tenant");
        // caseInsensitivePaths: literals match in any case, the capture keeps the case served.
        let (c, k) = tenancy_config(json!({"caseInsensitivePaths": true}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(outcome(&c, "/TENANTS/acme/orders", &auth), "allow:tenant-members");
        assert_eq!(outcome(&c, "/Tenants/ACME/orders", &auth), "deny:cross-tenant");
        assert_eq!(outcome(&c, "/ci/ACME", &auth), "allow:any-case");
        // A trailing backslash converted to a slash.
        let (c, k) = tenancy_config(json!({"pathWithBackslashAction": "CONVERT_TO_SLASH"}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(outcome(&c, "/tenants\\initech\\orders", &auth), "deny:cross-tenant");
        assert_eq!(outcome(&c, "/tenants\\acme\\orders", &auth), "allow:tenant-members");
    }

    #[test]
    fn header_and_query_bindings() {
        let (c, k) = tenancy_config(json!({}));
        let t = tenant_token(&k);
        let with = |h: &[(&'static str, &'static str)]| {
            let mut all = vec![("authorization", t.as_str())];
            all.extend_from_slice(h);
            all
        };
        assert_eq!(
            outcome(&c, "/reports", &with(&[("x-tenant-id", "acme")])),
            "allow:header-tenant"
        );
        assert_eq!(
            outcome(&c, "/reports", &with(&[("X-Tenant-Id", "acme")])),
            "allow:header-tenant"
        );
        assert_eq!(outcome(&c, "/reports", &with(&[("x-tenant-id", "globex")])), "deny");
        assert_eq!(outcome(&c, "/reports", &with(&[("x-tenant-id", "ACME")])), "deny");
        assert_eq!(outcome(&c, "/reports", &with(&[("x-tenant-id", "acme ")])), "deny");
        assert_eq!(outcome(&c, "/reports", &with(&[("x-tenant-id", "")])), "deny");
        assert_eq!(outcome(&c, "/reports", &with(&[])), "deny");
        // A header a rule reads may appear once.
        assert_eq!(
            outcome(
                &c,
                "/reports",
                &with(&[("x-tenant-id", "acme"), ("x-tenant-id", "acme")])
            ),
            "400"
        );
        for (path, want) in [
            ("/search?tenant=acme", "allow:query-tenant"),
            ("/search?q=x&tenant=acme&page=2", "allow:query-tenant"),
            ("/search?tenant=ac%6De", "allow:query-tenant"),
            ("/search?tenan%74=acme", "allow:query-tenant"),
            ("/search?tenant=globex", "deny"),
            ("/search?tenant=ACME", "deny"),
            ("/search?tenant=", "deny"),
            ("/search?tenant", "deny"),
            ("/search", "deny"),
            // Servers disagree on which copy (or case) they read: never a match.
            ("/search?tenant=acme&tenant=globex", "deny"),
            ("/search?tenant=acme&tenant=acme", "deny"),
            ("/search?tenant=acme&Tenant=globex", "deny"),
            ("/search?Tenant=acme", "deny"),
            ("/search?tenant=acme&%zz=1", "deny"),
            ("/search?tenant=acme%00", "deny"),
        ] {
            assert_eq!(outcome(&c, path, &with(&[])), want, "{path}");
        }
    }

    #[test]
    fn bindings_compare_integers_booleans_and_absent_claims_by_text() {
        let (c, k) = tenancy_config(json!({}));
        let t = tenant_token(&k);
        let auth = [("authorization", t.as_str())];
        assert_eq!(outcome(&c, "/accounts/42", &auth), "allow:numeric");
        assert_eq!(outcome(&c, "/accounts/042", &auth), "deny");
        assert_eq!(outcome(&c, "/accounts/42.0", &auth), "deny");
        assert_eq!(outcome(&c, "/flags/true", &auth), "allow:flag");
        assert_eq!(outcome(&c, "/flags/True", &auth), "deny");
        assert_eq!(outcome(&c, "/ci/AcMe", &auth), "allow:any-case");
        assert_eq!(outcome(&c, "/ci/acmx", &auth), "deny");
        // No such claim: a positive binding never holds, a negative one does.
        let bare = bearer(&k, json!({}));
        let auth = [("authorization", bare.as_str())];
        assert_eq!(outcome(&c, "/tenants/acme/orders", &auth), "deny:cross-tenant");
        assert_eq!(outcome(&c, "/accounts/42", &auth), "deny");
        assert_eq!(outcome(&c, "/reports", &[auth[0], ("x-tenant-id", "acme")]), "deny");
        // Objects, floats and null never match.
        let odd = bearer(&k, json!({"account": 42.0, "tenant": null, "org": {"id": {"x": 1}}}));
        let auth = [("authorization", odd.as_str())];
        assert_eq!(outcome(&c, "/accounts/42", &auth), "deny");
        assert_eq!(outcome(&c, "/search?tenant=null", &auth), "deny");
    }

    #[test]
    fn bindings_in_dry_run_and_audit_rules_and_their_trace() {
        let rules = json!({"rules": [
            {"name": "cross-tenant", "action": "DENY", "dryRun": true, "paths": ["/tenants/{tenant}/{**}"],
             "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
            {"name": "seen", "action": "AUDIT", "paths": ["/tenants/{tenant}/{**}"],
             "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]},
            {"name": "everyone", "paths": ["/{**}"]}
        ]});
        let (c, k) = policy_config(rules);
        let t = tenant_token(&k);
        let (ev, bound) = http_bound(&c, "GET", "/tenants/initech/x", &[("authorization", &t)]);
        assert!(matches!(ev.decision, Decision::Allow { .. }));
        let pd = ev.policy.unwrap();
        assert_eq!(
            pd.shadow,
            Some(Effect::Deny {
                rule: Some(0),
                insufficient_scope: false
            })
        );
        let lines: Vec<String> = pd.trace.iter().map(|r| c.policy.describe(r, &bound)).collect();
        assert_eq!(
            lines,
            [
                r#"DENY cross-tenant: matched (when[0] tenants notValuesFrom path:tenant = "initech")"#,
                r#"AUDIT seen: when[0] (tenants valuesFrom path:tenant = "initech") does not hold"#,
                "ALLOW everyone: matched",
            ]
        );
        let ev = http(&c, "GET", "/tenants/acme/x", &[("authorization", &t)]);
        let pd = ev.policy.unwrap();
        assert_eq!(pd.shadow, None);
        assert_eq!(pd.trace[1].outcome, Ok(()));
        // In dryRun mode nothing is enforced; the shadow says what would have been.
        let (c, k) = tenancy_config(json!({"mode": "dryRun"}));
        let t = tenant_token(&k);
        let ev = http(&c, "GET", "/tenants/initech/x", &[("authorization", &t)]);
        assert!(matches!(ev.decision, Decision::Allow { .. }));
        assert_eq!(
            ev.policy.unwrap().shadow,
            Some(Effect::Deny {
                rule: Some(0),
                insufficient_scope: false
            })
        );
        // Ambiguous and absent values are named as such; rules whose path did not match have none.
        let (c, k) = tenancy_config(json!({}));
        let t = tenant_token(&k);
        let (ev, bound) = http_bound(&c, "GET", "/search?tenant=a&tenant=b", &[("authorization", &t)]);
        let pd = ev.policy.unwrap();
        let line = c.policy.describe(&pd.trace[5], &bound);
        assert_eq!(
            line,
            "ALLOW query-tenant: when[0] (tenant valuesFrom query:tenant = ambiguous) does not hold"
        );
        assert_eq!(bound.len(), 1);
        let (_, bound) = http_bound(&c, "GET", "/reports", &[("authorization", &t)]);
        assert_eq!(
            bound.iter().filter_map(|b| c.policy.bound_line(b)).collect::<Vec<_>>(),
            ["header-tenant when[0]: org.id valuesFrom header:X-Tenant-Id = absent"]
        );
    }

    #[test]
    fn bindings_are_refused_unless_every_path_defines_the_capture() {
        let (_, k) = policy_config(json!({}));
        let refused = |rule: Value| {
            let cfg = json!({
                "providers": [{"name": "idp", "issuer": "https://a", "jwks": k.jwks()}],
                "rules": [rule]
            });
            match Config::from_json(cfg.to_string().as_bytes()) {
                Ok(_) => "accepted".to_string(),
                Err(e) => e.to_string(),
            }
        };
        for (rule, want) in [
            (json!({"name": "r", "paths": ["/t/{tenant}", "/x/{id}"], "when": [{"claim": "t", "valuesFrom": "path:tenant"}]}),
             r#"rules[0].when[0].valuesFrom: "path:tenant" binds {tenant}, but paths[1] "/x/{id}" does not define it"#),
            (json!({"name": "r", "when": [{"claim": "t", "notValuesFrom": "path:tenant"}]}),
             r#"rules[0].when[0].notValuesFrom: "path:tenant" binds a path capture, but the rule has no paths to define {tenant}"#),
            (json!({"name": "r", "paths": ["/t/*"], "when": [{"claim": "t", "valuesFrom": "path:tenant"}]}),
             r#"rules[0].when[0].valuesFrom: "path:tenant" binds {tenant}, but paths[0] "/t/*" is not a template"#),
            (json!({"name": "r", "paths": ["/t/{tenant}/{tenant}"], "when": [{"claim": "t", "valuesFrom": "path:tenant"}]}),
             r#"rules[0].when[0].valuesFrom: "path:tenant" binds {tenant}, but paths[0] "/t/{tenant}/{tenant}" defines it twice"#),
            (json!({"name": "r", "paths": ["/t/{*}"], "when": [{"claim": "t", "valuesFrom": "path:*"}]}),
             r#"rules[0].when[0].valuesFrom: "path:*": expected path:NAME (a {NAME} of the rule's paths), header:NAME or query:NAME"#),
            (json!({"name": "r", "when": [{"claim": "t", "valuesFrom": "cookie:t"}]}),
             r#"rules[0].when[0].valuesFrom: "cookie:t": expected path:NAME (a {NAME} of the rule's paths), header:NAME or query:NAME"#),
            (json!({"name": "r", "when": [{"claim": "t", "valuesFrom": "header:a", "notValuesFrom": "header:b"}]}),
             "rules[0].when[0].notValuesFrom: give valuesFrom or notValuesFrom, not both"),
            (json!({"name": "r", "when": [{"claim": "t", "values": ["x"], "valuesFrom": "header:a"}]}),
             "rules[0].when[0].valuesFrom: cannot be combined with values, notValues or allValues in one condition (write two)"),
            (json!({"name": "r", "when": [{"claim": "t", "values": ["x"], "ignoreCase": true}]}),
             "rules[0].when[0].ignoreCase: applies only to valuesFrom and notValuesFrom"),
            (json!({"name": "r", "when": [{"key": "request.headers[x]", "valuesFrom": "header:y"}]}),
             r#"rules[0].when[0].key: valuesFrom compares a claim with the request; "request.headers[x]" is not a claim"#),
            (json!({"name": "r", "when": [{"claim": "t"}]}),
             "rules[0].when[0].values: one of values, notValues, allValues, valuesFrom or notValuesFrom is required"),
            (json!({"name": "r", "paths": ["/t/{tenant}", "/u/{x}/{tenant}/{**}"], "when": [{"key": "request.auth.claims[t]", "valuesFrom": "path:tenant"}]}),
             "accepted"),
            (json!({"name": "r", "when": [{"key": "request.auth.principal", "notValuesFrom": "query:owner"}]}), "accepted"),
        ] {
            assert_eq!(refused(rule.clone()), want, "{rule}");
        }
    }

    /// Transaction Tokens through the whole decision: read from `Txn-Token` (no scheme,
    /// never from `Authorization`), rules on the nested transaction and request context
    /// (`tctx.action`, `rctx.authn`) allow and deny, the application gets the transaction id
    /// and subject and the token itself (forwarded), and the evaluation keeps the `txn` for
    /// the decision line, also when the rules refuse.
    #[test]
    fn txn_tokens_meet_rules_on_their_context() {
        let k = TestKey::generate(Alg::ES256, "tts");
        let cfg = json!({
            "providers": [{"name": "txn", "preset": {"name": "txnToken"}, "issuer": "https://tts",
                           "audiences": ["trust-domain.example"], "jwks": k.jwks()}],
            "rules": [
                {"name": "no-password-trades", "action": "DENY", "when": [{"claim": "rctx.authn", "values": ["pwd"]}]},
                {"name": "buy", "methods": ["POST"], "paths": ["/trades"],
                 "when": [{"claim": "tctx.action", "values": ["BUY"]}, {"claim": "scope", "values": ["trade.stocks"]}]}
            ]
        });
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let txn = "97053963-771d-49cc-a4e3-20aad399c312";
        let token = |action: &str, authn: &str| {
            k.sign_typed(
                "txntoken+jwt",
                &json!({"iss": "https://tts", "aud": "trust-domain.example", "iat": NOW - 5, "exp": NOW + 55,
                        "txn": txn, "sub": "alice", "scope": "trade.stocks", "req_wl": "apigateway",
                        "rctx": {"req_ip": "69.151.72.123", "authn": authn},
                        "tctx": {"action": action, "ticker": "MSFT"}}),
            )
        };
        let buy = token("BUY", "face");
        let ev = http(&c, "POST", "/trades", &[("txn-token", &buy)]);
        assert!(matches!(ev.decision, Decision::Allow { .. }), "{:?}", ev.decision);
        assert_eq!(ev.txn.as_deref(), Some(txn));
        assert_eq!(
            ev.header_ops.set,
            [
                ("x-txn-id".to_string(), txn.to_string()),
                ("x-txn-subject".to_string(), "alice".to_string())
            ]
        );
        assert!(
            ev.header_ops.remove.is_empty(),
            "the Txn-Token is forwarded: {:?}",
            ev.header_ops.remove
        );

        let denied = |ev: &Evaluation| match &ev.decision {
            Decision::Deny(d) => (d.status, d.reason),
            other => panic!("{other:?}"),
        };
        let sell = http(&c, "POST", "/trades", &[("txn-token", &token("SELL", "face"))]);
        assert_eq!(denied(&sell), (403, "policy_denied"));
        assert_eq!(sell.txn.as_deref(), Some(txn), "a refused transaction is still named");
        let pwd = http(&c, "POST", "/trades", &[("txn-token", &token("BUY", "pwd"))]);
        assert_eq!(denied(&pwd), (403, "policy_denied"));
        // A Txn-Token is not a bearer token: Authorization is not where the provider reads.
        let bearer = http(&c, "POST", "/trades", &[("authorization", &format!("Bearer {buy}"))]);
        assert_eq!(denied(&bearer), (401, "missing_token"));
        assert_eq!(bearer.txn, None);
    }

    /// With `REMOVE_HEADER` and two token headers, every unreadable one goes, not only the
    /// first: `Authorization: Basic …` (another scheme) must not shield a forged
    /// `X-Access-Token: Bearer<TAB>…` on a public route or for an `allowMissing` provider.
    #[test]
    fn remove_header_removes_every_unreadable_token_header() {
        let k = TestKey::generate(Alg::ES256, "k1");
        let cfg = |allow_missing: bool| {
            let c = json!({
                "malformedTokenHeaderAction": "REMOVE_HEADER",
                "providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                    "allowMissing": allow_missing,
                    "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}, {"name": "x-access-token", "prefix": "Bearer "}]}],
                "rules": [{"name": "health", "public": true, "paths": ["/healthz"]}, {"name": "all", "paths": ["/*"]}]
            });
            Config::from_json(c.to_string().as_bytes()).unwrap()
        };
        let forged = "Bearer\teyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.x";
        for (allow_missing, path) in [(false, "/healthz"), (true, "/orders")] {
            let c = cfg(allow_missing);
            for headers in [
                vec![("x-access-token", forged)],
                vec![("authorization", "Basic dXNlcjpwYXNz"), ("x-access-token", forged)],
                vec![("authorization", forged), ("x-access-token", "Basic dXNlcjpwYXNz")],
                vec![("authorization", ""), ("X-Access-Token", forged)],
            ] {
                let ev = http(&c, "GET", path, &headers);
                assert_eq!(ev.decision, Decision::Allow { identity: None }, "{headers:?}");
                for (name, _) in &headers {
                    assert!(
                        ev.header_ops.remove.iter().any(|h| h.eq_ignore_ascii_case(name)),
                        "{path} {headers:?}: {name} not removed: {:?}",
                        ev.header_ops
                    );
                }
            }
            // A good token beside an unreadable header: verified, and the other one removed.
            let good = bearer(&k, json!({}));
            let ev = http(
                &c,
                "GET",
                "/orders",
                &[("authorization", "Basic dXNlcjpwYXNz"), ("x-access-token", &good)],
            );
            assert!(
                matches!(ev.decision, Decision::Allow { identity: Some(_) }),
                "{:?}",
                ev.decision
            );
            assert!(
                ev.header_ops.remove.iter().any(|h| &**h == "authorization"),
                "{:?}",
                ev.header_ops
            );
        }
        // REJECT_REQUEST (the default): the first one answers, with the reason it has.
        let basic_then_forged = [("authorization", "Basic dXNlcjpwYXNz"), ("x-access-token", forged)];
        for (first, second, missing) in [
            ("authorization", "x-access-token", true),
            ("x-access-token", "authorization", false),
        ] {
            let strict = json!({"providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                "fromHeaders": [{"name": first, "prefix": "Bearer "}, {"name": second, "prefix": "Bearer "}]}],
                "rules": [{"name": "health", "public": true, "paths": ["/healthz"]}]});
            let c = Config::from_json(strict.to_string().as_bytes()).unwrap();
            let d = denial(http(&c, "GET", "/healthz", &basic_then_forged).decision);
            assert_eq!(d.status, 401);
            assert_eq!(d.reason == "missing_token", missing, "{first} first: {d:?}");
        }
    }

    /// A managed or token header spelled with `_` (`x_user_email`, `x_access_token`) is the
    /// same header to a CGI-style upstream (`HTTP_X_USER_EMAIL`): it is removed like the
    /// managed header itself, and never read as a token or by a rule.
    #[test]
    fn underscore_spellings_of_managed_and_token_headers_are_stripped() {
        let k = TestKey::generate(Alg::ES256, "k1");
        let c = Config::from_json(
            json!({"providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                "fromHeaders": [{"name": "x-access-token", "prefix": "Bearer "}],
                "outputClaimToHeaders": [{"header": "x-user-email", "claim": "email"}, {"header": "x_tenant", "claim": "tenant"}]}],
                "rules": [{"name": "health", "public": true, "paths": ["/healthz"]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let found = managed_present(
            &c,
            &[
                ("X-User-Email", "a"),
                ("x_user_email", "ceo@example.com"),
                ("X_User-Email", "b"),
                ("x_access_token", "Bearer forged"),
                ("x-tenant", "globex"),
                ("x-access-token", "Bearer real"),
                ("x-user-emails", "kept"),
                ("user-agent", "kept"),
            ],
        );
        assert_eq!(
            found,
            [
                "x-user-email",
                "x_user_email",
                "x_user-email",
                "x_access_token",
                "x-tenant"
            ]
        );
        // Not read as the token: a public route passes without one, and the header goes.
        let ev = http(&c, "GET", "/healthz", &[("x_access_token", "Bearer\tforged")]);
        assert_eq!(ev.decision, Decision::Allow { identity: None });
        // A managed name may not be a token header in another spelling.
        let e = Config::from_json(
            json!({"providers": [{"name": "idp", "issuer": "https://a", "audiences": ["api"], "jwks": k.jwks(),
                "fromHeaders": [{"name": "x-access-token", "prefix": "Bearer "}],
                "outputClaimToHeaders": [{"header": "x_access_token", "claim": "email"}]}]})
            .to_string()
            .as_bytes(),
        )
        .err()
        .unwrap();
        assert!(e.message.contains("reads its token"), "{e:?}");
    }

    /// `POST` with `X-HTTP-Method-Override: DELETE` (or `?_method=DELETE`) is a DELETE to
    /// Rails, Laravel, Symfony, Spring, ASP.NET Core: the request passes only if it passes
    /// under each method a server may read it as, and is public only if public under each.
    #[test]
    fn method_overrides_are_judged_under_every_method() {
        let (c, k) = policy_config(json!({"rules": [
            {"name": "health", "public": true, "methods": ["GET"], "paths": ["/healthz"]},
            {"name": "no-deletes", "action": "DENY", "methods": ["DELETE"], "paths": ["/orders/{id}"]},
            {"name": "writers", "methods": ["POST", "GET"], "paths": ["/orders/*"]}
        ]}));
        let tok = bearer(&k, json!({}));
        let auth = ("authorization", tok.as_str());
        let outcome = |method: &str, path: &str, extra: &[(&str, &str)]| {
            let mut h = vec![auth];
            h.extend_from_slice(extra);
            status_reason(&http(&c, method, path, &h).decision)
        };
        for (method, path, extra, want) in [
            ("POST", "/orders/1", vec![], "allow"),
            ("DELETE", "/orders/1", vec![], "403 policy_denied"),
            (
                "POST",
                "/orders/1",
                vec![("X-HTTP-Method-Override", "DELETE")],
                "403 policy_denied",
            ),
            (
                "POST",
                "/orders/1",
                vec![("x-http-method", "delete")],
                "403 policy_denied",
            ),
            (
                "POST",
                "/orders/1",
                vec![("X-Method-Override", " Delete ")],
                "403 policy_denied",
            ),
            (
                "POST",
                "/orders/1",
                vec![("x_http_method_override", "DELETE")],
                "403 policy_denied",
            ),
            ("POST", "/orders/1?_method=DELETE", vec![], "403 policy_denied"),
            ("POST", "/orders/1?%5Fmethod=delete", vec![], "403 policy_denied"),
            // Every reading must be allowed: PATCH is not.
            (
                "POST",
                "/orders/1",
                vec![("X-HTTP-Method-Override", "PATCH")],
                "403 policy_denied",
            ),
            ("POST", "/orders/1", vec![("X-HTTP-Method-Override", "GET")], "allow"),
            ("POST", "/orders/1", vec![("X-HTTP-Method-Override", "POST")], "allow"),
            ("POST", "/orders/1", vec![("X-HTTP-Method-Override", "")], "allow"),
            ("POST", "/orders/1?method=DELETE", vec![], "allow"),
            // Readings servers would disagree on.
            (
                "POST",
                "/orders/1",
                vec![("X-HTTP-Method-Override", "DE LETE")],
                "400 bad_method",
            ),
            // Repeats and other spellings are more readings, each judged.
            (
                "POST",
                "/orders/1?_method=GET&_method=DELETE",
                vec![],
                "403 policy_denied",
            ),
            (
                "POST",
                "/orders/1?_METHOD=DELETE&_method=GET",
                vec![],
                "403 policy_denied",
            ),
            ("POST", "/orders/1?x=1;_method=DELETE", vec![], "403 policy_denied"),
            ("POST", "/orders/1?_method=GET&%zz=1", vec![], "allow"),
        ] {
            assert_eq!(outcome(method, path, &extra), want, "{method} {path} {extra:?}");
        }
        // Public only if public under every reading.
        let anon = |method: &str, extra: &[(&str, &str)]| status_reason(&http(&c, method, "/healthz", extra).decision);
        assert_eq!(anon("GET", &[]), "allow");
        assert_eq!(anon("GET", &[("X-HTTP-Method-Override", "GET")]), "allow");
        assert_eq!(
            anon("GET", &[("X-HTTP-Method-Override", "DELETE")]),
            "401 missing_token"
        );
        assert_eq!(anon("POST", &[("X-HTTP-Method-Override", "GET")]), "401 missing_token");
    }

    /// `x_env` is `x-env` to CGI-style servers (`HTTP_X_ENV`): a rule reading `x-env` reads it,
    /// a binding on `header:x-tenant-id` reads `x_tenant_id`, and two spellings are a repeat.
    #[test]
    fn rules_read_headers_in_either_spelling() {
        let (c, k) = policy_config(json!({"rules": [
            {"name": "no-prod", "action": "DENY", "paths": ["/env/*"], "when": [{"key": "request.headers[x-env]", "values": ["prod"]}]},
            {"name": "own-tenant", "paths": ["/t/*"], "when": [{"claim": "tenant", "valuesFrom": "header:x-tenant-id"}]},
            {"name": "env", "paths": ["/env/*"]}
        ]}));
        let tok = bearer(&k, json!({"tenant": "acme"}));
        let outcome = |path: &str, extra: &[(&str, &str)]| {
            let mut h = vec![("authorization", tok.as_str())];
            h.extend_from_slice(extra);
            status_reason(&http(&c, "GET", path, &h).decision)
        };
        for (path, extra, want) in [
            ("/env/a", vec![("x-env", "prod")], "403 policy_denied"),
            ("/env/a", vec![("x_env", "prod")], "403 policy_denied"),
            ("/env/a", vec![("X_Env", "prod")], "403 policy_denied"),
            ("/env/a", vec![("x_env", "dev")], "allow"),
            (
                "/env/a",
                vec![("x-env", "dev"), ("x_env", "prod")],
                "400 repeated_header",
            ),
            ("/t/a", vec![("x-tenant-id", "acme")], "allow"),
            ("/t/a", vec![("x_tenant_id", "acme")], "allow"),
            ("/t/a", vec![("x_tenant_id", "globex")], "403 policy_denied"),
            (
                "/t/a",
                vec![("x-tenant-id", "acme"), ("x_tenant_id", "globex")],
                "400 repeated_header",
            ),
        ] {
            assert_eq!(outcome(path, &extra), want, "{path} {extra:?}");
        }
    }

    /// A host servers would cut differently (`host:80:80`, `host:x`, `user@host`) is refused
    /// with 400 `bad_host` before any rule or token is looked at; an empty port is no port.
    #[test]
    fn malformed_hosts_are_refused_before_the_rules() {
        let (c, k) = policy_config(json!({"rules": [
            {"name": "no-internal", "action": "DENY", "hosts": ["internal.example.com"]},
            {"name": "health", "public": true, "paths": ["/healthz"]},
            {"name": "any", "paths": ["*"]}
        ]}));
        let tok = bearer(&k, json!({}));
        let with_host = |host: &str, headers: &[(&str, &str)]| {
            let mut h: Vec<(String, String)> = vec![
                (":method".into(), "GET".into()),
                (":path".into(), "/healthz".into()),
                (":authority".into(), host.into()),
            ];
            h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let h_refs = crate::token::header_refs(&h);
            evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), NOW, true)
        };
        for host in [
            "internal.example.com:80:80",
            "internal.example.com:x",
            "u@internal.example.com",
            "[::1]x",
        ] {
            for headers in [vec![], vec![("authorization", tok.as_str())]] {
                let Decision::Deny(d) = with_host(host, &headers).decision else {
                    panic!("{host}: allowed");
                };
                assert_eq!((d.status, d.reason), (400, "bad_host"), "{host}");
                assert!(d.body.contains("request host"), "{host}: {d:?}");
            }
        }
        for host in ["internal.example.com:", "INTERNAL.example.com.:443"] {
            let Decision::Deny(d) = with_host(host, &[("authorization", tok.as_str())]).decision else {
                panic!("{host}: allowed");
            };
            assert_eq!((d.status, d.reason), (403, "policy_denied"), "{host}");
        }
        assert!(matches!(
            with_host("api.example.com:", &[]).decision,
            Decision::Allow { .. }
        ));
    }

    /// `;` as a query separator: Rails (`ActionDispatch::QueryParser`, `/[&;] */`, last
    /// value wins), and Python and Go before 2021, split on it; WHATWG parsers do not. Where
    /// the two readings give `query:NAME` different values, it is ambiguous.
    #[test]
    fn a_semicolon_in_the_query_makes_a_bound_parameter_ambiguous_when_readings_differ() {
        let (c, k) = tenancy_config(json!({}));
        let t = tenant_token(&k); // tenant: "acme"
        let auth = [("authorization", t.as_str())];
        for (path, want) in [
            ("/search?tenant=acme", "allow:query-tenant"),
            ("/search?tenant=globex", "deny"),
            ("/search?tenant=acme&tenant=globex", "deny"),
            // Rails reads tenant=globex.
            ("/search?tenant=acme&x=1;tenant=globex", "deny"),
            ("/search?tenant=acme;tenant=globex", "deny"),
            // `acme;x` to a WHATWG parser, `acme` to Rails.
            ("/search?tenant=acme;x=1", "deny"),
            // Both readings agree.
            ("/search?x=1;y=2&tenant=acme", "allow:query-tenant"),
            ("/search?tenant=acme&x=a%3Bb", "allow:query-tenant"),
        ] {
            assert_eq!(outcome(&c, path, &auth), want, "{path}");
        }
    }
}
