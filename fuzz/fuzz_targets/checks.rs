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
    let canonical_host = claimguard::policy::path::canonical_host(host);
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
}

// --- crypto_diff ------------------------------------------------------------------
use claimguard::crypto::alg::Alg;
use claimguard::crypto::{rsa::fast_public_op, PublicKey};
use p256::ecdsa::signature::Signer as _;
use rsa::traits::PublicKeyParts;
use rsa::BigUint;
use std::sync::OnceLock;

struct Keys {
    rsa: rsa::RsaPrivateKey,
    rsa_public: PublicKey,
    p256: p256::ecdsa::SigningKey,
    p256_public: PublicKey,
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
        Keys {
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
            4 if sig.len() == 64 => {
                // r and s swapped.
                let (r, s) = sig.split_at(32);
                *sig = [s, r].concat();
            }
            5 if sig.len() == 64 => {
                // The high-S twin (n - s), or s + n for RSA-sized values handled by kind 6.
                if let Some(n) = order {
                    let s = BigUint::from_bytes_be(&sig[32..]);
                    let n = BigUint::from_bytes_be(n);
                    if s < n {
                        let t = (&n - &s).to_bytes_be();
                        let mut padded = vec![0u8; 32 - t.len().min(32)];
                        padded.extend_from_slice(&t);
                        sig.splice(32.., padded);
                    }
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

/// The order of the P-256 group.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Differential: claimguard's own RSA and P-256 arithmetic against the crate implementations
/// they are held to (`rsa`'s general bignum, `p256`'s `ecdsa`). On every input the two must
/// give the same answer:
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
            let sig: p256::ecdsa::Signature = k.p256.sign(msg);
            let mut sig = sig.to_vec();
            mutate(&mut sig, ops, Some(&P256_N));
            assert_eq!(
                k.p256_public.verify(Alg::ES256, msg, &sig),
                k.p256_public.verify_reference(Alg::ES256, msg, &sig),
                "ES256: fast path and ecdsa disagree"
            );
        }
    }
}
