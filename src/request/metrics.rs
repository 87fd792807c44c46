//! What one request's evaluation says for metrics and the decision log. Pure: the host layer
//! defines the metrics and writes the lines.
//!
//! Metric names carry their labels as `.label.value` segments, with values only from fixed
//! sets (outcome, reason) or from the config (rule and provider names, sanitised), never from
//! the request, so cardinality is bounded by the config. Envoy's `stats_tags` (see
//! [`STATS_TAGS`]) turn the segments into Prometheus labels:
//! `claimguard_requests_total{outcome="denied",reason="policy_denied",rule="blocked",provider="idp"}`.

use crate::config::Config;
use crate::policy::Effect;
use crate::request::decision::{bound_values, Decision, Evaluation, HttpRequest};
use serde_json::{json, Value};

/// The request counter's base name.
pub const REQUESTS: &str = "claimguard.requests_total";

/// Entries each per-VM store dropped for room (pushed out by an insertion, or too heavy to
/// store at all; see `jwtCacheBytes`): `claimguard_cache_evictions_total{cache="token"}`, and
/// `rejected` and `memo`. Counted in the VM and handed to the host on the tick.
pub const TOKEN_CACHE_EVICTIONS: &str = "claimguard.cache_evictions_total.cache.token";
pub const REJECTED_CACHE_EVICTIONS: &str = "claimguard.cache_evictions_total.cache.rejected";
pub const MEMO_EVICTIONS: &str = "claimguard.cache_evictions_total.cache.memo";

/// `(tag name, regex)` for Envoy's `stats_config.stats_tags`: the first capture group is cut
/// from the name, the second is the label value. Envoy files metrics a Wasm plugin defines
/// under `wasmcustom.`, which the Prometheus output then leaves out.
pub const STATS_TAGS: &[(&str, &str)] = &[
    (
        "outcome",
        r"^wasmcustom\.claimguard\.requests_total.*?(\.outcome\.([a-z_]+))",
    ),
    (
        "reason",
        r"^wasmcustom\.claimguard\.requests_total.*?(\.reason\.([a-z_]+))",
    ),
    ("rule", r"^wasmcustom\.claimguard\.[a-z_]+.*?(\.rule\.([A-Za-z0-9_-]+))"),
    (
        "provider",
        r"^wasmcustom\.claimguard\.[a-z_]+.*?(\.provider\.([A-Za-z0-9_-]+))",
    ),
    (
        "result",
        r"^wasmcustom\.claimguard\.[a-z_]+_total.*?(\.result\.([a-z_]+))",
    ),
    (
        "cache",
        r"^wasmcustom\.claimguard\.[a-z_]+_total.*?(\.cache\.([a-z_]+))",
    ),
];

/// The labels of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `allowed`, `denied`, `unauthenticated`, `jwks_unavailable`, `dry_run_denied`.
    pub outcome: &'static str,
    /// `none` for allowed requests, else the denial's reason code.
    pub reason: &'static str,
    /// Index of the deciding (or, for dry-run, would-be deciding) rule.
    pub rule: Option<usize>,
    /// Index of the token's provider.
    pub provider: Option<usize>,
}

/// Letters, digits, `_` and `-` only: a config name as a metric segment.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

pub fn labels(config: &Config, ev: &Evaluation) -> Labels {
    let provider_by_name = |name: Option<&str>| name.and_then(|n| config.providers.iter().position(|p| p.name == n));
    match &ev.decision {
        Decision::Allow { identity } => {
            let provider = identity.as_ref().map(|i| i.provider_index);
            let shadow_deny = ev.policy.as_ref().and_then(|p| match &p.shadow {
                Some(Effect::Deny { rule, .. }) => Some(*rule),
                _ => None,
            });
            match shadow_deny {
                Some(rule) => Labels {
                    outcome: "dry_run_denied",
                    reason: "policy_denied",
                    rule,
                    provider,
                },
                None => {
                    let rule = ev.policy.as_ref().and_then(|p| match p.effect {
                        Effect::Allow { rule } => rule,
                        Effect::Deny { .. } => None,
                    });
                    Labels {
                        outcome: "allowed",
                        reason: "none",
                        rule: rule.or(ev.public_rule),
                        provider,
                    }
                }
            }
        }
        Decision::Deny(d) => {
            let outcome = match d.status {
                401 => "unauthenticated",
                503 => "jwks_unavailable",
                400 if d.reason == "multiple_tokens" => "unauthenticated",
                _ => "denied",
            };
            let rule = ev.policy.as_ref().and_then(|p| match p.effect {
                Effect::Deny { rule, .. } => rule,
                Effect::Allow { .. } => None,
            });
            Labels {
                outcome,
                reason: d.reason,
                rule,
                provider: provider_by_name(d.provider.as_deref()),
            }
        }
        Decision::NeedKeys { provider, .. } => Labels {
            outcome: "jwks_unavailable",
            reason: "jwks_unavailable",
            rule: None,
            provider: Some(*provider),
        },
    }
}

/// The counter name for `labels`.
pub fn request_metric(config: &Config, l: &Labels) -> String {
    let rule = l
        .rule
        .and_then(|r| config.policy.rules.get(r))
        .map_or("none".to_string(), |r| sanitize(&r.name));
    let provider = l
        .provider
        .and_then(|p| config.providers.get(p))
        .map_or("none".to_string(), |p| sanitize(&p.name));
    format!(
        "{REQUESTS}.outcome.{}.reason.{}.rule.{rule}.provider.{provider}",
        l.outcome, l.reason
    )
}

/// Per-provider JWKS metric names.
pub fn jwks_metric(config: &Config, provider: usize, what: &str) -> String {
    let p = config
        .providers
        .get(provider)
        .map_or("none".to_string(), |p| sanitize(&p.name));
    match what {
        "success" | "failure" | "not_modified" => format!("claimguard.jwks_fetches_total.result.{what}.provider.{p}"),
        other => format!("claimguard.jwks_{other}.provider.{p}"),
    }
}

/// Trace and correlation headers copied into decision lines, when present.
pub const TRACE_HEADERS: &[&str] = &["x-request-id", "traceparent", "x-b3-traceid", "x-amzn-trace-id"];

/// One structured decision line. Never contains the token or its signature: tokens are
/// identified by `tokenFingerprint` (first 16 hex digits of its SHA-256).
pub fn decision_line(config: &Config, req: &HttpRequest, ev: &Evaluation, l: &Labels) -> Value {
    let (status, decision) = match &ev.decision {
        Decision::Allow { .. } => (
            200,
            if l.outcome == "dry_run_denied" {
                "dry_run_denied"
            } else {
                "allow"
            },
        ),
        Decision::Deny(d) => (d.status, "deny"),
        Decision::NeedKeys { .. } => (503, "deny"),
    };
    let rule = l.rule.and_then(|r| config.policy.rules.get(r)).map(|r| r.name.as_str());
    let provider = l
        .provider
        .and_then(|p| config.providers.get(p))
        .map(|p| p.name.as_str());
    let mut line = json!({
        "claimguard": "decision",
        "decision": decision,
        "status": status,
        "reason": l.reason,
        "rule": rule,
        "provider": provider,
        "issuer": ev.issuer,
        "subject": ev.subject,
        "tokenFingerprint": ev.token_fingerprint(config, req),
        "method": req.method,
        "path": ev.normalized_path.as_deref().unwrap_or("-"),
        // As received (without the query, which may carry a token), and as sent upstream.
        "receivedPath": req.path.split('?').next().unwrap_or(req.path),
        "canonicalPath": ev.canonical_path,
        // The calling workload: its SPIFFE ID (null without mTLS) and IP.
        "peerPrincipal": req.peer.uri_san,
        "sourceIp": req.peer.ip.map(|ip| ip.to_string()),
    });
    if let Some(m) = line.as_object_mut() {
        // The request values claim bindings compared (`valuesFrom`), rule by rule: read only
        // now, for a line that is written.
        let bound = bound_lines(config, req, ev, None);
        if !bound.is_empty() {
            m.insert("bound".into(), json!(bound));
        }
        for name in TRACE_HEADERS {
            if let Some((_, v)) = req.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                m.insert((*name).to_string(), json!(v));
            }
        }
        // The verified token's transaction id (Transaction Tokens), beside the trace ids: one
        // transaction followed hop by hop. JSON-escaped like every value, and capped.
        if let Some(t) = &ev.txn {
            m.insert("txn".into(), json!(t));
        }
    }
    line
}

/// The request values `ev`'s claim bindings compared, one entry each (`tenant-members when[0]:
/// tenants valuesFrom path:tenant = "acme"`), for every rule or only `rule`'s. Each value is
/// quoted, escaped and cut to [`crate::policy::SHOWN_CHARS`] characters: a request cannot
/// forge a field or a line with it, nor make a line long.
pub fn bound_lines(config: &Config, req: &HttpRequest, ev: &Evaluation, rule: Option<usize>) -> Vec<String> {
    bound_values(config, req, ev)
        .iter()
        .filter(|b| rule.is_none_or(|r| r == b.rule))
        .filter_map(|b| config.policy.bound_line(b))
        .collect()
}

/// A token bucket for decision lines: bounded log volume under a flood.
#[derive(Debug, Clone)]
pub struct LogBudget {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
    /// Lines suppressed since the last report.
    pub dropped: u64,
}

impl LogBudget {
    pub fn new(per_second: u32, burst: u32) -> LogBudget {
        LogBudget {
            capacity: f64::from(burst),
            per_ms: f64::from(per_second) / 1000.0,
            tokens: f64::from(burst),
            last_ms: 0,
            dropped: 0,
        }
    }

    /// Whether a line may be written now.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = now_ms.max(self.last_ms);
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize("https://idp.example/realms/a"), "https___idp_example_realms_a");
        assert_eq!(sanitize("orders-write_2"), "orders-write_2");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize(&"x".repeat(200)).len(), 64);
    }

    #[test]
    fn budget_bounds_volume() {
        let mut b = LogBudget::new(10, 20);
        let allowed = (0..1000).filter(|_| b.take(1_000)).count();
        assert_eq!(allowed, 20);
        assert_eq!(b.dropped, 980);
        // One second later, ten more.
        let allowed = (0..1000).filter(|_| b.take(2_000)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn metric_names_never_carry_request_data() {
        use crate::crypto::alg::Alg;
        use crate::request::decision::evaluate;
        use claimguard_testkeys::TestKey;
        let k = TestKey::generate(Alg::ES256, "k");
        let cfg = serde_json::json!({
            "providers": [{"name": "idp.example/prod", "issuer": "https://i", "jwks": k.jwks(), "allowMissing": false}],
            "rules": [{"name": "readers", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["read"]}]},
                      {"name": "sunset", "action": "DENY", "dryRun": true, "paths": ["/orders/old*"]}]
        });
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let evil = |sub: &str, scope: &str| {
            k.sign(&serde_json::json!({"iss": "https://i", "sub": sub, "scope": scope, "exp": now + 60}))
        };
        let requests: Vec<(String, Vec<(String, String)>)> = vec![
            (
                "/orders/.outcome.allowed.rule.admin".into(),
                vec![(
                    "authorization".into(),
                    format!("Bearer {}", evil("a.provider.x", "read")),
                )],
            ),
            (
                "/orders/old/x".into(),
                vec![("authorization".into(), format!("Bearer {}", evil("x", "read")))],
            ),
            (
                "/orders".into(),
                vec![(
                    "authorization".into(),
                    format!("Bearer {}", evil("x", "write .reason.none")),
                )],
            ),
            ("/orders".into(), vec![("authorization".into(), "Bearer a.b.c".into())]),
            ("/orders%2F".into(), vec![]),
            ("/x".into(), vec![]),
        ];
        let segment = regex_lite_segment;
        for (path, extra) in requests {
            let mut h = vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), path.clone()),
                (":authority".to_string(), "h".to_string()),
            ];
            h.extend(extra);
            let h_refs = crate::token::header_refs(&h);
            let ev = evaluate(&c, &c, &HttpRequest::from_headers(&h_refs), now, true);
            let name = request_metric(&c, &labels(&c, &ev));
            let parts: Vec<&str> = name
                .strip_prefix("claimguard.requests_total.")
                .unwrap()
                .split('.')
                .collect();
            assert_eq!(parts.len(), 8, "{name}");
            assert_eq!(
                (parts[0], parts[2], parts[4], parts[6]),
                ("outcome", "reason", "rule", "provider"),
                "{name}"
            );
            assert!(
                [
                    "allowed",
                    "denied",
                    "unauthenticated",
                    "jwks_unavailable",
                    "dry_run_denied"
                ]
                .contains(&parts[1]),
                "{name}"
            );
            assert!(["none", "readers", "sunset"].contains(&parts[5]), "{name}");
            assert!(["none", "idp_example_prod"].contains(&parts[7]), "{name}");
            assert!(segment(parts[3]), "{name}");
        }
    }

    #[test]
    fn decision_lines_name_the_peer() {
        use crate::crypto::alg::Alg;
        use crate::request::decision::{evaluate, Peer};
        use claimguard_testkeys::TestKey;
        let k = TestKey::generate(Alg::ES256, "k");
        let cfg = serde_json::json!({
            "providers": [{"name": "idp", "issuer": "https://i", "jwks": k.jwks()}],
            "rules": [{"name": "frontend-only", "principals": ["cluster.local/ns/web/sa/frontend"]}]
        });
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let t = k.sign(&serde_json::json!({"iss": "https://i", "sub": "u", "exp": now + 60}));
        let h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/".to_string()),
            ("authorization".to_string(), format!("Bearer {t}")),
        ];
        let id = "spiffe://cluster.local/ns/legacy/sa/old";
        let h_refs = crate::token::header_refs(&h);
        let req =
            HttpRequest::from_headers(&h_refs).with_peer(Peer::from_connection(true, Some(id), Some("[::1]:5000")));
        let ev = evaluate(&c, &c, &req, now, true);
        let line = decision_line(&c, &req, &ev, &labels(&c, &ev));
        assert_eq!(line["decision"], "deny");
        assert_eq!(line["peerPrincipal"], id);
        assert_eq!(line["sourceIp"], "::1");
        let h_refs = crate::token::header_refs(&h);
        let plain = HttpRequest::from_headers(&h_refs);
        let ev = evaluate(&c, &c, &plain, now, true);
        let line = decision_line(&c, &plain, &ev, &labels(&c, &ev));
        assert_eq!(line["peerPrincipal"], Value::Null);
        assert_eq!(line["sourceIp"], Value::Null);
    }

    #[test]
    fn decision_lines_show_the_path_received_judged_and_sent() {
        use crate::crypto::alg::Alg;
        use crate::request::decision::evaluate;
        use claimguard_testkeys::TestKey;
        let k = TestKey::generate(Alg::ES256, "k");
        let cfg = serde_json::json!({
            "providers": [{"name": "idp", "issuer": "https://i", "jwks": k.jwks()}],
            "rules": [{"name": "no-admin", "action": "DENY", "paths": ["/admin/*"]}],
            "caseInsensitivePaths": true
        });
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let t = k.sign(&serde_json::json!({"iss": "https://i", "sub": "u", "exp": now + 60}));
        let line_for = |path: &str| {
            let h = vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), path.to_string()),
                ("authorization".to_string(), format!("Bearer {t}")),
            ];
            let h_refs = crate::token::header_refs(&h);
            let req = HttpRequest::from_headers(&h_refs);
            let ev = evaluate(&c, &c, &req, now, true);
            decision_line(&c, &req, &ev, &labels(&c, &ev))
        };
        let line = line_for("/x/../ADMIN/%75sers?access_token=secret");
        assert_eq!(line["decision"], "deny");
        // As received (never the query: it may hold a token), as judged, as it would be sent.
        assert_eq!(line["receivedPath"], "/x/../ADMIN/%75sers");
        assert_eq!(line["path"], "/admin/users");
        assert_eq!(line["canonicalPath"], "/ADMIN/users");
        let line = line_for("/orders");
        assert_eq!(
            (&line["receivedPath"], &line["path"], &line["canonicalPath"]),
            (&Value::from("/orders"), &Value::from("/orders"), &Value::Null)
        );
    }

    /// A verified token's `txn` sits in the decision line beside the trace ids: as a JSON
    /// string (quotes and control characters escaped, one line), cut at 128 bytes on a
    /// character boundary; a token without one adds nothing.
    #[test]
    fn decision_lines_carry_the_transaction_id() {
        use crate::crypto::alg::Alg;
        use crate::request::decision::{evaluate, TXN_MAX_BYTES};
        use claimguard_testkeys::TestKey;
        let k = TestKey::generate(Alg::ES256, "k");
        let cfg = serde_json::json!({
            "providers": [{"name": "idp", "issuer": "https://i", "jwks": k.jwks()}],
            "rules": [{"name": "nobody", "paths": ["/nowhere"]}]
        });
        let c = Config::from_json(cfg.to_string().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let line_for = |txn: Value| {
            let mut claims = serde_json::json!({"iss": "https://i", "sub": "u", "exp": now + 60});
            if !txn.is_null() {
                claims["txn"] = txn;
            }
            let t = k.sign(&claims);
            let h = vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), "/".to_string()),
                ("authorization".to_string(), format!("Bearer {t}")),
                (
                    "traceparent".to_string(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
                ),
            ];
            let h_refs = crate::token::header_refs(&h);
            let req = HttpRequest::from_headers(&h_refs);
            let ev = evaluate(&c, &c, &req, now, true);
            decision_line(&c, &req, &ev, &labels(&c, &ev))
        };
        let line = line_for(serde_json::json!("97053963-771d-49cc-a4e3-20aad399c312"));
        assert_eq!(line["decision"], "deny");
        assert_eq!(line["txn"], "97053963-771d-49cc-a4e3-20aad399c312");
        assert_eq!(
            line["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(line_for(Value::Null).get("txn").is_none());
        assert!(
            line_for(serde_json::json!(42)).get("txn").is_none(),
            "only a string txn"
        );
        let hostile = format!("\"}}\n{{\"decision\":\"allow\"{}", "é".repeat(200));
        let line = line_for(serde_json::json!(hostile));
        let txn = line["txn"].as_str().unwrap();
        assert!(
            txn.len() <= TXN_MAX_BYTES && txn.len() >= TXN_MAX_BYTES - 1,
            "{}",
            txn.len()
        );
        assert!(hostile.starts_with(txn));
        let text = line.to_string();
        assert!(!text.contains('\n') && text.contains(r#"\"}\n{\"decision"#), "{text}");
    }

    #[test]
    fn eviction_counters_carry_one_cache_label() {
        for (name, cache) in [
            (TOKEN_CACHE_EVICTIONS, "token"),
            (REJECTED_CACHE_EVICTIONS, "rejected"),
            (MEMO_EVICTIONS, "memo"),
        ] {
            assert_eq!(name, format!("claimguard.cache_evictions_total.cache.{cache}"));
        }
        // The tag that cuts `.cache.<name>` out exists and reads only `_total` counters.
        let (_, regex) = STATS_TAGS.iter().find(|(tag, _)| *tag == "cache").unwrap();
        assert!(regex.starts_with(r"^wasmcustom\.claimguard\.") && regex.ends_with(r"(\.cache\.([a-z_]+))"));
    }

    /// Reason codes are static snake_case words.
    fn regex_lite_segment(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }
}
