//! Every relative link in the Markdown docs resolves: the README is a doorway to `docs/`, and a
//! doorway that opens on a missing page or a moved heading is worse than none. For each
//! `[text](path#anchor)` outside code, the file (or folder) must exist, and the anchor must
//! name a heading of the target Markdown file under GitHub's slug rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Markdown files of the repository, without build output, installed packages or dot-folders.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = t.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = t.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((c, run)),
                    Some((open, len)) if open == c && run >= len && t[run..].trim().is_empty() => fence = None,
                    Some(_) => {}
                }
                continue;
            }
        }
        if fence.is_none() {
            out.push((i + 1, line));
        }
    }
    out
}

/// A line with its inline code spans blanked out (a link inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let run = rest[start..].chars().take_while(|c| *c == '`').count();
        let ticks = &rest[start..start + run];
        let after = &rest[start + run..];
        match after.find(ticks) {
            Some(end) => {
                out.push_str(&" ".repeat(run * 2 + end));
                rest = &after[end + run..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The heading text GitHub renders: links reduced to their text, code and emphasis marks gone
/// (the slug keeps what is left).
fn heading_text(raw: &str) -> String {
    let mut s = String::new();
    let mut rest = raw;
    // [text](url) → text
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else { break };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        s.push_str(&rest[..open]);
        s.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    s.push_str(rest);
    s
}

/// GitHub's anchor for a heading: lower-cased, spaces to `-`, and everything that is not a
/// letter, a digit, `-` or `_` dropped.
fn slug(heading: &str) -> String {
    heading_text(heading.trim())
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every anchor a Markdown text offers: one per ATX heading, `-1`, `-2`, … for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let level = t.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) || !(t[level..].starts_with(' ') || t[level..].is_empty()) {
            continue;
        }
        let base = slug(t[level..].trim().trim_end_matches('#').trim_end());
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of inline links and images on a line (`[text](target)`, `![alt](target)`),
/// without a title.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let target = after[..end].trim();
        let target = match target.strip_prefix('<') {
            Some(t) => t.split_once('>').map_or(t, |(t, _)| t),
            None => target.split_once(' ').map_or(target, |(t, _)| t),
        };
        out.push(target.to_string());
        rest = &after[end..];
    }
    out
}

/// GitHub's line anchors into source files: `#L12` or `#L12-L20`.
fn is_line_anchor(anchor: &str) -> bool {
    let line = |s: &str| {
        s.strip_prefix('L')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    match anchor.split_once('-') {
        Some((a, b)) => line(a) && line(b),
        None => line(anchor),
    }
}

fn is_external(target: &str) -> bool {
    target.is_empty() || target.contains("://") || target.starts_with("mailto:")
}

/// What is wrong with each relative link of one file.
fn broken_links(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let here = file.parent().unwrap_or(root);
    let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
    for (n, line) in prose_lines(text) {
        for target in link_targets(line) {
            if is_external(&target) {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.to_path_buf()
            } else {
                here.join(path)
            };
            if !resolved.exists() {
                problems.push(format!("{shown}:{n}: {target}: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|e| e != "md") {
                if is_line_anchor(anchor) {
                    continue;
                }
                problems.push(format!(
                    "{shown}:{n}: {target}: an anchor into a file that is not Markdown"
                ));
                continue;
            }
            let target_text = std::fs::read_to_string(&resolved).expect("read link target");
            if !anchors(&target_text).iter().any(|a| a == anchor) {
                problems.push(format!("{shown}:{n}: {target}: no heading with this anchor"));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")) && files.iter().any(|f| f.starts_with(root.join("docs"))),
        "expected README.md and docs/*.md among {files:?}"
    );
    let mut problems = Vec::new();
    let mut links = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read markdown");
        links += prose_lines(&text)
            .iter()
            .map(|(_, l)| link_targets(l).len())
            .sum::<usize>();
        problems.extend(broken_links(root, file, &text));
    }
    assert!(
        links > 50,
        "only {links} links found: is the scanner still reading the docs?"
    );
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn slugs_follow_github() {
    for (heading, want) in [
        (
            "Paths, hosts, methods and headers: judged as served",
            "paths-hosts-methods-and-headers-judged-as-served",
        ),
        ("The `claimguard` command", "the-claimguard-command"),
        ("FAIL_RELOAD or FAIL_CLOSE", "fail_reload-or-fail_close"),
        (
            "Where the time goes in Envoy, outside the filter's code",
            "where-the-time-goes-in-envoy-outside-the-filters-code",
        ),
        ("2026-12-03 06:15 UTC", "2026-12-03-0615-utc"),
        (
            "Two tiers on your machine: `make demo-edge`",
            "two-tiers-on-your-machine-make-demo-edge",
        ),
        ("1. Build and publish the image", "1-build-and-publish-the-image"),
        ("See [the rules](rules.md) — first", "see-the-rules--first"),
        ("Why was my request denied?", "why-was-my-request-denied"),
    ] {
        assert_eq!(slug(heading), want, "{heading}");
    }
}

#[test]
fn line_anchors_are_recognised() {
    assert!(is_line_anchor("L12") && is_line_anchor("L12-L20"));
    assert!(!is_line_anchor("L") && !is_line_anchor("x") && !is_line_anchor("L1-2"));
}

#[test]
fn anchors_skip_code_and_number_repeats() {
    let text = "# A\n```sh\n# not a heading\n```\n## A\n### B #\n#hashtag\n";
    assert_eq!(anchors(text), ["a", "a-1", "b"]);
}

#[test]
fn links_are_found_outside_code_only() {
    assert_eq!(
        link_targets("see [x](a.md#b), ![i](img.png \"t\") and `[no](c.md)` or [y](<d e.md>)"),
        ["a.md#b", "img.png", "d e.md"]
    );
    assert_eq!(link_targets("[p](f(x).md)"), ["f(x).md"]);
    let text = "[a](x.md)\n```\n[b](y.md)\n```\n";
    let lines: Vec<_> = prose_lines(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(lines, [1]);
}
