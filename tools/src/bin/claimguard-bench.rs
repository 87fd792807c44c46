//! `claimguard-bench`: the side-by-side benchmark behind `make bench` (see
//! `tools/src/bench.rs` and BENCHMARKS.md).
//!
//! ```text
//! claimguard-bench [--out BENCHMARKS.md] [--command TEXT]   run, print the table, record it in --out
//! claimguard-bench --smoke                                   ~2 s per listener: statuses only
//! claimguard-bench --profile-inputs                          print the input of examples/vm_profile.rs
//! ```
//! Recording keeps BENCHMARKS.md's shape (`bench::record_run`): the new run becomes its
//! "Latest run", and the run it replaces moves to the end of its "Log".
//! Sizing from the environment: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS,
//! BENCH_COLD_TOKENS, BENCH_SCENARIOS, WRK; the filter from CLAIMGUARD_WASM, Envoy from ENVOY.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = run() {
        eprintln!("claimguard-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn run() -> Result<(), String> {
    use claimguard_tools::bench;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out: Option<String> = None;
    let mut command = String::from("make bench");
    let mut smoke = false;
    let mut profile_inputs = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--profile-inputs" => profile_inputs = true,
            "--out" => out = Some(it.next().ok_or("--out needs a file")?.clone()),
            "--command" => command = it.next().ok_or("--command needs a value")?.clone(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if profile_inputs {
        let keys = bench::BenchKeys::new();
        let pool = |alg| keys.pool(alg, bench::Pool::Cold, "profile", 200);
        let doc = serde_json::json!({
            "config": bench::claimguard_config(&keys.jwks()),
            "now": bench::unix_now(),
            "rs256": pool(claimguard::crypto::alg::Alg::RS256),
            "es256": pool(claimguard::crypto::alg::Alg::ES256),
            "es384": pool(claimguard::crypto::alg::Alg::ES384),
            "eddsa": pool(claimguard::crypto::alg::Alg::EdDSA),
            "ps256": pool(claimguard::crypto::alg::Alg::PS256),
        });
        println!("{doc}");
        return Ok(());
    }
    let o = bench::BenchOptions::from_env()?;
    if smoke {
        let mut failed = 0;
        for r in bench::smoke(&o, 2)? {
            let x = &r.result;
            let ok = x.requests > 0 && x.unexpected == 0 && x.socket_errors == 0;
            failed += usize::from(!ok);
            println!(
                "{:<10} {:<12} expect {}: {} requests, {} unexpected, {} socket errors {}",
                r.listener,
                format!("{:?}", r.pool),
                r.expected,
                x.requests,
                x.unexpected,
                x.socket_errors,
                if ok { "ok" } else { "FAILED" }
            );
        }
        return if failed == 0 {
            Ok(())
        } else {
            Err(format!("{failed} smoke check(s) failed"))
        };
    }
    let report = bench::run(&o)?;
    let md = report.markdown(&command);
    println!("{md}");
    if report.unexpected() > 0 {
        return Err(format!(
            "{} responses had an unexpected status: the figures are not recorded",
            report.unexpected()
        ));
    }
    if let Some(path) = out {
        let doc = match std::fs::read_to_string(&path) {
            Ok(doc) => doc,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{path}: {e}")),
        };
        std::fs::write(&path, bench::record_run(&doc, &md)).map_err(|e| format!("{path}: {e}"))?;
        eprintln!("recorded in {path} as its latest run (the one before it moved to the log)");
    }
    Ok(())
}
