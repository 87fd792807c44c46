//! A validated provider (one `jwtRules` entry): one issuer, its keys, where its tokens are
//! found and what is checked. Built only by `config::compile`.

use crate::config::model::TokenUse;
use crate::crypto::alg::Alg;
use crate::keys::alb::AlbProvider;
use crate::keys::jwk::KeySet;
use crate::keys::remote::RemoteJwks;
use crate::policy::identity::ClaimHeader;
use crate::token::Location;

/// A validated provider: one issuer, its keys, and where its tokens are found.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Empty means `aud` is not checked (logged as a warning at configure time).
    pub audiences: Vec<String>,
    pub keys: KeySet,
    pub locations: Vec<Location>,
    pub algorithms: Vec<Alg>,
    pub clock_skew_seconds: u64,
    pub require_expiration: bool,
    /// When true, a request with no token at all passes (without identity); an invalid token
    /// is still refused. Envoy's `allow_missing`.
    pub allow_missing: bool,
    pub max_token_bytes: usize,
    /// `clientIds`: accepted app clients. A token without `aud` (a Cognito access token)
    /// must carry one of them in `client_id`; a token with `aud` may name one there.
    pub client_ids: Vec<String>,
    /// `tokenUse`: the `token_use` claim every token must carry (`access` or `id`, Cognito).
    pub token_use: Option<TokenUse>,
    /// `tokenType`: the JOSE `typ` every token must carry (e.g. `at+jwt`, RFC 9068), lower
    /// case without `application/`. None: any JWT type, or none.
    pub token_type: Option<String>,
    /// Claims whose string value is a space-separated set (`scope`, `scp`) for rules.
    pub space_delimited_claims: Vec<String>,
    /// Keys fetched from the identity provider; `keys` (inline `jwks`) then only bootstrap.
    pub remote: Option<RemoteJwks>,
    /// `outputClaimToHeaders`.
    pub claim_headers: Vec<ClaimHeader>,
    /// `outputPayloadToHeader`.
    pub payload_header: Option<String>,
    /// `forwardOriginalToken` (default false, as Istio: the token header is removed).
    pub forward_original_token: bool,
    /// `claimsToFilterState`: (label, claim path), published as `claimguard.claim.LABEL`.
    pub filter_state_claims: Vec<(String, Vec<String>)>,
    /// `alb`: tokens are ALB user claims (`x-amzn-oidc-data`), not standard JWTs.
    pub alb: Option<AlbProvider>,
    /// `claimAliases` (and presets): claim name → the claim it reads, e.g. `groups` →
    /// `cognito:groups`. Applied to verified claims before rules and headers see them.
    pub claim_aliases: Vec<(String, Vec<String>)>,
    /// `trustedPrincipals`: when set, this provider's tokens count only when they arrive over
    /// mTLS from one of these workloads (e.g. the ingress gateway); from any other peer a
    /// valid token is refused with 403 `untrusted_peer`. Empty: any peer.
    pub trusted_principals: Vec<crate::policy::StrPattern>,
}
