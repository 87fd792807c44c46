// Shared by the fuzz targets: one config with real keys, rules and claim headers, built once.
use claimguard::config::Config;

// A fixed P-256 public key (the private half is not needed: fuzzing looks for crashes and
// for acceptance of tokens nobody signed, which must never happen).
pub const CONFIG: &str = r#"{
  "providers": [{
    "name": "idp",
    "issuer": "https://idp.fuzz",
    "audiences": ["api"],
    "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
      "x": "KSexBRK64-3c_kZ4KBKLrSkDJpkZ9whgacjE32xzKDg", "y": "x3h5ZOqsAOWSH7FJimD0YGdms9loUAFVjRqXTnNBUT4"}]},
    "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
    "fromParams": ["access_token"],
    "fromCookies": ["session"],
    "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"}, {"header": "x-groups", "claim": "groups"}],
    "allowMissing": true
  }, {
    "name": "alb",
    "clientIds": ["fuzz-client"],
    "alb": {"region": "eu-west-1",
      "signers": ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/fuzz/50dc6c495c0c9188"],
      "keys": {"0f3c8e2a-5b7d-4c1e-9a6f-2d4b8c0e1a3f": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKSexBRK64+3c/kZ4KBKLrSkDJpkZ\n9whgacjE32xzKDjHeHlk6qwA5ZIfsUmKYPRgZ2az2WhQAVWNGpdOc0FRPg==\n-----END PUBLIC KEY-----\n"}}
  }],
  "rules": [
    {"name": "public", "public": true, "paths": ["/healthz", "/docs/*"]},
    {"name": "deny", "action": "DENY", "when": [{"claim": "tenant", "values": ["blocked*"]}]},
    {"name": "admins", "methods": ["DELETE"], "paths": ["/orders/{id}"], "when": [{"claim": "realm_access.roles", "values": ["admin"]}]},
    {"name": "readers", "paths": ["/orders", "/orders/*"], "when": [{"claim": "scope", "allValues": ["read"]}]},
    {"name": "hosts", "hosts": ["*.example.com"], "notPaths": ["/admin*"], "when": [{"key": "request.headers[x-env]", "notValues": ["dev"]}]},
    {"name": "dry", "action": "DENY", "dryRun": true, "paths": ["*"]},
    {"name": "audit", "action": "AUDIT", "methods": ["POST"]}
  ]
}"#;

/// Built once per thread and leaked (a `Config` shares strings with `Rc`, so it is not `Sync`).
pub fn config() -> &'static Config {
    thread_local! {
        static C: &'static Config = Box::leak(Box::new(match Config::from_json(CONFIG.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        }));
    }
    C.with(|c| *c)
}
