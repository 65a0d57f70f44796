//! The layer rule, checked over the crate's own source: a module imports only from its own layer
//! or below, never through the crate root's re-exports, and no modules import each other in a
//! circle — neither the layers' folders, nor the files within one folder.
//!
//! A module is a file under `src/` (`os/procfs.rs` is `os::procfs`, `os/mod.rs` is `os`); its
//! imports are the `crate::…` and `super::…` paths of its code (comments aside), each resolved to
//! the longest module path it names. `lib.rs`, which declares and re-exports everything, is the
//! one file outside the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders (and root files) of `src/`, by layer, lowest first.
const LAYERS: [&[&str]; 8] = [
    &["os"],
    &["error"],
    &["evidence"],
    &["containment"],
    &["registry"],
    &["guard"],
    &["sweep"],
    &["scope", "shared", "rmcp", "supervisor"],
];

type Module = Vec<String>;

fn layer(module: &Module) -> usize {
    let top = module.first().map(String::as_str).unwrap_or_default();
    LAYERS.iter().position(|l| l.contains(&top)).unwrap_or_else(|| panic!("`{top}` is in no layer: add it to LAYERS"))
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// Every `.rs` file under `dir`, with its module path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") || path.file_name().is_some_and(|n| n == "lib.rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src").with_extension("");
            let mut module: Module = relative.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of a file, without its comments (doc links name modules without importing them)
/// and without its unit tests (`#[cfg(test)] mod tests`, at the end: a test may use the layers
/// above the code it tests).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The module paths `code` (of module `from`) refers to, as written after `crate::`/`super::`
/// (`{a, b::c}` groups expanded), each as a list of segments from the crate root.
fn references(from: &Module, code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut refs = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", from[..from.len().saturating_sub(1)].to_vec())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `$crate::`, `a::super::`: not ours
            }
            let paths: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(0)].split(',').map(|p| p.trim().to_owned()).collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .to_owned()],
            };
            for path in paths {
                let segments: Vec<String> = path.split("::").map(ident).filter(|s| !s.is_empty()).collect();
                if !segments.is_empty() {
                    refs.push(base.iter().cloned().chain(segments).collect());
                }
            }
        }
    }
    refs
}

/// The longest module of `known` that `path` starts with (`None`: the crate root).
fn resolve(path: &[String], known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| known.contains_key(m))
}

/// A cycle in `edges`, if there is one, as the modules along it.
fn cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        at: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(at.clone(), 1);
        stack.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let from = stack.iter().position(|m| m == next).expect("on the stack");
                    return Some(stack[from..].iter().cloned().chain([next.clone()]).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(found) = visit(next, edges, state, stack) {
                        return Some(found);
                    }
                }
            }
        }
        stack.pop();
        state.insert(at.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges.keys().find_map(|start| {
        (!state.contains_key(start)).then(|| visit(start, edges, &mut state, &mut Vec::new())).flatten()
    })
}

#[test]
fn no_module_imports_from_a_layer_above_its_own_or_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut problems = Vec::new();
    let mut between_folders: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut within_folders: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, file) in &known {
        let text = code(&std::fs::read_to_string(file).expect("a source file"));
        for path in references(from, &text) {
            let Some(to) = resolve(&path, &known) else {
                problems.push(format!(
                    "{}: `crate::{}` imports through the crate root: name its module",
                    name(from),
                    path.join("::")
                ));
                continue;
            };
            if to == *from {
                continue;
            }
            if layer(&to) > layer(from) {
                problems.push(format!(
                    "{} (layer {}) imports {} (layer {})",
                    name(from),
                    layer(from),
                    name(&to),
                    layer(&to)
                ));
            }
            if from[0] != to[0] {
                between_folders.entry(vec![from[0].clone()]).or_default().insert(vec![to[0].clone()]);
            } else if from.len() > 1 && to.len() > 1 {
                // Within a folder; its `mod.rs` is the folder's face, which its files may use.
                within_folders.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    for (what, edges) in [("folders", &between_folders), ("files of one folder", &within_folders)] {
        if let Some(found) = cycle(edges) {
            let path: Vec<String> = found.iter().map(name).collect();
            problems.push(format!("{what} import each other in a circle: {}", path.join(" -> ")));
        }
    }
    assert!(problems.is_empty(), "the layer rule (ARCHITECTURE.md) is broken:\n  {}", problems.join("\n  "));
}
