//! `upstream`, `demo` and `stats-tags`: running the filter locally.

use crate::tokens::write;
use crate::Verdict;
use claimguard::config::Config;
use claimguard::crypto::alg::Alg;
use claimguard_tools::echo::EchoUpstream;
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use claimguard_tools::http;
use claimguard_tools::keys::TestKey;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The Envoy bootstrap fragment that turns claimguard's metric names into labels.
pub fn stats_tags_yaml() -> String {
    let mut out = String::from("stats_config:\n  stats_tags:\n");
    for (name, regex) in claimguard::request::metrics::STATS_TAGS {
        out.push_str(&format!("  - tag_name: {name}\n    regex: '{regex}'\n"));
    }
    out
}

#[derive(clap::Args)]
pub struct UpstreamArgs {
    /// Port on 127.0.0.1 (0: any free port, printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

pub fn upstream(a: &UpstreamArgs) -> Result<Verdict, String> {
    let u = EchoUpstream::start(a.port).map_err(|e| format!("listen: {e}"))?;
    println!("echo upstream on http://127.0.0.1:{}", u.port);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Plugin config to run; its providers[0] gets fresh demo keys.
    #[arg(long, default_value = "examples/config.json", value_name = "FILE")]
    config: PathBuf,
    /// Envoy listener port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 10000)]
    port: u16,
    /// Send the printed requests, check each status, and exit (1 if any differs).
    #[arg(long)]
    self_test: bool,
}

/// What the demo shows: a request, and the status claimguard must give it.
struct Example {
    what: &'static str,
    token: Option<String>,
    want: u16,
}

pub fn demo(a: &DemoArgs) -> Result<Verdict, String> {
    let config_path = a.config.display().to_string();
    let text = std::fs::read_to_string(&a.config).map_err(|e| format!("{config_path}: {e}"))?;
    let mut cfg: Value = serde_json::from_str(&text).map_err(|e| format!("{config_path}: {e}"))?;
    let provider = cfg["providers"][0].clone();
    let issuer = provider["issuer"]
        .as_str()
        .ok_or("the demo config needs providers[0].issuer")?
        .to_string();
    let audience = provider["audiences"][0].as_str().map(str::to_owned);

    // Fresh keys for every run: the demo swaps them in as providers[0].jwks.
    let rs = TestKey::fresh(Alg::RS256, "demo-rs256");
    let es = TestKey::fresh(Alg::ES256, "demo-es256");
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
    opts.listener_port = a.port;
    let mut envoy = Envoy::start(&opts, Duration::from_secs(60)).map_err(|e| e.to_string())?;

    let now = crate::now();
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
    println!(
        "claimguard demo: Envoy on http://127.0.0.1:{} (admin http://127.0.0.1:{}), upstream echoes what it receives.",
        envoy.port, envoy.admin_port
    );
    println!("Plugin config: .demo/plugin-config.json; keys: .demo/*.pem. Mint more tokens with:");
    println!(
        "  cargo claimguard mint --key .demo/demo-es256.pem --alg ES256 --kid demo-es256 --iss {issuer}{}\n",
        aud.map(|a| format!(" --aud {a}")).unwrap_or_default()
    );
    let mut failures = 0;
    for ex in &examples {
        println!("# {} (expect {})", ex.what, ex.want);
        match &ex.token {
            Some(t) => println!("curl -i {url} -H 'Authorization: Bearer {t}'\n"),
            None => println!("curl -i {url}\n"),
        }
        if a.self_test {
            let auth = ex.token.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", v.as_str())).collect();
            let r = http::get(envoy.port, "/orders/42", &headers)?;
            let ok = r.status == ex.want;
            failures += usize::from(!ok);
            println!("  -> {} {}\n", r.status, if ok { "as expected" } else { "UNEXPECTED" });
        }
    }
    if a.self_test {
        return if failures == 0 {
            println!("self-test: all {} requests answered as expected", examples.len());
            Ok(Verdict::Ok)
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
    Ok(Verdict::Ok)
}
