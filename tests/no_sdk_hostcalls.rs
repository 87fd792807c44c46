//! Every host call the filter makes goes through `src/host/hostabi.rs`, which turns any status into
//! a `Result`: the SDK's `proxy_wasm::hostcalls` end in `panic!` on a status they do not
//! expect (and type it as an enum a host may step outside of), and a panic in the VM takes
//! the workload's traffic down. This reads `src/` and fails if any other file calls the SDK's
//! host calls, reaches them through its traits, logger or dispatcher, or declares a host
//! import of its own.

use std::path::{Path, PathBuf};

/// The one file that declares the host imports.
const WRAPPERS: &str = "src/host/hostabi.rs";

/// What of the SDK the filter may use outside the wrappers: its types, and `main!` (the WASI
/// `_initialize` export). Its `hostcalls`, `traits` (whose default methods make host calls),
/// `set_log_level` (a logger and panic hook that call `hostcalls::log(..).unwrap()`) and
/// `set_root_context` / `set_http_context` (its dispatcher) are not.
const ALLOWED_SDK_PATHS: [&str; 2] = ["proxy_wasm::types", "proxy_wasm::main!"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Each line of `text` with its `//` comment cut off (docs may name what they avoid).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.find("//").map_or(l, |c| &l[..c])))
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn only_the_wrappers_make_host_calls() {
    let sources = sources();
    assert!(
        sources.iter().any(|(p, _)| p == WRAPPERS),
        "{WRAPPERS} is gone: point this test at the file that now declares the host imports"
    );
    let mut found = Vec::new();
    for (path, text) in &sources {
        for (n, line) in code_lines(text) {
            if line.contains("hostcalls") {
                found.push(format!(
                    "{path}:{n}: the SDK's hostcalls panic on a surprise: {}",
                    line.trim()
                ));
            }
            if path != WRAPPERS && line.contains("wasm_import_module") {
                found.push(format!(
                    "{path}:{n}: host imports belong in {WRAPPERS}: {}",
                    line.trim()
                ));
            }
            let mut rest = line;
            while let Some(at) = rest.find("proxy_wasm::") {
                let used = &rest[at..];
                if !ALLOWED_SDK_PATHS.iter().any(|ok| used.starts_with(ok)) {
                    found.push(format!(
                        "{path}:{n}: only the SDK's types and main! may be used: {}",
                        line.trim()
                    ));
                }
                rest = &rest[at + "proxy_wasm::".len()..];
            }
            // `use proxy_wasm::{hostcalls, ...}` and `use proxy_wasm as ...` hide the path.
            if line.contains("proxy_wasm::{") || line.contains("proxy_wasm as") {
                found.push(format!(
                    "{path}:{n}: import the SDK's paths one by one: {}",
                    line.trim()
                ));
            }
        }
    }
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

/// The wrappers take statuses (and the log level) as the `u32` the host sends: declaring an
/// import as returning the SDK's `Status` enum makes an unknown code undefined behaviour
/// before any `match` sees it.
#[test]
fn the_wrappers_take_statuses_as_numbers() {
    let (_, text) = sources()
        .into_iter()
        .find(|(p, _)| p == WRAPPERS)
        .expect("the wrapper file");
    let start = text.find("extern \"C\" {").expect("the import block");
    let block = &text[start..start + text[start..].find("\n}").expect("its end")];
    let mut imports = 0;
    for decl in block.split(';').filter(|d| d.contains("fn proxy_")) {
        imports += 1;
        let decl = decl.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(decl.ends_with("-> u32"), "returns the raw status: {decl}");
        for ty in ["Status", "LogLevel", "MapType", "BufferType", "MetricType"] {
            assert!(!decl.contains(ty), "passes {ty} as the u32 it is on the wire: {decl}");
        }
    }
    assert!(imports >= 10, "found {imports} imports in {WRAPPERS}");
    for (n, line) in code_lines(&text) {
        for banned in ["panic!", ".unwrap()", ".expect(", "unreachable!"] {
            assert!(!line.contains(banned), "{WRAPPERS}:{n}: {}", line.trim());
        }
    }
}
