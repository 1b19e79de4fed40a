//! The core's layers import one way only: each module may name only the
//! modules below it (see the table in `src/lib.rs`). This reads every
//! source file and fails on any `crate::` path that reaches upwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("os_error", &[]),
    ("latch", &[]),
    ("status", &[]),
    ("faults", &[]),
    ("protocol", &[]),
    ("runtime", &[]),
    ("image", &["runtime", "os_error"]),
    ("request", &["image", "protocol", "runtime", "status", "faults", "latch", "os_error"]),
    ("transport", &["request", "image", "protocol", "runtime", "status", "faults", "latch", "os_error"]),
    ("server", &["transport", "request", "image", "protocol", "runtime", "status", "faults", "latch", "os_error"]),
];

fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The modules a file names through `crate::` (in `use` lines and paths).
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (start, _) in text.match_indices("crate::") {
        let rest = &text[start + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() {
            // `crate::{a, b}`: every name in the braces.
            if let Some(group) = rest.strip_prefix('{').and_then(|g| g.split('}').next()) {
                used.extend(group.split(',').map(|n| n.trim().split("::").next().unwrap_or("").to_string()));
            }
        } else {
            used.insert(name);
        }
    }
    used.retain(|n| !n.is_empty());
    used
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == module) else {
            found.push(format!("{}: module `{module}` has no place in the layer table", file.display()));
            continue;
        };
        if text.contains("super::super") {
            found.push(format!("{}: `super::super` reaches out of its module; name it with `crate::`", file.display()));
        }
        for used in used_modules(&text) {
            if used != module && !allowed.contains(&used.as_str()) {
                found.push(format!("{}: `{module}` uses `crate::{used}`, which is not below it", file.display()));
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "layer violations:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_plain_and_grouped_paths() {
    let used =
        used_modules("use crate::runtime::ring::Ring;\nuse crate::{status::Status, image};\nlet x = crate::server::X;");
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["image", "runtime", "server", "status"]);
}
