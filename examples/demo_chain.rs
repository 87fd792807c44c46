//! `make demo-chain`: the call chain gateway → orders → reports on loopback, each hop running
//! the plugin config of its `istio/overlays/*` (rendered with `kubectl kustomize`), with mTLS
//! between the hops (SPIFFE certificates from a throwaway mesh CA). Sends the requests that
//! pass and the replay attempts that are refused, prints each with the curl command that
//! repeats it, and exits (non-zero on any unexpected answer). `--serve` keeps the chain up
//! afterwards, until Ctrl-C.
//!
//!     cargo run --release --example demo_chain -- [--port 10002] [--serve]

use claimguard_tools::chain::{self, ChainConfigs};
use claimguard_tools::envoy::repo_root;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|a| a == "--serve");
    let port = match args.iter().position(|a| a == "--port").map(|i| args.get(i + 1)) {
        None => 10002,
        Some(Some(p)) => match p.parse() {
            Ok(p) => p,
            Err(_) => return usage("--port takes a port number"),
        },
        Some(None) => return usage("--port takes a port number"),
    };
    if let Some(other) = args
        .iter()
        .find(|a| a.starts_with("--") && *a != "--serve" && *a != "--port")
    {
        return usage(&format!("unknown option {other}"));
    }
    let dir = Path::new(".demo/chain");
    let started = ChainConfigs::from_overlays(&repo_root()).and_then(|c| chain::start(dir, c, port));
    let chain = match started {
        Ok(chain) => chain,
        Err(e) => {
            eprintln!("demo-chain: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "gateway (ingress-gateway overlay):  http://127.0.0.1:{}  → /api/… to orders over mTLS as {}\n\
         orders sidecar (orders overlay):    mTLS inbound, trusts {}; its app forwards the user's token\n\
         orders' outbound listener:          http://127.0.0.1:{}  → reports over mTLS as {}\n\
         reports sidecar (reports overlay):  mTLS inbound, trusts {}\n\
         other pods (client Envoy, x-via):   http://127.0.0.1:{}\n\
         Tokens, certificates and the plugin configs as run: {}/ (decisionHeader on: refusals say why)\n",
        chain.gateway.port,
        chain::GATEWAY,
        chain::GATEWAY,
        chain.orders_outbound,
        chain::ORDERS,
        chain::ORDERS,
        chain.pods.port,
        dir.display()
    );
    match chain.run_examples() {
        Ok(0) if serve => {
            println!("every request answered as expected. Serving until Ctrl-C.");
            let mut gateway = chain.gateway;
            gateway.wait();
            ExitCode::SUCCESS
        }
        Ok(0) => {
            println!("every request answered as expected (--serve keeps the chain up)");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            eprintln!("demo-chain: {n} unexpected answer(s)\n{}", chain.logs());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo-chain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("demo_chain: {why}\nusage: demo_chain [--port PORT] [--serve]");
    ExitCode::from(2)
}
