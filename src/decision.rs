//! One request's authentication outcome: find the token, pick the provider by issuer, verify,
//! and turn a failure into the exact response the client gets (RFC 6750 `WWW-Authenticate`,
//! a short JSON body). Pure: the host layer only carries out the [`Decision`].

use crate::config::{Config, Provider};
use crate::token::{extract, parse, Location, Request};
use crate::verify::{claimed_issuer, verify, AuthError};
use serde_json::{json, Map, Value};

/// Who the verified token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub provider: String,
    pub issuer: String,
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Continue upstream. `None` when no token was sent and a provider allows that.
    Allow {
        identity: Option<Identity>,
    },
    Deny(Denial),
}

/// A local reply: status, headers and body, plus why (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub reason: &'static str,
    pub description: String,
    pub provider: Option<String>,
}

impl Denial {
    pub fn unauthenticated(realm: &str, error: &AuthError, provider: Option<&str>) -> Denial {
        let description = header_safe(&error.description());
        let (status, code, www) = match error {
            // RFC 6750 §3.1: with no authentication information at all, send no error code.
            AuthError::Missing => (401, "missing_token", format!("Bearer realm=\"{realm}\"")),
            AuthError::MultipleTokens => (
                400,
                "invalid_request",
                format!("Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{description}\""),
            ),
            _ => (
                401,
                "invalid_token",
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""),
            ),
        };
        let body = json!({"error": code, "message": description}).to_string();
        Denial {
            status,
            headers: vec![
                ("www-authenticate".into(), www),
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body,
            reason: error.reason(),
            description,
            provider: provider.map(str::to_owned),
        }
    }
}

/// Descriptions are built from fixed text, but they go into a quoted-string of a response
/// header: keep them to printable ASCII without quotes or backslashes, whatever changes later.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (' '..='~').contains(&c) && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Authenticates one request at time `now` (seconds since the epoch).
pub fn authenticate(config: &Config, req: &Request, now: u64) -> Decision {
    match find_and_verify(config, req, now) {
        Ok(identity) => Decision::Allow { identity },
        Err((e, provider)) => Decision::Deny(Denial::unauthenticated(&config.realm, &e, provider)),
    }
}

type Failure<'c> = (AuthError, Option<&'c str>);

fn find_and_verify<'c>(
    config: &'c Config,
    req: &Request,
    now: u64,
) -> Result<Option<Identity>, Failure<'c>> {
    // Every distinct location any provider reads, and what it holds.
    let mut locations: Vec<&Location> = Vec::new();
    for p in &config.providers {
        for l in &p.locations {
            if !locations.contains(&l) {
                locations.push(l);
            }
        }
    }
    let mut found: Option<(&Location, String)> = None;
    for loc in locations {
        for token in extract(loc, req) {
            if found.is_some() {
                return Err((AuthError::MultipleTokens, None));
            }
            found = Some((loc, token));
        }
    }
    let Some((loc, raw)) = found else {
        return if config.providers.iter().any(|p| p.allow_missing) {
            Ok(None)
        } else {
            Err((AuthError::Missing, None))
        };
    };

    let readers: Vec<&Provider> = config
        .providers
        .iter()
        .filter(|p| p.locations.contains(loc))
        .collect();
    let max = readers.iter().map(|p| p.max_token_bytes).max().unwrap_or(0);
    let jwt = parse(&raw, max).map_err(|e| (AuthError::from(e), None))?;
    let iss = claimed_issuer(&jwt);
    let mut first_error: Option<Failure> = None;
    for p in readers
        .into_iter()
        .filter(|p| Some(p.issuer.as_str()) == iss)
    {
        let result = if raw.len() > p.max_token_bytes {
            Err(AuthError::TooLarge {
                limit: p.max_token_bytes,
            })
        } else {
            verify(p, &jwt, now)
        };
        match result {
            Ok(()) => {
                return Ok(Some(Identity {
                    provider: p.name.clone(),
                    issuer: p.issuer.clone(),
                    subject: jwt
                        .claims
                        .get("sub")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    claims: jwt.claims,
                }))
            }
            Err(e) => {
                first_error.get_or_insert((e, Some(p.name.as_str())));
            }
        }
    }
    Err(first_error.unwrap_or((AuthError::UnknownIssuer, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Alg;
    use crate::devtools::keys::{unsigned_token, TestKey};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn config(extra: Value) -> (Config, TestKey, TestKey) {
        let a = TestKey::generate(Alg::ES256, "a1");
        let b = TestKey::generate(Alg::EdDSA, "b1");
        let mut cfg = json!({"providers": [
            {"name": "idp-a", "issuer": "https://a", "audiences": ["api"], "jwks": a.jwks()},
            {"name": "idp-b", "issuer": "https://b", "audiences": ["api"], "jwks": b.jwks(),
             "fromHeaders": [{"name": "x-jwt"}, {"name": "authorization", "prefix": "Bearer "}]}
        ]});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                cfg["providers"][0][k] = v;
            }
        }
        (Config::from_json(cfg.to_string().as_bytes()).unwrap(), a, b)
    }

    fn claims(iss: &str) -> Value {
        json!({"iss": iss, "aud": "api", "sub": "alice", "exp": NOW + 60})
    }

    fn run(c: &Config, headers: &[(&str, &str)], path: &str) -> Decision {
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        authenticate(c, &Request { headers: &h, path }, NOW)
    }

    fn denial(d: Decision) -> Denial {
        match d {
            Decision::Deny(d) => d,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn picks_the_provider_by_issuer() {
        let (c, a, b) = config(json!({}));
        let ta = format!("Bearer {}", a.sign(&claims("https://a")));
        let tb = b.sign(&claims("https://b"));
        match run(&c, &[("authorization", &ta)], "/") {
            Decision::Allow { identity: Some(id) } => {
                assert_eq!(id.provider, "idp-a");
                assert_eq!(id.subject.as_deref(), Some("alice"));
            }
            other => panic!("{other:?}"),
        }
        match run(&c, &[("x-jwt", &tb)], "/") {
            Decision::Allow { identity: Some(id) } => assert_eq!(id.provider, "idp-b"),
            other => panic!("{other:?}"),
        }
        // idp-a does not read x-jwt, so its token there has no provider.
        let d = denial(run(&c, &[("x-jwt", &a.sign(&claims("https://a")))], "/"));
        assert_eq!(d.reason, "unknown_issuer");
    }

    #[test]
    fn missing_token_is_rfc6750_without_error_code() {
        let (c, _, _) = config(json!({}));
        let d = denial(run(&c, &[], "/"));
        assert_eq!(d.status, 401);
        assert_eq!(
            d.headers[0],
            (
                "www-authenticate".into(),
                "Bearer realm=\"claimguard\"".into()
            )
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "missing_token", "message": "a bearer token is required"})
        );
    }

    #[test]
    fn allow_missing_lets_anonymous_through_but_not_bad_tokens() {
        let (c, _, _) = config(json!({"allowMissing": true}));
        assert_eq!(run(&c, &[], "/"), Decision::Allow { identity: None });
        let d = denial(run(&c, &[("authorization", "Bearer x.y.z")], "/"));
        assert_eq!(d.status, 401);
        assert_eq!(d.reason, "malformed");
    }

    #[test]
    fn invalid_tokens_get_invalid_token_with_description() {
        let (c, a, _) = config(json!({}));
        let expired = a.sign(&json!({"iss": "https://a", "aud": "api", "exp": NOW - 3600}));
        let d = denial(run(
            &c,
            &[("authorization", &format!("Bearer {expired}"))],
            "/",
        ));
        assert_eq!(d.status, 401);
        assert_eq!(d.provider.as_deref(), Some("idp-a"));
        assert_eq!(
            d.headers[0].1,
            "Bearer realm=\"claimguard\", error=\"invalid_token\", error_description=\"token has expired\""
        );
        assert!(!d.body.contains(&expired));
        let none = unsigned_token(&json!({"alg": "none"}), &claims("https://a"), "");
        let d = denial(run(
            &c,
            &[("authorization", &format!("Bearer {none}"))],
            "/",
        ));
        assert_eq!(
            d.reason, "malformed",
            "an empty signature part is malformed before alg is read"
        );
        let none = unsigned_token(&json!({"alg": "none"}), &claims("https://a"), "c2ln");
        let d = denial(run(
            &c,
            &[("authorization", &format!("Bearer {none}"))],
            "/",
        ));
        assert_eq!(d.reason, "alg_none");
    }

    #[test]
    fn descriptions_are_header_safe() {
        assert_eq!(header_safe("a\"b\\c\r\nd é"), "a?b?c??d ?");
    }

    #[test]
    fn two_tokens_are_refused() {
        let (c, a, _) = config(
            json!({"fromParams": ["access_token"], "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}]}),
        );
        let t = a.sign(&claims("https://a"));
        let d = denial(run(
            &c,
            &[("authorization", &format!("Bearer {t}"))],
            &format!("/?access_token={t}"),
        ));
        assert_eq!((d.status, d.reason), (400, "multiple_tokens"));
        let d = denial(run(
            &c,
            &[
                ("authorization", &format!("Bearer {t}")),
                ("authorization", &format!("Bearer {t}")),
            ],
            "/",
        ));
        assert_eq!(d.reason, "multiple_tokens");
    }
}
