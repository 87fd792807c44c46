//! A validated provider (one `jwtRules` entry): one issuer, its keys, where its tokens are
//! found and what is checked. Built only by `config::compile`.

use crate::config::model::TokenUse;
use crate::crypto::alg::Alg;
use crate::keys::alb::AlbProvider;
use crate::keys::jwk::KeySet;
use crate::keys::remote::RemoteJwks;
use crate::policy::identity::ClaimHeader;
use crate::token::Location;

/// A validated provider: one issuer, its keys, and where its tokens are found. Obtained only
/// from a validated `Config` (its fields are private to the crate); read it through the
/// accessors.
#[derive(Debug)]
pub struct Provider {
    pub(crate) name: String,
    pub(crate) issuer: String,
    /// Empty means `aud` is not checked (logged as a warning at configure time).
    pub(crate) audiences: Vec<String>,
    pub(crate) keys: KeySet,
    pub(crate) locations: Vec<Location>,
    pub(crate) algorithms: Vec<Alg>,
    pub(crate) clock_skew_seconds: u64,
    pub(crate) require_expiration: bool,
    /// When true, a request with no token at all passes (without identity); an invalid token
    /// is still refused. Envoy's `allow_missing`.
    pub(crate) allow_missing: bool,
    pub(crate) max_token_bytes: usize,
    /// `maxLifetime` (Envoy's `max_lifetime`): tokens whose `exp - iat` exceeds it, or that
    /// lack either claim, are refused. None: no limit.
    pub(crate) max_lifetime_seconds: Option<u64>,
    /// `clientIds`: accepted app clients. A token without `aud` (a Cognito access token)
    /// must carry one of them in `client_id`; a token with `aud` may name one there.
    pub(crate) client_ids: Vec<String>,
    /// `tokenUse`: the `token_use` claim every token must carry (`access` or `id`, Cognito).
    pub(crate) token_use: Option<TokenUse>,
    /// `tokenType`: the JOSE `typ` every token must carry (e.g. `at+jwt`, RFC 9068), lower
    /// case without `application/`. None: any JWT type, or none.
    pub(crate) token_type: Option<String>,
    /// Claims whose string value is a space-separated set (`scope`, `scp`) for rules.
    pub(crate) space_delimited_claims: Vec<String>,
    /// Keys fetched from the identity provider; `keys` (inline `jwks`) then only bootstrap.
    pub(crate) remote: Option<RemoteJwks>,
    /// `outputClaimToHeaders`.
    pub(crate) claim_headers: Vec<ClaimHeader>,
    /// `outputPayloadToHeader`.
    pub(crate) payload_header: Option<String>,
    /// `forwardOriginalToken` (default false, as Istio: the token header is removed).
    pub(crate) forward_original_token: bool,
    /// `claimsToFilterState`: (label, claim path), published as `claimguard.claim.LABEL`.
    pub(crate) filter_state_claims: Vec<(String, Vec<String>)>,
    /// `alb`: tokens are ALB user claims (`x-amzn-oidc-data`), not standard JWTs.
    pub(crate) alb: Option<AlbProvider>,
    /// `claimAliases` (and presets): claim name → the claim it reads, e.g. `groups` →
    /// `cognito:groups`. Applied to verified claims before rules and headers see them.
    pub(crate) claim_aliases: Vec<(String, Vec<String>)>,
    /// `trustedPrincipals`: when set, this provider's tokens count only when they arrive over
    /// mTLS from one of these workloads (e.g. the ingress gateway); from any other peer a
    /// valid token is refused with 403 `untrusted_peer`. Empty: any peer.
    pub(crate) trusted_principals: Vec<crate::policy::StrPattern>,
    /// `subjects` (Envoy's `subjects`): the token's `sub` must match one of these (exact,
    /// `prefix*`, `*suffix` or `*`). Empty: any subject.
    pub(crate) subjects: Vec<crate::policy::StrPattern>,
    /// Claims every token must carry, not null (the `txnToken` preset's; none otherwise).
    pub(crate) required_claims: &'static [&'static str],
}

impl Provider {
    /// `name` (the issuer unless given): what rules' `providers` and reports call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `issuer`: the `iss` every token must carry (empty for an ALB provider without one).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The inline keys (`jwks`, `hmacSecret`, `alb.keys`); with [`Provider::remote`] only the
    /// bootstrap ones.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Where its tokens are read from, in config order.
    pub fn locations(&self) -> &[Location] {
        &self.locations
    }

    /// The accepted signature algorithms.
    pub fn algorithms(&self) -> &[Alg] {
        &self.algorithms
    }

    /// `clockSkewSeconds`: the leeway of `exp`, `nbf` and `iat`.
    pub fn clock_skew_seconds(&self) -> u64 {
        self.clock_skew_seconds
    }

    /// `requireExpiration`: whether a token without `exp` is refused.
    pub fn require_expiration(&self) -> bool {
        self.require_expiration
    }

    /// `allowMissing`: whether a request without any token passes (without identity).
    pub fn allow_missing(&self) -> bool {
        self.allow_missing
    }

    /// Keys fetched from the identity provider (`jwksUri`, `oidcDiscovery`, a preset's).
    pub fn remote(&self) -> Option<&RemoteJwks> {
        self.remote.as_ref()
    }

    /// `forwardOriginalToken`: whether the token header reaches the upstream.
    pub fn forward_original_token(&self) -> bool {
        self.forward_original_token
    }
}
