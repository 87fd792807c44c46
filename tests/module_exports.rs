//! The shipped module exports exactly the proxy-wasm callbacks claimguard implements
//! (`src/host_exports.json`, applied by `make build` with binaryen's wasm-metadce). Envoy
//! enters the VM for every callback a module exports; the SDK exports all of them, so the
//! unused ones (response headers and body, stream log and done, network and gRPC callbacks) are
//! dropped. A callback `host.rs` implements but the list leaves out would silently never run:
//! this test fails instead.

use claimguard::devtools::envoy::wasm_path;

/// The names of a module's exports (the export section, id 7).
fn exports(wasm: &[u8]) -> Vec<String> {
    fn leb(b: &[u8], i: &mut usize) -> usize {
        let (mut r, mut shift) = (0usize, 0);
        loop {
            let x = b[*i];
            *i += 1;
            r |= usize::from(x & 0x7f) << shift;
            shift += 7;
            if x < 0x80 {
                return r;
            }
        }
    }
    assert_eq!(&wasm[..4], b"\0asm", "not a wasm module");
    let mut i = 8;
    let mut out = Vec::new();
    while i < wasm.len() {
        let id = wasm[i];
        i += 1;
        let size = leb(wasm, &mut i);
        if id == 7 {
            let mut j = i;
            for _ in 0..leb(wasm, &mut j) {
                let len = leb(wasm, &mut j);
                out.push(String::from_utf8(wasm[j..j + len].to_vec()).expect("utf-8 name"));
                j += len;
                j += 1; // kind
                leb(wasm, &mut j); // index
            }
        }
        i += size;
    }
    out
}

/// The list `make build` keeps.
fn kept() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/host_exports.json")).expect("list");
    let graph: serde_json::Value = serde_json::from_str(&text).expect("the list is JSON");
    let mut out: Vec<String> = graph
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|n| n["export"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

#[test]
fn the_module_exports_what_the_list_keeps() {
    let path = wasm_path();
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run make build)", path.display()));
    let mut got = exports(&wasm);
    got.sort();
    assert_eq!(got, kept(), "{}", path.display());
}

#[test]
fn every_callback_host_rs_implements_is_kept() {
    let host = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/host.rs")).expect("host.rs");
    let kept = kept();
    // proxy-wasm Rust SDK trait method → the export through which Envoy calls it.
    let callbacks = [
        ("on_vm_start", "proxy_on_vm_start"),
        ("on_configure", "proxy_on_configure"),
        ("create_http_context", "proxy_on_context_create"),
        ("on_tick", "proxy_on_tick"),
        ("on_queue_ready", "proxy_on_queue_ready"),
        ("on_http_call_response", "proxy_on_http_call_response"),
        ("on_grpc_call_response", "proxy_on_grpc_receive"),
        ("on_grpc_stream_message", "proxy_on_grpc_receive"),
        ("on_grpc_stream_close", "proxy_on_grpc_close"),
        ("on_http_request_headers", "proxy_on_request_headers"),
        ("on_http_request_body", "proxy_on_request_body"),
        ("on_http_request_trailers", "proxy_on_request_trailers"),
        ("on_http_response_headers", "proxy_on_response_headers"),
        ("on_http_response_body", "proxy_on_response_body"),
        ("on_http_response_trailers", "proxy_on_response_trailers"),
        ("on_log", "proxy_on_log"),
        ("on_done", "proxy_on_done"),
    ];
    let mut implemented = 0;
    for (method, export) in callbacks {
        if host.contains(&format!("fn {method}(")) {
            implemented += 1;
            assert!(
                kept.iter().any(|k| k == export),
                "host.rs implements {method}: keep {export}"
            );
        }
    }
    assert!(implemented >= 5, "found only {implemented} callbacks in host.rs");
}
