//! Instructions per request, counted by valgrind's callgrind: the proxy Envoy runs under
//! callgrind (V8's generated code included, `--smc-check=all-non-file`), and each listener's
//! requests are counted between `callgrind_control --zero` and `--dump`. Unlike CPU time on a
//! shared VM (where one listener's CPU per request moves by 30 % between rounds), the count is
//! repeatable to a fraction of a percent, so a change of 0.2 µs per request is visible.
//!
//! It measures instructions, not time: a host call, a cache miss or a branch mispredict each
//! count as what they execute. Decide with it, then confirm with `make bench` (wrk, real time).
//!
//! ```sh
//! make build
//! cargo run --release --example icount -- warm-rs256 2000 target/claimguard.wasm [OTHER.wasm...]
//! ```
//!
//! Listeners: `no_auth`, `native` (jwt_authn + rbac) and one per module (`m0`, `m1`, ...), with
//! claimguard's benchmark config (a module path ending in `+filterState` sets `filterState`).
//! Each gets WARMUP requests first (V8 tiers hot functions up to TurboFan in the background;
//! the JWT caches fill), then REQUESTS counted ones, sequentially on one keep-alive
//! connection. Prints instructions per request, and the difference to `no_auth`.
use claimguard_tools::bench::{modules_bootstrap, upstream_bootstrap, BenchKeys, Pool, SCENARIOS, WARM_POOL};
use claimguard_tools::envoy::{self, Envoy, EnvoyOptions};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("icount: {e}");
        std::process::exit(1);
    }
}

/// The Envoy executable itself: the virtualenv's `bin/envoy` is a Python launcher, which
/// callgrind would trace instead.
fn envoy_executable() -> Result<PathBuf, String> {
    let configured = envoy::envoy_binary();
    let head = std::fs::read(&configured).map_err(|e| format!("{}: {e}", configured.display()))?;
    if !head.starts_with(b"#!") {
        return Ok(configured);
    }
    let lib = envoy::repo_root().join(".venv/lib");
    for entry in std::fs::read_dir(&lib)
        .map_err(|e| format!("{}: {e}", lib.display()))?
        .flatten()
    {
        let p = entry.path().join("site-packages/envoy/_bin/envoy");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "{} is a launcher and no envoy binary was found under {}",
        configured.display(),
        lib.display()
    ))
}

/// Sends `tokens` (cycled) as `count` GET requests on one connection; checks each status.
fn send(port: u16, tokens: &[String], count: usize, expected: u16) -> Result<(), String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect {port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    for i in 0..count {
        let token = &tokens[i % tokens.len()];
        write!(
            w,
            "GET /orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("bad status line {line:?}"))?;
        if status != expected {
            return Err(format!("request {i} on {port}: {status}, expected {expected}"));
        }
        let mut length = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(|_| "content-length")?;
                }
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Total instructions (`Ir`) in the newest callgrind dump of `pid` in `dir`.
fn dumped_instructions(dir: &Path, pid: u32, before: &[PathBuf]) -> Result<u64, String> {
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("callgrind.out.{pid}")))
                && !before.contains(p)
        })
        .collect();
    dumps.sort();
    let mut total = 0;
    for d in &dumps {
        let text = std::fs::read_to_string(d).map_err(|e| e.to_string())?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
            .ok_or(format!("{}: no summary", d.display()))?;
        total += line.trim().parse::<u64>().map_err(|e| e.to_string())?;
    }
    Ok(total)
}

fn callgrind_control(flag: &str, pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "callgrind_control {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: icount SCENARIO REQUESTS MODULE.wasm[+filterState]... (env: ICOUNT_WARMUP, default 3000; ICOUNT_KEEP keeps the dumps)";
    let (Some(scenario), Some(count)) = (a.first(), a.get(1)) else {
        return Err(usage.into());
    };
    let sc = SCENARIOS
        .iter()
        .find(|s| s.name == scenario)
        .copied()
        .ok_or(format!("unknown scenario {scenario}"))?;
    let count: usize = count.parse().map_err(|_| usage)?;
    let warmup: usize = std::env::var("ICOUNT_WARMUP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let modules = a.get(2..).unwrap_or_default();

    let keys = BenchKeys::new();
    let mut up = EnvoyOptions::new(&json!({}), 0);
    up.raw_bootstrap = Some(upstream_bootstrap());
    up.log_level = "warn".into();
    let upstream = Envoy::start(&up, Duration::from_secs(60)).map_err(|e| format!("upstream: {e}"))?;

    let jwks = keys.jwks();
    let (mut boot, names) = modules_bootstrap("icount", &jwks, modules, true, upstream.port);
    // Stats are flushed every 5 s by default: under callgrind one flush costs as much as
    // thousands of requests, and whether one falls in a listener's window is luck.
    boot["stats_flush_interval"] = json!("299s");

    let dir = std::env::temp_dir().join(format!("claimguard-icount-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let wrapper = dir.join("envoy-under-callgrind");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no \
             --callgrind-out-file={}/callgrind.out.%p '{}' \"$@\"\n",
            dir.display(),
            envoy_executable()?.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .map_err(|e| e.to_string())?;

    let mut o = EnvoyOptions::new(&json!({}), 0);
    o.envoy = wrapper;
    o.raw_bootstrap = Some(boot);
    o.log_level = "warn".into();
    o.concurrency = 1;
    let proxy = Envoy::start(&o, Duration::from_secs(600)).map_err(|e| format!("proxy: {e}"))?;
    let pid = proxy.pid().ok_or("proxy not running")?;
    let bound = proxy.listener_ports();

    let tokens = match sc.pool {
        Pool::Warm => keys.pool(sc.alg, sc.pool, "w", WARM_POOL),
        _ => keys.pool(sc.alg, sc.pool, "c", warmup + count * names.len()),
    };
    let mut results = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let port = bound
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .ok_or(format!("{name} not bound"))?;
        let expected = sc
            .pool
            .expected_status(if name == "no_auth" { "no_auth" } else { "native" });
        // Cold pools: every listener gets tokens no listener has seen.
        let (warm_tokens, counted_tokens) = match sc.pool {
            Pool::Warm => (tokens.clone(), tokens.clone()),
            _ => {
                let start = i * count;
                (
                    tokens[names.len() * count..].to_vec(),
                    tokens[start..start + count].to_vec(),
                )
            }
        };
        send(port, &warm_tokens, warmup, expected)?;
        let before: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .collect();
        callgrind_control("--instr=on", pid)?;
        callgrind_control("--zero", pid)?;
        send(port, &counted_tokens, count, expected)?;
        callgrind_control("--dump", pid)?;
        callgrind_control("--instr=off", pid)?;
        let ir = dumped_instructions(&dir, pid, &before)?;
        let per = ir as f64 / count as f64;
        println!("{name}: {per:.0} instructions/request");
        results.push((name.clone(), per));
    }
    drop(proxy);
    if std::env::var_os("ICOUNT_KEEP").is_some() {
        println!("callgrind dumps kept in {} (callgrind_annotate FILE)", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let base = results.first().map_or(0.0, |r| r.1);
    println!("\nlistener   instr/req  over no_auth  ({count} requests each, after {warmup})");
    for (i, (name, per)) in results.iter().enumerate() {
        let module = i.checked_sub(2).and_then(|j| modules.get(j)).map_or("", |m| m.as_str());
        println!("{name:9} {per:10.0} {:12.0}  {module}", per - base);
    }
    Ok(())
}
