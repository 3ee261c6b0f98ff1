//! The source's layers point one way: no module imports one of a layer above its own, and no
//! two top-level modules import each other, directly or around a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "config",
        "metrics",
        "logs",
        "request_id",
        "token",
        "trace",
    ],
    &[
        "route",
        "rewrite",
        "cors",
        "authenticate",
        "authorize",
        "rate_limit",
        "identity",
        "upstream",
        "tls",
        "websocket",
        "respond",
        "client_ip",
        "token_service",
        "session",
    ],
    &["snapshot"],
    &["proxy", "fuzz", "import"],
    &["runtime"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a source text names through `crate::`, comments left out.
fn references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if rest.starts_with('{') {
                // `use crate::{a, b::c}` may span lines: read on in the whole text, from just
                // after the brace (lines are slices of it) to the closing one.
                let start = rest.as_ptr() as usize - text.as_ptr() as usize + 1;
                let mut depth = 1;
                let mut item_start = true;
                for (j, c) in text[start..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => item_start = true,
                        c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                            found.insert(ident(&text[start + j..]).to_string());
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    found.insert(name.to_string());
                }
            }
        }
    }
    found
}

/// Module → the modules it uses, for every top-level module of the library.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(references(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut wrong = Vec::new();
    for (module, uses) in graph() {
        for used in uses {
            if layer_of(&used) > layer_of(&module) {
                wrong.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up: {wrong:?}");
}

#[test]
fn top_level_modules_import_no_circle() {
    let graph = graph();
    // Depth-first search; a module met again while on the stack closes a circle.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut circle = stack[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_nested_imports() {
    let text =
        "use crate::{\n    a::b,\n    c,\n};\nfn f() { crate::d::e(); }\n// crate::ignored\n";
    let found: Vec<String> = references(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "d"]);
}
