//! `make demo-edge`: an edge Envoy (API Gateway stand-in, native `jwt_authn`) in front of a
//! claimguard sidecar in front of the app, on loopback. Prints curl commands that show what
//! each tier decides. `--self-test` sends them and exits non-zero on any surprise.
//!
//!     cargo run --release --example demo_edge -- [--port 10001] [--self-test]

use claimguard_tools::demo_edge;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let self_test = args.iter().any(|a| a == "--self-test");
    let port = match args.iter().position(|a| a == "--port").map(|i| args.get(i + 1)) {
        None => 10001,
        Some(Some(p)) => p.parse().unwrap_or_else(|_| usage("--port takes a port number")),
        Some(None) => usage("--port takes a port number"),
    };
    if let Some(other) = args
        .iter()
        .find(|a| a.starts_with("--") && *a != "--self-test" && *a != "--port")
    {
        usage(&format!("unknown option {other}"));
    }
    let dir = Path::new(".demo/edge");
    let demo = demo_edge::start(dir, Path::new("examples/edge/sidecar.json"), port).unwrap_or_else(|e| {
        eprintln!("demo-edge: {e}");
        std::process::exit(1)
    });
    println!(
        "Tokens (Cognito-shaped, signed by this run's test key) are in {}/.\n",
        dir.display()
    );
    match demo.run_examples(dir, self_test) {
        Ok(0) if self_test => println!("self-test: every request answered as expected"),
        Ok(0) => {
            println!(
                "Serving until Ctrl-C. The sidecar's plugin config: {}/sidecar-plugin-config.json",
                dir.display()
            );
            let mut edge = demo.edge;
            edge.wait();
        }
        Ok(n) => {
            eprintln!(
                "self-test: {n} unexpected answer(s)\n--- sidecar log ---\n{}",
                demo.sidecar.log()
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("demo-edge: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("demo_edge: {why}\nusage: demo_edge [--port PORT] [--self-test]");
    std::process::exit(2)
}
