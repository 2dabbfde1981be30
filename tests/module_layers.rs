//! The modules' imports follow the data flow one way: a module may use only modules of a lower
//! layer, so there is no import cycle and a reader can tell from the layer table where a type
//! may be used. This test reads `src/` as text (every `crate::name` path, in `use` lines and in
//! code) and fails on an import that runs against the table, or on a module the table lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Leaves at the bottom; `pipeline` wires the components; the commands on top.
const LAYERS: &[&[&str]] = &[
    &["base", "event"],
    &["dead_letter", "script"],
    &["codec", "telemetry"],
    &["transport"],
    &["store"],
    &["generator"],
    &["aggregate"],
    &["consumer", "alert"],
    &["dashboard"],
    &["config"],
    &["pipeline"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every top-level module's imports of other top-level modules, with one file that has each.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .to_string();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "main" || module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for used in crate_paths(&text) {
                if used != module {
                    out.entry(module.clone())
                        .or_default()
                        .entry(used)
                        .or_insert_with(|| rel.display().to_string());
                }
            }
        }
    }
    out
}

/// The first segment of every `crate::…` path, including `use crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `runner_crate::` or similar, not this crate
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn imports_follow_the_layers_with_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    let mut problems = Vec::new();
    for (module, used) in &graph {
        let Some(from) = layer_of(module) else {
            problems.push(format!(
                "module {module} is not in the layer table of tests/module_layers.rs"
            ));
            continue;
        };
        for (target, file) in used {
            match layer_of(target) {
                None => problems.push(format!("{file}: uses {target}, which is not in the layer table")),
                Some(to) if to >= from => problems.push(format!(
                    "{file}: {module} (layer {from}) uses {target} (layer {to}); a module may use only lower layers"
                )),
                Some(_) => {}
            }
        }
    }
    for (i, layer) in LAYERS.iter().enumerate() {
        let shown: Vec<String> = layer
            .iter()
            .map(|m| {
                let deps: Vec<&str> = graph
                    .get(*m)
                    .map(|u| u.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                format!("{m} -> [{}]", deps.join(", "))
            })
            .collect();
        println!("layer {i}: {}", shown.join("; "));
    }
    assert!(
        problems.is_empty(),
        "imports against the flow:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let found = crate_paths(
        "use crate::{aggregate::X, store};\nfn f() { crate::alert::run(); }\n// crate::commented\n",
    );
    assert_eq!(
        found,
        BTreeSet::from([
            "aggregate".to_string(),
            "store".to_string(),
            "alert".to_string()
        ])
    );
}

/// The sibling modules a file of `folder` uses outside its tests: `super::name` (or
/// `super::{a, b}`) and `crate::folder::name`, where `name` is a file or folder beside it.
fn sibling_uses(text: &str, folder: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    // Test modules may reach anywhere; the structure is in the code they test.
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let own = format!("crate::{folder}::");
    for prefix in ["super::", own.as_str()] {
        for (i, _) in code.match_indices(prefix) {
            if prefix == "super::" && code[..i].ends_with("super::") {
                continue; // super::super:: leaves the folder
            }
            let rest = &code[i + prefix.len()..];
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .map(|item| {
                        item.trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect()
                    })
                    .collect(),
                None => vec![rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()],
            };
            out.extend(names.into_iter().filter(|n| siblings.contains(n)));
        }
    }
    out
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// Inside a folder, too, the modules use each other one way: a circle (a layout defined in
/// several files that each read the others') is a failure naming it.
#[test]
fn no_import_circle_inside_a_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut circles = Vec::new();
    let mut folders = vec![src.clone()];
    while let Some(dir) = folders.pop() {
        let entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let siblings: BTreeSet<String> = entries
            .iter()
            .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|n| n != "mod" && n != "lib" && n != "main")
            .collect();
        let folder = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in &entries {
            if path.is_dir() {
                folders.push(path.clone());
                continue;
            }
            let module = path.file_stem().unwrap().to_string_lossy().to_string();
            if dir == src || module == "mod" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let used = sibling_uses(&std::fs::read_to_string(path).unwrap(), &folder, &siblings);
            graph
                .entry(module.clone())
                .or_default()
                .extend(used.into_iter().filter(|u| *u != module));
        }
        if let Some(cycle) = find_cycle(&graph) {
            circles.push(format!(
                "src/{}: {}",
                dir.strip_prefix(&src).unwrap().display(),
                cycle.join(" -> ")
            ));
        }
    }
    assert!(
        circles.is_empty(),
        "modules of one folder that use each other in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_circle_checker_finds_a_circle_and_reads_grouped_paths() {
    let siblings = BTreeSet::from(["write".to_string(), "query".to_string(), "keys".to_string()]);
    let used = sibling_uses("use super::{keys, write};\nfn f() { crate::aggregate::query::read(); }\n#[cfg(test)]\nmod tests { use super::super::x; }", "aggregate", &siblings);
    assert_eq!(used, siblings);
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap().len(), 4);
    let line = BTreeMap::from([("a".to_string(), BTreeSet::from(["b".to_string()]))]);
    assert!(find_cycle(&line).is_none());
}
