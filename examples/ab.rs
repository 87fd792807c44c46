//! A/B comparison of wasm modules in one Envoy: listeners `no_auth`, `native` (jwt_authn +
//! rbac) and one per module given, each module in its own VM with claimguard's benchmark
//! config (`tools/src/bench.rs`), run in turn with wrk for ROUNDS rounds of SECONDS. Prints,
//! per listener, the median proxy CPU µs per request (`/proc/PID/stat`), req/s and p99.
//!
//! ```sh
//! make build
//! cargo build --release --target wasm32-wasip1 --manifest-path examples/empty_filter/Cargo.toml --target-dir target/empty_filter
//! AB_PIN=1 cargo run --release --example ab -- warm-rs256 4 4 \
//!   target/empty_filter/wasm32-wasip1/release/empty_filter.wasm \
//!   target/claimguard.wasm target/claimguard.wasm+filterState
//! ```
//!
//! A module path ending in `+filterState` runs with `"filterState": true`, one ending in
//! `+nocache` (after any `+filterState`) with `"jwtCacheSize": 0`, so that every request is
//! verified (`make bench`'s `direct-nocache` method, but through the upstream). `AB_PIN=1` pins the
//! proxy to CPU 0 and the upstream and wrk to CPU 1 (as `make bench` does); `AB_ONLY_CG=1`
//! skips the two reference listeners (e.g. to `perf record -p` the proxy on one module).
use claimguard_tools::bench::{
    modules_bootstrap, upstream_bootstrap, BenchKeys, Pool, SCENARIOS, WARM_POOL, WRK_SCRIPT,
};
use claimguard_tools::envoy::{Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("ab: {e}");
        std::process::exit(1);
    }
}

fn cpu_us(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let f: Vec<&str> = stat.rsplit_once(") ").ok_or("stat")?.1.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or("stat field");
    // utime + stime, in clock ticks of 10 ms (Linux's USER_HZ).
    Ok((ticks(11)? + ticks(12)?) * 10_000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: ab SCENARIO SECONDS ROUNDS MODULE.wasm[+filterState]...";
    let (Some(scenario), Some(secs), Some(rounds)) = (a.first(), a.get(1), a.get(2)) else {
        return Err(usage.into());
    };
    let sc = SCENARIOS
        .iter()
        .find(|s| s.name == scenario)
        .copied()
        .ok_or(format!("unknown scenario {scenario}"))?;
    let secs: u64 = secs.parse().map_err(|_| usage)?;
    let rounds: usize = rounds.parse().map_err(|_| usage)?;
    let modules = a.get(3..).unwrap_or_default();
    let pin = std::env::var("AB_PIN").is_ok();
    let only_cg = std::env::var("AB_ONLY_CG").is_ok();

    let keys = BenchKeys::new();
    let mut up = EnvoyOptions::new(&json!({}), 0);
    up.raw_bootstrap = Some(upstream_bootstrap());
    up.log_level = "warn".into();
    let upstream = Envoy::start(&up, Duration::from_secs(60)).map_err(|e| format!("upstream: {e}"))?;
    let jwks = keys.jwks();
    let (boot, names) = modules_bootstrap("ab", &jwks, modules, !only_cg, upstream.port);
    let mut o = EnvoyOptions::new(&json!({}), 0);
    o.raw_bootstrap = Some(boot);
    o.log_level = "warn".into();
    o.concurrency = 1;
    let proxy = Envoy::start(&o, Duration::from_secs(60)).map_err(|e| format!("proxy: {e}"))?;
    let pid = proxy.pid().ok_or("proxy not running")?;
    println!("proxy pid {pid}");
    if pin {
        for (p, cpu) in [(Some(pid), "0"), (upstream.pid(), "1")] {
            let p = p.ok_or("upstream not running")?.to_string();
            Command::new("taskset")
                .args(["-a", "-c", "-p", cpu, &p])
                .output()
                .map_err(|e| e.to_string())?;
        }
    }
    let bound = proxy.listener_ports();
    let dir = std::env::temp_dir().join(format!("claimguard-ab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("bench.lua"), WRK_SCRIPT).map_err(|e| e.to_string())?;
    let write_pool = |name: &str, t: &[String]| -> Result<std::path::PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, t.join("\n") + "\n").map_err(|e| e.to_string())?;
        Ok(p)
    };
    let warm = write_pool("warm", &keys.pool(sc.alg, sc.pool, "w", WARM_POOL))?;
    let once = sc.pool != Pool::Warm;
    // Per listener: (cpu µs/request, req/s, p99 µs) of each round.
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
    for r in 0..rounds {
        for (i, name) in names.iter().enumerate() {
            let port = bound
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or(format!("{name} not bound"))?;
            let pool = if once {
                write_pool(
                    &format!("{name}-{r}"),
                    &keys.pool(sc.alg, sc.pool, &format!("{name}{r}"), 20_000),
                )?
            } else {
                warm.clone()
            };
            let expected = sc
                .pool
                .expected_status(if name == "no_auth" { "no_auth" } else { "native" });
            let before = cpu_us(pid)?;
            let out = Command::new("taskset")
                .args(["-c", if pin { "1" } else { "0,1" }, "wrk", "-t1", "-c16"])
                .arg(format!("-d{secs}s"))
                .args(["--timeout", "5s", "--latency", "-s"])
                .arg(dir.join("bench.lua"))
                .arg(format!("http://127.0.0.1:{port}/orders"))
                .arg("--")
                .arg(&pool)
                .arg(expected.to_string())
                .arg(if once { "once" } else { "cycle" })
                .output()
                .map_err(|e| format!("wrk: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("CLAIMGUARD_BENCH "))
                .ok_or(format!("wrk gave no result: {stdout}"))?;
            let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
            if n("unexpected") > 0.0 {
                return Err(format!("{name}: {} unexpected statuses", n("unexpected")));
            }
            let requests = n("requests").max(1.0);
            let cpu = (cpu_us(pid)? - before) / requests;
            let rps = requests / (n("duration_us").max(1.0) / 1e6);
            println!(
                "round {r} {name}: {cpu:.1} cpu-µs/req {rps:.0} req/s p99 {} µs",
                n("p99_us")
            );
            if let Some(v) = results.get_mut(i) {
                v.push((cpu, rps, n("p99_us")));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("\nlistener   cpu-µs/req  req/s  p99 µs  (medians over {rounds} rounds)");
    for (i, (name, rs)) in names.iter().zip(&results).enumerate() {
        let module = if only_cg {
            modules.get(i)
        } else {
            i.checked_sub(2).and_then(|j| modules.get(j))
        };
        println!(
            "{name:9} {:10.1} {:6.0} {:7.0}  {}",
            median(rs.iter().map(|x| x.0).collect()),
            median(rs.iter().map(|x| x.1).collect()),
            median(rs.iter().map(|x| x.2).collect()),
            module.map_or("", |m| m.as_str())
        );
    }
    Ok(())
}
