//! `claimguard`: the native companion of the filter, built from the same crate.
//!
//! ```text
//! claimguard check CONFIG.json                 validate a plugin config exactly as the filter does
//! claimguard keygen --alg ES256 --kid K --out DIR   write DIR/K.pem and DIR/jwks.json
//! claimguard mint --key K.pem --alg ES256 --kid K --iss ISS [--aud A]... [--sub S]
//!                 [--ttl SECONDS] [--claim NAME=JSON]...    print a signed token
//! claimguard upstream [--port N]               run the echo upstream
//! claimguard demo [--config FILE] [--port N] [--self-test]   Envoy + filter + upstream
//! claimguard stats-tags                        Envoy stats_tags for Prometheus labels
//! claimguard explain --config FILE [--token T|@file] [--jwks FILE] [--method M] [--path P]
//!                    [--host H] [--header K:V]... [--at EPOCH] [--json]   why a request is decided
//!                    [--peer-principal SPIFFE_ID] [--source-ip IP]   (as if over mTLS from that peer)
//!                                              (exit 0 allowed, 1 refused)
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = cli::run(&args) {
        eprintln!("claimguard: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use claimguard::alg::Alg;
    use claimguard::config::Config;
    use claimguard::devtools::echo::EchoUpstream;
    use claimguard::devtools::envoy::{Envoy, EnvoyOptions};
    use claimguard::devtools::http;
    use claimguard::devtools::keys::TestKey;
    use serde_json::{json, Value};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const USAGE: &str =
        "usage: claimguard <check|explain|keygen|mint|upstream|demo|stats-tags> [options]  (see README.md)";

    /// The Envoy bootstrap fragment that turns claimguard's metric names into labels.
    fn stats_tags_yaml() -> String {
        let mut out = String::from("stats_config:\n  stats_tags:\n");
        for (name, regex) in claimguard::metrics::STATS_TAGS {
            out.push_str(&format!("  - tag_name: {name}\n    regex: '{regex}'\n"));
        }
        out
    }

    /// `--name value` options, repeatable, plus positional arguments and `--flag`s.
    struct Args {
        positional: Vec<String>,
        options: Vec<(String, String)>,
        flags: Vec<String>,
    }

    impl Args {
        fn parse(raw: &[String], flag_names: &[&str]) -> Result<Args, String> {
            let mut a = Args {
                positional: vec![],
                options: vec![],
                flags: vec![],
            };
            let mut it = raw.iter();
            while let Some(x) = it.next() {
                if let Some(name) = x.strip_prefix("--") {
                    if flag_names.contains(&name) {
                        a.flags.push(name.to_string());
                    } else {
                        let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                        a.options.push((name.to_string(), v.clone()));
                    }
                } else {
                    a.positional.push(x.clone());
                }
            }
            Ok(a)
        }
        fn get(&self, name: &str) -> Option<&str> {
            self.options
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        fn all(&self, name: &str) -> Vec<&str> {
            self.options
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }
        fn require(&self, name: &str) -> Result<&str, String> {
            self.get(name).ok_or_else(|| format!("--{name} is required"))
        }
        fn flag(&self, name: &str) -> bool {
            self.flags.iter().any(|f| f == name)
        }
    }

    pub fn run(args: &[String]) -> Result<(), String> {
        let (cmd, rest) = args.split_first().ok_or(USAGE)?;
        match cmd.as_str() {
            "check" => check(&Args::parse(rest, &[])?),
            "explain" => explain(&Args::parse(rest, &["json"])?),
            "keygen" => keygen(&Args::parse(rest, &[])?),
            "mint" => mint(&Args::parse(rest, &[])?),
            "upstream" => upstream(&Args::parse(rest, &[])?),
            "demo" => demo(&Args::parse(rest, &["self-test"])?),
            "stats-tags" => {
                print!("{}", stats_tags_yaml());
                Ok(())
            }
            "help" | "--help" | "-h" => {
                println!("{USAGE}");
                Ok(())
            }
            other => Err(format!("unknown command {other:?}\n{USAGE}")),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn alg_arg(a: &Args) -> Result<Alg, String> {
        let name = a.get("alg").unwrap_or("ES256");
        Alg::from_name(name).ok_or_else(|| format!("unknown --alg {name:?}"))
    }

    /// Runs the filter's whole decision offline and prints why. Exit status 0 when allowed,
    /// 1 when refused (see `main`).
    fn explain(a: &Args) -> Result<(), String> {
        use claimguard::decision::{evaluate, Decision, HttpRequest, Peer};
        let path = a.require("config")?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
        if let Some(jwks_path) = a.get("jwks") {
            // Offline: the key set from a file replaces every provider's key source.
            let jwks = std::fs::read_to_string(jwks_path).map_err(|e| format!("{jwks_path}: {e}"))?;
            for p in doc["providers"].as_array_mut().ok_or("the config has no providers")? {
                if let Some(m) = p.as_object_mut() {
                    for k in [
                        "jwksUri",
                        "oidcDiscovery",
                        "jwksCluster",
                        "timeout",
                        "jwksRefreshInterval",
                        "maxStale",
                    ] {
                        m.remove(k);
                    }
                    m.insert("jwks".into(), json!(jwks));
                }
            }
        }
        let cfg = Config::from_json(doc.to_string().as_bytes()).map_err(|e| format!("{path}: {e}"))?;
        let token = match a.get("token") {
            Some(t) if t.starts_with('@') => {
                let f = t.trim_start_matches('@');
                Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| format!("{f}: {e}"))?
                        .trim()
                        .to_string(),
                )
            }
            Some(t) => Some(t.to_string()),
            None => None,
        };
        let mut headers: Vec<(String, String)> = vec![
            (":method".into(), a.get("method").unwrap_or("GET").to_string()),
            (":path".into(), a.get("path").unwrap_or("/").to_string()),
            (":authority".into(), a.get("host").unwrap_or("localhost").to_string()),
        ];
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        for h in a.all("header") {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("--header {h:?} must be NAME:VALUE"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let at: u64 = match a.get("at") {
            Some(t) => t.parse().map_err(|_| "--at must be seconds since the epoch")?,
            None => now(),
        };
        // The calling workload, as the proxy would see an mTLS connection from it. Istio's form
        // (cluster.local/ns/web/sa/frontend) is taken as the SPIFFE ID it stands for.
        let peer = Peer {
            uri_san: a.get("peer-principal").map(|p| {
                if p.contains("://") {
                    p.to_string()
                } else {
                    format!("spiffe://{p}")
                }
            }),
            ip: match a.get("source-ip") {
                Some(ip) => Some(
                    claimguard::policy::parse_socket_ip(ip)
                        .ok_or_else(|| format!("--source-ip {ip:?} is not an IP address"))?,
                ),
                None => None,
            },
        };
        let peer_principal = peer.uri_san.clone();
        let source_ip = peer.ip.map(|ip| ip.to_string());
        let ev = evaluate(
            &cfg,
            &cfg,
            &HttpRequest::from_headers(&headers).with_peer(peer),
            at,
            true,
        );
        let trace: Vec<String> = ev
            .policy
            .as_ref()
            .map(|p| p.trace.iter().map(|t| cfg.policy.describe(t)).collect())
            .unwrap_or_default();
        let (status, verdict, reason, provider) = match &ev.decision {
            Decision::Allow { identity } => (
                200,
                "allow",
                "none".to_string(),
                identity.as_ref().map(|i| i.provider.clone()),
            ),
            Decision::Deny(d) => (
                d.status,
                "deny",
                format!("{} ({})", d.reason, d.description),
                d.provider.clone(),
            ),
            Decision::NeedKeys { .. } => (503, "deny", "jwks_unavailable".into(), None),
        };
        let upstream_headers = if matches!(ev.decision, Decision::Allow { .. }) {
            ev.header_ops.set.clone()
        } else {
            Vec::new()
        };
        let removed = ev.header_ops.remove.clone();
        if a.flag("json") {
            let out = json!({"decision": verdict, "status": status, "reason": reason, "provider": provider,
                "subject": ev.subject, "peerPrincipal": peer_principal, "sourceIp": source_ip,
                "path": ev.normalized_path, "rules": trace,
                "upstreamHeaders": upstream_headers, "removedHeaders": removed});
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        } else {
            println!("decision: {verdict} ({status})");
            println!("reason:   {reason}");
            println!("provider: {}", provider.as_deref().unwrap_or("-"));
            println!("subject:  {}", ev.subject.as_deref().unwrap_or("-"));
            println!(
                "peer:     {} from {}",
                peer_principal.as_deref().unwrap_or("- (no mTLS peer)"),
                source_ip.as_deref().unwrap_or("-")
            );
            println!("path:     {}", ev.normalized_path.as_deref().unwrap_or("-"));
            if !trace.is_empty() {
                println!("rules:");
                for t in &trace {
                    println!("  {t}");
                }
            }
            for (k, v) in &upstream_headers {
                println!("upstream header: {k}: {v}");
            }
            for k in &removed {
                println!("removed header:  {k}");
            }
        }
        if status == 200 {
            Ok(())
        } else {
            Err(format!("request refused: {status} {reason}"))
        }
    }

    fn check(a: &Args) -> Result<(), String> {
        let path = a.positional.first().ok_or("check needs a config file")?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let cfg = Config::from_json(&bytes).map_err(|e| format!("{path}: {e}"))?;
        for w in &cfg.warnings {
            println!("warning: {w}");
        }
        for p in &cfg.providers {
            let algs: Vec<&str> = p.algorithms.iter().map(|a| a.name()).collect();
            let keys = match &p.remote {
                Some(r) if r.discovery => format!("keys by OIDC discovery from {}{}", r.url.authority(), r.url.path),
                Some(r) => format!(
                    "keys from {}{} (+{} inline)",
                    r.url.authority(),
                    r.url.path,
                    p.keys.keys.len()
                ),
                None => format!("{} inline key(s)", p.keys.keys.len()),
            };
            println!(
                "provider {:?}: issuer {:?}, {keys}, algorithms {}, token from {}",
                p.name,
                p.issuer,
                algs.join(","),
                p.locations.iter().map(|l| l.describe()).collect::<Vec<_>>().join(", ")
            );
        }
        println!("{path}: OK");
        Ok(())
    }

    fn keygen(a: &Args) -> Result<(), String> {
        let alg = alg_arg(a)?;
        let kid = a.require("kid")?;
        let out = PathBuf::from(a.require("out")?);
        if alg.is_hmac() {
            return Err("keygen makes asymmetric keys; HMAC secrets are configured with hmacSecret".into());
        }
        let key = TestKey::generate(alg, kid);
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        write(&out.join(format!("{kid}.pem")), &key.to_pem())?;
        write(
            &out.join("jwks.json"),
            &serde_json::to_string_pretty(&key.jwks()).unwrap_or_default(),
        )?;
        println!(
            "wrote {0}/{kid}.pem (private) and {0}/jwks.json (public)",
            out.display()
        );
        Ok(())
    }

    fn write(path: &Path, text: &str) -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn mint(a: &Args) -> Result<(), String> {
        let alg = alg_arg(a)?;
        let pem_path = a.require("key")?;
        let pem = std::fs::read_to_string(pem_path).map_err(|e| format!("{pem_path}: {e}"))?;
        let key = TestKey::from_pem(alg, a.get("kid").unwrap_or(""), &pem)?;
        let ttl: i64 = a
            .get("ttl")
            .unwrap_or("3600")
            .parse()
            .map_err(|_| "--ttl must be an integer")?;
        let now = now() as i64;
        let mut claims = json!({"iss": a.require("iss")?, "iat": now, "exp": now + ttl});
        match a.all("aud").as_slice() {
            [] => {}
            [one] => claims["aud"] = json!(one),
            many => claims["aud"] = json!(many),
        }
        if let Some(sub) = a.get("sub") {
            claims["sub"] = json!(sub);
        }
        for c in a.all("claim") {
            let (name, value) = c
                .split_once('=')
                .ok_or_else(|| format!("--claim {c:?} must be NAME=JSON"))?;
            // Accept bare strings for convenience: --claim scope=orders:read
            let v = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
            claims[name] = v;
        }
        println!("{}", key.sign(&claims));
        Ok(())
    }

    fn upstream(a: &Args) -> Result<(), String> {
        let port: u16 = a
            .get("port")
            .unwrap_or("0")
            .parse()
            .map_err(|_| "--port must be a port number")?;
        let u = EchoUpstream::start(port).map_err(|e| format!("listen: {e}"))?;
        println!("echo upstream on http://127.0.0.1:{}", u.port);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// What the demo shows: a request, and the status claimguard must give it.
    struct Example {
        what: &'static str,
        token: Option<String>,
        want: u16,
    }

    fn demo(a: &Args) -> Result<(), String> {
        let config_path = a.get("config").unwrap_or("examples/config.json");
        let port: u16 = a
            .get("port")
            .unwrap_or("10000")
            .parse()
            .map_err(|_| "--port must be a port number")?;
        let text = std::fs::read_to_string(config_path).map_err(|e| format!("{config_path}: {e}"))?;
        let mut cfg: Value = serde_json::from_str(&text).map_err(|e| format!("{config_path}: {e}"))?;
        let provider = cfg["providers"][0].clone();
        let issuer = provider["issuer"]
            .as_str()
            .ok_or("the demo config needs providers[0].issuer")?
            .to_string();
        let audience = provider["audiences"][0].as_str().map(str::to_owned);

        // Fresh keys for every run: the demo swaps them in as providers[0].jwks.
        let rs = TestKey::rsa(Alg::RS256, "demo-rs256");
        let es = TestKey::generate(Alg::ES256, "demo-es256");
        let dir = PathBuf::from(".demo");
        std::fs::create_dir_all(&dir).map_err(|e| format!(".demo: {e}"))?;
        write(&dir.join("demo-rs256.pem"), &rs.to_pem())?;
        write(&dir.join("demo-es256.pem"), &es.to_pem())?;
        let jwks = json!({"keys": [rs.public_jwk(), es.public_jwk()]});
        write(
            &dir.join("jwks.json"),
            &serde_json::to_string_pretty(&jwks).unwrap_or_default(),
        )?;
        cfg["providers"][0]["jwks"] = json!(jwks.to_string());
        write(
            &dir.join("plugin-config.json"),
            &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )?;
        Config::from_json(cfg.to_string().as_bytes()).map_err(|e| format!("{config_path}: {e}"))?;

        let upstream = EchoUpstream::start(0).map_err(|e| format!("upstream: {e}"))?;
        let mut opts = EnvoyOptions::new(&cfg, upstream.port);
        opts.listener_port = port;
        let mut envoy = Envoy::start(&opts, Duration::from_secs(60)).map_err(|e| e.to_string())?;

        let now = now();
        let claims = |exp: u64, aud: Option<&str>| {
            let mut c = json!({"iss": issuer, "sub": "alice@example.com", "iat": now, "exp": exp});
            if let Some(a) = aud {
                c["aud"] = json!(a);
            }
            c
        };
        let aud = audience.as_deref();
        let examples = [
            Example {
                what: "allowed: RS256 token, valid for an hour",
                token: Some(rs.sign(&claims(now + 3600, aud))),
                want: 200,
            },
            Example {
                what: "allowed: ES256 token",
                token: Some(es.sign(&claims(now + 3600, aud))),
                want: 200,
            },
            Example {
                what: "rejected: expired an hour ago",
                token: Some(rs.sign(&claims(now - 3600, aud))),
                want: 401,
            },
            Example {
                what: "rejected: issued for another audience",
                token: Some(es.sign(&claims(now + 3600, Some("someone-else")))),
                want: 401,
            },
            Example {
                what: "rejected: no token",
                token: None,
                want: 401,
            },
        ];
        let url = format!("http://127.0.0.1:{}/orders/42", envoy.port);
        println!("claimguard demo: Envoy on http://127.0.0.1:{} (admin http://127.0.0.1:{}), upstream echoes what it receives.", envoy.port, envoy.admin_port);
        println!("Plugin config: .demo/plugin-config.json; keys: .demo/*.pem. Mint more tokens with:");
        println!("  cargo run -q --bin claimguard -- mint --key .demo/demo-es256.pem --alg ES256 --kid demo-es256 --iss {issuer}{}\n", aud.map(|a| format!(" --aud {a}")).unwrap_or_default());
        let mut failures = 0;
        for ex in &examples {
            println!("# {} (expect {})", ex.what, ex.want);
            match &ex.token {
                Some(t) => println!("curl -i {url} -H 'Authorization: Bearer {t}'\n"),
                None => println!("curl -i {url}\n"),
            }
            if a.flag("self-test") {
                let auth = ex.token.as_ref().map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", v.as_str())).collect();
                let r = http::get(envoy.port, "/orders/42", &headers)?;
                let ok = r.status == ex.want;
                failures += usize::from(!ok);
                println!("  -> {} {}\n", r.status, if ok { "as expected" } else { "UNEXPECTED" });
            }
        }
        if a.flag("self-test") {
            return if failures == 0 {
                println!("self-test: all {} requests answered as expected", examples.len());
                Ok(())
            } else {
                Err(format!(
                    "self-test: {failures} of {} requests answered unexpectedly\n{}",
                    examples.len(),
                    envoy.log()
                ))
            };
        }
        println!("Serving until Ctrl-C.");
        envoy.wait();
        Ok(())
    }
}
