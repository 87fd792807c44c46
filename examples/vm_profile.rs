//! Where a request's time goes, stage by stage, measured inside V8 (`make vm-profile` builds
//! this for wasm32-wasip1 and runs it under Node's WASI, the same V8 engine Envoy embeds) or
//! natively (`cargo run --release --example vm_profile < inputs.json`).
//!
//! Input on stdin (written by `claimguard-bench --profile-inputs`): `{"config": PLUGIN_CONFIG,
//! "now": EPOCH, "rs256": [TOKEN...], "es256": [TOKEN...], "es384", "eddsa", "ps256": …}`, every token valid and distinct.
//! Each stage runs over every token (so nothing is served from a cache it should not be) and
//! prints the mean µs per token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use claimguard::crypto::PublicKey;
use claimguard::request::cache::{slot_hash, token_fingerprint, VerifiedTokenCache};
use claimguard::request::decision::{evaluate_cached, Decision, HttpRequest};
use claimguard::token;
use claimguard::verify::{check_claims, verify_signature, verify_signed};
use serde_json::Value;
use std::io::Read;
use std::time::Instant;

/// Counts allocations, to show how many a cached request makes.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    if let Err(e) = run() {
        eprintln!("vm_profile: {e}");
        std::process::exit(1);
    }
}

/// Mean µs per item of `f` over `items`, repeated until at least `min_ms` have passed.
fn time<T>(items: &[T], min_ms: u128, mut f: impl FnMut(&T)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while n == 0 || start.elapsed().as_millis() < min_ms {
        for x in items {
            f(x);
            n += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn run() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("stdin: {e}"))?;
    let v: Value = serde_json::from_str(&input).map_err(|e| format!("input: {e}"))?;
    let config = Config::from_json(v["config"].to_string().as_bytes()).map_err(|e| e.to_string())?;
    let now = v["now"].as_u64().ok_or("no now")?;
    let provider = config.providers().first().ok_or("no provider")?;
    let keys = provider.keys();
    println!("stage                                        µs/token");
    for alg in ["rs256", "es256", "es384", "eddsa", "ps256"] {
        let tokens: Vec<String> = v[alg]
            .as_array()
            .ok_or("no tokens")?
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if tokens.is_empty() {
            return Err(format!("no {alg} tokens"));
        }
        let parsed: Vec<token::Jwt> = tokens
            .iter()
            .map(|t| token::parse(t, 8192).map_err(|e| format!("{e:?}")))
            .collect::<Result<_, _>>()?;
        let row = |what: &str, us: f64| println!("{alg} {what:<40} {us:>9.1}");
        // A row timing one signature check over every token; each must verify.
        let verify_row =
            |what: &str, ok: &dyn Fn(&token::Jwt) -> bool| row(what, time(&parsed, 1000, |j| assert!(ok(j), "{what}")));
        row(
            "slot hash of the token (cache key)",
            time(&tokens, 300, |t| {
                std::hint::black_box(slot_hash(7, t.as_bytes()));
            }),
        );
        row(
            "SHA-256 fingerprint (decision lines only)",
            time(&tokens, 300, |t| {
                std::hint::black_box(token_fingerprint(t));
            }),
        );
        row(
            "parse: split, base64url, JSON",
            time(&tokens, 300, |t| drop(token::parse(t, 8192))),
        );
        row(
            "SHA-256 of the signing input",
            time(&parsed, 300, |j| drop(rsa::sha2::Sha256::digest_bytes(j.signing_input))),
        );
        verify_row("verify_signature (hash + public-key op)", &|j| {
            verify_signature(keys, j).is_ok()
        });
        if alg == "rs256" {
            // The general-purpose bignum path (the `rsa` crate) on the same key, for comparison.
            let jwk = provider_jwk(&v, "RSA")?;
            let fast = PublicKey::rsa(&jwk_bytes(&jwk, "n")?, &jwk_bytes(&jwk, "e")?).map_err(|e| format!("{e:?}"))?;
            let PublicKey::Rsa(k) = &fast else {
                return Err("an RSA JWK gives an RSA key".into());
            };
            if !k.has_fast_path() {
                return Err("a 2048-bit key takes the fixed-size path".into());
            }
            let slow = PublicKey::Rsa(k.without_fast_path());
            verify_row("  RSA verify, fixed-size Montgomery", &|j| {
                fast.verify(Alg::RS256, j.signing_input.as_bytes(), &j.signature)
            });
            verify_row("  RSA verify, rsa crate (general bignum)", &|j| {
                slow.verify(Alg::RS256, j.signing_input.as_bytes(), &j.signature)
            });
        }
        if alg != "rs256" && alg != "es256" {
            // The key's own path (`verify`) against the crate it is held to
            // (`verify_reference`).
            let jwa = parsed[0].alg;
            let (kind, material) = match jwa {
                Alg::ES384 => {
                    let jwk = provider_jwk_where(&v, |k| k["crv"] == "P-384")?;
                    (
                        "p384",
                        [vec![4u8], jwk_bytes(&jwk, "x")?, jwk_bytes(&jwk, "y")?].concat(),
                    )
                }
                Alg::EdDSA => ("ed25519", jwk_bytes(&provider_jwk(&v, "OKP")?, "x")?),
                _ => ("rsa", Vec::new()),
            };
            let rsa_jwk = provider_jwk_where(&v, |k| k["alg"] == jwa.name());
            let make_key = || -> Result<PublicKey, String> {
                match kind {
                    "p384" => PublicKey::p384(&material),
                    "ed25519" => PublicKey::ed25519(&material),
                    _ => {
                        let jwk = rsa_jwk.clone()?;
                        PublicKey::rsa(&jwk_bytes(&jwk, "n")?, &jwk_bytes(&jwk, "e")?)
                    }
                }
                .map_err(|e| format!("{e:?}"))
            };
            let key = make_key()?;
            verify_row("  verify (claimguard's path)", &|j| {
                key.verify(jwa, j.signing_input.as_bytes(), &j.signature)
            });
            verify_row("  verify_reference (the crate)", &|j| {
                key.verify_reference(jwa, j.signing_input.as_bytes(), &j.signature)
            });
            if jwa != Alg::PS256 {
                // A key's first verification builds its table: a new key per iteration.
                let first = &parsed[..1];
                row(
                    "  first verify with a new key (its table)",
                    time(first, 300, |j| {
                        let fresh = make_key().expect("the same key again");
                        assert!(fresh.verify(jwa, j.signing_input.as_bytes(), &j.signature));
                    }),
                );
            }
        }
        if alg == "es256" {
            // The same key through the `ecdsa` crate's own verify (a wNAF ladder), and what
            // building the key's fixed-base table costs (once per key and VM).
            let jwk = provider_jwk(&v, "EC")?;
            let sec1 = [vec![4u8], jwk_bytes(&jwk, "x")?, jwk_bytes(&jwk, "y")?].concat();
            let fast = PublicKey::p256(&sec1).map_err(|e| format!("{e:?}"))?;
            let PublicKey::P256(key) = &fast else {
                return Err("an EC P-256 key".into());
            };
            let point = *key.point();
            let vk = p256::ecdsa::VerifyingKey::from_affine(point).map_err(|e| e.to_string())?;
            verify_row("  ECDSA verify, fixed-base tables", &|j| {
                fast.verify(Alg::ES256, j.signing_input.as_bytes(), &j.signature)
            });
            verify_row("  ECDSA verify, ecdsa crate (wNAF ladder)", &|j| {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(&j.signature)
                    .is_ok_and(|sig| vk.verify(j.signing_input.as_bytes(), &sig).is_ok())
            });
            row(
                "  P-256 key table (once per key)",
                time(&[()], 300, |_| {
                    drop(std::hint::black_box(claimguard::crypto::p256::Table::new(&point)))
                }),
            );
        }
        verify_row("verify_signed (types, alg, signature)", &|j| {
            verify_signed(provider, keys, j).is_ok()
        });
        row(
            "check_claims (iss, aud, exp, nbf, iat)",
            time(
                &parsed,
                300,
                |j| assert!(check_claims(provider, &j.claims, now).is_ok()),
            ),
        );
        let headers: Vec<Vec<(String, String)>> = tokens
            .iter()
            .map(|t| {
                vec![
                    (":method".to_string(), "GET".to_string()),
                    (":path".to_string(), "/orders".to_string()),
                    (":authority".to_string(), "bench".to_string()),
                    ("authorization".to_string(), format!("Bearer {t}")),
                ]
            })
            .collect();
        let allowed = |ev: &claimguard::request::decision::Evaluation| matches!(ev.decision, Decision::Allow { .. });
        row(
            "whole request, cold (no cache)",
            time(&headers, 1000, |h| {
                let h_refs = claimguard::token::header_refs(h);
                let req = HttpRequest::from_headers(&h_refs);
                assert!(allowed(&evaluate_cached(&config, &config, None, &req, now, true)));
            }),
        );
        let mut cache = VerifiedTokenCache::new(tokens.len() * 2, 7);
        for h in &headers {
            let h_refs = claimguard::token::header_refs(h);
            let req = HttpRequest::from_headers(&h_refs);
            evaluate_cached(&config, &config, Some(&mut cache), &req, now, true);
        }
        row(
            "whole request, warm (cache hit)",
            time(&headers, 300, |h| {
                let h_refs = claimguard::token::header_refs(h);
                let req = HttpRequest::from_headers(&h_refs);
                let ev = evaluate_cached(&config, &config, Some(&mut cache), &req, now, true);
                assert!(allowed(&ev) && ev.token_cache == Some(true));
            }),
        );
        let before = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
        for h in &headers {
            let h_refs = claimguard::token::header_refs(h);
            let req = HttpRequest::from_headers(&h_refs);
            drop(evaluate_cached(&config, &config, Some(&mut cache), &req, now, true));
        }
        let per = (ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / headers.len() as f64;
        println!("{alg} {:<40} {per:>9.1}", "allocations per warm request");
        let before = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
        for h in &headers {
            let h_refs = claimguard::token::header_refs(h);
            let req = HttpRequest::from_headers(&h_refs);
            drop(evaluate_cached(&config, &config, None, &req, now, true));
        }
        let per = (ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / headers.len() as f64;
        println!("{alg} {:<40} {per:>9.1}", "allocations per cold request");
    }
    Ok(())
}

/// The first JWK of type `kty` in the config's inline JWKS.
/// A base64url member of a JWK, decoded.
fn jwk_bytes(jwk: &Value, member: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(jwk[member].as_str().unwrap_or(""))
        .map_err(|e| e.to_string())
}

fn provider_jwk(v: &Value, kty: &str) -> Result<Value, String> {
    provider_jwk_where(v, |k| k["kty"] == kty).map_err(|_| format!("no {kty} key"))
}

/// The provider's first JWK for which `pick` holds.
fn provider_jwk_where(v: &Value, pick: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let jwks: Value = serde_json::from_str(v["config"]["providers"][0]["jwks"].as_str().ok_or("no jwks")?)
        .map_err(|e| e.to_string())?;
    jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| pick(k)).cloned())
        .ok_or_else(|| "no such key".to_string())
}

trait DigestBytes {
    fn digest_bytes(s: &str) -> Vec<u8>;
}

impl DigestBytes for rsa::sha2::Sha256 {
    fn digest_bytes(s: &str) -> Vec<u8> {
        use rsa::sha2::Digest;
        rsa::sha2::Sha256::digest(s.as_bytes()).to_vec()
    }
}
