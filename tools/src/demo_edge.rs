//! `make demo-edge`: two tiers on loopback, as in production. An edge Envoy stands in for
//! AWS API Gateway (Envoy's native `jwt_authn` validates the Cognito token and forwards it),
//! in front of a sidecar Envoy running claimguard (`examples/edge/sidecar.json`) in front of
//! the app (an upstream that echoes what it received). The requests it prints show what each
//! tier decides: a token the edge accepts but claimguard's claim rules deny, a forged identity
//! header that never reaches the app, and a direct call that bypasses the edge.

use super::echo::EchoUpstream;
use super::envoy::{Envoy, EnvoyOptions};
use super::http;
use super::keys::TestKey;
use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const REGION: &str = "eu-west-1";
pub const USER_POOL: &str = "eu-west-1_Ab12Cd34E";
pub const APP_CLIENT: &str = "3n4b5urk1ft4fl3mg5e62d9ado";

pub fn issuer() -> String {
    format!("https://cognito-idp.{REGION}.amazonaws.com/{USER_POOL}")
}

/// The edge's `jwt_authn`, configured as an API Gateway JWT authorizer would be: issuer and
/// keys of the user pool, the token forwarded to the backend. (API Gateway also checks
/// `client_id` for access tokens; Envoy's filter cannot, claimguard does.)
pub fn edge_jwt_authn(jwks: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"cognito": {
                "issuer": issuer(),
                "local_jwks": {"inline_string": jwks.to_string()},
                "forward": true,
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]
            }},
            "rules": [
                {"match": {"path": "/healthz"}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "cognito"}}
            ]
        }
    })
}

/// One request the demo prints (and checks with `--self-test`).
pub struct EdgeExample {
    pub what: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// Which token file (under the demo dir) goes in `Authorization`.
    pub token: Option<&'static str>,
    pub extra_header: Option<(&'static str, &'static str)>,
    /// Straight to the sidecar, skipping the edge.
    pub bypass_edge: bool,
    pub want: u16,
    /// A header the app must (Some(value)) or must not (None) receive, when allowed.
    pub app_sees: Option<(&'static str, Option<&'static str>)>,
    /// For a refusal: which tier must have answered (claimguard's replies carry
    /// `x-claimguard-reason` in this demo; the edge's do not).
    pub refused_by_claimguard: bool,
}

pub fn examples() -> Vec<EdgeExample> {
    vec![
        EdgeExample {
            what: "admin reads an order: both tiers allow",
            method: "GET",
            path: "/orders/42",
            token: Some("admin.jwt"),
            extra_header: None,
            bypass_edge: false,
            want: 200,
            app_sees: Some(("x-user-groups", Some("orders-admins,staff"))),
            refused_by_claimguard: false,
        },
        EdgeExample {
            what: "buyer deletes an order: the edge accepts the token, claimguard's rule denies (403)",
            method: "DELETE",
            path: "/orders/42",
            token: Some("buyer.jwt"),
            extra_header: None,
            bypass_edge: false,
            want: 403,
            app_sees: None,
            refused_by_claimguard: true,
        },
        EdgeExample {
            what: "admin deletes an order: allowed",
            method: "DELETE",
            path: "/orders/42",
            token: Some("admin.jwt"),
            extra_header: None,
            bypass_edge: false,
            want: 200,
            app_sees: None,
            refused_by_claimguard: false,
        },
        EdgeExample {
            what: "buyer forges x-user-groups: orders-admins; the app sees the token's groups instead",
            method: "GET",
            path: "/orders/42",
            token: Some("buyer.jwt"),
            extra_header: Some(("x-user-groups", "orders-admins")),
            bypass_edge: false,
            want: 200,
            app_sees: Some(("x-user-groups", Some("buyers"))),
            refused_by_claimguard: false,
        },
        EdgeExample {
            what: "an ID token where the API needs access tokens: the edge accepts it, claimguard does not (401)",
            method: "GET",
            path: "/orders/42",
            token: Some("id-token.jwt"),
            extra_header: None,
            bypass_edge: false,
            want: 401,
            app_sees: None,
            refused_by_claimguard: true,
        },
        EdgeExample {
            what: "no token: the edge refuses (401)",
            method: "GET",
            path: "/orders/42",
            token: None,
            extra_header: None,
            bypass_edge: false,
            want: 401,
            app_sees: None,
            refused_by_claimguard: false,
        },
        EdgeExample {
            what: "a pod that skips the edge with a self-signed token: claimguard refuses (401)",
            method: "GET",
            path: "/orders/42",
            token: Some("forged.jwt"),
            extra_header: Some(("x-user-groups", "orders-admins")),
            bypass_edge: true,
            want: 401,
            app_sees: None,
            refused_by_claimguard: true,
        },
    ]
}

/// The running demo.
pub struct EdgeDemo {
    pub app: EchoUpstream,
    pub sidecar: Envoy,
    pub edge: Envoy,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Mints the demo's tokens into `dir` and starts the app, the sidecar and the edge (the edge
/// on `edge_port`, 0 for any free port).
pub fn start(dir: &Path, sidecar_config: &Path, edge_port: u16) -> Result<EdgeDemo, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = std::fs::read_to_string(sidecar_config).map_err(|e| format!("{}: {e}", sidecar_config.display()))?;
    let mut cfg: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", sidecar_config.display()))?;
    // Fresh keys every run: the user pool's JWKS for both tiers (inline, no network).
    let key = TestKey::rsa(Alg::RS256, "demo-user-pool-1");
    let jwks = key.jwks();
    cfg["providers"][0]["jwks"] = json!(jwks.to_string());
    Config::from_json(cfg.to_string().as_bytes()).map_err(|e| format!("{}: {e}", sidecar_config.display()))?;
    write(
        &dir.join("sidecar-plugin-config.json"),
        &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )?;
    write(&dir.join("user-pool.pem"), &key.to_pem())?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access = |user: &str, groups: &[&str]| {
        json!({"sub": format!("{user}-0000-4000-8000-000000000000"), "cognito:groups": groups, "iss": issuer(),
               "version": 2, "client_id": APP_CLIENT, "token_use": "access",
               "scope": "aws.cognito.signin.user.admin orders/read", "auth_time": now, "iat": now,
               "exp": now + 3600, "jti": format!("{user}-jti"), "username": user})
    };
    let header = json!({"kid": "demo-user-pool-1", "alg": "RS256"}).to_string();
    let tokens = [
        (
            "admin.jwt",
            key.sign_raw(&header, &access("ana", &["orders-admins", "staff"]).to_string()),
        ),
        (
            "buyer.jwt",
            key.sign_raw(&header, &access("bob", &["buyers"]).to_string()),
        ),
        (
            "id-token.jwt",
            key.sign_raw(
                &header,
                &json!({"sub": "ana", "aud": APP_CLIENT, "iss": issuer(), "token_use": "id", "iat": now,
                        "exp": now + 3600, "email": "ana@example.com", "cognito:groups": ["orders-admins"]})
                .to_string(),
            ),
        ),
        (
            "forged.jwt",
            TestKey::rsa(Alg::RS256, "demo-user-pool-1")
                .sign_raw(&header, &access("mallory", &["orders-admins"]).to_string()),
        ),
    ];
    for (name, t) in &tokens {
        write(&dir.join(name), t)?;
    }

    let app = EchoUpstream::start(0).map_err(|e| format!("app: {e}"))?;
    let sidecar =
        Envoy::start(&EnvoyOptions::new(&cfg, app.port), Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let mut edge_opts = EnvoyOptions::new(&json!({}), sidecar.port);
    edge_opts.without_claimguard = true;
    edge_opts.filters_before = vec![edge_jwt_authn(&jwks)];
    edge_opts.listener_port = edge_port;
    let edge = Envoy::start(&edge_opts, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    Ok(EdgeDemo { app, sidecar, edge })
}

impl EdgeDemo {
    /// Prints each example as a curl command; with `check`, sends it and compares. Returns the
    /// number of unexpected answers.
    pub fn run_examples(&self, dir: &Path, check: bool) -> Result<usize, String> {
        let mut failures = 0;
        println!(
            "edge (API Gateway stand-in, Envoy jwt_authn): http://127.0.0.1:{}\nsidecar (claimguard):                        http://127.0.0.1:{}\n",
            self.edge.port, self.sidecar.port
        );
        for ex in examples() {
            let port = if ex.bypass_edge {
                self.sidecar.port
            } else {
                self.edge.port
            };
            let token = match ex.token {
                Some(f) => Some(std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"))?),
                None => None,
            };
            println!("# {} (expect {})", ex.what, ex.want);
            let mut curl = format!("curl -i -X {} http://127.0.0.1:{port}{}", ex.method, ex.path);
            if let Some(f) = ex.token {
                curl.push_str(&format!(" -H \"Authorization: Bearer $(cat {}/{f})\"", dir.display()));
            }
            if let Some((k, v)) = ex.extra_header {
                curl.push_str(&format!(" -H '{k}: {v}'"));
            }
            println!("{curl}");
            if !check {
                println!();
                continue;
            }
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            headers.extend(ex.extra_header);
            let r = http::request(port, ex.method, ex.path, &headers)?;
            let mut ok = r.status == ex.want;
            if r.status != 200 {
                let by_claimguard = r.header("x-claimguard-reason").is_some();
                ok &= by_claimguard == ex.refused_by_claimguard;
                println!(
                    "  refused by {}",
                    if by_claimguard {
                        "claimguard (sidecar)"
                    } else {
                        "the edge"
                    }
                );
            }
            if let (true, Some((name, want))) = (r.status == 200, ex.app_sees) {
                let seen = r.json()["headers"][name].as_str().map(str::to_owned);
                ok &= seen.as_deref() == want;
                println!("  app saw {name}: {seen:?}");
            }
            failures += usize::from(!ok);
            println!("  -> {} {}\n", r.status, if ok { "as expected" } else { "UNEXPECTED" });
        }
        Ok(failures)
    }
}
