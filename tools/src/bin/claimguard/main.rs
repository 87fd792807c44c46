//! `claimguard`: the native companion of the filter, built from the same crate and the same
//! core, so what it says about a config or a request is what the filter does.
//!
//! Exit status, for every subcommand: 0 ok / allowed, 1 denied / invalid (or an error such as
//! an unreadable file), 2 usage error (unknown option, missing or malformed argument).

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

mod check;
mod explain;
mod import_istio;
mod input;
mod istio;
mod run;
mod source_identity;
mod tokens;

const EXIT_CODES: &str = "\
Exit status:
  0  ok: the config is valid, the request is allowed, the command did its work
  1  denied or invalid: a refused request, an invalid config, an untranslatable import with
     --strict, or an error such as an unreadable file
  2  usage error: unknown subcommand or option, missing or malformed argument";

#[derive(Parser)]
#[command(
    name = "claimguard",
    version,
    about = "Check claimguard configs, explain the filter's decisions offline, mint test tokens, import Istio policies",
    after_help = EXIT_CODES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate plugin configs (JSON, or WasmPlugin / TrafficExtension YAML) exactly as the
    /// filter does, and warn about risky settings and Istio policies it would break.
    #[command(after_help = check::AFTER_HELP)]
    Check(check::CheckArgs),
    /// Run the filter's whole decision on one request offline and print why: each token
    /// verification step, each rule, the status and the headers the upstream would receive.
    #[command(after_help = explain::AFTER_HELP)]
    Explain(explain::ExplainArgs),
    /// TEST TOOLING: generate a signing key pair; prints the private key (PEM) and the
    /// matching public JWKS.
    #[command(after_help = EXIT_CODES)]
    Keygen(tokens::KeygenArgs),
    /// TEST TOOLING: sign a development token with a key from `keygen` (with --txn-token, a
    /// Transaction Token, standing in for a Transaction Token Service).
    #[command(after_help = tokens::MINT_AFTER_HELP)]
    Mint(tokens::MintArgs),
    /// Convert Istio RequestAuthentication + AuthorizationPolicy YAML into a claimguard
    /// WasmPlugin (or TrafficExtension), reporting every construct that could not be translated.
    #[command(name = "import-istio", after_help = import_istio::AFTER_HELP)]
    ImportIstio(import_istio::ImportArgs),
    /// Run the echo upstream (reports the request headers it received) on 127.0.0.1.
    #[command(after_help = EXIT_CODES)]
    Upstream(run::UpstreamArgs),
    /// Start Envoy with the filter, an echo upstream and fresh keys, and print ready-to-paste
    /// requests (with --self-test: send them and check each status).
    #[command(after_help = EXIT_CODES)]
    Demo(run::DemoArgs),
    /// Print the Envoy stats_tags that turn claimguard's metric names into Prometheus labels.
    #[command(name = "stats-tags", after_help = EXIT_CODES)]
    StatsTags,
}

/// `--json`, shared by the subcommands that offer it.
#[derive(Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print one JSON document on stdout instead of text (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// What a subcommand concluded: 0 ok, 1 denied/invalid.
pub enum Verdict {
    Ok,
    Refused,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check::run(&a),
        Command::Explain(a) => explain::run(&a),
        Command::Keygen(a) => tokens::keygen(&a),
        Command::Mint(a) => tokens::mint(&a),
        Command::ImportIstio(a) => import_istio::run(&a),
        Command::Upstream(a) => run::upstream(&a),
        Command::Demo(a) => run::demo(&a),
        Command::StatsTags => {
            print!("{}", run::stats_tags_yaml());
            Ok(Verdict::Ok)
        }
    };
    match result {
        Ok(Verdict::Ok) => ExitCode::SUCCESS,
        Ok(Verdict::Refused) => ExitCode::from(1),
        Err(e) => {
            eprintln!("claimguard: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &std::path::Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| format!("<stdin>: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// How a file is named in messages (`<stdin>` for `-`).
pub fn display_name(path: &std::path::Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
