#![no_main]
//! Any bytes as a bearer token, a query token, a cookie or an ALB `x-amzn-oidc-data`
//! header, through the whole request path.
//! No input may crash, and none may ever be allowed with an identity: nobody holds the key.
use claimguard::request::decision::{evaluate, Decision, HttpRequest};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let c = common::config();
    let text = String::from_utf8_lossy(data);
    for (k, v, path) in [
        ("authorization", format!("Bearer {text}"), "/orders".to_string()),
        ("cookie", format!("session={text}"), "/orders".to_string()),
        ("x-other", String::new(), format!("/orders?access_token={text}")),
        ("x-amzn-oidc-data", text.to_string(), "/orders".to_string()),
    ] {
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", "api.example.com"),
            (k, v.as_str()),
        ];
        let ev = evaluate(c, c, &HttpRequest::from_headers(&headers), 1_800_000_000, true);
        if let Decision::Allow { identity: Some(_) } = ev.decision {
            panic!("a token nobody signed was accepted");
        }
    }
});
