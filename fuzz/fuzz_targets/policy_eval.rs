#![no_main]
//! Policy evaluation over arbitrary requests and arbitrary (already verified) claims:
//! input = method \n path \n host \n claims-json.
use claimguard::policy::path::normalize;
use claimguard::policy::{Peer, RequestFacts, Subject};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let c = common::config();
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("GET");
    let raw_path = parts.next().unwrap_or("/");
    let host = parts.next().unwrap_or("");
    let claims = parts
        .next()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let Ok(path) = normalize(raw_path, c.path()) else { return };
    let headers = [("x-env", host)];
    // The host doubles as the peer: its SPIFFE ID (over mTLS) and source address.
    let peer = Peer::from_connection(true, Some(host), Some(host));
    let canonical_host = claimguard::policy::path::canonical_host(host);
    let facts = RequestFacts {
        method,
        path: &path,
        host: &canonical_host,
        headers: &headers,
        peer: &peer,
    };
    let subject = Subject {
        provider: 0,
        principal: "https://idp.fuzz/x",
        claims: &claims,
    };
    let d = c.policy().evaluate(&facts, Some(&subject));
    for t in &d.trace {
        let _ = c.policy().describe(t);
    }
    let _ = c.policy().evaluate(&facts, None);
});
