//! placeholder
use crate::Verdict;
pub const AFTER_HELP: &str = "";
#[derive(clap::Args)]
pub struct ImportArgs {}
pub fn run(_a: &ImportArgs) -> Result<Verdict, String> {
    Err("x".into())
}
