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
    &["decode", "telemetry"],
    &["store", "transport"],
    &["generator"],
    &["aggregate"],
    &["consumer", "alert"],
    &["dashboard"],
    &["config"],
    &["pipeline"],
    &["commands", "testing", "bench", "init", "top", "docs"],
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
