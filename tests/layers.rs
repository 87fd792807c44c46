//! The filter's layers, kept honest: every module of `src/` imports only modules of its own
//! layer or of layers below it, and no set of modules imports itself round a cycle.
//!
//! The layers, bottom to top (docs/ARCHITECTURE.md draws them):
//!
//! | rank | modules |
//! |------|---------|
//! | 0 | `base` (strict JSON, the ABI's header-map encoding, time) |
//! | 1 | `config::error`, `config::model` (the raw serde model) |
//! | 2 | `crypto` (one file per key family behind `Verifier`) |
//! | 3 | `token` (extraction, strict parsing, claim paths) |
//! | 4 | `policy` (paths, rules, identity headers) |
//! | 5 | `keys` (JWK, remote JWKS across VMs, ALB keys) |
//! | 6 | `verify` (providers, signature and claim checks) |
//! | 7 | `config::compile` (the only place that knows every part) and `config` itself |
//! | 8 | `request` (decision, caches, memo, reporting) |
//! | 9 | `host` (the only code that touches the proxy-wasm ABI) |
//!
//! An import is any `crate::…` or `super::…` path outside comments and outside `#[cfg(test)]`
//! items (tests may reach anywhere). A path names the longest module it starts with, so
//! `crate::config::ConfigError` names `config` (rank 7, where the re-export lives) and lower
//! layers have to say `crate::config::error::ConfigError`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u32)] = &[
    ("base", 0),
    ("config::error", 1),
    ("config::model", 1),
    ("crypto", 2),
    ("token", 3),
    ("policy", 4),
    ("keys", 5),
    ("verify", 6),
    ("config", 7),
    ("config::compile", 7),
    ("request", 8),
    ("host", 9),
];

fn rank(module: &str) -> Option<u32> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, r)| *r)
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/keys/remote.rs` → `keys::remote`; `src/keys/mod.rs` → `keys`; `src/lib.rs` → ``.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The source without comments, string literals' contents and `#[cfg(test)]` items.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            // Skip the item: its attributes, then either one `;`-terminated line or a balanced
            // block.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                let lt = l.trim_start();
                if !opened && lt.starts_with("#[") {
                    continue;
                }
                for c in l.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth == 0) || (!opened && lt.ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        // Drop a trailing `// comment` (good enough: paths never sit inside strings here).
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The module paths a piece of code imports: `crate::a::b::Item` and `super::x`, with
/// `use crate::a::{b, c::d}` groups expanded.
fn imports(code: &str, this: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let base: Vec<String> = if anchor == "crate::" {
                Vec::new()
            } else {
                let mut p: Vec<String> = this.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
                p.pop();
                p
            };
            for path in expand(&code[from..]) {
                let mut full = base.clone();
                full.extend(path);
                found.insert(full.join("::"));
            }
        }
    }
    found
}

/// Reads `a::b::{c, d::e}::…` at the start of `s` into each full path.
fn expand(s: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        segs.push(rest[..n].to_owned());
        rest = &rest[n..];
        if let Some(r) = rest.strip_prefix("::") {
            rest = r;
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .unwrap_or(group.len());
                let inner = &group[..end];
                let mut out = Vec::new();
                let mut d = 0;
                let mut piece = String::new();
                for c in inner.chars().chain(std::iter::once(',')) {
                    match c {
                        '{' => d += 1,
                        '}' => d -= 1,
                        _ => {}
                    }
                    if c == ',' && d == 0 {
                        let p = piece.trim().to_owned();
                        if !p.is_empty() && p != "self" {
                            for tail in expand(&p) {
                                let mut full = segs.clone();
                                full.extend(tail);
                                out.push(full);
                            }
                        }
                        piece.clear();
                    } else {
                        piece.push(c);
                    }
                }
                out.push(segs.clone());
                return out;
            }
        } else {
            break;
        }
    }
    vec![segs]
}

struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for f in &files {
        let this = module_of(&src, f);
        if this.is_empty() {
            continue;
        }
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        let mut targets = BTreeSet::new();
        for path in imports(&code, &this) {
            // The longest module the path starts with.
            let segs: Vec<&str> = path.split("::").collect();
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(t) = target {
                if t != this && !t.is_empty() {
                    targets.insert(t);
                }
            }
        }
        edges.insert(this, targets);
    }
    Graph { modules, edges }
}

#[test]
fn every_module_has_a_layer() {
    let g = graph();
    let unplaced: Vec<&String> = g
        .modules
        .iter()
        .filter(|m| !m.is_empty() && rank(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules with no layer in tests/layers.rs: {unplaced:?}"
    );
}

#[test]
fn each_layer_imports_only_itself_and_layers_below() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            if let (Some(a), Some(b)) = (rank(from), rank(to)) {
                if b > a {
                    upward.push(format!("{from} (layer {a}) imports {to} (layer {b})"));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_cycle() {
    let g = graph();
    // Depth-first search; a back edge is a cycle, reported with its path.
    fn visit(m: &str, g: &Graph, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>, cycles: &mut Vec<String>) {
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for t in g.edges.get(m).into_iter().flatten() {
            match state.get(t.as_str()).copied().unwrap_or(0) {
                0 => visit(t, g, state, stack, cycles),
                1 => {
                    let i = stack.iter().position(|s| s == t).unwrap();
                    cycles.push(format!("{} -> {t}", stack[i..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in g.edges.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, &g, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The checker itself: it sees grouped, nested and `super` imports, and skips test code and
/// comments, so a green run means something.
#[test]
fn the_checker_sees_what_it_must() {
    let code = production_code(
        "use crate::a::{b, c::{d, e}};\n// use crate::hidden;\nfn f() { super::sib::g(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::up::Thing;\n}\n#[cfg(test)]\nuse crate::also_hidden;\nuse crate::z::Y;\n",
    );
    let got = imports(&code, "layer::file");
    for want in ["a::b", "a::c::d", "a::c::e", "layer::sib::g", "z::Y"] {
        assert!(got.contains(want), "{want} not found in {got:?}");
    }
    for never in ["hidden", "up::Thing", "also_hidden"] {
        assert!(
            !got.iter().any(|p| p.starts_with(never)),
            "{never} should be skipped: {got:?}"
        );
    }
    assert_eq!(rank("config::model"), Some(1));
    assert_eq!(rank("config"), Some(7));
    assert_eq!(rank("keys::remote"), Some(5));
}
