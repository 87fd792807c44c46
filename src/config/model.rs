//! The plugin configuration as written: the raw serde model (Istio `jwtRules`-shaped JSON,
//! unknown fields refused). Nothing here is validated beyond its shape, except that the closed
//! sets spelled as strings (`mode`, a rule's `action`, `tokenUse`, the `pathWith*Action`s,
//! `malformedTokenHeaderAction`, `arrayFormat`, `preset.name`) are enums, refused while
//! parsing when misspelled; each layer compiles its part, and `config::compile` is the only
//! place that knows every part.

use crate::config::error::marked_not_one_of;
use serde::Deserialize;
use serde_json::Value;

/// The choice `value` spells, if it is one of `choices`; otherwise why not, naming every choice
/// in order (marked for `error::serde_message`). What each closed set's `Deserialize` runs.
fn choose<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    match choices.iter().find(|(name, _)| *name == value) {
        Some((_, choice)) => Ok(*choice),
        None => {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            Err(marked_not_one_of(value, &names))
        }
    }
}

/// A closed set spelled as a string: an enum whose variants are written `Variant = "spelling"`.
/// Deserializing any other string fails with `"VALUE" is not one of A, B, C` (the choices in
/// the order declared), which `Config::from_json` reports after the field path, as
/// `mode: "audit" is not one of enforce, dryRun`; a value that is not a string fails as it
/// would for a string field. An absent field is the model's `None`: its default is the
/// compiler's to choose.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $spelling:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        #[allow(dead_code)] // not every set needs every helper
        impl $name {
            /// Every choice with its spelling, in the order errors list them.
            pub const CHOICES: &'static [(&'static str, $name)] = &[$( ($spelling, $name::$variant), )+];

            /// How the configuration spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $spelling, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                choose(&value, $name::CHOICES).map_err(serde::de::Error::custom)
            }
        }
    };
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawConfig {
    pub(crate) providers: Vec<RawProvider>,
    #[serde(default)]
    pub(crate) realm: Option<String>,
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
    #[serde(default)]
    pub(crate) mode: Option<Mode>,
    #[serde(default)]
    pub(crate) path_with_escaped_slashes_action: Option<EscapedSlashes>,
    #[serde(default)]
    pub(crate) path_with_backslash_action: Option<Backslashes>,
    #[serde(default)]
    pub(crate) path_with_parameters_action: Option<PathParameters>,
    #[serde(default)]
    pub(crate) malformed_token_header_action: Option<MalformedTokenHeader>,
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
    pub(crate) token_use: Option<TokenUse>,
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
    pub(crate) max_lifetime: Option<String>,
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
    #[serde(default)]
    pub(crate) subjects: Option<Vec<String>>,
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
    pub(crate) name: PresetName,
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
    pub(crate) action: Option<RuleAction>,
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
    /// A value of the request the claim must equal: `path:NAME` (a `{NAME}` template capture),
    /// `header:NAME`, `query:NAME`.
    #[serde(default)]
    pub(crate) values_from: Option<String>,
    /// As `values_from`, negated: no claim value equals the request's.
    #[serde(default)]
    pub(crate) not_values_from: Option<String>,
    /// Compare a `valuesFrom`/`notValuesFrom` binding ASCII case-insensitively.
    #[serde(default)]
    pub(crate) ignore_case: Option<bool>,
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
    #[serde(default)]
    pub(crate) array_format: Option<RawArrayFormat>,
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

// ---------------------------------------------------------------------------------------------
// The closed sets: what the compiled configuration keeps as they are (the first choice is
// the default where a field may be absent, except where said).

closed_set! {
    /// `mode`: whether rules decide (`enforce`, the default) or only report (`dryRun`).
    pub enum Mode {
        Enforce = "enforce",
        DryRun = "dryRun",
    }
}

closed_set! {
    /// A rule's `action` (default `ALLOW`).
    pub enum RuleAction {
        Allow = "ALLOW",
        Deny = "DENY",
        Audit = "AUDIT",
    }
}

closed_set! {
    /// What to do with `%2F` / `%5C` (an escaped `/` or `\`), named after Envoy's
    /// `path_with_escaped_slashes_action` (`pathWithEscapedSlashesAction`).
    pub enum EscapedSlashes {
        /// Refuse the request (400): the safe default, since the upstream may decode them.
        RejectRequest = "REJECT_REQUEST",
        /// Decode them to `/` before matching; the upstream receives the decoded path.
        UnescapeAndForward = "UNESCAPE_AND_FORWARD",
        /// Leave them encoded: `%2F` stays part of its segment, for rules and upstream alike.
        KeepUnchanged = "KEEP_UNCHANGED",
    }
}

closed_set! {
    /// What to do with a raw `\` in the path (`pathWithBackslashAction`).
    pub enum Backslashes {
        /// Refuse the request (400): servers disagree on whether `\` separates segments.
        RejectRequest = "REJECT_REQUEST",
        /// Treat it as `/`; the upstream receives `/`.
        ConvertToSlash = "CONVERT_TO_SLASH",
    }
}

closed_set! {
    /// What to do with `;` path parameters (`pathWithParametersAction`).
    pub enum PathParameters {
        /// Refuse the request (400): Tomcat and Spring drop `;…` from each segment before routing,
        /// other servers keep it, so `/admin;x/users` and `/docs/..;/admin` mean two things.
        RejectRequest = "REJECT_REQUEST",
        /// For matrix-parameter APIs: rules see each segment without its parameters (as Tomcat
        /// and JAX-RS route), the upstream receives them; a segment that is empty, `.` or `..`
        /// before its `;` is refused (its meaning is the ambiguity itself).
        MatchWithoutParameters = "MATCH_WITHOUT_PARAMETERS",
    }
}

closed_set! {
    /// What to do with a token header that is present but not in the configured form
    /// (`malformedTokenHeaderAction`).
    pub enum MalformedTokenHeader {
        /// 401 `invalid_token`, on every route: a sent token is always verified or refused.
        RejectRequest = "REJECT_REQUEST",
        /// Remove the header and treat the request as carrying no token.
        RemoveHeader = "REMOVE_HEADER",
    }
}

closed_set! {
    /// `tokenUse`: the `token_use` claim every token must carry (Cognito); absent, none is
    /// required.
    pub enum TokenUse {
        Access = "access",
        Id = "id",
    }
}

closed_set! {
    /// `outputClaimToHeaders[].arrayFormat`: how an array claim becomes a header value (`join`,
    /// the default, with `separator`; or `json`).
    pub(crate) enum RawArrayFormat {
        Join = "join",
        Json = "json",
    }
}

closed_set! {
    /// `preset.name`: the identity provider a preset describes (required).
    pub(crate) enum PresetName {
        Cognito = "cognito",
        Okta = "okta",
        Auth0 = "auth0",
        Entra = "entra",
        /// Transaction Tokens (draft-ietf-oauth-transaction-tokens-10), not an identity
        /// provider: what a trust domain's Transaction Token Service mints.
        TxnToken = "txnToken",
    }
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
