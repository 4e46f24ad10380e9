//! The crate's layout: no import cycle between its top-level modules, and no
//! source file past ~700 lines. Reads the sources; needs no device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs" || e == "wgsl") {
            out.push(path);
        }
    }
    out
}

/// The top-level module a file of src/ belongs to (`plan/split.rs` → plan).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// The modules of this crate a file names as `crate::NAME`.
fn uses(text: &str, modules: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if modules.contains(&name) && !out.contains(&name) {
            out.push(name);
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(0)];
            for part in group.split(',') {
                let name = part.trim().split("::").next().unwrap_or("").to_string();
                if modules.contains(&name) && !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn modules_form_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    // The modules lib.rs declares: `pub mod NAME;`.
    let order: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    assert!(order.len() >= 10, "{order:?}");
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        if file.extension().is_some_and(|e| e != "rs") {
            continue;
        }
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        assert!(
            order.contains(&module),
            "{} is not declared in lib.rs",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may use anything.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = graph.entry(module.clone()).or_default();
        for used in uses(text, &order) {
            if used != module && !deps.contains(&used) {
                deps.push(used);
            }
        }
    }
    // Depth-first search for a cycle: a module met again while it is still
    // on the path is one.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, Vec<String>>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) {
        if done.contains(&m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m);
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, path, done);
        }
        path.pop();
        done.push(m);
    }
    let mut done = Vec::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    // The graph is not trivially empty: the layers below are used.
    assert!(graph["flash"].contains(&"plan".to_string()), "{graph:?}");
    assert!(
        graph["dtype"].is_empty() && graph["mask"].is_empty(),
        "{graph:?}"
    );
}

#[test]
fn no_source_file_is_past_700_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "shaders", "tests", "benches", "examples"] {
        for file in rust_files(&root.join(dir)) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            assert!(lines <= 700, "{} has {lines} lines", file.display());
        }
    }
}
