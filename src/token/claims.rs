//! Claim paths: `realm_access.roles` (or `["https://x.io/roles"]`) parsed once at configure
//! time, and read from a verified token's claims.

use serde_json::{Map, Value};

/// Parses `a.b\.c` into `["a", "b.c"]`.
pub fn dotted(s: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('.' | '\\')) => {
                    if let Some(last) = out.last_mut() {
                        last.push(n)
                    }
                }
                _ => return Err(format!("{s:?}: '\\' may only escape '.' or '\\'")),
            },
            '.' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c)
                }
            }
        }
    }
    if out.iter().any(String::is_empty) {
        return Err(format!("{s:?} has an empty segment"));
    }
    // `https://example.com/roles` (Auth0's namespaced claims) would read as `https://example`
    // then `com/roles`: a nesting no identity provider issues, so a rule or alias on it would
    // silently never match (and a DENY rule never deny). A segment that ends inside a URL's
    // host means an unescaped dot was meant literally.
    let rest = out.split_last().map_or(&[][..], |(_, init)| init);
    if rest
        .iter()
        .any(|seg| seg.split_once("://").is_some_and(|(_, after)| !after.contains('/')))
    {
        let literal = s.replace('.', "\\.");
        return Err(format!(
            "{s:?} splits a URL at the dots of its host; a claim named by a URL is one segment: \
             write [{s:?}], or escape its dots ({literal:?})"
        ));
    }
    Ok(out)
}

/// The value at a parsed claim path: nested objects only (never into arrays).
pub fn claim_at<'a>(claims: &'a Map<String, Value>, segs: &[String]) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let mut v = claims.get(first)?;
    for s in rest {
        v = v.as_object()?.get(s)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::dotted;

    #[test]
    fn url_claim_names_are_not_split_at_their_host() {
        let err = dotted("https://example.com/roles").unwrap_err();
        assert!(err.contains("splits a URL"), "{err}");
        assert!(
            dotted("https://example.com/app.roles").is_err(),
            "no path before the dot"
        );
        // Escaped, the URL is one segment; a level below a URL claim is still a level.
        assert_eq!(
            dotted(r"https://example\.com/roles").unwrap(),
            ["https://example.com/roles"]
        );
        assert_eq!(
            dotted(r"https://example\.com/app.roles").unwrap(),
            ["https://example.com/app", "roles"]
        );
        assert_eq!(dotted("realm_access.roles").unwrap(), ["realm_access", "roles"]);
        assert_eq!(dotted("cognito:groups").unwrap(), ["cognito:groups"]);
        assert!(dotted("https://example.com/roles.x").unwrap_err().contains("splits"));
    }

    #[test]
    fn configs_naming_url_claims_unescaped_are_refused_with_the_field() {
        let key = claimguard_testkeys::TestKey::generate(crate::crypto::alg::Alg::ES256, "k");
        let refused = |extra: serde_json::Value, rules: serde_json::Value| {
            let mut p = serde_json::json!({"issuer": "https://idp", "jwks": key.jwks()});
            for (k, v) in extra.as_object().into_iter().flatten() {
                p[k] = v.clone();
            }
            let c = serde_json::json!({"providers": [p], "rules": rules});
            crate::config::Config::from_json(c.to_string().as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let alias = refused(
            serde_json::json!({"claimAliases": {"groups": "https://example.com/roles"}}),
            serde_json::json!([]),
        );
        assert!(alias.contains("providers[0].claimAliases.groups"), "{alias}");
        let deny = refused(
            serde_json::json!({}),
            serde_json::json!([{"name": "no-guests", "action": "DENY",
                "when": [{"claim": "https://example.com/roles", "values": ["guest"]}]}]),
        );
        assert!(
            deny.contains("rules[0].when[0].claim") && deny.contains("splits a URL"),
            "{deny}"
        );
        // The array form and the escaped form are accepted.
        for ok in [
            serde_json::json!(["https://example.com/roles"]),
            serde_json::json!(r"https://example\.com/roles"),
        ] {
            assert_eq!(
                refused(
                    serde_json::json!({"claimAliases": {"groups": ok}}),
                    serde_json::json!([])
                ),
                ""
            );
        }
    }
}
