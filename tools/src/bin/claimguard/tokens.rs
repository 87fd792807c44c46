//! `keygen` and `mint`: test tooling for development and the demo. Keys are generated in
//! memory with a pure-Rust library and tokens carry whatever claims are asked for; neither is
//! meant to be used by a real identity provider. Both say so on standard error.

use crate::Verdict;
use claimguard::config::model::parse_duration_ms;
use claimguard::crypto::alg::Alg;
use claimguard_tools::keys::TestKey;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const TEST_TOOLING: &str =
    "claimguard: TEST TOOLING, for development and demos only; not a production key or token service";

pub const MINT_AFTER_HELP: &str = "\
Example (TEST TOOLING):
  claimguard keygen --alg ES256 --kid dev --out keys/
  claimguard mint --key keys/dev.pem --kid dev --iss https://idp.example --aud orders \\
      --sub alice --claim scope='orders:read orders:write' --claim 'roles=[\"admin\"]' --ttl 15m

A Transaction Token (draft-ietf-oauth-transaction-tokens-10) for the txnToken preset, as a
development stand-in for a Transaction Token Service (TEST TOOLING):
  claimguard mint --txn-token --key keys/tts.pem --kid tts --iss https://tts.trust-domain.example \\
      --aud trust-domain.example --sub alice --claim scope=trade.stocks \\
      --claim req_wl=apigateway.trust-domain.example \\
      --claim 'tctx={\"action\":\"BUY\",\"ticker\":\"MSFT\"}' --claim 'rctx={\"req_ip\":\"69.151.72.123\"}'
It is typed txntoken+jwt, gets a fresh txn (a UUID) unless --claim txn=... gives one, and
lives 5m unless --ttl says otherwise; exactly one --aud (the trust domain), --sub, scope
and req_wl are required, as the draft requires them.

--claim NAME=VALUE takes VALUE as JSON when it parses as JSON (numbers, booleans, arrays,
objects, \"quoted strings\"), else as a plain string. --ttl takes 90, 30s, 15m, 1h, 24h.

Exit status: 0 token printed, 1 error (unreadable key, ...), 2 usage error.";

pub fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn asymmetric_alg(s: &str) -> Result<Alg, String> {
    match Alg::from_name(s) {
        Some(a) if a.is_hmac() => Err(format!(
            "{s} is HMAC: keygen and mint use asymmetric keys (HMAC secrets are configured with hmacSecret)"
        )),
        Some(a) => Ok(a),
        None => Err(format!(
            "{s:?} is not one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
        )),
    }
}

fn ttl_seconds(s: &str) -> Result<u64, String> {
    let ms = parse_duration_ms(s).map_err(|e| format!("{e} (e.g. 30s, 15m, 1h)"))?;
    if ms % 1000 != 0 {
        return Err(format!("{s:?}: token lifetimes are whole seconds"));
    }
    Ok(ms / 1000)
}

/// `NAME=VALUE`, VALUE as JSON when it is JSON, else a string.
fn claim_arg(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} must be NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has an empty claim name"));
    }
    let v = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
    Ok((name.to_string(), v))
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Signature algorithm the key is for.
    #[arg(long, default_value = "ES256", value_parser = asymmetric_alg)]
    alg: Alg,
    /// Key id (`kid`) in the JWKS and in tokens minted with --kid.
    #[arg(long, default_value = "dev")]
    kid: String,
    /// Write DIR/KID.pem (private) and DIR/jwks.json (public) instead of printing them.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn keygen(a: &KeygenArgs) -> Result<Verdict, String> {
    eprintln!("{TEST_TOOLING}");
    let key = TestKey::fresh(a.alg, &a.kid);
    let jwks = serde_json::to_string_pretty(&key.jwks()).map_err(|e| e.to_string())?;
    match &a.out {
        Some(out) => {
            std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
            write(&out.join(format!("{}.pem", a.kid)), &key.to_pem())?;
            write(&out.join("jwks.json"), &jwks)?;
            println!(
                "wrote {0}/{1}.pem (private) and {0}/jwks.json (public)",
                out.display(),
                a.kid
            );
        }
        None => {
            // The private key first (PEM), then the public JWKS for the plugin config.
            print!("{}", key.to_pem());
            println!("{jwks}");
        }
    }
    Ok(Verdict::Ok)
}

#[derive(clap::Args)]
pub struct MintArgs {
    /// Private key (PEM) from `claimguard keygen`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Algorithm; by default the one the key is for (ES256, ES384, EdDSA, or RS256 for RSA).
    #[arg(long, value_parser = asymmetric_alg)]
    alg: Option<Alg>,
    /// `kid` header (no kid when omitted: verifiers then try every fitting key).
    #[arg(long)]
    kid: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    iss: String,
    /// `sub` claim.
    #[arg(long)]
    sub: Option<String>,
    /// `aud` claim; repeat for several (then an array).
    #[arg(long)]
    aud: Vec<String>,
    /// Extra claim NAME=VALUE (VALUE as JSON when it is JSON); repeatable, may override others.
    #[arg(long, value_name = "NAME=VALUE", value_parser = claim_arg)]
    claim: Vec<(String, Value)>,
    /// Lifetime: exp = iat + TTL (e.g. 90, 30s, 15m, 1h); 1h, or 5m with --txn-token.
    #[arg(long, value_parser = ttl_seconds)]
    ttl: Option<u64>,
    /// Issue time (`iat`), seconds since the epoch; now by default.
    #[arg(long, value_name = "EPOCH")]
    iat: Option<u64>,
    /// `nbf`: not before iat + this duration (e.g. 0s, 5m).
    #[arg(long, value_parser = ttl_seconds, value_name = "DURATION")]
    nbf_in: Option<u64>,
    /// A Transaction Token (draft-ietf-oauth-transaction-tokens-10): typ txntoken+jwt, a
    /// fresh txn, and the draft's required claims checked (see below).
    #[arg(long)]
    txn_token: bool,
}

/// What a Transaction Token must carry besides iat and exp (the filter's `txnToken` preset
/// requires the same), and how to give each to `mint`.
const TXN_TOKEN_NEEDS: &[(&str, &str)] = &[
    ("aud", "--aud TRUST_DOMAIN"),
    ("sub", "--sub SUBJECT"),
    ("scope", "--claim scope=..."),
    ("req_wl", "--claim req_wl=REQUESTING_WORKLOAD"),
];

pub fn mint(a: &MintArgs) -> Result<Verdict, String> {
    let pem = std::fs::read_to_string(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let kid = a.kid.as_deref().unwrap_or("");
    let key = match a.alg {
        Some(alg) => {
            TestKey::from_pem(alg, kid, &pem).map_err(|e| format!("{}: not a {alg} key: {e}", a.key.display()))?
        }
        None => [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::RS256]
            .iter()
            .find_map(|alg| TestKey::from_pem(*alg, kid, &pem).ok())
            .ok_or_else(|| format!("{}: not a private key written by claimguard keygen", a.key.display()))?,
    };
    let iat = a.iat.unwrap_or_else(crate::now);
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(a.iss));
    if let Some(sub) = &a.sub {
        claims.insert("sub".into(), json!(sub));
    }
    match a.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), json!(one));
        }
        many => {
            claims.insert("aud".into(), json!(many));
        }
    }
    let ttl = a.ttl.unwrap_or(if a.txn_token { 300 } else { 3600 });
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(iat.saturating_add(ttl)));
    if a.txn_token {
        claims.insert("txn".into(), json!(claimguard_tools::keys::random_uuid()));
    }
    if let Some(n) = a.nbf_in {
        claims.insert("nbf".into(), json!(iat.saturating_add(n)));
    }
    for (name, value) in &a.claim {
        claims.insert(name.clone(), value.clone());
    }
    let token = if a.txn_token {
        if a.aud.len() > 1 {
            return Err("a Transaction Token has one audience, the trust domain: give --aud once".into());
        }
        let missing: Vec<&str> = TXN_TOKEN_NEEDS
            .iter()
            .filter(|(claim, _)| claims.get(*claim).is_none_or(Value::is_null))
            .map(|(_, how)| *how)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "a Transaction Token needs {} (draft-ietf-oauth-transaction-tokens-10)",
                missing.join(", ")
            ));
        }
        key.sign_typed("txntoken+jwt", &Value::Object(claims))
    } else {
        key.sign(&Value::Object(claims))
    };
    eprintln!("{TEST_TOOLING}");
    println!("{token}");
    Ok(Verdict::Ok)
}
