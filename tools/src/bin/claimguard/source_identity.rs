//! `import-istio`: an AuthorizationPolicy `from.source`'s `serviceAccounts`,
//! `notServiceAccounts`, `trustDomains` and `notTrustDomains` → claimguard `principals` /
//! `notPrincipals`, the one peer-identity field claimguard has for all four.
//!
//! What Istio does (istio/api `security/v1beta1/authorization_policy.proto`, `Source`; istiod
//! `pilot/pkg/security/authz/model/generator.go`; validation in `pkg/config/security`):
//! - `serviceAccounts`: `<namespace>/<serviceaccount>`, or `<serviceaccount>` for the policy's
//!   own namespace; no wildcard; not beside `principals`/`namespaces` (validation refuses it).
//!   istiod matches the peer's SPIFFE ID `spiffe://<any trust domain>/ns/<ns>/sa/<sa>`.
//! - `trustDomains`: exact, `prefix*`, `*suffix` or `*`, never containing `/`; the part of
//!   the SPIFFE ID before the first `/`.
//! - Fields of one source are ANDed, values of one field ORed.
//!
//! claimguard compares peer identities in Istio's form without `spiffe://`
//! (`cluster.local/ns/web/sa/frontend`) with exact, `prefix*`, `*suffix` and `*` patterns. The
//! translation is exact for the identities Istio issues to Kubernetes workloads,
//! `<trust domain>/ns/<ns>/sa/<sa>`: service account `ns/sa` → `*/ns/ns/sa/sa`, trust domain
//! `td` → `td/*` (`td*` → `td*`, `*` → `*`). Where two fields must both hold, the result is
//! their intersection: service accounts × exact trust domains become exact principals
//! (`td/ns/ns/sa/sa`), principals are kept when their trust domain matches. What no pattern can
//! express (a trust-domain suffix, or a trust-domain wildcard beside service accounts) is
//! refused with the reason, never widened.

use serde_json::{Map, Value};

/// The translation of one source's peer-identity fields.
#[derive(Debug, Default, PartialEq)]
pub struct PeerIds {
    /// The `principals` the rule gets (None: leave whatever the source had).
    pub principals: Option<Vec<String>>,
    /// Added to `notPrincipals`.
    pub not_principals: Vec<String>,
    /// (field, why) for each field that could not be translated; the caller reports it and
    /// treats it as any untranslatable condition.
    pub untranslated: Vec<(&'static str, String)>,
    /// Set when the fields that must all hold have no identity in common: the source matches
    /// no peer, in Istio as in claimguard.
    pub matches_nothing: Option<String>,
}

/// A `trustDomains` value, as Istio's validation admits it.
#[derive(Debug, Clone, PartialEq)]
enum Domain {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
}

impl Domain {
    fn parse(v: &str) -> Result<Domain, String> {
        let bad = |why: &str| Err(format!("trust domain {v:?}: {why}, which Istio's validation refuses"));
        if v.is_empty() {
            return bad("empty");
        }
        if v.contains('/') {
            return bad("contains '/'");
        }
        match (v.matches('*').count(), v.strip_suffix('*'), v.strip_prefix('*')) {
            _ if v == "*" => Ok(Domain::Any),
            (0, _, _) => Ok(Domain::Exact(v.into())),
            (1, Some(p), _) => Ok(Domain::Prefix(p.into())),
            (1, _, Some(s)) => Ok(Domain::Suffix(s.into())),
            _ => bad("a '*' other than one at its start or end"),
        }
    }

    fn matches(&self, d: &str) -> bool {
        match self {
            Domain::Exact(e) => d == e,
            Domain::Prefix(p) => d.starts_with(p.as_str()),
            Domain::Suffix(s) => d.ends_with(s.as_str()),
            Domain::Any => true,
        }
    }

    fn text(&self) -> String {
        match self {
            Domain::Exact(e) => e.clone(),
            Domain::Prefix(p) => format!("{p}*"),
            Domain::Suffix(s) => format!("*{s}"),
            Domain::Any => "*".into(),
        }
    }

    /// The principal pattern for "the trust domain is this", if one exists.
    fn principal_pattern(&self) -> Result<String, String> {
        match self {
            Domain::Exact(d) => Ok(format!("{d}/*")),
            Domain::Prefix(p) => Ok(format!("{p}*")),
            Domain::Any => Ok("*".into()),
            Domain::Suffix(_) => Err(format!(
                "trust domain {:?} ends the trust domain, the middle of a peer principal (TD/ns/NS/sa/SA), and claimguard's principal patterns (exact, prefix*, *suffix, *) cannot express that",
                self.text()
            )),
        }
    }
}

/// A `serviceAccounts` value → (namespace, service account), as Istio's validation admits it.
fn service_account(v: &str, policy_namespace: Option<&str>) -> Result<(String, String), String> {
    let bad = |why: &str| {
        Err(format!(
            "service account {v:?}: {why}, which Istio's validation refuses"
        ))
    };
    if v.is_empty() {
        return bad("empty");
    }
    if v.contains('*') {
        return bad("a wildcard");
    }
    match v.split_once('/') {
        Some((_, sa)) if sa.contains('/') => bad("more than one '/' (expected <namespace>/<serviceaccount>)"),
        Some(("", _)) => bad("an empty namespace"),
        Some((_, "")) => bad("an empty service account"),
        Some((ns, sa)) => Ok((ns.into(), sa.into())),
        None => match policy_namespace {
            Some(ns) => Ok((ns.into(), v.into())),
            None => Err(format!(
                "service account {v:?} is in the policy's own namespace, and the AuthorizationPolicy has no metadata.namespace (give --namespace)"
            )),
        },
    }
}

fn strings(field: &str, v: &Value) -> Result<Vec<String>, String> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| format!("{field} is not a list of strings"))
}

/// A principal pattern (claimguard's and Istio's `principals` syntax) that must hold together
/// with a trust domain: the pattern for both, Ok(None) when no identity satisfies both, Err
/// when no single pattern expresses it.
fn principal_in_domain(p: &str, td: &Domain) -> Result<Option<String>, String> {
    let bare = p.strip_prefix("spiffe://").unwrap_or(p);
    let unexpressible = || {
        Err(format!(
            "principal {p:?} and trust domain {:?} must both hold, and no single exact, prefix* or *suffix pattern says that",
            td.text()
        ))
    };
    if bare == "*" {
        return td.principal_pattern().map(Some);
    }
    let keep_if = |domain: &str| Ok(td.matches(domain).then(|| p.to_string()));
    if let Some(prefix) = bare.strip_suffix('*') {
        if let Some((domain, _)) = prefix.split_once('/') {
            return keep_if(domain);
        }
        // Only the start of the trust domain is known.
        return match td {
            Domain::Any => Ok(Some(p.to_string())),
            Domain::Exact(d) => Ok(d.starts_with(prefix).then(|| format!("{d}/*"))),
            Domain::Prefix(x) if x.starts_with(prefix) => Ok(Some(format!("{x}*"))),
            Domain::Prefix(x) if prefix.starts_with(x.as_str()) => Ok(Some(p.to_string())),
            Domain::Prefix(_) => Ok(None),
            Domain::Suffix(_) => unexpressible(),
        };
    }
    if bare.starts_with('*') {
        return match td {
            Domain::Any => Ok(Some(p.to_string())),
            _ => unexpressible(),
        };
    }
    match bare.split_once('/') {
        Some((domain, _)) => keep_if(domain),
        // An identity without a path has no trust domain Istio's matchers accept, but `*`.
        None => Ok(matches!(td, Domain::Any).then(|| p.to_string())),
    }
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in list {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Translates the peer-identity fields of one `from.source` (`policy_namespace`: the
/// AuthorizationPolicy's namespace, for service accounts given without one).
pub fn translate(source: &Map<String, Value>, policy_namespace: Option<&str>) -> PeerIds {
    let mut out = PeerIds::default();
    let mut sas = None;
    let mut not_sas = None;
    let beside = ["principals", "notPrincipals", "namespaces", "notNamespaces"]
        .iter()
        .any(|f| source.contains_key(*f));
    for (field, slot) in [("serviceAccounts", &mut sas), ("notServiceAccounts", &mut not_sas)] {
        let Some(v) = source.get(field) else { continue };
        if beside {
            out.untranslated.push((
                field,
                "Istio's validation refuses serviceAccounts/notServiceAccounts beside principals or namespaces (\"cannot set serviceAccounts with namespaces or principals\"), so this source never took effect".into(),
            ));
            continue;
        }
        let parsed = strings(field, v).and_then(|vs| {
            vs.iter()
                .map(|s| service_account(s, policy_namespace))
                .collect::<Result<Vec<_>, _>>()
        });
        match parsed {
            Ok(list) => *slot = Some(list),
            Err(why) => out.untranslated.push((field, why)),
        }
    }
    let domains = |field: &'static str, out: &mut PeerIds| -> Option<Vec<Domain>> {
        let v = source.get(field)?;
        let parsed =
            strings(field, v).and_then(|vs| vs.iter().map(|s| Domain::parse(s)).collect::<Result<Vec<_>, _>>());
        match parsed {
            Ok(list) => Some(list),
            Err(why) => {
                out.untranslated.push((field, why));
                None
            }
        }
    };
    let tds = domains("trustDomains", &mut out);
    let not_tds = domains("notTrustDomains", &mut out);

    // Positive: whichever of principals / serviceAccounts is given, intersected with the trust
    // domains.
    let principals: Option<Vec<String>> = source
        .get("principals")
        .map(|v| strings("principals", v))
        .transpose()
        .unwrap_or(None);
    let sa_patterns = sas.as_ref().map(|list| {
        list.iter()
            .map(|(ns, sa)| format!("*/ns/{ns}/sa/{sa}"))
            .collect::<Vec<_>>()
    });
    if sa_patterns.is_some() {
        out.principals = sa_patterns.clone();
    }
    if let Some(tds) = tds {
        let combined: Result<Vec<String>, String> = if let Some(list) = &sas {
            // Service account × trust domain: one exact principal per pair.
            let mut acc = Vec::new();
            let mut result = Ok(());
            'pairs: for (ns, sa) in list {
                for td in &tds {
                    match td {
                        Domain::Exact(d) => acc.push(format!("{d}/ns/{ns}/sa/{sa}")),
                        Domain::Any => acc.push(format!("*/ns/{ns}/sa/{sa}")),
                        _ => {
                            result = Err(format!(
                                "trust domain {:?} with serviceAccounts needs a wildcard inside the principal ({}/ns/{ns}/sa/{sa}), which claimguard's patterns (exact, prefix*, *suffix, *) cannot express",
                                td.text(),
                                td.text()
                            ));
                            break 'pairs;
                        }
                    }
                }
            }
            result.map(|()| acc)
        } else if let Some(ps) = &principals {
            let mut acc = Vec::new();
            let mut result = Ok(());
            'both: for p in ps {
                for td in &tds {
                    match principal_in_domain(p, td) {
                        Ok(Some(x)) => acc.push(x),
                        Ok(None) => {}
                        Err(e) => {
                            result = Err(e);
                            break 'both;
                        }
                    }
                }
            }
            result.map(|()| acc)
        } else if source.contains_key("principals") {
            Err("principals is not a list of strings".into())
        } else {
            tds.iter().map(Domain::principal_pattern).collect()
        };
        match combined {
            Ok(list) if list.is_empty() => {
                out.matches_nothing = Some(
                    "no peer identity satisfies both principals and trustDomains, so this source matches no request (in Istio neither)"
                        .into(),
                )
            }
            Ok(list) => out.principals = Some(dedup(list)),
            Err(why) => out.untranslated.push(("trustDomains", why)),
        }
    }

    // Negative: every not-field excludes on its own, so they simply add up.
    for (ns, sa) in not_sas.iter().flatten() {
        out.not_principals.push(format!("*/ns/{ns}/sa/{sa}"));
    }
    if let Some(list) = not_tds {
        match list
            .iter()
            .map(Domain::principal_pattern)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(ps) => out.not_principals.extend(ps),
            Err(why) => out.untranslated.push(("notTrustDomains", why)),
        }
    }
    out.not_principals = dedup(std::mem::take(&mut out.not_principals));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(source: Value) -> PeerIds {
        translate(source.as_object().expect("object"), Some("shop"))
    }

    fn principals(source: Value) -> Option<Vec<String>> {
        let r = t(source.clone());
        assert!(r.untranslated.is_empty(), "{source}: {r:?}");
        assert!(r.matches_nothing.is_none(), "{source}: {r:?}");
        r.principals
    }

    #[test]
    fn service_accounts_match_any_trust_domain() {
        assert_eq!(
            principals(json!({"serviceAccounts": ["web/frontend", "checkout"]})),
            Some(vec!["*/ns/web/sa/frontend".into(), "*/ns/shop/sa/checkout".into()])
        );
        let r = t(json!({"notServiceAccounts": ["web/legacy"]}));
        assert_eq!(r.not_principals, vec!["*/ns/web/sa/legacy"]);
        assert_eq!(r.principals, None);
        // Without the policy's namespace, a bare service account cannot be placed.
        let r = translate(json!({"serviceAccounts": ["checkout"]}).as_object().expect("o"), None);
        assert_eq!(r.untranslated.len(), 1, "{r:?}");
        assert!(r.untranslated[0].1.contains("--namespace"), "{r:?}");
    }

    #[test]
    fn trust_domains_alone() {
        assert_eq!(
            principals(json!({"trustDomains": ["cluster.local", "partner*", "*"]})),
            Some(vec!["cluster.local/*".into(), "partner*".into(), "*".into()])
        );
        let r = t(json!({"notTrustDomains": ["legacy.example"]}));
        assert_eq!(r.not_principals, vec!["legacy.example/*"]);
        for field in ["trustDomains", "notTrustDomains"] {
            let r = t(json!({field: ["*.example"]}));
            assert_eq!(r.untranslated.len(), 1, "{r:?}");
            assert_eq!(r.untranslated[0].0, field);
        }
    }

    #[test]
    fn both_fields_must_hold() {
        // Service accounts × exact trust domains: exact principals.
        assert_eq!(
            principals(json!({"serviceAccounts": ["web/frontend"], "trustDomains": ["cluster.local", "east.local"]})),
            Some(vec![
                "cluster.local/ns/web/sa/frontend".into(),
                "east.local/ns/web/sa/frontend".into()
            ])
        );
        assert_eq!(
            principals(json!({"serviceAccounts": ["web/frontend"], "trustDomains": ["*"]})),
            Some(vec!["*/ns/web/sa/frontend".into()])
        );
        // A trust-domain wildcard beside service accounts: refused, the service accounts stay.
        let r = t(json!({"serviceAccounts": ["web/frontend"], "trustDomains": ["east*"]}));
        assert_eq!(r.untranslated[0].0, "trustDomains");
        assert_eq!(r.principals, Some(vec!["*/ns/web/sa/frontend".into()]));
        // Principals are kept where their trust domain matches.
        assert_eq!(
            principals(
                json!({"principals": ["cluster.local/ns/a/sa/b", "other/ns/a/sa/b", "cluster.local/ns/c/*", "*"],
                              "trustDomains": ["cluster.local"]})
            ),
            Some(vec![
                "cluster.local/ns/a/sa/b".into(),
                "cluster.local/ns/c/*".into(),
                "cluster.local/*".into()
            ])
        );
        assert_eq!(
            principals(json!({"principals": ["clus*"], "trustDomains": ["cluster.local", "other"]})),
            Some(vec!["cluster.local/*".into()])
        );
        let r = t(json!({"principals": ["other/ns/a/sa/b"], "trustDomains": ["cluster.local"]}));
        assert!(r.matches_nothing.is_some(), "{r:?}");
        let r = t(json!({"principals": ["*/sa/gateway"], "trustDomains": ["cluster.local"]}));
        assert_eq!(r.untranslated[0].0, "trustDomains", "{r:?}");
        // Not-fields add up.
        let r = t(json!({"notServiceAccounts": ["web/a"], "notTrustDomains": ["x"], "notPrincipals": ["y/ns/z/sa/w"]}));
        assert_eq!(r.untranslated.len(), 1, "{r:?}");
        let r = t(json!({"notServiceAccounts": ["web/a"], "notTrustDomains": ["x", "x"]}));
        assert_eq!(r.not_principals, vec!["*/ns/web/sa/a", "x/*"]);
    }

    #[test]
    fn values_istio_refuses_are_reported() {
        for (field, v) in [
            ("serviceAccounts", json!(["web/*"])),
            ("serviceAccounts", json!(["a/b/c"])),
            ("serviceAccounts", json!(["/b"])),
            ("serviceAccounts", json!([""])),
            ("notServiceAccounts", json!(["a/"])),
            ("trustDomains", json!(["a/b"])),
            ("trustDomains", json!(["a*b"])),
            ("trustDomains", json!(["**"])),
            ("trustDomains", json!("cluster.local")),
        ] {
            let r = t(json!({field: v}));
            assert_eq!(r.untranslated.len(), 1, "{field} {v}: {r:?}");
            assert_eq!(r.untranslated[0].0, field);
        }
        let r = t(json!({"serviceAccounts": ["web/a"], "namespaces": ["web"]}));
        assert!(r.untranslated[0].1.contains("cannot set serviceAccounts"), "{r:?}");
    }
}
