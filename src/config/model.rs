//! The plugin configuration as written: the raw serde model (Istio `jwtRules`-shaped JSON,
//! unknown fields refused). Nothing here is validated; each layer compiles its part, and
//! `config::compile` is the only place that knows every part.

use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawConfig {
    pub(crate) providers: Vec<RawProvider>,
    #[serde(default)]
    pub(crate) realm: Option<String>,
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
    #[serde(default)]
    pub(crate) mode: Option<String>,
    #[serde(default)]
    pub(crate) path_with_escaped_slashes_action: Option<String>,
    #[serde(default)]
    pub(crate) path_with_backslash_action: Option<String>,
    #[serde(default)]
    pub(crate) path_with_parameters_action: Option<String>,
    #[serde(default)]
    pub(crate) malformed_token_header_action: Option<String>,
    #[serde(default)]
    pub(crate) case_insensitive_paths: bool,
    #[serde(default)]
    pub(crate) allow_cors_preflight: bool,
    #[serde(default)]
    pub(crate) expose_rule_names: bool,
    #[serde(default)]
    pub(crate) claim_header_max_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) decision_header: bool,
    #[serde(default)]
    pub(crate) jwt_cache_size: Option<usize>,
    #[serde(default)]
    pub(crate) jwt_cache_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) filter_state: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawProvider {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    #[serde(default)]
    pub(crate) cognito: Option<RawCognito>,
    #[serde(default)]
    pub(crate) alb: Option<RawAlb>,
    #[serde(default)]
    pub(crate) preset: Option<RawPreset>,
    #[serde(default)]
    pub(crate) client_ids: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) token_use: Option<String>,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    #[serde(default)]
    pub(crate) jwks: Option<Value>,
    #[serde(default)]
    pub(crate) from_headers: Option<Vec<RawHeader>>,
    #[serde(default)]
    pub(crate) from_params: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) from_cookies: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) clock_skew_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) require_expiration: Option<bool>,
    #[serde(default)]
    pub(crate) allow_missing: Option<bool>,
    #[serde(default)]
    pub(crate) hmac_secret: Option<String>,
    #[serde(default)]
    pub(crate) max_token_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) token_type: Option<String>,
    #[serde(default)]
    pub(crate) space_delimited_claims: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) jwks_uri: Option<String>,
    #[serde(default)]
    pub(crate) jwks_cluster: Option<String>,
    #[serde(default)]
    pub(crate) oidc_discovery: bool,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    #[serde(default)]
    pub(crate) jwks_max_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) jwks_refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) jwks_min_refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) jwks_max_refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) jwks_refetch_cooldown: Option<String>,
    #[serde(default)]
    pub(crate) max_stale: Option<String>,
    #[serde(default)]
    pub(crate) bootstrap_jwks_fallback: bool,
    #[serde(default)]
    pub(crate) jwks_wait_timeout: Option<String>,
    #[serde(default)]
    pub(crate) output_claim_to_headers: Option<Vec<RawClaimHeader>>,
    #[serde(default)]
    pub(crate) output_payload_to_header: Option<String>,
    #[serde(default)]
    pub(crate) forward_original_token: bool,
    #[serde(default)]
    pub(crate) claims_to_filter_state: Option<Vec<RawClaimPath>>,
    #[serde(default)]
    pub(crate) claim_aliases: Option<std::collections::BTreeMap<String, RawClaimPath>>,
    pub(crate) trusted_principals: Option<Vec<String>>,
}

/// Parses `500ms`, `5s`, `10m`, `24h` (or a bare number of seconds) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("")),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 10m or 24h"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?} is not a duration like 500ms, 5s, 10m or 24h")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{s:?} is too long"))
}

/// `cognito`: the user pool the issuer and JWKS URL are derived from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCognito {
    pub(crate) region: String,
    pub(crate) user_pool_id: String,
}

/// `alb`: verify an Application Load Balancer's `x-amzn-oidc-data` user claims token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawAlb {
    pub(crate) region: String,
    /// ARNs of the ALBs whose tokens are accepted (the header's `signer`).
    pub(crate) signers: Vec<String>,
    #[serde(default)]
    pub(crate) keys_uri: Option<String>,
    #[serde(default)]
    pub(crate) keys_cluster: Option<String>,
    /// kid → PEM: keys known in advance (offline use, tests); others are fetched.
    #[serde(default)]
    pub(crate) keys: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
    #[serde(default)]
    pub(crate) wait_timeout: Option<String>,
    #[serde(default)]
    pub(crate) min_fetch_interval: Option<String>,
    #[serde(default)]
    pub(crate) keep_unsigned_headers: bool,
}

/// `preset`: the settings an identity provider's tokens need, derived from a few facts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPreset {
    pub(crate) name: String,
    /// Cognito.
    #[serde(default)]
    pub(crate) region: Option<String>,
    #[serde(default)]
    pub(crate) user_pool_id: Option<String>,
    /// Okta and Auth0: the tenant's domain (or custom domain).
    #[serde(default)]
    pub(crate) domain: Option<String>,
    /// Okta: the custom authorization server (`default` unless given).
    #[serde(default)]
    pub(crate) authorization_server_id: Option<String>,
    /// Microsoft Entra ID: the directory (tenant) id, and the token version (`2.0` or `1.0`).
    #[serde(default)]
    pub(crate) tenant_id: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) form

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawRule {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default)]
    pub(crate) dry_run: bool,
    #[serde(default)]
    pub(crate) public: bool,
    #[serde(default)]
    pub(crate) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) paths: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_paths: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) principals: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) providers: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) when: Option<Vec<RawWhen>>,
    #[serde(default)]
    pub(crate) request_headers_to_add: Option<Vec<RawHeaderToAdd>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawWhen {
    #[serde(default)]
    pub(crate) claim: Option<RawClaimPath>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) values: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) not_values: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) all_values: Option<Vec<String>>,
}

/// `"realm_access.roles"` (dots separate, `\.` is a literal dot) or `["https://x.io/roles"]`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawClaimPath {
    Dotted(String),
    Segments(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawClaimHeader {
    pub(crate) header: String,
    pub(crate) claim: RawClaimPath,
    /// `join` (default) or `json`.
    #[serde(default)]
    pub(crate) array_format: Option<String>,
    #[serde(default)]
    pub(crate) separator: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawHeaderToAdd {
    pub(crate) header: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) claim: Option<RawClaimPath>,
}

/// What to do with a token header that is present but not in the configured form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedTokenHeader {
    /// 401 `invalid_token`, on every route: a sent token is always verified or refused.
    RejectRequest,
    /// Remove the header and treat the request as carrying no token.
    RemoveHeader,
}

// Bounds and defaults of `jwtCacheSize` and `jwtCacheBytes` (what they weigh: `request::cache`).

/// Entries per VM unless the config's `jwtCacheSize` says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The largest `jwtCacheSize` accepted (what the entries weigh is bounded by `jwtCacheBytes`).
pub const MAX_CAPACITY: usize = 100_000;
/// Bytes of verified tokens per VM unless the config's `jwtCacheBytes` says otherwise.
/// Parsed claims cost more than their JSON (every JSON object is a B-tree node of eleven slots):
/// in the VM (wasm32) an entry weighs about 7.5 KiB for a Keycloak access token (1.4 KiB, 21
/// claims, nested roles; `typical_entries_weigh_a_few_kib`) and about 1.3 KiB for a minimal
/// ES256 one, so this holds some 550 to 3100 tokens: more distinct tokens than one worker
/// usually sees within a token's lifetime, and a token pushed out costs one signature check. With the
/// rejected cache (an eighth) and the decision memo (half, `request::memo::memo_bytes`) a VM
/// holds at most 6.5 MiB of cached state, 13 MiB for a sidecar's two workers: a tenth of
/// Istio's default sidecar memory request (128 MiB).
pub const DEFAULT_BYTES: usize = 4 << 20;
/// The smallest `jwtCacheBytes` accepted: the rejected cache (an eighth) still holds about 16
/// tokens of the default `maxTokenBytes` (8 KiB), the floor its entry count has.
pub const MIN_BYTES: usize = 1 << 20;
/// The largest `jwtCacheBytes` accepted.
pub const MAX_BYTES: usize = 256 << 20;
