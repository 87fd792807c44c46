//! `claimguard explain`: the filter's decision for one request, offline, with the reasons: the
//! same `decision::evaluate_traced` the filter's code path runs, with notes taken.

use crate::input::{load, Content};
use crate::{display_name, read_input, JsonFlag, Verdict};
use claimguard::config::model::parse_duration_ms;
use claimguard::config::Config;
use claimguard::policy::Effect;
use claimguard::request::decision::{bound_values, evaluate_traced, Decision, HttpRequest, Peer};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

pub const AFTER_HELP: &str = "\
The token goes in `authorization: Bearer ...` unless --header puts it elsewhere (e.g.
--header 'x-jwt:eyJ...' for a provider reading fromHeaders x-jwt). --token @FILE reads it from
a file, --token - from standard input.

--jwks replaces every provider's key source (jwks, jwksUri, oidcDiscovery) with the given key
set: a file, or an http(s) URL fetched once with a timeout (--jwks-timeout). Without it,
providers that only fetch keys remotely have none, and tokens get 503 jwks_unavailable.

--at takes seconds since the epoch or an RFC 3339 UTC time (2026-01-31T12:00:00Z).

Exit status: 0 the request would be allowed, 1 it would be refused (401, 403, 400, 503) or an
error occurred, 2 usage error.";

fn header_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("{s:?} must be NAME:VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has an empty header name"));
    }
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

/// Seconds since the epoch, or `YYYY-MM-DDTHH:MM:SSZ`.
fn time_arg(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("{s:?} is neither seconds since the epoch nor a UTC time like 2026-01-31T12:00:00Z");
    let b = s.as_bytes();
    if b.len() != 20 || b.get(10) != Some(&b'T') || b.get(19) != Some(&b'Z') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).map_err(|_| bad())
}

fn source_ip_arg(s: &str) -> Result<std::net::IpAddr, String> {
    claimguard::policy::parse_socket_ip(s).ok_or_else(|| format!("--source-ip {s:?} is not an IP address"))
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// Plugin config: JSON, or WasmPlugin / TrafficExtension YAML (see --document).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Which WasmPlugin / TrafficExtension of a multi-document file (1-based document number).
    #[arg(long, value_name = "N")]
    document: Option<usize>,
    /// The token, @FILE to read it from a file, or - for standard input; sent as
    /// `authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// Key set for every provider: a JWKS file, or an http(s) URL to fetch it from.
    #[arg(long, value_name = "FILE|URL")]
    jwks: Option<String>,
    /// Timeout for fetching --jwks from a URL.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms, value_name = "DURATION")]
    jwks_timeout: u64,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path, query included.
    #[arg(long, default_value = "/")]
    path: String,
    /// `:authority`.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Extra request header NAME:VALUE; repeatable.
    #[arg(long, value_name = "NAME:VALUE", value_parser = header_arg)]
    header: Vec<(String, String)>,
    /// The calling workload, as if the request came over mTLS from it: a SPIFFE ID, or Istio's
    /// form without `spiffe://` (cluster.local/ns/web/sa/frontend). No peer by default.
    #[arg(long, value_name = "ID")]
    peer_principal: Option<String>,
    /// The downstream connection's address (for ipBlocks rules).
    #[arg(long, value_name = "IP", value_parser = source_ip_arg)]
    source_ip: Option<std::net::IpAddr>,
    /// Evaluate at this time (epoch seconds or 2026-01-31T12:00:00Z); now by default.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    at: Option<u64>,
    #[command(flatten)]
    json: JsonFlag,
}

fn fetch(url: &str, timeout_ms: u64) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(timeout_ms)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| format!("--jwks {url}: {e}"))?;
    resp.body_mut()
        .read_to_string()
        .map_err(|e| format!("--jwks {url}: reading the body: {e}"))
}

/// The plugin config JSON to explain with: the one in the file (or the chosen document).
fn plugin_json(a: &ExplainArgs) -> Result<String, String> {
    let name = display_name(&a.config);
    let docs = load(&read_input(&a.config)?).map_err(|e| format!("{name}: {e}"))?;
    let mut plugins: Vec<(usize, String)> = Vec::new();
    for d in docs {
        let label = d.label();
        match d.content {
            Content::Plugin { json, .. } => plugins.push((d.index, json)),
            Content::Invalid { path, message } if a.document.is_none_or(|n| n == d.index) => {
                return Err(format!("{name}: {label}: {path}: {message}"))
            }
            _ => {}
        }
    }
    match a.document {
        Some(n) => plugins
            .into_iter()
            .find(|(i, _)| *i == n)
            .map(|(_, j)| j)
            .ok_or_else(|| format!("{name}: document {n} is not a plugin config")),
        None if plugins.len() == 1 => Ok(plugins.into_iter().map(|(_, j)| j).next().unwrap_or_default()),
        None if plugins.is_empty() => Err(format!("{name}: no plugin config found")),
        None => Err(format!(
            "{name}: {} plugins (WasmPlugin / TrafficExtension); choose one with --document N (one of {})",
            plugins.len(),
            plugins
                .iter()
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

pub fn run(a: &ExplainArgs) -> Result<Verdict, String> {
    let name = display_name(&a.config);
    let text = plugin_json(a)?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
    if let Some(src) = &a.jwks {
        let jwks = if src.starts_with("http://") || src.starts_with("https://") {
            fetch(src, a.jwks_timeout)?
        } else {
            std::fs::read_to_string(src).map_err(|e| format!("{src}: {e}"))?
        };
        // Offline: this key set replaces every provider's key source.
        let providers = doc
            .get_mut("providers")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| format!("{name}: the config has no providers"))?;
        for p in providers {
            if let Some(m) = p.as_object_mut() {
                for k in [
                    "jwksUri",
                    "oidcDiscovery",
                    "jwksCluster",
                    "timeout",
                    "jwksMaxBytes",
                    "jwksRefreshInterval",
                    "jwksMinRefreshInterval",
                    "jwksMaxRefreshInterval",
                    "jwksRefetchCooldown",
                    "maxStale",
                    "bootstrapJwksFallback",
                    "jwksWaitTimeout",
                ] {
                    m.remove(k);
                }
                m.insert("jwks".into(), json!(jwks));
            }
        }
    }
    let cfg = Config::from_json(doc.to_string().as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    let token = match a.token.as_deref() {
        Some("-") => Some(read_input(std::path::Path::new("-"))?.trim().to_string()),
        Some(t) if t.starts_with('@') => {
            let f = t.trim_start_matches('@');
            Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("{f}: {e}"))?
                    .trim()
                    .to_string(),
            )
        }
        Some(t) => Some(t.to_string()),
        None => None,
    };
    let mut headers: Vec<(String, String)> = vec![
        (":method".into(), a.method.clone()),
        (":path".into(), a.path.clone()),
        (":authority".into(), a.host.clone()),
    ];
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    headers.extend(a.header.iter().cloned());
    let at = a.at.unwrap_or_else(crate::now);
    // The calling workload, as the proxy would see an mTLS connection from it. Istio's form
    // (cluster.local/ns/web/sa/frontend) is taken as the SPIFFE ID it stands for.
    let peer = Peer {
        uri_san: a.peer_principal.as_ref().map(|p| {
            if p.contains("://") {
                p.to_string()
            } else {
                format!("spiffe://{p}")
            }
        }),
        ip: a.source_ip,
    };
    let peer_principal = peer.uri_san.clone();
    let source_ip = peer.ip.map(|ip| ip.to_string());
    let headers_refs = claimguard::token::header_refs(&headers);
    let req = HttpRequest::from_headers(&headers_refs).with_peer(peer);
    let ev = evaluate_traced(&cfg, &cfg, &req, at);
    // The request values claim bindings compared, shown with the rules that compared them.
    let bound = bound_values(&cfg, &req, &ev);

    let rules: Vec<String> = ev
        .policy
        .as_ref()
        .map(|p| p.trace.iter().map(|t| cfg.policy().describe(t, &bound)).collect())
        .unwrap_or_default();
    let effect_text = |e: &Effect| match e {
        Effect::Allow { rule: Some(r) } => format!("allow (rule {:?})", cfg.policy().rule_name(*r)),
        Effect::Allow { rule: None } => "allow (no ALLOW rules)".to_string(),
        Effect::Deny { rule: Some(r), .. } => format!("deny (DENY rule {:?})", cfg.policy().rule_name(*r)),
        Effect::Deny { rule: None, .. } => "deny (no ALLOW rule matched)".to_string(),
    };
    let policy = ev.policy.as_ref().map(|p| effect_text(&p.effect));
    let shadow = ev.policy.as_ref().and_then(|p| p.shadow.as_ref()).map(effect_text);
    let (status, verdict, reason, description, provider, response_headers, body) = match &ev.decision {
        Decision::Allow { identity } => (
            200,
            "allow",
            "none".to_string(),
            String::new(),
            identity.as_ref().map(|i| i.provider.to_string()),
            Vec::new(),
            None,
        ),
        Decision::Deny(d) => (
            d.status,
            "deny",
            d.reason.to_string(),
            d.description.clone(),
            d.provider.clone(),
            d.headers.clone(),
            Some(d.body.clone()),
        ),
        // Not produced by evaluate_traced (a final attempt); kept total for safety.
        Decision::NeedKeys { .. } => (
            503,
            "deny",
            "jwks_unavailable".into(),
            String::new(),
            None,
            Vec::new(),
            None,
        ),
    };
    let allowed = status == 200;
    let upstream_headers = if allowed { ev.header_ops.set.clone() } else { Vec::new() };
    let removed = ev.header_ops.remove.clone();
    // The `:path` an allowed request goes upstream with, when claimguard rewrote it.
    let upstream_path: Option<String> = ev
        .header_ops
        .set
        .iter()
        .find(|(h, _)| h == ":path")
        .map(|(_, v)| v.clone());
    if a.json.json {
        let steps: Vec<Value> = ev
            .auth_steps
            .iter()
            .map(|s| json!({"step": s.step, "ok": s.ok, "detail": s.detail}))
            .collect();
        let out = json!({
            // `reason` as it always was (code and description); `reasonCode` for scripts.
            "decision": verdict, "status": status, "reasonCode": reason, "description": description,
            "reason": if description.is_empty() { reason.clone() } else { format!("{reason} ({description})") },
            "provider": provider, "issuer": ev.issuer, "subject": ev.subject, "txn": ev.txn, "at": at,
            "peerPrincipal": peer_principal, "sourceIp": source_ip,
            "request": {"method": a.method, "path": a.path, "host": a.host},
            "path": ev.normalized_path, "canonicalPath": ev.canonical_path,
            "upstreamPath": upstream_path, "corsPreflight": ev.cors_preflight,
            "publicRule": ev.public_rule.map(|r| cfg.policy().rule_name(r)),
            "steps": steps, "rules": rules, "policy": policy, "shadow": shadow,
            "upstreamHeaders": upstream_headers, "removedHeaders": removed,
            "filterState": ev.header_ops.filter_state,
            "responseHeaders": response_headers, "body": body,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    } else {
        println!("request:  {} {} (host {}) at {at}", a.method, a.path, a.host);
        println!(
            "path:     {}{}",
            ev.normalized_path.as_deref().unwrap_or("- (refused before policy)"),
            if ev
                .normalized_path
                .as_deref()
                .is_some_and(|p| Some(p) != a.path.split('?').next())
            {
                " (as rules see it)"
            } else {
                ""
            }
        );
        if let Some(p) = &upstream_path {
            println!("upstream: :path rewritten to {p} (the canonical form rules judged)");
        }
        if ev.cors_preflight {
            println!("cors:     CORS preflight let through (allowCorsPreflight)");
        }
        if let Some(r) = ev.public_rule {
            println!("public:   rule {:?} makes a token optional", cfg.policy().rule_name(r));
        }
        if !ev.auth_steps.is_empty() {
            println!("verification:");
            for s in &ev.auth_steps {
                println!(
                    "  [{:<4}] {:<10} {}",
                    if s.ok { "ok" } else { "FAIL" },
                    s.step,
                    s.detail
                );
            }
        }
        if !rules.is_empty() {
            println!("rules:");
            for t in &rules {
                println!("  {t}");
            }
        }
        if let Some(p) = &policy {
            println!("policy:   {p}");
        }
        if let Some(s) = &shadow {
            println!("dry-run:  would be {s} if every rule were enforced");
        }
        println!("decision: {verdict} ({status})");
        if description.is_empty() {
            println!("reason:   {reason}");
        } else {
            println!("reason:   {reason} ({description})");
        }
        println!("provider: {}", provider.as_deref().unwrap_or("-"));
        println!("subject:  {}", ev.subject.as_deref().unwrap_or("-"));
        if let Some(t) = &ev.txn {
            println!("txn:      {t} (the transaction id in decision lines)");
        }
        println!(
            "peer:     {} from {}",
            peer_principal.as_deref().unwrap_or("- (no mTLS peer)"),
            source_ip.as_deref().unwrap_or("-")
        );
        for (k, v) in &upstream_headers {
            println!("upstream header: {k}: {v}");
        }
        for k in &removed {
            println!("removed header:  {k}");
        }
        for (k, v) in &response_headers {
            println!("response header: {k}: {v}");
        }
        if let Some(b) = &body {
            println!("response body:   {b}");
        }
    }
    Ok(if allowed { Verdict::Ok } else { Verdict::Refused })
}
