//! The shipped module exports exactly the proxy-wasm callbacks claimguard implements
//! (`src/host/exports.json`, applied by `make build` with binaryen's wasm-metadce). Envoy
//! enters the VM for every callback a module exports; the SDK's dispatcher exports all of them,
//! and claimguard dispatches itself (`src/host/roots.rs`): its callbacks are linked as
//! `claimguard_on_*` and renamed `proxy_on_*` by `make build`. A callback `host/glue.rs` implements
//! but the list leaves out would silently never run, and one left under its link name would
//! never be called: these tests fail instead.

use claimguard_tools::envoy::wasm_path;

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

/// The link names `make build` keeps (`claimguard_on_*` for claimguard's own callbacks).
fn kept_link_names() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/host/exports.json")).expect("list");
    let graph: serde_json::Value = serde_json::from_str(&text).expect("the list is JSON");
    graph
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|n| n["export"].as_str().map(str::to_string))
        .collect()
}

/// The exports `make build` leaves: the kept names, claimguard's renamed to `proxy_on_*`.
fn kept() -> Vec<String> {
    let mut out: Vec<String> = kept_link_names()
        .iter()
        .map(|n| match n.strip_prefix("claimguard_on_") {
            Some(rest) => format!("proxy_on_{rest}"),
            None => n.clone(),
        })
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
    let host = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/host/glue.rs")).expect("glue.rs");
    let mut implemented: Vec<String> = host
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#[export_name = \"")?.strip_suffix("\"]"))
        .map(str::to_string)
        .collect();
    implemented.sort();
    let mut kept: Vec<String> = kept_link_names()
        .into_iter()
        .filter(|n| n.starts_with("claimguard_on_"))
        .collect();
    kept.sort();
    assert!(implemented.len() >= 6, "found only {implemented:?} in src/host/glue.rs");
    assert_eq!(
        implemented, kept,
        "src/host/glue.rs's #[export_name]s and src/host/exports.json differ"
    );
}

#[test]
fn no_callback_a_stream_does_not_need_is_exported() {
    let path = wasm_path();
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run make build)", path.display()));
    let got = exports(&wasm);
    for name in [
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_memory_allocate",
    ] {
        assert!(got.iter().any(|g| g == name), "{name} missing: {got:?}");
    }
    for name in [
        "proxy_on_delete",
        "proxy_on_done",
        "proxy_on_log",
        "proxy_on_response_headers",
    ] {
        assert!(
            !got.iter().any(|g| g == name),
            "{name} is exported: Envoy would enter the VM for it"
        );
    }
    assert!(
        !got.iter().any(|g| g.starts_with("claimguard_on_")),
        "a callback kept its link name (no host calls it): {got:?}"
    );
}
