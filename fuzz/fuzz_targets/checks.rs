//! What each fuzz target checks, as plain functions: the cargo-fuzz targets (nightly,
//! libFuzzer) call them on generated inputs, and `tests/fuzz_corpus.rs` (stable, part of
//! `make test`) replays the committed seeds in `fuzz/corpus/<target>/` through them.
//! Every check panics on what must never happen; nothing else.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

// Shared by the targets: one config with real keys, rules and claim headers, built once.
use claimguard::config::Config;

// A fixed P-256 public key (the private half is not needed: fuzzing looks for crashes and
// for acceptance of tokens nobody signed, which must never happen).
pub const CONFIG: &str = r#"{
  "providers": [{
    "name": "idp",
    "issuer": "https://idp.fuzz",
    "audiences": ["api"],
    "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
      "x": "KSexBRK64-3c_kZ4KBKLrSkDJpkZ9whgacjE32xzKDg", "y": "x3h5ZOqsAOWSH7FJimD0YGdms9loUAFVjRqXTnNBUT4"}]},
    "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
    "fromParams": ["access_token"],
    "fromCookies": ["session"],
    "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}, {"header": "x-groups", "claim": "groups"}],
    "allowMissing": true
  }, {
    "name": "alb",
    "clientIds": ["fuzz-client"],
    "alb": {"region": "eu-west-1",
      "signers": ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/fuzz/50dc6c495c0c9188"],
      "keys": {"0f3c8e2a-5b7d-4c1e-9a6f-2d4b8c0e1a3f": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKSexBRK64+3c/kZ4KBKLrSkDJpkZ\n9whgacjE32xzKDjHeHlk6qwA5ZIfsUmKYPRgZ2az2WhQAVWNGpdOc0FRPg==\n-----END PUBLIC KEY-----\n"}}
  }],
  "rules": [
    {"name": "public", "public": true, "paths": ["/healthz", "/docs/*"]},
    {"name": "deny", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked*"]}]},
    {"name": "admins", "methods": ["DELETE"], "paths": ["/orders/{id}"], "when": [{"claim": "realm_access.roles", "values": ["admin"]}]},
    {"name": "readers", "paths": ["/orders", "/orders/*"], "when": [{"claim": "scope", "allValues": ["read"]}]},
    {"name": "hosts", "hosts": ["*.example.com"], "notPaths": ["/admin*"], "when": [{"key": "request.headers[x-env]", "notValues": ["dev"]}]},
    {"name": "dry", "action": "DENY", "dryRun": true, "paths": ["*"]},
    {"name": "audit", "action": "AUDIT", "methods": ["POST"]}
  ]
}"#;

/// Built once per thread and leaked (a `Config` shares strings with `Rc`, so it is not `Sync`).
pub fn config() -> &'static Config {
    thread_local! {
        static C: &'static Config = Box::leak(Box::new(match Config::from_json(CONFIG.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        }));
    }
    C.with(|c| *c)
}

/// Any bytes as a bearer token, a query token, a cookie or an ALB `x-amzn-oidc-data`
/// header, through the whole request path.
/// No input may crash, and none may ever be allowed with an identity: nobody holds the key.
pub fn token_verify(data: &[u8]) {
    use claimguard::request::decision::{evaluate, Decision, HttpRequest};
    let c = config();
    let text = String::from_utf8_lossy(data);
    for (k, v, path) in [
        ("authorization", format!("Bearer {text}"), "/orders".to_string()),
        ("cookie", format!("session={text}"), "/orders".to_string()),
        ("x-other", String::new(), format!("/orders?access_token={text}")),
        ("x-amzn-oidc-data", text.to_string(), "/orders".to_string()),
    ] {
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "api.example.com"),
            (k, v.as_str()),
        ];
        let ev = evaluate(c, c, &HttpRequest::from_headers(&headers), 1_800_000_000, true);
        if let Decision::Allow { identity: Some(_) } = ev.decision {
            panic!("a token nobody signed was accepted");
        }
    }
}

/// Any bytes as a JWKS document (as fetched from an identity provider).
pub fn jwks_parse(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = claimguard::keys::jwk::parse_jwks(&v);
    }
}

/// Any bytes as a plugin configuration.
pub fn config_parse(data: &[u8]) {
    let _ = claimguard::config::Config::from_json(data);
}

/// Policy evaluation over arbitrary requests and arbitrary (already verified) claims:
/// input = method \n path \n host \n claims-json.
///
/// Under [`CONFIG`]: evaluation and its trace must not crash. Then claims bound to the request
/// ([`policy_bindings`]), under each of [`binding_configs`]: the path (query included) as the
/// request target, `host` also as the `x-tenant-id` header, the claims as a signed token's.
pub fn policy_eval(data: &[u8]) {
    use claimguard::policy::path::normalize;
    use claimguard::policy::{Peer, RequestFacts, Subject};
    let c = config();
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("GET");
    let raw_path = parts.next().unwrap_or("/");
    let host = parts.next().unwrap_or("");
    let claims = parts
        .next()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let Ok(path) = normalize(raw_path, c.path()) else {
        return;
    };
    let headers = [("x-env", host)];
    // The host doubles as the peer: its SPIFFE ID (over mTLS) and source address.
    let peer = Peer::from_connection(true, Some(host), Some(host));
    let Ok(canonical_host) = claimguard::policy::path::canonical_host(host) else {
        return;
    };
    let facts = RequestFacts {
        method,
        path: &path,
        served_path: &path,
        query: "",
        host: &canonical_host,
        headers: &headers,
        peer: &peer,
    };
    let subject = Subject {
        provider: 0,
        principal: "https://idp.fuzz/x",
        claims: &claims,
    };
    let d = c.policy().evaluate(&facts, Some(&subject));
    let bound = c.policy().bound_values(&facts, &d.trace);
    for t in &d.trace {
        let _ = c.policy().describe(t, &bound);
    }
    let _ = c.policy().evaluate(&facts, None);
    for bc in binding_configs() {
        policy_bindings(bc, method, raw_path, host, &claims);
    }
}

// --- policy_eval: claims bound to the request ----------------------------------------------

/// Rules binding claims to the request (`valuesFrom` / `notValuesFrom`): path captures in
/// templates of several shapes, a header and query parameters, `ignoreCase`, in ALLOW,
/// DENY and dry-run DENY rules. (No AUDIT rule: it would turn the decision memo off.)
const BINDING_RULES: &str = r#"[
    {"name": "public", "public": true, "paths": ["/healthz"]},
    {"name": "other-tenant", "action": "DENY", "paths": ["/tenants/{tenant}", "/tenants/{tenant}/{**}"],
     "when": [{"claim": "tenants", "notValuesFrom": "path:tenant"}]},
    {"name": "members", "methods": ["GET", "POST"], "paths": ["/tenants/{tenant}", "/tenants/{tenant}/{**}"],
     "when": [{"claim": "tenants", "valuesFrom": "path:tenant"}]},
    {"name": "owner", "paths": ["/users/{sub}/{**}", "/u/{*}/{sub}"],
     "when": [{"claim": "sub", "valuesFrom": "path:sub"}]},
    {"name": "org-header", "paths": ["/reports", "/reports/{*}"],
     "when": [{"claim": "org.id", "valuesFrom": "header:x-tenant-id", "ignoreCase": true}]},
    {"name": "not-org-header", "action": "DENY", "paths": ["/admin/{**}"],
     "when": [{"claim": "org.id", "notValuesFrom": "header:x-tenant-id"}]},
    {"name": "admin", "paths": ["/admin/{**}"], "when": [{"claim": "roles", "values": ["admin"]}]},
    {"name": "search", "methods": ["GET"], "paths": ["/search"],
     "when": [{"claim": "tenants", "valuesFrom": "query:tenant"}]},
    {"name": "owner-query", "action": "DENY", "dryRun": true, "paths": ["/search"],
     "when": [{"claim": "sub", "notValuesFrom": "query:owner"}]},
    {"name": "any-case", "paths": ["/ci/{t}", "/ci/{t}/{**}"],
     "when": [{"claim": "tenant", "valuesFrom": "path:t", "ignoreCase": true},
              {"claim": "level", "notValuesFrom": "query:level"}]}
]"#;

/// Each binding of [`BINDING_RULES`]: (rule, `when` index, claim path, negated, ignoreCase).
const BINDINGS: &[(&str, usize, &str, bool, bool)] = &[
    ("other-tenant", 0, "tenants", true, false),
    ("members", 0, "tenants", false, false),
    ("owner", 0, "sub", false, false),
    ("org-header", 0, "org.id", false, true),
    ("not-org-header", 0, "org.id", true, false),
    ("search", 0, "tenants", false, false),
    ("owner-query", 0, "sub", true, false),
    ("any-case", 0, "tenant", false, true),
    ("any-case", 1, "level", true, false),
];

const BINDING_ISSUER: &str = "https://bindings.fuzz";
const NOW: u64 = 1_800_000_000;

/// The key binding tokens are signed with (a fixed scalar; not the key of [`CONFIG`]).
fn binding_key() -> &'static p256::ecdsa::SigningKey {
    static K: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
    K.get_or_init(|| p256::ecdsa::SigningKey::from_slice(&[0x5a; 32]).unwrap())
}

/// [`BINDING_RULES`] under the default path actions, and under the opt-in ones
/// (`MATCH_WITHOUT_PARAMETERS`, `KEEP_UNCHANGED`, `caseInsensitivePaths`), where a capture is
/// read without its parameters, may hold an escaped slash, and keeps the case served.
fn binding_configs() -> &'static [Config; 2] {
    thread_local! {
        static C: &'static [Config; 2] = {
            use base64::Engine;
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let point = binding_key().verifying_key().to_sec1_point(false);
            let p = point.as_bytes();
            let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "b1", "alg": "ES256",
                "x": b64(&p[1..33]), "y": b64(&p[33..65])}]});
            let rules: serde_json::Value = serde_json::from_str(BINDING_RULES).unwrap();
            let build = |extra: serde_json::Value| {
                let mut cfg = serde_json::json!({
                    "providers": [{"name": "b", "issuer": BINDING_ISSUER, "audiences": ["api"],
                        "jwks": jwks.to_string(),
                        "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}]}],
                    "rules": rules,
                });
                for (k, v) in extra.as_object().unwrap() {
                    cfg[k] = v.clone();
                }
                match Config::from_json(cfg.to_string().as_bytes()) {
                    Ok(c) => c,
                    Err(e) => panic!("binding config: {e}"),
                }
            };
            Box::leak(Box::new([
                build(serde_json::json!({})),
                build(serde_json::json!({"pathWithParametersAction": "MATCH_WITHOUT_PARAMETERS",
                    "pathWithEscapedSlashesAction": "KEEP_UNCHANGED", "caseInsensitivePaths": true})),
            ]))
        };
    }
    C.with(|c| *c)
}

/// A compact ES256 token of the binding key over `claims`, with its registered claims
/// replaced by valid ones.
fn binding_token(claims: &serde_json::Map<String, serde_json::Value>) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut c = claims.clone();
    for k in ["nbf", "exp", "iat", "iss", "aud"] {
        c.remove(k);
    }
    c.insert("iss".into(), BINDING_ISSUER.into());
    c.insert("aud".into(), "api".into());
    c.insert("iat".into(), (NOW - 10).into());
    c.insert("exp".into(), (NOW + 3600).into());
    let signing_input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","typ":"JWT","kid":"b1"}"#),
        b64(serde_json::Value::Object(c).to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = binding_key().sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&sig.to_vec()))
}

/// The text forms a claim value compares by (strings, integers and booleans as their JSON
/// text, array elements the same way; objects, floats and null none), read independently
/// of the filter's own.
fn claim_texts(v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Bool(b) => out.push(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push(n.to_string()),
        Value::Array(items) => items.iter().filter(|i| !i.is_array()).for_each(|i| claim_texts(i, out)),
        _ => {}
    }
}

/// Claims bound to the request under `c`, for one request (`host` doubling as `x-tenant-id`)
/// and `claims`:
///
/// * Policy: every binding of a rule whose method, path and host matched is reported, and
///   the trace agrees with the value reported: a rule that matched had each binding hold, a
///   rule that failed on a binding had it fail, judged here from the value and the claims
///   (an absent value holds only for `notValuesFrom`, an ambiguous one only in a DENY rule).
///   With or without a subject. The lines showing the values are short and on one line.
/// * The whole decision: the values `bound_values` reads back from the request and the
///   evaluation are those of the facts built here straight from the request.
/// * The decision memo: the request, and variants of it (the header gone or changed, the
///   capture's tenants swapped, an unkeyed header added), each through the memo and through
///   full evaluation, twice: whenever the memo answers, it answers what evaluation decided.
pub fn policy_bindings(
    c: &Config,
    method: &str,
    raw_path: &str,
    host: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
) {
    use claimguard::policy::path::{canonical_host, canonicalize};
    use claimguard::policy::{Peer, ReqValue, RequestFacts, RuleAction, Subject};
    use claimguard::request::decision::{bound_values, evaluate_cached, Decision, HttpRequest};
    use claimguard::token::claims::claim_at;
    let policy = c.policy();
    let Ok(canonical) = canonicalize(raw_path, c.path()) else {
        return;
    };
    let (received, query) = raw_path.split_once('?').unwrap_or((raw_path, ""));
    let header_pairs = [("x-tenant-id", host)];
    let headers: &[(&str, &str)] = if host.is_empty() { &[] } else { &header_pairs };
    let Ok(request_host) = canonical_host("api.example.com") else {
        return;
    };
    let facts = RequestFacts {
        method,
        path: &canonical.matched,
        served_path: canonical.canonical.as_deref().unwrap_or(received),
        query,
        host: &request_host,
        headers,
        peer: &Peer::NONE,
    };
    let subject = Subject {
        provider: 0,
        principal: "https://bindings.fuzz/x",
        claims,
    };
    for subject in [Some(&subject), None] {
        let d = policy.evaluate(&facts, subject);
        let bound = policy.bound_values(&facts, &d.trace);
        for t in &d.trace {
            let rule = &policy.rules()[t.rule];
            let deny = rule.action == RuleAction::Deny;
            for &(_, when, claim, negated, ignore_case) in BINDINGS.iter().filter(|b| b.0 == rule.name) {
                let Some(b) = bound.iter().find(|b| b.rule == t.rule && b.when == when) else {
                    assert!(
                        matches!(t.outcome, Err(m) if m.is_request_half()),
                        "{}: when[{when}] not reported, yet its request half matched: {t:?}",
                        rule.name
                    );
                    continue;
                };
                let mut texts = Vec::new();
                if let Some(s) = subject {
                    let segs: Vec<String> = claim.split('.').map(String::from).collect();
                    if let Some(v) = claim_at(s.claims, &segs) {
                        claim_texts(v, &mut texts);
                    }
                }
                let holds = match &b.value {
                    ReqValue::Absent => negated,
                    ReqValue::Ambiguous => deny,
                    ReqValue::Value(v) => {
                        assert!(!v.is_empty(), "an empty value is absent");
                        let equal = texts
                            .iter()
                            .any(|s| if ignore_case { s.eq_ignore_ascii_case(v) } else { s == v });
                        equal != negated
                    }
                };
                match t.outcome {
                    Ok(()) => assert!(
                        holds,
                        "{} matched, yet when[{when}] ({:?}) does not hold",
                        rule.name, b.value
                    ),
                    Err(claimguard::policy::Mismatch::When(i)) if i == when => {
                        assert!(
                            !holds,
                            "{} failed on when[{when}] ({:?}), which holds",
                            rule.name, b.value
                        )
                    }
                    _ => {}
                }
                let line = policy.bound_line(b).unwrap();
                assert!(
                    line.len() < 1024 && !line.chars().any(char::is_control),
                    "a bound line must be short and one line: {line:?}"
                );
            }
            let _ = policy.describe(t, &bound);
        }
    }

    // The whole decision, through the memo and in full.
    let token = format!("Bearer {}", binding_token(claims));
    let mut variants: Vec<(String, Option<&str>, bool)> = vec![
        (raw_path.to_string(), headers.first().map(|h| h.1), false),
        (raw_path.to_string(), None, false),
        (raw_path.to_string(), Some("acme"), false),
        (raw_path.to_string(), headers.first().map(|h| h.1), true),
        (raw_path.replace("acme", "globex"), headers.first().map(|h| h.1), false),
        (raw_path.replace("globex", "acme"), headers.first().map(|h| h.1), false),
    ];
    variants.dedup();
    let spec = claimguard::request::memo::MemoSpec::new(c);
    assert_eq!(spec.off(), None, "the binding configs are memoized");
    let mut memo = claimguard::request::memo::DecisionMemo::new(64);
    let mut cache = claimguard::request::cache::VerifiedTokenCache::new(16, 0x5eed);
    for _round in 0..2 {
        for (path, tenant, unkeyed) in &variants {
            let mut pairs = vec![
                (":method", method),
                (":path", path.as_str()),
                (":authority", "api.example.com"),
                ("authorization", token.as_str()),
            ];
            if let Some(t) = tenant {
                pairs.push(("x-tenant-id", t));
            }
            if *unkeyed {
                pairs.push(("x-other", "1"));
            }
            let buf = claimguard::base::abi::encode_pairs(&pairs);
            let key = spec.key(&buf, 7);
            let hit = key.as_ref().and_then(|k| memo.get(c, c, k, NOW));
            let req = HttpRequest::from_headers(&pairs);
            let ev = evaluate_cached(c, c, Some(&mut cache), &req, NOW, true);
            let labels = claimguard::request::metrics::labels(c, &ev);
            if let Some(h) = &hit {
                assert!(
                    matches!(ev.decision, Decision::Allow { .. }),
                    "memo allowed, evaluation did not: {pairs:?}"
                );
                assert_eq!(h.labels, labels, "{pairs:?}");
                assert_eq!(h.header_ops, ev.header_ops, "{pairs:?}");
            }
            if let Some(k) = &key {
                memo.offer(c, k, &ev, &labels);
            }
            // The values a line reads back are those of the facts as built from the request.
            if let (Some(pd), Ok(canonical)) = (&ev.policy, canonicalize(path, c.path())) {
                let (received, query) = path.split_once('?').unwrap_or((path, ""));
                let tenant_pair = tenant.map(|t| [("x-tenant-id", t)]);
                let facts = RequestFacts {
                    method,
                    path: &canonical.matched,
                    served_path: canonical.canonical.as_deref().unwrap_or(received),
                    query,
                    host: &request_host,
                    headers: tenant_pair.as_ref().map_or(&[], |p| p.as_slice()),
                    peer: &Peer::NONE,
                };
                assert_eq!(
                    bound_values(c, &req, &ev),
                    policy.bound_values(&facts, &pd.trace),
                    "{pairs:?}"
                );
            }
        }
    }
}

// --- crypto_diff ------------------------------------------------------------------
use claimguard::crypto::alg::Alg;
use claimguard::crypto::{
    rsa::{fast_public_op, fast_public_op_integer},
    PublicKey,
};
use p256::ecdsa::signature::Signer as _;
use rsa::traits::PublicKeyParts;
use rsa::BigUint;
use std::sync::OnceLock;

struct Keys {
    rsa: rsa::RsaPrivateKey,
    rsa_public: PublicKey,
    p256: p256::ecdsa::SigningKey,
    p256_public: PublicKey,
    p384: p384::ecdsa::SigningKey,
    p384_public: PublicKey,
    ed25519: ed25519_compact::KeyPair,
    ed25519_public: PublicKey,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        use base64::Engine;
        use rsa::pkcs8::DecodePrivateKey;
        // PKCS#8 PEM → DER by hand (no `pem` feature needed).
        let pem = include_str!("../../tools/testkeys/keys/rsa-0.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let rsa = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap();
        let rsa_public = PublicKey::rsa(&rsa.n().to_bytes_be(), &rsa.e().to_bytes_be()).unwrap();
        let p256 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = p256.verifying_key().to_sec1_point(false);
        let p256_public = PublicKey::p256(point.as_bytes()).unwrap();
        let p384 = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let p384_public = PublicKey::p384(p384.verifying_key().to_sec1_point(false).as_bytes()).unwrap();
        let ed25519 = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]));
        let ed25519_public = PublicKey::ed25519(ed25519.pk.as_ref()).unwrap();
        Keys {
            p384,
            p384_public,
            ed25519,
            ed25519_public,
            rsa,
            rsa_public,
            p256,
            p256_public,
        }
    })
}

fn mutate(sig: &mut Vec<u8>, ops: &[u8], order: Option<&[u8]>) {
    for op in ops.chunks(3) {
        let (kind, a, b) = (op[0], *op.get(1).unwrap_or(&0) as usize, *op.get(2).unwrap_or(&0));
        match kind % 8 {
            0 if !sig.is_empty() => {
                let i = a % sig.len();
                sig[i] ^= 1 << (b % 8)
            }
            1 => sig.truncate(sig.len().saturating_sub(1 + a % 4)),
            2 => sig.push(b),
            3 if !sig.is_empty() => sig.insert(0, 0),
            4 if sig.len() == 64 || sig.len() == 96 => {
                // r and s swapped (R and s, for Ed25519).
                let (r, s) = sig.split_at(sig.len() / 2);
                *sig = [s, r].concat();
            }
            5 if order.is_some_and(|n| sig.len() == 2 * n.len()) => {
                // The high-S twin (n - s) of an ECDSA signature.
                if let Some(n) = order {
                    let half = n.len();
                    let s = BigUint::from_bytes_be(&sig[half..]);
                    let n = BigUint::from_bytes_be(n);
                    if s < n {
                        let t = (&n - &s).to_bytes_be();
                        let mut padded = vec![0u8; half - t.len().min(half)];
                        padded.extend_from_slice(&t);
                        sig.splice(half.., padded);
                    }
                }
            }
            7 if sig.len() == 64 && order.is_none() => {
                // Ed25519: s + L (the same equation with a non-canonical s), or R replaced by
                // a point of small order.
                if b % 2 == 0 {
                    let s = BigUint::from_bytes_le(&sig[32..]) + BigUint::from_bytes_le(&ED25519_L);
                    let mut t = s.to_bytes_le();
                    if t.len() <= 32 {
                        t.resize(32, 0);
                        sig.splice(32.., t);
                    }
                } else {
                    let small = SMALL_ORDER_ENCODINGS[a % SMALL_ORDER_ENCODINGS.len()];
                    sig.splice(..32, small);
                }
            }
            6 if !sig.is_empty() => {
                let i = a % sig.len();
                for x in &mut sig[i..] {
                    *x = b;
                }
            }
            _ => {}
        }
    }
}

/// The order `L` of Ed25519's prime-order subgroup, little-endian.
const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Encodings of Ed25519 points of small order: the identity, `(0, -1)` and `y = 0`.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 3] = [
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
    [0; 32],
];

/// The order of the P-384 group.
const P384_N: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0,
    0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// The order of the P-256 group.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Differential: claimguard's own RSA, P-256, P-384 and Ed25519 arithmetic against the crate
/// implementations they are held to (`rsa`'s general bignum, `p256`'s and `p384`'s `ecdsa`,
/// `ed25519-compact`). On every input the two must give the same answer:
///
/// * RSA public operation: an arbitrary odd modulus of 2048, 3072 or 4096 bits, exponent and
///   signature, `s^e mod n` by the fast Montgomery path and by `BigUint::modpow`;
/// * RSA PKCS#1 v1.5 and P-256 ECDSA verification: a signature made with a fixed key over the
///   input's message, then mutated as the input says (bit flips, truncation, extension, the
///   high-S twin, `r`/`s` swapped, zeroed or replaced), through `verify` and
///   `verify_reference`.
///
/// Nothing here is secret (public keys, signatures, messages): no constant-time concern.
pub fn crypto_diff(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            // Public operation on arbitrary operands.
            let len = [256usize, 384, 512][(selector as usize / 3) % 3];
            if rest.len() < len + 3 {
                return;
            }
            let mut n = rest[..len].to_vec();
            n[0] |= 0x80; // exactly `len` bytes
            n[len - 1] |= 1; // odd
            let e_len = 1 + rest[len] as usize % 4;
            let e = rest.get(len + 1..len + 1 + e_len).unwrap_or(&[1, 0, 1]).to_vec();
            let s = rest.get(len + 1 + e_len..).unwrap_or_default();
            let s = &s[..s.len().min(len)];
            let (nb, eb, sb) = (
                BigUint::from_bytes_be(&n),
                BigUint::from_bytes_be(&e),
                BigUint::from_bytes_be(s),
            );
            let expected = if sb >= nb || eb == BigUint::from(0u8) {
                None
            } else {
                let r = sb.modpow(&eb, &nb).to_bytes_be();
                let mut padded = vec![0u8; len - r.len()];
                padded.extend_from_slice(&r);
                Some(padded)
            };
            let got = fast_public_op(&n, &e, s);
            if let (Some(want), Some(got)) = (&expected, &got) {
                assert_eq!(want, got, "s^e mod n differs");
            }
            // The integer form of the fast path (where the runtime does not fuse).
            assert_eq!(fast_public_op_integer(&n, &e, s), got, "the integer form differs");
            if eb != BigUint::from(0u8) {
                assert_eq!(
                    expected.is_some(),
                    got.is_some(),
                    "fast path refused operands the bignum took, or the reverse"
                );
            }
        }
        1 => {
            let k = keys();
            let split = rest.first().map_or(0, |b| *b as usize) % (rest.len().max(1));
            let (msg, ops) = rest.split_at(split.min(rest.len()));
            let alg = [Alg::RS256, Alg::RS384, Alg::RS512][selector as usize / 3 % 3];
            let mut sig = {
                use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
                match alg {
                    Alg::RS384 => k.rsa.sign(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg)),
                    Alg::RS512 => k.rsa.sign(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg)),
                    _ => k.rsa.sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg)),
                }
                .unwrap()
            };
            mutate(&mut sig, ops, None);
            assert_eq!(
                k.rsa_public.verify(alg, msg, &sig),
                k.rsa_public.verify_reference(alg, msg, &sig),
                "{alg}: fast path and rsa crate disagree"
            );
        }
        _ => {
            let k = keys();
            let split = rest.first().map_or(0, |b| *b as usize) % (rest.len().max(1));
            let (msg, ops) = rest.split_at(split.min(rest.len()));
            let (alg, public, mut sig, order): (Alg, &PublicKey, Vec<u8>, Option<&[u8]>) = match selector / 3 % 3 {
                0 => {
                    let sig: p256::ecdsa::Signature = k.p256.sign(msg);
                    (Alg::ES256, &k.p256_public, sig.to_vec(), Some(&P256_N))
                }
                1 => {
                    let sig: p384::ecdsa::Signature = k.p384.sign(msg);
                    (Alg::ES384, &k.p384_public, sig.to_vec(), Some(&P384_N))
                }
                _ => (
                    Alg::EdDSA,
                    &k.ed25519_public,
                    k.ed25519.sk.sign(msg, None).to_vec(),
                    None,
                ),
            };
            mutate(&mut sig, ops, order);
            assert_eq!(
                public.verify(alg, msg, &sig),
                public.verify_reference(alg, msg, &sig),
                "{alg}: fast path and crate disagree"
            );
        }
    }
}
