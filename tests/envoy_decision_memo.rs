//! The decision memo in a real Envoy: a repeated allowed request is answered from memory with
//! exactly the headers the full evaluation produced; a forged managed header, a denial, an
//! expired token and a config the memo cannot key are never answered from it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn memo_counts(stack: &Stack, want: (u64, u64)) -> (u64, u64) {
    hit_miss_once(stack, "decision_memo", want)
}

fn config() -> Value {
    let mut cfg = plugin_config();
    cfg["providers"][0]["outputClaimToHeaders"] = json!([{"header": "x-user-sub", "claim": "sub"}]);
    cfg["providers"][0]["clockSkewSeconds"] = json!(0);
    cfg["rules"] = json!([
        {"name": "orders", "paths": ["/orders*"], "when": [{"claim": "scope", "values": ["orders:read"]}],
         "requestHeadersToAdd": [{"header": "x-admitted-by", "value": "orders"}]}
    ]);
    cfg
}

/// What the upstream saw (the echo upstream's JSON, less Envoy's per-request `x-request-id`),
/// or the status when it saw nothing.
fn upstream_view(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> Result<Value, u16> {
    let r = stack.get(path, headers);
    if r.status == 200 {
        let mut seen = r.json();
        if let Some(h) = seen["headers"].as_object_mut() {
            assert!(h.remove("x-request-id").is_some(), "{h:?}");
        }
        Ok(seen)
    } else {
        Err(r.status)
    }
}

#[test]
fn a_repeated_allow_is_replayed_with_the_same_headers_and_nothing_else_is() {
    let stack = Stack::start(&config());
    let token = keys().rsa.sign(&good_claims());
    let auth = format!("Bearer {token}");
    let first = upstream_view(&stack, "/orders/7", &[("authorization", &auth)]).expect("first request allowed");
    let second = upstream_view(&stack, "/orders/7", &[("authorization", &auth)]).expect("second request allowed");
    assert_eq!(
        first["headers"], second["headers"],
        "a replay must reach the upstream as the evaluation did"
    );
    assert_eq!(second["headers"]["x-user-sub"], "alice", "{second}");
    assert_eq!(second["headers"]["x-admitted-by"], "orders", "{second}");
    assert!(
        second["headers"].get("authorization").is_none(),
        "the token is not forwarded: {second}"
    );
    assert_eq!(memo_counts(&stack, (1, 1)), (1, 1));

    // A client-supplied managed header is never keyed: evaluated in full, stripped, replaced.
    let forged = upstream_view(
        &stack,
        "/orders/7",
        &[
            ("authorization", &auth),
            ("x-user-sub", "root"),
            ("X-Admitted-By", "forged"),
        ],
    )
    .expect("allowed");
    assert_eq!(forged["headers"]["x-user-sub"], "alice", "{forged}");
    assert_eq!(forged["headers"]["x-admitted-by"], "orders", "{forged}");

    // Another path is another key; a denial is never remembered.
    for _ in 0..3 {
        assert_eq!(upstream_view(&stack, "/admin", &[("authorization", &auth)]), Err(403));
    }
    // Another token on the remembered path is another key, and is checked: a forged one fails.
    let stranger = format!("Bearer {}", keys().stranger_rsa.sign(&good_claims()));
    for _ in 0..2 {
        assert_eq!(
            upstream_view(&stack, "/orders/7", &[("authorization", &stranger)]),
            Err(401)
        );
    }
    // Two credentials (Envoy joins a repeated `authorization` into one value, `a,b`) are a
    // 400, RFC 6750 invalid_request: that value keys nothing remembered.
    assert_eq!(
        upstream_view(
            &stack,
            "/orders/7",
            &[("authorization", &auth), ("authorization", &auth)]
        ),
        Err(400)
    );
    // Misses: the first request, three denials, two forgeries and the joined credentials;
    // hits: only the replay.
    assert_eq!(memo_counts(&stack, (1, 7)), (1, 7));
    assert_eq!(
        upstream_view(&stack, "/orders/7", &[("authorization", &auth)]).map(|v| v["headers"].clone()),
        Ok(first["headers"].clone())
    );
    assert_eq!(memo_counts(&stack, (2, 7)), (2, 7));
}

#[test]
fn a_remembered_allow_ends_with_its_token() {
    let stack = Stack::start(&config());
    let now = now();
    let token = keys().ec.sign(&with(good_claims(), "exp", json!(now + 2)));
    let auth = format!("Bearer {token}");
    for _ in 0..2 {
        assert_eq!(stack.get("/orders", &[("authorization", &auth)]).status, 200);
    }
    assert_eq!(memo_counts(&stack, (1, 1)), (1, 1));
    // `exp` is accepted through its own second (as Envoy's jwt_authn does), and the VM's clock
    // may be a tick behind: wait until it is surely past.
    while self::now() <= now + 3 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = stack.get("/orders", &[("authorization", &auth)]);
    assert_eq!(late.status, 401, "an expired token was replayed: {}", late.body);
    assert!(
        late.header("www-authenticate").is_some_and(|h| h.contains("expired")),
        "{:?}",
        late.headers
    );
}

#[test]
fn a_config_the_memo_cannot_key_turns_it_off_and_says_why() {
    let mut cfg = config();
    cfg["rules"] = json!([
        {"name": "orders", "paths": ["/orders*"], "action": "AUDIT"},
        {"name": "orders-allow", "paths": ["/orders*"]}
    ]);
    let stack = Stack::start(&cfg);
    let token = keys().rsa.sign(&good_claims());
    for _ in 0..3 {
        assert_eq!(stack.get_with_token(&token).status, 200);
    }
    let stats = stack.envoy.admin_until("stats?filter=claimguard", |s| {
        s.contains("claimguard.requests_total.outcome.allowed.reason.none.rule.orders-allow.provider.test-idp: 3")
    });
    assert!(stats.contains("rule.orders-allow.provider.test-idp: 3"), "{stats}");
    assert_eq!(hit_miss(&stats, "decision_memo"), (0, 0));
    assert!(
        stack
            .envoy
            .log()
            .contains("decision memo off: AUDIT rules log each match"),
        "{}",
        stack.envoy.log()
    );
}
