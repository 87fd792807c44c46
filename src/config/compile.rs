//! The plugin configuration: JSON shaped like Istio's `RequestAuthentication.jwtRules`
//! (`issuer`, `audiences`, `jwks`, `fromHeaders`, `fromParams`, `fromCookies`), parsed with
//! unknown fields refused, then validated and compiled into a [`Config`] the request path can
//! use without further checks. Every error names the field path, e.g.
//! `providers[0].jwks.keys[1].n: RSA modulus is 1024 bits; at least 2048 are required`.

use crate::config::error::{err, not_one_of, serde_message, ConfigError};
use crate::config::model::*;
use crate::crypto::alg::Alg;
use crate::keys::alb::AlbProvider;
use crate::keys::jwk::{parse_jwks, KeySet, VerificationKey, MIN_HMAC_SECRET_BYTES};
use crate::keys::remote::{HttpUrl, RemoteJwks};
use crate::policy::identity::{compile_claim_header, managed_header_name, ClaimHeader};
use crate::policy::path::PathOptions;
use crate::policy::{compile_rules, Policy, ProviderInfo};
use crate::token::claims::dotted;
use crate::token::Location;
use crate::verify::provider::Provider;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 600;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
pub const DEFAULT_REALM: &str = "claimguard";

/// The `txnToken` preset follows draft-ietf-oauth-transaction-tokens-10 (July 2026; -08 of
/// March 2026 requires the same claims). Besides `iat` and `exp` (which `maxLifetime` needs)
/// and `aud` (the trust domain), a Txn-Token must carry these.
pub const TXN_TOKEN_CLAIMS: &[&str] = &["txn", "sub", "scope", "req_wl"];
/// The `txnToken` preset's `maxLifetime` unless the provider gives one. The draft expects
/// Txn-Tokens to live "on the order of minutes or less" and its example lives 6 minutes:
/// 10 minutes accepts that with room for a slow call chain, and bounds what a replayed
/// Txn-Token is good for to a sixth of a typical one-hour access token.
pub const TXN_TOKEN_MAX_LIFETIME: &str = "10m";

/// The compiled configuration the request path runs on.
///
/// Only obtainable through validation: [`Config::from_json`] parses and compiles the plugin
/// configuration, and its fields are private to the crate, so no caller can assemble one that
/// skipped a check. Read it through the accessors.
///
/// ```
/// use claimguard::config::Config;
/// let c = Config::from_json(
///     br#"{"providers": [{"issuer": "https://idp.example", "jwksUri": "https://idp.example/keys"}]}"#,
/// )?;
/// assert_eq!(c.realm(), "claimguard");
/// # Ok::<(), claimguard::config::ConfigError>(())
/// ```
///
/// Not even a validated one can be altered into another: with public fields this would
/// compile, and the [`Policy`] and [`Provider`]s inside cannot be built outside the crate either.
///
/// ```compile_fail,E0451
/// use claimguard::config::Config;
/// let c = Config::from_json(
///     br#"{"providers": [{"issuer": "https://idp.example", "jwksUri": "https://idp.example/keys"}]}"#,
/// )?;
/// let forged = Config { expose_rule_names: true, ..c };
/// # Ok::<(), claimguard::config::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Config {
    pub(crate) providers: Vec<Provider>,
    pub(crate) realm: String,
    pub(crate) policy: Policy,
    /// How request paths are canonicalised (`pathWith*Action`, `caseInsensitivePaths`).
    pub(crate) path: PathOptions,
    /// `malformedTokenHeaderAction`: what happens to a token header that is present but not
    /// in the configured form (`Bearer<TAB>…`, no scheme, `Basic …`).
    pub(crate) malformed_token_header: MalformedTokenHeader,
    /// Let CORS preflights (OPTIONS + Origin + Access-Control-Request-Method) through
    /// without a token or policy: browsers never send credentials on them.
    pub(crate) allow_cors_preflight: bool,
    /// Name the deciding rule in 403 bodies (off by default: denials must not leak policy).
    pub(crate) expose_rule_names: bool,
    /// Every header claimguard can set, lower-case: removed from every incoming request.
    pub(crate) managed_headers: Vec<String>,
    /// The managed and token header names with a `-` or `_` (lower-case): a request header
    /// that is one of them spelled with the other (`x_user_email`, `x_access_token`) is removed
    /// from every request too, since CGI-style upstreams read it as the same header
    /// ([`crate::base::abi::same_header_loosely`]).
    pub(crate) underscore_watched: Vec<String>,
    /// Every distinct place any provider reads a token from, in config order.
    pub(crate) token_locations: Vec<crate::token::Location>,
    /// For each of `token_locations`, the providers (indices, in order) reading it: what a
    /// request compares instead of the locations themselves.
    pub(crate) location_readers: Vec<Vec<usize>>,
    pub(crate) claim_header_max_bytes: usize,
    /// `decisionHeader`: add `x-claimguard-reason` to local replies (debugging only).
    pub(crate) decision_header: bool,
    /// `jwtCacheSize` (Envoy's `jwt_cache_config.jwt_cache_size`): verified tokens each VM
    /// remembers; 0 turns the cache off.
    pub(crate) jwt_cache_size: usize,
    /// `jwtCacheBytes`: what the verified tokens each VM remembers may weigh in all (key,
    /// claims, payload and overhead, see [`crate::request::cache`]). The rejected-token cache gets an
    /// eighth of it and the decision memo half ([`crate::request::memo::memo_bytes`]).
    pub(crate) jwt_cache_bytes: usize,
    /// `filterState`: publish `claimguard.provider`, `.issuer`, `.principal`, `.subject` and
    /// `.rule` as filter state on allowed requests (off by default, like `jwt_authn`'s
    /// `payload_in_metadata`: the five entries cost the proxy about 7 µs per request, `examples/ab.rs`).
    pub(crate) filter_state: bool,
    /// Things worth a log line at configure time that are not errors.
    pub(crate) warnings: Vec<String>,
}

impl Config {
    /// Whether evaluation needs the calling workload's identity or address: a rule with
    /// peer conditions, or a provider with `trustedPrincipals`.
    pub fn uses_peer(&self) -> bool {
        self.policy.uses_peer() || self.providers.iter().any(|p| !p.trusted_principals.is_empty())
    }

    /// The providers, in config order (what provider indices refer to).
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// `realm`: named in `WWW-Authenticate` challenges.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The rules and the mode they run in.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How request paths are canonicalised (`pathWith*Action`, `caseInsensitivePaths`).
    pub fn path(&self) -> &PathOptions {
        &self.path
    }

    /// `exposeRuleNames`: whether 403 bodies name the deciding rule.
    pub fn expose_rule_names(&self) -> bool {
        self.expose_rule_names
    }

    /// `decisionHeader`: whether local replies carry `x-claimguard-reason`.
    pub fn decision_header(&self) -> bool {
        self.decision_header
    }

    /// Every header claimguard can set, lower-case: removed from every incoming request.
    pub fn managed_headers(&self) -> &[String] {
        &self.managed_headers
    }

    /// `jwtCacheSize`: verified tokens each VM remembers (0: the caches are off).
    pub fn jwt_cache_size(&self) -> usize {
        self.jwt_cache_size
    }

    /// `jwtCacheBytes`: what the verified tokens each VM remembers may weigh in all.
    pub fn jwt_cache_bytes(&self) -> usize {
        self.jwt_cache_bytes
    }

    /// Things worth a log line at configure time that are not errors.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Parses and validates plugin configuration bytes: the only way to obtain a [`Config`].
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(err(
                "",
                "plugin configuration is empty; at least one provider is required",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(if path == "." { String::new() } else { path }, serde_message(e.inner()))
        })?;
        compile(raw)
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let realm = match raw.realm {
        None => DEFAULT_REALM.to_string(),
        Some(r) => {
            if r.is_empty() || r.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                return Err(err(
                    "realm",
                    "must be non-empty and contain no quotes, backslashes or control characters",
                ));
            }
            r
        }
    };
    if raw.providers.is_empty() {
        return Err(err("providers", "at least one provider is required"));
    }
    let mut warnings = Vec::new();
    let mut providers: Vec<Provider> = Vec::new();
    for (i, rp) in raw.providers.into_iter().enumerate() {
        let p = compile_provider(&format!("providers[{i}]"), rp, &mut warnings)?;
        if providers.iter().any(|q| q.name == p.name) {
            return Err(err(
                format!("providers[{i}].name"),
                format!("{:?} is used by another provider", p.name),
            ));
        }
        providers.push(p);
    }
    // An ALB token is not a JWT any other provider could read: its location is its own.
    for (i, p) in providers.iter().enumerate().filter(|(_, p)| p.alb.is_some()) {
        for l in &p.locations {
            if let Some(q) = providers
                .iter()
                .enumerate()
                .find(|(j, q)| *j != i && q.locations.contains(l))
            {
                return Err(err(
                    format!("providers[{i}]"),
                    format!(
                        "reads ALB tokens from {}, which provider {:?} also reads",
                        l.describe(),
                        q.1.name
                    ),
                ));
            }
        }
    }
    let mode = raw.mode.unwrap_or(Mode::Enforce);
    let escaped_slashes = raw
        .path_with_escaped_slashes_action
        .unwrap_or(EscapedSlashes::RejectRequest);
    let backslashes = raw.path_with_backslash_action.unwrap_or(Backslashes::RejectRequest);
    let parameters = raw.path_with_parameters_action.unwrap_or(PathParameters::RejectRequest);
    let malformed_token_header = raw
        .malformed_token_header_action
        .unwrap_or(MalformedTokenHeader::RejectRequest);
    let infos: Vec<ProviderInfo> = providers
        .iter()
        .map(|p| ProviderInfo {
            name: &p.name,
            space_delimited_claims: &p.space_delimited_claims,
        })
        .collect();
    let rules = compile_rules(raw.rules, &infos, raw.case_insensitive_paths)?;
    if mode == Mode::DryRun && rules.is_empty() {
        warnings.push("mode is dryRun but there are no rules to evaluate".into());
    }
    let claim_header_max_bytes = raw.claim_header_max_bytes.unwrap_or(4096);
    if !(64..=65536).contains(&claim_header_max_bytes) {
        return Err(err("claimHeaderMaxBytes", "must be between 64 and 65536"));
    }
    let jwt_cache_size = raw.jwt_cache_size.unwrap_or(crate::config::model::DEFAULT_CAPACITY);
    if jwt_cache_size > crate::config::model::MAX_CAPACITY {
        return Err(err(
            "jwtCacheSize",
            format!(
                "must be at most {} (0 turns the cache off)",
                crate::config::model::MAX_CAPACITY
            ),
        ));
    }
    let jwt_cache_bytes = raw.jwt_cache_bytes.unwrap_or(crate::config::model::DEFAULT_BYTES);
    if !(crate::config::model::MIN_BYTES..=crate::config::model::MAX_BYTES).contains(&jwt_cache_bytes) {
        return Err(err(
            "jwtCacheBytes",
            format!(
                "must be between {} and {} (jwtCacheSize: 0 turns the caches off)",
                crate::config::model::MIN_BYTES,
                crate::config::model::MAX_BYTES
            ),
        ));
    }
    let managed_headers = managed_headers(&providers, &rules)?;
    let mut token_locations: Vec<crate::token::Location> = Vec::new();
    for l in providers.iter().flat_map(|p| &p.locations) {
        if !token_locations.contains(l) {
            token_locations.push(l.clone());
        }
    }
    let mut underscore_watched: Vec<String> = Vec::new();
    let token_headers = token_locations.iter().filter_map(|l| match l {
        Location::Header { name, .. } => Some(&**name),
        _ => None,
    });
    for name in managed_headers.iter().map(String::as_str).chain(token_headers) {
        let lower = name.to_ascii_lowercase();
        if lower.contains(['-', '_']) && !underscore_watched.contains(&lower) {
            underscore_watched.push(lower);
        }
    }
    let location_readers = token_locations
        .iter()
        .map(|l| {
            (0..providers.len())
                .filter(|&i| providers.get(i).is_some_and(|p| p.locations.contains(l)))
                .collect()
        })
        .collect();
    let policy = Policy { rules, mode };
    let named_reserved = policy.named_reserved();
    Ok(Config {
        providers,
        realm,
        policy,
        path: PathOptions {
            escaped_slashes,
            backslashes,
            parameters,
            case_insensitive: raw.case_insensitive_paths,
            named_reserved,
        },
        malformed_token_header,
        allow_cors_preflight: raw.allow_cors_preflight,
        expose_rule_names: raw.expose_rule_names,
        managed_headers,
        underscore_watched,
        token_locations,
        location_readers,
        claim_header_max_bytes,
        decision_header: raw.decision_header,
        jwt_cache_size,
        jwt_cache_bytes,
        filter_state: raw.filter_state,
        warnings,
    })
}

fn compile_provider(path: &str, rp: RawProvider, warnings: &mut Vec<String>) -> Result<Provider, ConfigError> {
    let mut rp = rp;
    let mut aliases: Vec<(String, String)> = Vec::new();
    let mut required_claims: &'static [&'static str] = &[];
    if let Some(preset) = rp.preset.take() {
        if preset.name == PresetName::TxnToken {
            required_claims = TXN_TOKEN_CLAIMS;
        }
        apply_preset(path, preset, &mut rp, &mut aliases)?;
    }
    let raw_alb = rp.alb.take();
    let raw_is_alb = raw_alb.is_some();
    let cognito_issuer = cognito_issuer(path, &rp)?;
    let issuer = provider_issuer(path, &rp, cognito_issuer.as_deref(), raw_alb.is_some())?;
    // A Cognito pool publishes its keys at ISSUER/.well-known/jwks.json.
    if cognito_issuer.is_some() && rp.jwks.is_none() && rp.jwks_uri.is_none() && !rp.oidc_discovery {
        rp.jwks_uri = Some(format!("{issuer}/.well-known/jwks.json"));
    }
    let remote = compile_remote(path, &issuer, &rp)?;
    let client_ids = rp.client_ids.clone().unwrap_or_default();
    if client_ids.iter().any(String::is_empty) || rp.client_ids.as_ref().is_some_and(Vec::is_empty) {
        return Err(err(format!("{path}.clientIds"), "must list non-empty app client ids"));
    }
    if rp.cognito.is_some() && client_ids.is_empty() && rp.audiences.is_empty() {
        return Err(err(
            format!("{path}.clientIds"),
            "a Cognito provider needs the app client ids (Cognito access tokens have no aud)",
        ));
    }
    let (alb, alb_keys) = match raw_alb {
        Some(a) => {
            let (alb, keys) = compile_alb(path, a, &rp)?;
            (Some(alb), Some(keys))
        }
        None => (None, None),
    };
    let name = rp.name.clone().unwrap_or_else(|| match &alb {
        Some(_) => "alb".to_string(),
        None => issuer.clone(),
    });
    if name.is_empty() {
        return Err(err(format!("{path}.name"), "must not be empty"));
    }
    for (j, a) in rp.audiences.iter().enumerate() {
        if a.is_empty() {
            return Err(err(format!("{path}.audiences[{j}]"), "must not be empty"));
        }
    }
    if alb.is_none() && rp.audiences.is_empty() && client_ids.is_empty() {
        warnings.push(format!(
            "{path}: no audiences or clientIds configured, so the aud claim is not checked"
        ));
    }

    let algorithms = match (&alb, rp.algorithms.take()) {
        (None, algs) => compile_algorithms(path, algs)?,
        (Some(_), None) => vec![Alg::ES256],
        (Some(_), Some(algs)) if algs == ["ES256"] => vec![Alg::ES256],
        (Some(_), Some(_)) => {
            return Err(err(format!("{path}.algorithms"), "ALB tokens are always ES256"));
        }
    };

    let keys = compile_provider_keys(path, &mut rp, &algorithms, remote.is_some(), alb_keys, warnings)?;

    let from_headers = match (&alb, &rp.from_headers, &rp.from_params, &rp.from_cookies) {
        (Some(_), None, None, None) => Some(vec![RawHeader {
            name: crate::keys::alb::ALB_DATA_HEADER.into(),
            prefix: None,
        }]),
        _ => rp.from_headers.take(),
    };
    let locations = compile_locations(
        path,
        from_headers,
        rp.from_params.take(),
        rp.from_cookies.take(),
        warnings,
    )?;
    let (claim_headers, payload_header, filter_state_claims) = compile_outputs(path, &mut rp)?;

    let claim_aliases = compile_aliases(path, rp.claim_aliases.take().unwrap_or_default(), aliases)?;

    let clock_skew_seconds = rp.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    if clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        return Err(err(
            format!("{path}.clockSkewSeconds"),
            format!("{clock_skew_seconds} is more than the maximum {MAX_CLOCK_SKEW_SECONDS}"),
        ));
    }
    let max_lifetime_seconds = match rp.max_lifetime.take() {
        None => None,
        Some(d) => {
            let at = format!("{path}.maxLifetime");
            let ms = parse_duration_ms(&d).map_err(|e| err(at.clone(), e))?;
            if ms < 1000 || ms % 1000 != 0 {
                return Err(err(
                    at,
                    format!("{d:?}: must be a whole number of seconds, at least 1s"),
                ));
            }
            if raw_is_alb {
                return Err(err(at, "does not apply to ALB tokens (their lifetime is the ALB's)"));
            }
            Some(ms / 1000)
        }
    };
    if raw_is_alb && rp.subjects.is_some() {
        // The ALB path checks its own claims (verify/alb.rs) and never reads `subjects`:
        // refused rather than silently ignored.
        return Err(err(
            format!("{path}.subjects"),
            "does not apply to ALB tokens; constrain sub with a rule (when: claim sub)",
        ));
    }
    let max_token_bytes = rp.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(256..=65536).contains(&max_token_bytes) {
        return Err(err(format!("{path}.maxTokenBytes"), "must be between 256 and 65536"));
    }
    Ok(Provider {
        name,
        issuer,
        audiences: rp.audiences,
        keys,
        locations,
        algorithms,
        clock_skew_seconds,
        require_expiration: rp.require_expiration.unwrap_or(true),
        allow_missing: rp.allow_missing.unwrap_or(false),
        max_token_bytes,
        max_lifetime_seconds,
        client_ids,
        token_use: rp.token_use,
        token_type: compile_token_type(path, rp.token_type)?,
        space_delimited_claims: rp
            .space_delimited_claims
            .unwrap_or_else(|| vec!["scope".into(), "scp".into()]),
        remote,
        claim_headers,
        payload_header,
        forward_original_token: rp.forward_original_token,
        filter_state_claims,
        alb,
        claim_aliases,
        trusted_principals: crate::policy::principal_patterns(path, "trustedPrincipals", rp.trusted_principals)?,
        subjects: crate::policy::patterns(path, "subjects", rp.subjects, false)?,
        required_claims,
    })
}

/// `cognito`: the issuer a user pool's tokens carry, after checking the region and pool id.
fn cognito_issuer(path: &str, rp: &RawProvider) -> Result<Option<String>, ConfigError> {
    Ok(match &rp.cognito {
        None => None,
        Some(c) => {
            let region_ok = !c.region.is_empty()
                && c.region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !region_ok {
                return Err(err(
                    format!("{path}.cognito.region"),
                    format!("{:?} is not an AWS region such as eu-west-1", c.region),
                ));
            }
            let pool_ok = c
                .user_pool_id
                .strip_prefix(&format!("{}_", c.region))
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
            if !pool_ok {
                return Err(err(
                    format!("{path}.cognito.userPoolId"),
                    format!(
                        "{:?} is not a user pool id of region {} (REGION_xxxxxxxxx)",
                        c.user_pool_id, c.region
                    ),
                ));
            }
            Some(format!(
                "https://cognito-idp.{}.amazonaws.com/{}",
                c.region, c.user_pool_id
            ))
        }
    })
}

/// `issuer`, explicit or derived from `cognito`; empty only for an ALB provider.
fn provider_issuer(
    path: &str,
    rp: &RawProvider,
    cognito_issuer: Option<&str>,
    has_alb: bool,
) -> Result<String, ConfigError> {
    let issuer = match (rp.issuer.clone(), cognito_issuer.map(str::to_owned)) {
        (Some(i), Some(c)) if i != c => {
            return Err(err(
                format!("{path}.issuer"),
                format!("does not match the cognito user pool's issuer {c:?}"),
            ));
        }
        (Some(i), _) => i,
        (None, Some(c)) => c,
        // An ALB's token names its identity provider in the header; checked only if given.
        (None, None) if has_alb => String::new(),
        (None, None) => {
            return Err(err(
                format!("{path}.issuer"),
                "is required (or give cognito.region and cognito.userPoolId, or a preset)",
            ))
        }
    };
    if issuer.trim().is_empty() && !has_alb {
        return Err(err(format!("{path}.issuer"), "must not be empty"));
    }
    if issuer.trim() != issuer {
        return Err(err(format!("{path}.issuer"), "must not start or end with whitespace"));
    }
    Ok(issuer)
}

/// The provider's verification keys: inline `jwks`, `hmacSecret`, or the ALB's; checked
/// against its algorithms and key sources.
fn compile_provider_keys(
    path: &str,
    rp: &mut RawProvider,
    algorithms: &[Alg],
    has_remote: bool,
    alb_keys: Option<KeySet>,
    warnings: &mut Vec<String>,
) -> Result<KeySet, ConfigError> {
    let has_alb_keys_source = alb_keys.is_some();
    let hmac_algs: Vec<Alg> = algorithms.iter().copied().filter(|a| a.is_hmac()).collect();
    let mut keys = KeySet::default();
    if let Some(doc) = rp.jwks.take() {
        keys = compile_jwks(&format!("{path}.jwks"), &doc)?;
        for (p, why) in &keys.skipped {
            warnings.push(format!("{path}.jwks.{p}: skipped: {why}"));
        }
    }
    match (&rp.hmac_secret, hmac_algs.is_empty()) {
        (Some(_), true) => {
            return Err(err(
                format!("{path}.hmacSecret"),
                "is set, but algorithms lists none of HS256, HS384, HS512",
            ));
        }
        (None, false) => {
            return Err(err(
                format!("{path}.algorithms"),
                "HMAC algorithms (HS256/HS384/HS512) need hmacSecret on the same provider",
            ));
        }
        (Some(secret), false) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(secret.trim_end_matches('='))
                .map_err(|e| err(format!("{path}.hmacSecret"), format!("must be base64url: {e}")))?;
            let need = hmac_algs
                .iter()
                .map(|a| match a {
                    Alg::HS384 => 48,
                    Alg::HS512 => 64,
                    _ => MIN_HMAC_SECRET_BYTES,
                })
                .max()
                .unwrap_or(MIN_HMAC_SECRET_BYTES);
            if bytes.len() < need {
                return Err(err(
                    format!("{path}.hmacSecret"),
                    format!(
                        "is {} bytes; {} need at least {need} (RFC 7518 §3.2)",
                        bytes.len(),
                        names(&hmac_algs)
                    ),
                ));
            }
            keys.keys.push(VerificationKey::hmac(&bytes, &hmac_algs));
        }
        (None, true) => {}
    }
    if has_remote && rp.hmac_secret.is_some() {
        return Err(err(
            format!("{path}.hmacSecret"),
            "cannot be combined with jwksUri or oidcDiscovery",
        ));
    }
    if let Some(k) = alb_keys {
        keys = k;
    }
    if keys.is_empty() && !has_remote && !has_alb_keys_source {
        return Err(err(
            format!("{path}.jwks"),
            "no usable verification key: give jwks with at least one signing key, or jwksUri",
        ));
    }
    if !keys.is_empty() && !keys.keys.iter().any(|k| algorithms.iter().any(|a| k.supports(*a))) {
        return Err(err(
            format!("{path}.algorithms"),
            format!("no key in jwks can verify any of {}", names(algorithms)),
        ));
    }
    Ok(keys)
}

/// `outputClaimToHeaders`, `outputPayloadToHeader` and `claimsToFilterState`.
#[allow(clippy::type_complexity)]
fn compile_outputs(
    path: &str,
    rp: &mut RawProvider,
) -> Result<(Vec<ClaimHeader>, Option<String>, Vec<(String, Vec<String>)>), ConfigError> {
    let mut claim_headers = Vec::new();
    for (j, h) in rp
        .output_claim_to_headers
        .take()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let c = compile_claim_header(&format!("{path}.outputClaimToHeaders[{j}]"), h)?;
        if claim_headers.iter().any(|x: &ClaimHeader| x.header == c.header) {
            return Err(err(
                format!("{path}.outputClaimToHeaders[{j}].header"),
                format!("{:?} is mapped twice", c.header),
            ));
        }
        claim_headers.push(c);
    }
    let payload_header = match rp.output_payload_to_header.take() {
        Some(h) => Some(managed_header_name(&format!("{path}.outputPayloadToHeader"), &h)?),
        None => None,
    };
    let mut filter_state_claims = Vec::new();
    for (j, c) in rp
        .claims_to_filter_state
        .take()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let segs = match c {
            RawClaimPath::Dotted(s) => dotted(&s).map_err(|e| err(format!("{path}.claimsToFilterState[{j}]"), e))?,
            RawClaimPath::Segments(v) => v,
        };
        let label = segs.join(".");
        if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)) {
            return Err(err(
                format!("{path}.claimsToFilterState[{j}]"),
                "filter state names allow letters, digits and _ - . : (use outputClaimToHeaders for other claims)",
            ));
        }
        filter_state_claims.push((label, segs));
    }
    Ok((claim_headers, payload_header, filter_state_claims))
}

/// `claimAliases`, with a preset's aliases under the explicit ones.
fn compile_aliases(
    path: &str,
    explicit: std::collections::BTreeMap<String, RawClaimPath>,
    aliases: Vec<(String, String)>,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut claim_aliases: Vec<(String, Vec<String>)> = Vec::new();
    for (alias, target) in explicit
        .into_iter()
        .map(|(a, t)| (a, Some(t)))
        .chain(aliases.into_iter().map(|(a, t)| (a, Some(RawClaimPath::Dotted(t)))))
    {
        let (alias, Some(target)) = (alias, target) else {
            continue;
        };
        if claim_aliases.iter().any(|(a, _)| *a == alias) {
            continue; // an explicit alias wins over the preset's
        }
        let at = format!("{path}.claimAliases.{alias}");
        if alias.is_empty() || ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].contains(&alias.as_str()) {
            return Err(err(
                at,
                "must name a claim other than the registered ones (iss, sub, aud, exp, nbf, iat, jti)",
            ));
        }
        let segs = match target {
            RawClaimPath::Dotted(t) => dotted(&t).map_err(|e| err(at.clone(), e))?,
            RawClaimPath::Segments(v) => v,
        };
        if segs.is_empty() || segs.iter().any(String::is_empty) {
            return Err(err(at, "must name a claim"));
        }
        claim_aliases.push((alias, segs));
    }
    Ok(claim_aliases)
}

/// `tokenType`: a media type, lower case, without `application/`.
fn compile_token_type(path: &str, token_type: Option<String>) -> Result<Option<String>, ConfigError> {
    Ok(match token_type {
        None => None,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            let t = t.strip_prefix("application/").unwrap_or(&t).to_string();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
                return Err(err(format!("{path}.tokenType"), "must be a media type such as at+jwt"));
            }
            Some(t)
        }
    })
}

/// What a `preset` sets: the issuer and key URL shapes of a well-known identity provider and
/// the claim names its tokens use. Explicit settings must agree with it (issuer) or win
/// (everything else).
fn apply_preset(
    path: &str,
    preset: RawPreset,
    rp: &mut RawProvider,
    aliases: &mut Vec<(String, String)>,
) -> Result<(), ConfigError> {
    let at = |field: &str| format!("{path}.preset.{field}");
    // The four identity providers sign access and ID tokens with RS256 only: accept nothing
    // else by default. (A Transaction Token Service may use any algorithm.)
    if rp.algorithms.is_none() && preset.name != PresetName::TxnToken {
        rp.algorithms = Some(vec!["RS256".into()]);
    }
    let need = |v: Option<String>, field: &str| -> Result<String, ConfigError> {
        match v {
            Some(v) if !v.is_empty() && !v.contains(['/', '?', '#', ' ', '@']) => Ok(v),
            Some(v) => Err(err(at(field), format!("{v:?} is not a valid {field}"))),
            None => Err(err(at(field), format!("is required by the {} preset", preset.name))),
        }
    };
    let (issuer, jwks_uri) = match preset.name {
        PresetName::Cognito => {
            if rp.cognito.is_some() {
                return Err(err(at("name"), "give either preset cognito or cognito, not both"));
            }
            rp.cognito = Some(RawCognito {
                region: need(preset.region.clone(), "region")?,
                user_pool_id: need(preset.user_pool_id.clone(), "userPoolId")?,
            });
            aliases.push(("groups".into(), "cognito:groups".into()));
            return Ok(());
        }
        PresetName::Okta => {
            let domain = need(preset.domain, "domain")?;
            let server = need(
                Some(preset.authorization_server_id.unwrap_or_else(|| "default".into())),
                "authorizationServerId",
            )?;
            let iss = format!("https://{domain}/oauth2/{server}");
            let jwks = format!("{iss}/v1/keys");
            // Okta puts scopes in `scp`, a JSON array; rules written against `scope` read it.
            aliases.push(("scope".into(), "scp".into()));
            (iss, jwks)
        }
        PresetName::Auth0 => {
            let domain = need(preset.domain, "domain")?;
            // Auth0 issuers end with a slash, and tokens must match it exactly.
            (
                format!("https://{domain}/"),
                format!("https://{domain}/.well-known/jwks.json"),
            )
        }
        PresetName::TxnToken => return apply_txn_token(path, rp),
        PresetName::Entra => {
            let tenant = need(preset.tenant_id, "tenantId")?;
            // Entra puts delegated scopes in `scp` (space-separated) and app roles in `roles`.
            aliases.push(("scope".into(), "scp".into()));
            match preset.version.as_deref().unwrap_or("2.0") {
                "2.0" => (
                    format!("https://login.microsoftonline.com/{tenant}/v2.0"),
                    format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"),
                ),
                "1.0" => (
                    format!("https://sts.windows.net/{tenant}/"),
                    format!("https://login.microsoftonline.com/{tenant}/discovery/keys"),
                ),
                // Not a closed set of the model: only the entra preset reads it.
                other => return Err(err(at("version"), not_one_of(other, &["2.0", "1.0"]))),
            }
        }
    };
    for (field, set) in [
        ("region", preset.region.is_some()),
        ("userPoolId", preset.user_pool_id.is_some()),
    ] {
        if set {
            return Err(err(at(field), format!("does not apply to the {} preset", preset.name)));
        }
    }
    match &rp.issuer {
        Some(i) if *i != issuer => {
            return Err(err(
                format!("{path}.issuer"),
                format!("does not match the {} preset's issuer {issuer:?}", preset.name),
            ))
        }
        _ => rp.issuer = Some(issuer),
    }
    if rp.jwks.is_none() && rp.jwks_uri.is_none() && !rp.oidc_discovery {
        rp.jwks_uri = Some(jwks_uri);
    }
    Ok(())
}

/// The `txnToken` preset: Transaction Tokens (draft-ietf-oauth-transaction-tokens-10), minted
/// by the trust domain's Transaction Token Service and carried in the `Txn-Token` header
/// (no scheme). Pins `typ` `txntoken+jwt` and `aud` to the trust domain (neither can be
/// overridden: they are what tell a Txn-Token from an access token), requires
/// [`TXN_TOKEN_CLAIMS`], bounds the lifetime ([`TXN_TOKEN_MAX_LIFETIME`] unless `maxLifetime`
/// says otherwise), forwards the token (each workload must pass it on unmodified) and hands
/// the application the transaction id and subject (unless `outputClaimToHeaders` is given).
/// The draft makes `iss` optional; claimguard picks the provider by it, so `issuer` is required.
fn apply_txn_token(path: &str, rp: &mut RawProvider) -> Result<(), ConfigError> {
    if rp.audiences.is_empty() {
        return Err(err(
            format!("{path}.audiences"),
            "the txnToken preset needs the trust domain (the aud of its Txn-Tokens)",
        ));
    }
    if let Some((field, _)) = [
        ("clientIds", rp.client_ids.is_some()),
        ("tokenType", rp.token_type.is_some()),
    ]
    .iter()
    .find(|(_, set)| *set)
    {
        return Err(err(format!("{path}.{field}"), "is set by the txnToken preset"));
    }
    rp.token_type = Some("txntoken+jwt".into());
    rp.forward_original_token = true;
    rp.max_lifetime.get_or_insert_with(|| TXN_TOKEN_MAX_LIFETIME.into());
    if rp.from_headers.is_none() && rp.from_params.is_none() && rp.from_cookies.is_none() {
        rp.from_headers = Some(vec![RawHeader {
            name: "txn-token".into(),
            prefix: None,
        }]);
    }
    rp.output_claim_to_headers.get_or_insert_with(|| {
        [("x-txn-id", "txn"), ("x-txn-subject", "sub")]
            .map(|(header, claim)| RawClaimHeader {
                header: header.into(),
                claim: RawClaimPath::Dotted(claim.into()),
                array_format: None,
                separator: None,
            })
            .into()
    });
    Ok(())
}

fn compile_alb(path: &str, a: RawAlb, rp: &RawProvider) -> Result<(AlbProvider, KeySet), ConfigError> {
    let at = |field: &str| format!("{path}.alb.{field}");
    for (field, set) in [
        ("jwks", rp.jwks.is_some()),
        ("jwksUri", rp.jwks_uri.is_some()),
        ("oidcDiscovery", rp.oidc_discovery),
        ("hmacSecret", rp.hmac_secret.is_some()),
        ("cognito", rp.cognito.is_some()),
        ("tokenUse", rp.token_use.is_some()),
        ("tokenType", rp.token_type.is_some()),
    ] {
        if set {
            return Err(err(
                format!("{path}.{field}"),
                "does not apply to an ALB provider (its keys come from alb.keysUri by kid)",
            ));
        }
    }
    if !rp.audiences.is_empty() {
        return Err(err(
            format!("{path}.audiences"),
            "ALB tokens carry no aud; pin the ALB's app client with clientIds (the header's client)",
        ));
    }
    let region_ok = !a.region.is_empty()
        && a.region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(err(
            at("region"),
            format!("{:?} is not an AWS region such as eu-west-1", a.region),
        ));
    }
    if a.signers.is_empty() {
        return Err(err(
            at("signers"),
            "list the ARNs of the load balancers whose tokens are accepted",
        ));
    }
    for (j, arn) in a.signers.iter().enumerate() {
        let ok =
            arn.starts_with("arn:aws") && arn.contains(":elasticloadbalancing:") && arn.contains(":loadbalancer/app/");
        if !ok {
            return Err(err(
                format!("{path}.alb.signers[{j}]"),
                format!(
                    "{arn:?} is not an ALB ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/app/NAME/ID)"
                ),
            ));
        }
    }
    let base = a
        .keys_uri
        .unwrap_or_else(|| format!("https://public-keys.auth.elb.{}.amazonaws.com", a.region));
    let keys_url = HttpUrl::parse(&base).map_err(|e| err(at("keysUri"), e))?;
    if keys_url.path.contains('?') {
        return Err(err(
            at("keysUri"),
            "must not have a query (the kid is appended to the path)",
        ));
    }
    let dur = |field: &str, v: &Option<String>, default: u64, range: std::ops::RangeInclusive<u64>| {
        let ms = match v {
            None => default,
            Some(s) => parse_duration_ms(s).map_err(|e| err(at(field), e))?,
        };
        if range.contains(&ms) {
            Ok(ms)
        } else {
            Err(err(
                at(field),
                format!("must be between {}ms and {}ms", range.start(), range.end()),
            ))
        }
    };
    let timeout_ms = dur("timeout", &a.timeout, 5_000, 100..=60_000)?;
    let wait_ms = dur("waitTimeout", &a.wait_timeout, 5_000, 1_000..=60_000)?;
    let min_interval_ms = dur("minFetchInterval", &a.min_fetch_interval, 1_000, 100..=600_000)?;
    let mut keys = KeySet::default();
    for (kid, pem) in a.keys.unwrap_or_default() {
        let kp = format!("{path}.alb.keys.{kid}");
        if !crate::keys::alb::is_uuid(&kid) {
            return Err(err(kp, "ALB key ids are UUIDs"));
        }
        let jwk = crate::keys::alb::pem_to_jwk(&pem, &kid.to_ascii_lowercase()).map_err(|e| err(kp.clone(), e))?;
        let set = parse_jwks(&serde_json::json!({ "keys": [jwk] })).map_err(|(_, why)| err(kp, why))?;
        keys.keys.extend(set.keys);
    }
    let mut signers = a.signers;
    signers.sort();
    signers.dedup();
    Ok((
        AlbProvider {
            region: a.region,
            signers,
            cluster: a.keys_cluster.unwrap_or_else(|| keys_url.istio_cluster()),
            shared_key: format!("claimguard|alb|{base}"),
            keys_url,
            timeout_ms,
            wait_ms,
            min_interval_ms,
            keep_unsigned_headers: a.keep_unsigned_headers,
        },
        keys,
    ))
}

/// Every header claimguard may set; none may double as a token location (stripping it would
/// remove the token) and no two providers may disagree about what one header means.
fn managed_headers(providers: &[Provider], rules: &[crate::policy::Rule]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    // The ALB's unsigned identity headers: anyone could have set them. Removed, unless a
    // provider keeps them or verifies a token found there.
    if providers
        .iter()
        .any(|p| p.alb.as_ref().is_some_and(|a| !a.keep_unsigned_headers))
    {
        for h in crate::keys::alb::ALB_UNSIGNED_HEADERS {
            let read = providers.iter().any(|q| {
                q.locations
                    .iter()
                    .any(|l| matches!(l, Location::Header { name, .. } if **name == **h))
            });
            if !read && !out.iter().any(|x| x == h) {
                out.push((*h).to_string());
            }
        }
    }
    let mut add = |h: &str, path: String| -> Result<(), ConfigError> {
        for p in providers {
            // `x_token` is `x-token` to a CGI-style upstream: stripping one would strip both.
            if p.locations.iter().any(|l| {
                matches!(l, Location::Header { name, .. }
                    if crate::base::abi::same_header_loosely(name.as_bytes(), h.as_bytes()))
            }) {
                return Err(err(
                    path,
                    format!("{h:?} is also where provider {:?} reads its token", p.name),
                ));
            }
        }
        if !out.iter().any(|x| x == h) {
            out.push(h.to_string());
        }
        Ok(())
    };
    for (i, p) in providers.iter().enumerate() {
        for (j, c) in p.claim_headers.iter().enumerate() {
            add(&c.header, format!("providers[{i}].outputClaimToHeaders[{j}].header"))?;
        }
        if let Some(h) = &p.payload_header {
            add(h, format!("providers[{i}].outputPayloadToHeader"))?;
        }
    }
    for (i, r) in rules.iter().enumerate() {
        for (j, h) in r.headers_to_add.iter().enumerate() {
            add(h.header(), format!("rules[{i}].requestHeadersToAdd[{j}].header"))?;
        }
    }
    Ok(out)
}

fn compile_remote(path: &str, issuer: &str, rp: &RawProvider) -> Result<Option<RemoteJwks>, ConfigError> {
    let (url, discovery) = match (&rp.jwks_uri, rp.oidc_discovery) {
        (Some(_), true) => {
            return Err(err(
                format!("{path}.oidcDiscovery"),
                "give either jwksUri or oidcDiscovery, not both",
            ));
        }
        (Some(u), false) => (HttpUrl::parse(u).map_err(|e| err(format!("{path}.jwksUri"), e))?, false),
        (None, true) => {
            let doc = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
            let url = HttpUrl::parse(&doc).map_err(|e| {
                err(
                    format!("{path}.oidcDiscovery"),
                    format!("the issuer must be an http(s) URL for discovery: {e}"),
                )
            })?;
            (url, true)
        }
        (None, false) => {
            for (field, set) in [
                ("jwksCluster", rp.jwks_cluster.is_some()),
                ("timeout", rp.timeout.is_some()),
                ("jwksMaxBytes", rp.jwks_max_bytes.is_some()),
                ("jwksRefreshInterval", rp.jwks_refresh_interval.is_some()),
                ("jwksRefetchCooldown", rp.jwks_refetch_cooldown.is_some()),
                ("maxStale", rp.max_stale.is_some()),
                ("bootstrapJwksFallback", rp.bootstrap_jwks_fallback),
                ("jwksWaitTimeout", rp.jwks_wait_timeout.is_some()),
            ] {
                if set {
                    return Err(err(
                        format!("{path}.{field}"),
                        "only applies with jwksUri or oidcDiscovery",
                    ));
                }
            }
            return Ok(None);
        }
    };
    let dur = |field: &str, v: &Option<String>, default: u64| -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration_ms(s).map_err(|e| err(format!("{path}.{field}"), e)),
        }
    };
    let timeout_ms = dur("timeout", &rp.timeout, 5_000)?;
    let refresh_ms = dur("jwksRefreshInterval", &rp.jwks_refresh_interval, 600_000)?;
    let min_refresh_ms = dur("jwksMinRefreshInterval", &rp.jwks_min_refresh_interval, 60_000)?;
    let max_refresh_ms = dur("jwksMaxRefreshInterval", &rp.jwks_max_refresh_interval, 86_400_000)?;
    let cooldown_ms = dur("jwksRefetchCooldown", &rp.jwks_refetch_cooldown, 30_000)?;
    let max_stale_ms = dur("maxStale", &rp.max_stale, 86_400_000)?;
    let wait_ms = dur("jwksWaitTimeout", &rp.jwks_wait_timeout, 5_000)?;
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(err(format!("{path}.timeout"), "must be between 100ms and 60s"));
    }
    if !(1_000..=60_000).contains(&wait_ms) {
        return Err(err(format!("{path}.jwksWaitTimeout"), "must be between 1s and 60s"));
    }
    if min_refresh_ms < 1_000 || min_refresh_ms > max_refresh_ms {
        return Err(err(
            format!("{path}.jwksMinRefreshInterval"),
            "must be at least 1s and at most jwksMaxRefreshInterval",
        ));
    }
    if refresh_ms < min_refresh_ms || refresh_ms > max_refresh_ms {
        return Err(err(
            format!("{path}.jwksRefreshInterval"),
            "must lie between jwksMinRefreshInterval (default 1m) and jwksMaxRefreshInterval (default 24h)",
        ));
    }
    if max_stale_ms < refresh_ms {
        return Err(err(format!("{path}.maxStale"), "must be at least jwksRefreshInterval"));
    }
    if rp.bootstrap_jwks_fallback && rp.jwks.is_none() {
        return Err(err(
            format!("{path}.bootstrapJwksFallback"),
            "needs jwks (the bootstrap keys it falls back to) beside jwksUri or oidcDiscovery",
        ));
    }
    let max_bytes = rp.jwks_max_bytes.unwrap_or(256 * 1024);
    if !(1024..=4 * 1024 * 1024).contains(&max_bytes) {
        return Err(err(format!("{path}.jwksMaxBytes"), "must be between 1024 and 4194304"));
    }
    if rp.jwks_cluster.as_deref().is_some_and(str::is_empty) {
        return Err(err(format!("{path}.jwksCluster"), "must not be empty"));
    }
    let kind = if discovery { "discovery" } else { "jwks" };
    // The set is shared by every provider (and plugin) in the proxy that fetches this URL
    // through this cluster: another cluster is another route to the keys, and may answer
    // with other ones.
    let cluster = rp.jwks_cluster.clone().unwrap_or_else(|| url.istio_cluster());
    let shared_key = format!(
        "claimguard.jwks.v1|{kind}|{}|{}{}|{cluster}",
        url.https,
        url.authority(),
        url.path
    );
    Ok(Some(RemoteJwks {
        url,
        discovery,
        cluster: rp.jwks_cluster.clone(),
        timeout_ms,
        max_bytes,
        refresh_ms,
        min_refresh_ms,
        max_refresh_ms,
        cooldown_ms,
        max_stale_ms,
        bootstrap_fallback: rp.bootstrap_jwks_fallback,
        wait_ms,
        shared_key,
    }))
}

fn names(algs: &[Alg]) -> String {
    algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

fn compile_algorithms(path: &str, raw: Option<Vec<String>>) -> Result<Vec<Alg>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Alg::DEFAULT_ALLOWED.to_vec());
    };
    if list.is_empty() {
        return Err(err(
            format!("{path}.algorithms"),
            "must not be empty (omit it for the default asymmetric set)",
        ));
    }
    let mut out = Vec::new();
    for (j, name) in list.iter().enumerate() {
        if name.eq_ignore_ascii_case("none") {
            return Err(err(
                format!("{path}.algorithms[{j}]"),
                "\"none\" (unsigned tokens) is never accepted",
            ));
        }
        let a = Alg::from_name(name).ok_or_else(|| {
            err(
                format!("{path}.algorithms[{j}]"),
                format!("unknown algorithm {name:?}; supported: {}", names(&Alg::ALL)),
            )
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn compile_jwks(path: &str, doc: &Value) -> Result<KeySet, ConfigError> {
    // Istio's jwtRules.jwks is a JSON string; an inline object is accepted too.
    let parsed;
    let doc = match doc {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| err(path, format!("is not valid JSON: {e}")))?;
            &parsed
        }
        other => other,
    };
    let set = parse_jwks(doc).map_err(|(p, why)| err(join(path, &p), why))?;
    if let Some((p, why)) = set.rejected.first() {
        return Err(err(join(path, p), why.clone()));
    }
    Ok(set)
}

fn join(path: &str, sub: &str) -> String {
    if sub.is_empty() {
        path.to_string()
    } else {
        format!("{path}.{sub}")
    }
}

fn compile_locations(
    path: &str,
    headers: Option<Vec<RawHeader>>,
    params: Option<Vec<String>>,
    cookies: Option<Vec<String>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Location>, ConfigError> {
    let mut out = Vec::new();
    if headers.is_none() && params.is_none() && cookies.is_none() {
        out.push(Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
        return Ok(out);
    }
    for (j, h) in headers.unwrap_or_default().into_iter().enumerate() {
        let name = h.name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_header_name_byte) {
            return Err(err(
                format!("{path}.fromHeaders[{j}].name"),
                format!("{:?} is not a valid header name", h.name),
            ));
        }
        if name.starts_with(':') {
            return Err(err(
                format!("{path}.fromHeaders[{j}].name"),
                "pseudo-headers cannot carry a token",
            ));
        }
        let mut prefix = h.prefix.unwrap_or_default();
        if prefix.chars().any(char::is_control) {
            return Err(err(
                format!("{path}.fromHeaders[{j}].prefix"),
                "must not contain control characters",
            ));
        }
        // A bare scheme (`Bearer`) is the scheme and its space: jwt_authn, and so Istio, read
        // the token after the prefix and the space that follows, while a literal match would
        // leave every token with a leading space (each request a 401).
        if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            warnings.push(format!(
                "{path}.fromHeaders[{j}].prefix: {prefix:?} is read as {:?} (the scheme and the space after it)",
                format!("{prefix} ")
            ));
            prefix.push(' ');
        }
        out.push(Location::Header {
            name: name.into(),
            prefix,
        });
    }
    for (j, p) in params.unwrap_or_default().into_iter().enumerate() {
        if p.is_empty() || p.contains(['&', '=', '#', '?']) {
            return Err(err(
                format!("{path}.fromParams[{j}]"),
                format!("{p:?} is not a valid query parameter name"),
            ));
        }
        out.push(Location::Param(p));
    }
    for (j, c) in cookies.unwrap_or_default().into_iter().enumerate() {
        if c.is_empty() || !c.bytes().all(is_header_name_byte) {
            return Err(err(
                format!("{path}.fromCookies[{j}]"),
                format!("{c:?} is not a valid cookie name"),
            ));
        }
        out.push(Location::Cookie(c));
    }
    if out.is_empty() {
        return Err(err(
            format!("{path}.fromHeaders"),
            "fromHeaders, fromParams and fromCookies are all empty: the token could never be found",
        ));
    }
    Ok(out)
}

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use claimguard_testkeys::TestKey;
    use serde_json::json;

    fn jwks() -> Value {
        json!({"keys": [TestKey::generate(Alg::ES256, "e1").public_jwk()]})
    }

    fn check(cfg: Value) -> Result<Config, ConfigError> {
        Config::from_json(cfg.to_string().as_bytes())
    }

    fn error_of(cfg: Value) -> String {
        match check(cfg) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_istio_defaults() {
        let c = check(json!({"providers": [{"issuer": "https://idp", "jwks": jwks()}]})).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.name, "https://idp");
        assert_eq!(p.clock_skew_seconds, 60);
        assert!(p.require_expiration);
        assert!(!p.allow_missing);
        assert_eq!(p.algorithms, Alg::DEFAULT_ALLOWED.to_vec());
        assert_eq!(
            p.locations,
            vec![Location::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert_eq!(c.realm, "claimguard");
        assert_eq!(c.jwt_cache_size, crate::config::model::DEFAULT_CAPACITY);
        assert_eq!(c.jwt_cache_bytes, crate::config::model::DEFAULT_BYTES);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn jwks_as_string_like_istio() {
        let c = check(json!({"providers": [{"issuer": "i", "audiences": ["a"], "jwks": jwks().to_string()}]})).unwrap();
        assert_eq!(c.providers[0].keys.keys.len(), 1);
        assert!(c.warnings.is_empty());
    }

    /// The closed sets are serde enums now: a value outside one is refused while parsing, in
    /// exactly the words the checks after parsing used (field path, value, every choice; no
    /// serde_json position), and every other value reads as before.
    #[test]
    fn closed_sets_refuse_in_the_words_they_always_used() {
        let j = jwks();
        let p = json!({"issuer": "i", "jwks": j});
        let cases = vec![
            (
                json!({"providers": [p], "mode": "audit"}),
                "mode",
                r#""audit" is not one of enforce, dryRun"#,
            ),
            (
                json!({"providers": [p], "pathWithEscapedSlashesAction": "UNESCAPE_AND_REDIRECT"}),
                "pathWithEscapedSlashesAction",
                r#""UNESCAPE_AND_REDIRECT" is not one of REJECT_REQUEST, UNESCAPE_AND_FORWARD, KEEP_UNCHANGED"#,
            ),
            (
                json!({"providers": [p], "pathWithBackslashAction": "KEEP_UNCHANGED"}),
                "pathWithBackslashAction",
                r#""KEEP_UNCHANGED" is not one of REJECT_REQUEST, CONVERT_TO_SLASH"#,
            ),
            (
                json!({"providers": [p], "pathWithParametersAction": "STRIP"}),
                "pathWithParametersAction",
                r#""STRIP" is not one of REJECT_REQUEST, MATCH_WITHOUT_PARAMETERS"#,
            ),
            (
                json!({"providers": [p], "malformedTokenHeaderAction": "allow"}),
                "malformedTokenHeaderAction",
                r#""allow" is not one of REJECT_REQUEST, REMOVE_HEADER"#,
            ),
            (
                json!({"providers": [p], "rules": [{"name": "a"}, {"name": "b", "action": "PERMIT"}]}),
                "rules[1].action",
                r#""PERMIT" is not one of ALLOW, DENY, AUDIT"#,
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "tokenUse": "Access"}]}),
                "providers[0].tokenUse",
                r#""Access" is not one of access, id"#,
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j,
                    "outputClaimToHeaders": [{"header": "x-a", "claim": "sub", "arrayFormat": "csv"}]}]}),
                "providers[0].outputClaimToHeaders[0].arrayFormat",
                r#""csv" is not one of join, json"#,
            ),
            (
                json!({"providers": [p, {"preset": {"name": "keycloak"}}]}),
                "providers[1].preset.name",
                r#""keycloak" is not one of cognito, okta, auth0, entra, txnToken"#,
            ),
            // The value is quoted as Rust's Debug does, escapes and all, as `one_of` did.
            (
                json!({"providers": [p], "mode": "dry\"run\n"}),
                "mode",
                r#""dry\"run\n" is not one of enforce, dryRun"#,
            ),
            (
                json!({"providers": [p], "mode": ""}),
                "mode",
                r#""" is not one of enforce, dryRun"#,
            ),
        ];
        for (cfg, path, message) in cases {
            let e = check(cfg.clone()).map(|_| ()).unwrap_err();
            assert_eq!((e.path.as_str(), e.message.as_str()), (path, message), "{cfg}");
            assert_eq!(e.to_string(), format!("{path}: {message}"));
        }
        // Not a string: refused as a string field always was, position included.
        let e = error_of(json!({"providers": [p], "mode": 1}));
        assert!(
            e.starts_with("mode: invalid type: integer `1`, expected a string at line 1 column "),
            "{e}"
        );
        // Absent or null: the default, as before.
        for absent in [
            json!({"providers": [p]}),
            json!({"providers": [p], "mode": null,
            "pathWithEscapedSlashesAction": null, "pathWithBackslashAction": null,
            "pathWithParametersAction": null, "malformedTokenHeaderAction": null}),
        ] {
            let c = check(absent).unwrap();
            assert_eq!(c.policy.mode, Mode::Enforce);
            assert_eq!(c.path.escaped_slashes, EscapedSlashes::RejectRequest);
            assert_eq!(c.path.backslashes, Backslashes::RejectRequest);
            assert_eq!(c.path.parameters, PathParameters::RejectRequest);
            assert_eq!(c.malformed_token_header, MalformedTokenHeader::RejectRequest);
        }
        // Every spelling reads as the choice it names.
        let c = check(json!({"providers": [{"issuer": "i", "jwks": j, "tokenUse": "id",
                "outputClaimToHeaders": [{"header": "x-a", "claim": "sub", "arrayFormat": "json"}]}],
            "mode": "dryRun", "pathWithEscapedSlashesAction": "KEEP_UNCHANGED",
            "pathWithBackslashAction": "CONVERT_TO_SLASH", "pathWithParametersAction": "MATCH_WITHOUT_PARAMETERS",
            "malformedTokenHeaderAction": "REMOVE_HEADER",
            "rules": [{"name": "a", "action": "AUDIT"}, {"name": "b", "action": "DENY"}, {"name": "c", "action": "ALLOW"}]}))
        .unwrap();
        assert_eq!(c.policy.mode, Mode::DryRun);
        assert_eq!(c.path.escaped_slashes, EscapedSlashes::KeepUnchanged);
        assert_eq!(c.path.backslashes, Backslashes::ConvertToSlash);
        assert_eq!(c.path.parameters, PathParameters::MatchWithoutParameters);
        assert_eq!(c.malformed_token_header, MalformedTokenHeader::RemoveHeader);
        assert_eq!(c.providers[0].token_use, Some(TokenUse::Id));
        assert_eq!(
            c.providers[0].claim_headers[0].array,
            crate::policy::identity::ArrayFormat::Json
        );
        let actions: Vec<&str> = c.policy.rules.iter().map(|r| r.action.name()).collect();
        assert_eq!(actions, ["AUDIT", "DENY", "ALLOW"]);
        // What `EscapedSlashes::UnescapeAndForward` is written as: each set's spellings are its own.
        assert_eq!(EscapedSlashes::UnescapeAndForward.to_string(), "UNESCAPE_AND_FORWARD");
        assert_eq!(
            Mode::CHOICES.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["enforce", "dryRun"]
        );
    }

    #[test]
    fn errors_name_the_field_path() {
        let j = jwks();
        let mut weak = TestKey::rsa(Alg::RS256, "r").public_jwk();
        let n = URL_SAFE_NO_PAD.decode(weak["n"].as_str().unwrap()).unwrap();
        weak["n"] = json!(URL_SAFE_NO_PAD.encode(&n[..128]));
        let cases = vec![
            (json!({}), "missing field `providers`"),
            (json!({"providers": []}), "providers: at least one provider"),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "mode": "audit"}),
                "mode: \"audit\" is not one of enforce, dryRun",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "pathWithBackslashAction": "KEEP_UNCHANGED"}),
                "pathWithBackslashAction: \"KEEP_UNCHANGED\" is not one of REJECT_REQUEST, CONVERT_TO_SLASH",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "pathWithParametersAction": "STRIP"}),
                "pathWithParametersAction: \"STRIP\" is not one of REJECT_REQUEST, MATCH_WITHOUT_PARAMETERS",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "malformedTokenHeaderAction": "ALLOW"}),
                "malformedTokenHeaderAction: \"ALLOW\" is not one of REJECT_REQUEST, REMOVE_HEADER",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "pathWithEscapedSlashesAction": "UNESCAPE_AND_REDIRECT"}),
                "pathWithEscapedSlashesAction: \"UNESCAPE_AND_REDIRECT\" is not one of REJECT_REQUEST, UNESCAPE_AND_FORWARD, KEEP_UNCHANGED",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "issur": "x"}]}),
                "providers[0].issur: unknown field `issur`",
            ),
            (
                json!({"providers": [{"issuer": "", "jwks": j}]}),
                "providers[0].issuer: must not be empty",
            ),
            (
                json!({"providers": [{"issuer": 5, "jwks": j}]}),
                "providers[0].issuer: invalid type",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "audiences": "a"}]}),
                "providers[0].audiences: invalid type",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": "{nope"}]}),
                "providers[0].jwks: is not valid JSON",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": {"keys": [weak]}}]}),
                "providers[0].jwks.keys[0].n: RSA modulus is 1024 bits",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": {"keys": []}}]}),
                "providers[0].jwks: no usable verification key",
            ),
            (
                json!({"providers": [{"issuer": "i"}]}),
                "providers[0].jwks: no usable verification key",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "algorithms": ["none"]}]}),
                "providers[0].algorithms[0]: \"none\"",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "algorithms": ["ES256", "XS1"]}]}),
                "providers[0].algorithms[1]: unknown algorithm",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "algorithms": ["RS256"]}]}),
                "providers[0].algorithms: no key in jwks can verify any of RS256",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "algorithms": ["HS256"]}]}),
                "need hmacSecret",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "hmacSecret": "c2VjcmV0"}]}),
                "providers[0].hmacSecret: is set, but",
            ),
            (
                json!({"providers": [{"issuer": "i", "algorithms": ["HS256"], "hmacSecret": "c2VjcmV0"}]}),
                "providers[0].hmacSecret: is 6 bytes",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "fromHeaders": [{"name": "bad header"}]}]}),
                "providers[0].fromHeaders[0].name",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "fromHeaders": [{"name": "x", "prefx": "B"}]}]}),
                "providers[0].fromHeaders[0].prefx: unknown field `prefx`",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "fromHeaders": []}]}),
                "could never be found",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "clockSkewSeconds": 3600}]}),
                "providers[0].clockSkewSeconds",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "clockSkewSeconds": -1}]}),
                "providers[0].clockSkewSeconds: invalid value",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "requireExpiration": "yes"}]}),
                "providers[0].requireExpiration: invalid type",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}, {"issuer": "i", "jwks": j}]}),
                "providers[1].name",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "realm": "a\"b"}),
                "realm:",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheSize": 100_001}),
                "jwtCacheSize: must be at most 100000",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheSize": -1}),
                "jwtCacheSize: invalid value",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheBytes": 65_536}),
                "jwtCacheBytes: must be between 1048576 and 268435456 (jwtCacheSize: 0 turns the caches off)",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheBytes": 0}),
                "jwtCacheBytes: must be between 1048576 and 268435456",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheBytes": 268_435_457}),
                "jwtCacheBytes: must be between 1048576 and 268435456",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheBytes": -1}),
                "jwtCacheBytes: invalid value",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheBytes": "4Mi"}),
                "jwtCacheBytes: invalid type",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "jwtCacheByte": 1_048_576}),
                "jwtCacheByte: unknown field",
            ),
        ];
        for (cfg, want) in cases {
            let got = error_of(cfg.clone());
            assert!(got.contains(want), "config {cfg}\n  error {got:?}\n  wanted {want:?}");
        }
    }

    #[test]
    fn jwt_cache_bytes_takes_its_bounds() {
        for bytes in [
            crate::config::model::MIN_BYTES,
            8 << 20,
            crate::config::model::MAX_BYTES,
        ] {
            let c = check(json!({"providers": [{"issuer": "i", "jwks": jwks()}], "jwtCacheBytes": bytes})).unwrap();
            assert_eq!(c.jwt_cache_bytes, bytes);
        }
    }

    #[test]
    fn not_json_and_empty() {
        assert!(Config::from_json(b"").unwrap_err().message.contains("empty"));
        assert!(Config::from_json(b"{").is_err());
        assert!(Config::from_json(b"[]").is_err());
    }

    #[test]
    fn hmac_only_when_configured_with_a_long_enough_secret() {
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let c = check(json!({"providers": [{"issuer": "i", "algorithms": ["HS256"], "hmacSecret": secret}]})).unwrap();
        assert!(c.providers[0].keys.keys[0].supports(Alg::HS256));
        let e = error_of(json!({"providers": [{"issuer": "i", "algorithms": ["HS512"], "hmacSecret": secret}]}));
        assert!(e.contains("at least 64"), "{e}");
    }

    #[test]
    fn a_bare_scheme_prefix_is_the_scheme_and_its_space() {
        // Istio's `prefix: Bearer` (no space): jwt_authn reads `Bearer <token>` with it, so it
        // must not leave every token with a leading space.
        let c = check(json!({"providers": [{"issuer": "i", "jwks": jwks(),
            "fromHeaders": [{"name": "authorization", "prefix": "Bearer"}, {"name": "x-jwt", "prefix": "tok_"}]}]}))
        .unwrap();
        assert_eq!(
            c.providers[0].locations,
            vec![
                Location::Header {
                    name: "authorization".into(),
                    prefix: "Bearer ".into()
                },
                Location::Header {
                    name: "x-jwt".into(),
                    prefix: "tok_".into()
                },
            ]
        );
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("providers[0].fromHeaders[0].prefix") && w.contains("\"Bearer \"")),
            "{:?}",
            c.warnings()
        );
        let k = TestKey::generate(Alg::ES256, "k1");
        let c = check(json!({"providers": [{"issuer": "https://idp", "jwks": k.jwks(),
            "fromHeaders": [{"name": "authorization", "prefix": "Bearer"}]}]}))
        .unwrap();
        let t = k.sign(&json!({"iss": "https://idp", "sub": "alice", "exp": 4_000_000_000u64}));
        let h = [("authorization", format!("Bearer {t}"))];
        let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let d = crate::request::decision::authenticate(
            &c,
            &crate::token::Request { headers: &h, path: "/" },
            1_800_000_000,
        );
        assert!(
            matches!(d, crate::request::decision::Decision::Allow { identity: Some(_) }),
            "{d:?}"
        );
    }

    #[test]
    fn locations_compile() {
        let c = check(json!({"providers": [{"issuer": "i", "jwks": jwks(),
            "fromHeaders": [{"name": "X-Forwarded-JWT"}], "fromParams": ["access_token"], "fromCookies": ["session"]}]}))
        .unwrap();
        assert_eq!(
            c.providers[0].locations,
            vec![
                Location::Header {
                    name: "x-forwarded-jwt".into(),
                    prefix: String::new()
                },
                Location::Param("access_token".into()),
                Location::Cookie("session".into()),
            ]
        );
    }

    #[test]
    fn a_key_set_is_shared_per_url_and_cluster() {
        // Providers fetching one URL through one cluster share one set in shared data; through
        // another cluster (another route to the keys) they do not.
        let c = check(json!({"providers": [
            {"name": "a", "issuer": "https://a", "jwksUri": "https://idp.example/keys"},
            {"name": "b", "issuer": "https://b", "jwksUri": "https://idp.example/keys"},
            {"name": "c", "issuer": "https://c", "jwksUri": "https://idp.example/keys",
             "jwksCluster": "outbound|443||egress.example"},
            {"name": "d", "issuer": "https://d", "jwksUri": "https://idp.example/keys",
             "jwksCluster": "outbound|443||idp.example"}
        ]}))
        .unwrap();
        let key = |i: usize| c.providers[i].remote.as_ref().unwrap().shared_key.clone();
        assert_eq!(key(0), key(1));
        assert_ne!(key(0), key(2));
        // Naming the cluster the URL implies is the same route.
        assert_eq!(key(0), key(3));
    }

    #[test]
    fn remote_jwks_options() {
        let c = check(
            json!({"providers": [{"issuer": "https://idp.example", "jwksUri": "https://idp.example:8443/keys?v=1"}]}),
        )
        .unwrap();
        let r = c.providers[0].remote.as_ref().unwrap();
        assert_eq!(r.url.istio_cluster(), "outbound|8443||idp.example");
        assert_eq!(
            (r.url.authority().as_str(), r.url.path.as_str()),
            ("idp.example:8443", "/keys?v=1")
        );
        assert_eq!(
            (r.timeout_ms, r.refresh_ms, r.cooldown_ms, r.max_stale_ms, r.wait_ms),
            (5_000, 600_000, 30_000, 86_400_000, 5_000)
        );
        assert!(c.providers[0].keys.is_empty());
        let c = check(
            json!({"providers": [{"issuer": "https://idp.example/realms/a", "oidcDiscovery": true,
            "jwksCluster": "outbound|443||keycloak.auth.svc.cluster.local", "timeout": "750ms", "maxStale": "2h"}]}),
        )
        .unwrap();
        let r = c.providers[0].remote.as_ref().unwrap();
        assert_eq!(r.url.path, "/realms/a/.well-known/openid-configuration");
        assert_eq!((r.timeout_ms, r.max_stale_ms), (750, 7_200_000));
        assert!(!r.bootstrap_fallback, "off unless asked for");
        let j = jwks();
        // Bootstrap keys beside a remote source, and the opt-in to fall back to them.
        for (fallback, want) in [(json!(null), false), (json!(false), false), (json!(true), true)] {
            let mut p = json!({"issuer": "https://i", "jwks": j, "jwksUri": "https://i/k"});
            if !fallback.is_null() {
                p["bootstrapJwksFallback"] = fallback;
            }
            let c = check(json!({"providers": [p]})).unwrap();
            assert_eq!(c.providers[0].remote.as_ref().unwrap().bootstrap_fallback, want);
            assert!(!c.providers[0].keys.is_empty());
        }
        let cases = vec![
            (
                json!({"issuer": "i", "jwksUri": "ftp://x/keys"}),
                "providers[0].jwksUri: \"ftp://x/keys\" must start with https://",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https:///keys"}),
                "providers[0].jwksUri",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://h:99999/k"}),
                "providers[0].jwksUri",
            ),
            (
                json!({"issuer": "i", "oidcDiscovery": true}),
                "providers[0].oidcDiscovery: the issuer must be an http(s) URL",
            ),
            (
                json!({"issuer": "https://i", "oidcDiscovery": true, "jwksUri": "https://i/k"}),
                "providers[0].oidcDiscovery: give either",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "timeout": "5 parsecs"}),
                "providers[0].timeout",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "timeout": "2m"}),
                "providers[0].timeout: must be between",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "jwksRefreshInterval": "10s"}),
                "providers[0].jwksRefreshInterval",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "maxStale": "1m"}),
                "providers[0].maxStale",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "jwksMaxBytes": 10}),
                "providers[0].jwksMaxBytes",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "jwksCluster": ""}),
                "providers[0].jwksCluster",
            ),
            (
                json!({"issuer": "i", "jwks": j, "maxStale": "1h"}),
                "providers[0].maxStale: only applies with jwksUri",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "algorithms": ["HS256"], "hmacSecret": URL_SAFE_NO_PAD.encode([1u8; 32])}),
                "providers[0].hmacSecret: cannot be combined",
            ),
            (
                json!({"issuer": "i", "jwks": j, "bootstrapJwksFallback": true}),
                "providers[0].bootstrapJwksFallback: only applies with jwksUri",
            ),
            (
                json!({"issuer": "i", "jwksUri": "https://i/k", "bootstrapJwksFallback": true}),
                "providers[0].bootstrapJwksFallback: needs jwks",
            ),
            (
                json!({"issuer": "https://i", "oidcDiscovery": true, "bootstrapJwksFallback": true}),
                "providers[0].bootstrapJwksFallback: needs jwks",
            ),
            (
                json!({"issuer": "i", "jwks": j, "jwksUri": "https://i/k", "bootstrapJwksFallback": "yes"}),
                "bootstrapJwksFallback",
            ),
        ];
        for (p, want) in cases {
            let e = error_of(json!({"providers": [p]}));
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        assert!(parse_duration_ms("1d").is_err());
        assert!(parse_duration_ms("-1s").is_err());
        assert!(parse_duration_ms("99999999999999999h").is_err());
    }

    #[test]
    fn identity_output_options() {
        let j = jwks();
        let c = check(json!({"providers": [{"issuer": "i", "jwks": j, "outputClaimToHeaders": [{"header": "X-Email", "claim": "email"}],
            "outputPayloadToHeader": "x-payload"}], "rules": [{"name": "r", "requestHeadersToAdd": [{"header": "x-by", "value": "r"}]}]}))
        .unwrap();
        assert_eq!(c.managed_headers, vec!["x-email", "x-payload", "x-by"]);
        let cases = vec![
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "fromHeaders": [{"name": "x-jwt"}], "outputClaimToHeaders": [{"header": "x-jwt", "claim": "sub"}]}]}),
                "providers[0].outputClaimToHeaders[0].header: \"x-jwt\" is also where provider",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "outputClaimToHeaders": [{"header": "authorization", "claim": "sub"}]}]}),
                "providers[0].outputClaimToHeaders[0].header",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "outputClaimToHeaders": [{"header": "x-a", "claim": "sub", "arrayFormat": "csv"}]}]}),
                "providers[0].outputClaimToHeaders[0].arrayFormat",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "outputClaimToHeaders": [{"header": "x-a", "claim": "a"}, {"header": "X-A", "claim": "b"}]}]}),
                "providers[0].outputClaimToHeaders[1].header: \"x-a\" is mapped twice",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "outputPayloadToHeader": "host"}]}),
                "providers[0].outputPayloadToHeader",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "rules": [{"name": "d", "action": "DENY", "requestHeadersToAdd": [{"header": "x-a", "value": "v"}]}]}),
                "rules[0].requestHeadersToAdd: only an ALLOW rule",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "rules": [{"name": "a", "requestHeadersToAdd": [{"header": "x-a", "value": "v", "claim": "c"}]}]}),
                "rules[0].requestHeadersToAdd[0]: give exactly one of value or claim",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "rules": [{"name": "a", "requestHeadersToAdd": [{"header": "x-a", "value": "a\r\nb"}]}]}),
                "rules[0].requestHeadersToAdd[0].value",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j, "claimsToFilterState": ["a b"]}]}),
                "providers[0].claimsToFilterState[0]",
            ),
            (
                json!({"providers": [{"issuer": "i", "jwks": j}], "claimHeaderMaxBytes": 1}),
                "claimHeaderMaxBytes",
            ),
        ];
        for (cfg, want) in cases {
            let e = error_of(cfg.clone());
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }

    const ARN: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188";

    #[test]
    fn alb_providers_compile_with_aws_defaults() {
        let c = check(json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN, ARN]}}]})).unwrap();
        let p = &c.providers[0];
        let a = p.alb.as_ref().unwrap();
        assert_eq!(p.name, "alb");
        assert_eq!(p.algorithms, vec![Alg::ES256]);
        assert_eq!(a.signers, vec![ARN.to_string()]);
        assert_eq!(a.keys_url.authority(), "public-keys.auth.elb.eu-west-1.amazonaws.com");
        assert_eq!(a.cluster, "outbound|443||public-keys.auth.elb.eu-west-1.amazonaws.com");
        assert_eq!(
            p.locations,
            vec![Location::Header {
                name: "x-amzn-oidc-data".into(),
                prefix: String::new()
            }]
        );
        // The unsigned ALB headers are removed from every request...
        assert!(c.managed_headers.contains(&"x-amzn-oidc-identity".to_string()));
        assert!(c.managed_headers.contains(&"x-amzn-oidc-accesstoken".to_string()));
        // ...unless kept, or verified as a token by some provider.
        let kept = check(
            json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN], "keepUnsignedHeaders": true}}]}),
        )
        .unwrap();
        assert!(kept.managed_headers.is_empty());
        let verified = check(json!({"providers": [
            {"alb": {"region": "eu-west-1", "signers": [ARN]}},
            {"issuer": "https://idp", "jwks": jwks(), "fromHeaders": [{"name": "x-amzn-oidc-accesstoken"}]}
        ]}))
        .unwrap();
        assert_eq!(verified.managed_headers, vec!["x-amzn-oidc-identity"]);
    }

    #[test]
    fn alb_config_errors_name_the_field() {
        let key = TestKey::generate(Alg::ES256, "k");
        let rsa = TestKey::rsa(Alg::RS256, "r");
        let alb = |extra: Value| {
            let mut a = json!({"region": "eu-west-1", "signers": [ARN]});
            for (k, v) in extra.as_object().unwrap() {
                a[k] = v.clone();
            }
            json!({"providers": [{"alb": a}]})
        };
        let cases = vec![
            (alb(json!({"region": "EU WEST"})), "providers[0].alb.region: \"EU WEST\" is not an AWS region"),
            (alb(json!({"signers": []})), "providers[0].alb.signers: list the ARNs"),
            (alb(json!({"signers": ["arn:aws:iam::1:role/x"]})), "providers[0].alb.signers[0]: \"arn:aws:iam::1:role/x\" is not an ALB ARN"),
            (alb(json!({"keys": {"not-a-uuid": key.public_pem()}})), "providers[0].alb.keys.not-a-uuid: ALB key ids are UUIDs"),
            (alb(json!({"keys": {"0f3c8e2a-5b7d-4c1e-9a6f-2d4b8c0e1a3f": rsa.public_pem()}})), "not an uncompressed P-256 public key"),
            (alb(json!({"timeout": "2h"})), "providers[0].alb.timeout: must be between"),
            (alb(json!({"keysUri": "ftp://x"})), "providers[0].alb.keysUri"),
            (alb(json!({"signer": ARN})), "unknown field `signer`"),
            (json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN]}, "audiences": ["x"]}]}), "providers[0].audiences: ALB tokens carry no aud"),
            (json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN]}, "jwksUri": "https://x/j"}]}), "providers[0].jwksUri: does not apply to an ALB provider"),
            (json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN]}, "algorithms": ["RS256"]}]}), "providers[0].algorithms: ALB tokens are always ES256"),
            (json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN]}, "maxLifetime": "5m"}]}), "providers[0].maxLifetime: does not apply to ALB tokens"),
            (json!({"providers": [{"alb": {"region": "eu-west-1", "signers": [ARN]}, "subjects": ["user-*"]}]}), "providers[0].subjects: does not apply to ALB tokens"),
            (json!({"providers": [
                {"alb": {"region": "eu-west-1", "signers": [ARN]}},
                {"issuer": "https://idp", "jwks": jwks(), "fromHeaders": [{"name": "x-amzn-oidc-data"}]}
            ]}), "providers[0]: reads ALB tokens from header x-amzn-oidc-data, which provider \"https://idp\" also reads"),
        ];
        for (cfg, want) in cases {
            let e = error_of(cfg.clone());
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }

    #[test]
    fn presets_derive_issuer_keys_and_claim_names() {
        let remote = |c: &Config| {
            let r = c.providers[0].remote.as_ref().unwrap();
            format!("{}{}", r.url.authority(), r.url.path)
        };
        let aliases = |c: &Config| {
            c.providers[0]
                .claim_aliases
                .iter()
                .map(|(a, t)| format!("{a}={}", t.join(".")))
                .collect::<Vec<_>>()
        };
        let okta = check(json!({"providers": [{"preset": {"name": "okta", "domain": "acme.okta.com"}, "audiences": ["api://default"]}]})).unwrap();
        assert_eq!(okta.providers[0].issuer, "https://acme.okta.com/oauth2/default");
        assert_eq!(remote(&okta), "acme.okta.com/oauth2/default/v1/keys");
        assert_eq!(aliases(&okta), ["scope=scp"]);
        assert_eq!(okta.providers[0].algorithms, vec![Alg::RS256]);
        let auth0 = check(json!({"providers": [{"preset": {"name": "auth0", "domain": "acme.eu.auth0.com"}, "audiences": ["https://api"]}]})).unwrap();
        assert_eq!(auth0.providers[0].issuer, "https://acme.eu.auth0.com/");
        assert_eq!(remote(&auth0), "acme.eu.auth0.com/.well-known/jwks.json");
        let tid = "9188040d-6c67-4c5b-b112-36a304b66dad";
        let entra = check(
            json!({"providers": [{"preset": {"name": "entra", "tenantId": tid}, "audiences": ["api://orders"]}]}),
        )
        .unwrap();
        assert_eq!(
            entra.providers[0].issuer,
            format!("https://login.microsoftonline.com/{tid}/v2.0")
        );
        assert_eq!(
            remote(&entra),
            format!("login.microsoftonline.com/{tid}/discovery/v2.0/keys")
        );
        let v1 = check(json!({"providers": [{"preset": {"name": "entra", "tenantId": tid, "version": "1.0"}, "audiences": ["api://orders"]}]})).unwrap();
        assert_eq!(v1.providers[0].issuer, format!("https://sts.windows.net/{tid}/"));
        let cognito = check(json!({"providers": [{"preset": {"name": "cognito", "region": "eu-west-1", "userPoolId": "eu-west-1_Ab12Cd34E"}, "clientIds": ["c1"]}]})).unwrap();
        assert_eq!(
            cognito.providers[0].issuer,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12Cd34E"
        );
        assert_eq!(
            remote(&cognito),
            "cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12Cd34E/.well-known/jwks.json"
        );
        assert_eq!(aliases(&cognito), ["groups=cognito:groups"]);
        // An explicit alias wins over the preset's.
        let own = check(
            json!({"providers": [{"preset": {"name": "okta", "domain": "acme.okta.com"}, "audiences": ["a"],
            "claimAliases": {"scope": "custom.scopes", "groups": "grp"}}]}),
        )
        .unwrap();
        assert_eq!(aliases(&own), ["groups=grp", "scope=custom.scopes"]);

        let cases = vec![
            (
                json!({"preset": {"name": "okta"}}),
                "providers[0].preset.domain: is required by the okta preset",
            ),
            (
                json!({"preset": {"name": "okta", "domain": "a.okta.com/x"}}),
                "providers[0].preset.domain: \"a.okta.com/x\" is not a valid domain",
            ),
            (
                json!({"preset": {"name": "keycloak"}}),
                "providers[0].preset.name: \"keycloak\" is not one of cognito, okta, auth0, entra, txnToken",
            ),
            (
                json!({"preset": {"name": "entra", "tenantId": tid, "version": "3"}}),
                "providers[0].preset.version: \"3\" is not one of 2.0, 1.0",
            ),
            (
                json!({"preset": {"name": "auth0", "domain": "a.auth0.com"}, "issuer": "https://a.auth0.com"}),
                "providers[0].issuer: does not match the auth0 preset's issuer \"https://a.auth0.com/\"",
            ),
            (
                json!({"preset": {"name": "auth0", "domain": "a.auth0.com", "region": "x"}}),
                "providers[0].preset.region: does not apply to the auth0 preset",
            ),
            (
                json!({"preset": {"name": "cognito", "region": "eu-west-1"}, "clientIds": ["c"]}),
                "providers[0].preset.userPoolId: is required",
            ),
            (
                json!({"issuer": "https://i", "jwks": jwks(), "claimAliases": {"sub": "email"}}),
                "providers[0].claimAliases.sub: must name a claim other than",
            ),
        ];
        for (p, want) in cases {
            let e = error_of(json!({"providers": [p]}));
            assert!(e.contains(want), "{e}");
        }
    }

    /// The `txnToken` preset expands into the checks a Transaction Token needs
    /// (draft-ietf-oauth-transaction-tokens-10): the `Txn-Token` header without a scheme,
    /// `typ` `txntoken+jwt`, the trust domain as the only audience, the draft's required
    /// claims, a ten-minute lifetime bound, the token forwarded, the transaction id and
    /// subject for the application; any algorithm (not the identity-provider presets' RS256).
    #[test]
    fn txn_token_preset_compiles_to_the_drafts_checks() {
        let c = check(json!({"providers": [{"name": "txn", "preset": {"name": "txnToken"},
            "issuer": "https://tts.trust-domain.example", "audiences": ["trust-domain.example"],
            "jwksUri": "https://tts.trust-domain.example/jwks"}]}))
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(
            p.locations,
            vec![Location::Header {
                name: "txn-token".into(),
                prefix: String::new()
            }]
        );
        assert_eq!(p.token_type.as_deref(), Some("txntoken+jwt"));
        assert_eq!(p.audiences, ["trust-domain.example"]);
        assert!(p.client_ids.is_empty());
        assert_eq!(p.required_claims, ["txn", "sub", "scope", "req_wl"]);
        assert_eq!(p.max_lifetime_seconds, Some(600));
        assert!(p.require_expiration);
        assert!(p.forward_original_token, "each workload passes the Txn-Token on");
        assert_eq!(p.algorithms, Alg::DEFAULT_ALLOWED.to_vec());
        let headers: Vec<(&str, String)> = p
            .claim_headers
            .iter()
            .map(|h| (h.header.as_str(), h.claim.join(".")))
            .collect();
        assert_eq!(headers, [("x-txn-id", "txn".into()), ("x-txn-subject", "sub".into())]);
        assert_eq!(c.managed_headers, ["x-txn-id", "x-txn-subject"]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Other presets require nothing beyond the registered claims.
        let okta =
            check(json!({"providers": [{"preset": {"name": "okta", "domain": "acme.okta.com"}, "audiences": ["a"]}]}))
                .unwrap();
        assert!(okta.providers[0].required_claims.is_empty());

        // Explicit settings win where they may: the lifetime bound, the header, the
        // application's headers, the algorithms.
        let own = check(
            json!({"providers": [{"preset": {"name": "txnToken"}, "issuer": "https://tts",
            "audiences": ["td-a", "td-b"], "jwks": jwks(), "maxLifetime": "1m", "algorithms": ["ES256"],
            "fromHeaders": [{"name": "x-txn-token"}],
            "outputClaimToHeaders": [{"header": "x-action", "claim": "tctx.action"}]}]}),
        )
        .unwrap();
        let p = &own.providers[0];
        assert_eq!(p.max_lifetime_seconds, Some(60));
        assert_eq!(p.algorithms, vec![Alg::ES256]);
        assert_eq!(p.audiences, ["td-a", "td-b"]);
        assert_eq!(
            p.locations,
            vec![Location::Header {
                name: "x-txn-token".into(),
                prefix: String::new()
            }]
        );
        assert_eq!(own.managed_headers, ["x-action"]);
        assert_eq!(p.token_type.as_deref(), Some("txntoken+jwt"));
    }

    #[test]
    fn txn_token_preset_errors_name_the_field() {
        let base =
            || json!({"preset": {"name": "txnToken"}, "issuer": "https://tts", "audiences": ["td"], "jwks": jwks()});
        let with = |k: &str, v: Value| {
            let mut p = base();
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v;
            }
            json!({"providers": [p]})
        };
        let cases = vec![
            (
                with("audiences", Value::Null),
                "providers[0].audiences: the txnToken preset needs the trust domain (the aud of its Txn-Tokens)",
            ),
            (
                with("audiences", json!([])),
                "providers[0].audiences: the txnToken preset needs the trust domain",
            ),
            (
                with("audiences", json!([""])),
                "providers[0].audiences[0]: must not be empty",
            ),
            (
                with("clientIds", json!(["web"])),
                "providers[0].clientIds: is set by the txnToken preset",
            ),
            (
                with("tokenType", json!("at+jwt")),
                "providers[0].tokenType: is set by the txnToken preset",
            ),
            (with("issuer", Value::Null), "providers[0].issuer: is required"),
            (with("maxLifetime", json!("soon")), "providers[0].maxLifetime: "),
            (
                with("preset", json!({"name": "txnToken", "trustDomain": "td"})),
                "providers[0].preset.trustDomain: unknown field `trustDomain`",
            ),
        ];
        for (cfg, want) in cases {
            let e = error_of(cfg.clone());
            assert!(e.starts_with(want), "{cfg}: {e}");
        }
    }
}
