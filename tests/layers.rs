//! Two layers, two crates (issue 19): `proto`, the vocabulary every
//! process speaks (graph, plan, control messages, fd passing, logging, ...),
//! and `runtime`, what only workers run (the loop, connections, dialer,
//! relays, ...), which builds on `proto`. The compiler already keeps `proto`
//! from using `runtime` (that would be a cycle); this test keeps the rest:
//! the vocabulary's sources name no runtime path (not even in a doc link),
//! and the supervisor crate reaches `runtime` through none of its
//! dependencies, so it links no code it never runs.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `p`, walked whole.
fn sources(p: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    if let Ok(dir) = std::fs::read_dir(p) {
        for e in dir.flatten() {
            let path = e.path();
            if path.is_dir() {
                all.extend(sources(&path));
            } else if path.extension().is_some_and(|x| x == "rs") {
                all.push(path);
            }
        }
    }
    all
}

/// Lines of `files` that name a path in the `runtime` crate
/// (`runtime::relay`), as `file:line: text`. Comment lines count only for
/// an intra-doc link (``[`runtime::x`]``, a dependency for rustdoc): prose
/// saying where a worker does something is none.
fn naming_runtime(files: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") && !line.contains("[`runtime::") {
                continue;
            }
            let named = line.match_indices("runtime::").any(|(i, _)| {
                // `runtime::x` but not `worker_runtime::x`.
                !line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if named {
                found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// The workspace crates `krate` (a directory at the root) depends on, as
/// its `[dependencies]` name them (`x.workspace = true`, `x = { path = .. }`):
/// only those that are directories of this repository.
fn local_dependencies(krate: &str) -> Vec<String> {
    let toml = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    let mut deps = Vec::new();
    let mut section = String::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        // Build dependencies and dev-dependencies do not reach the
        // executable; target-specific ones would (`[target.x.dependencies]`).
        if !(section == "[dependencies]" || section.ends_with(".dependencies]")) {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or("")
            .trim_matches('"');
        if !name.is_empty()
            && !name.starts_with('#')
            && root().join(name).join("Cargo.toml").is_file()
        {
            deps.push(name.to_string());
        }
    }
    deps
}

/// Every workspace crate `krate` reaches through its dependencies.
fn reaches(krate: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut todo = vec![krate.to_string()];
    while let Some(k) = todo.pop() {
        for d in local_dependencies(&k) {
            if !seen.contains(&d) {
                seen.push(d.clone());
                todo.push(d);
            }
        }
    }
    seen
}

#[test]
fn vocabulary_names_no_runtime() {
    let files = sources(&root().join("proto/src"));
    assert!(!files.is_empty(), "no proto sources");
    let found = naming_runtime(&files);
    assert!(
        found.is_empty(),
        "vocabulary naming the runtime:\n{}",
        found.join("\n")
    );
    assert!(
        !reaches("proto").contains(&"runtime".to_string()),
        "proto depends on runtime"
    );
}

#[test]
fn supervisor_does_not_depend_on_runtime() {
    let deps = reaches("supervisor");
    assert!(
        deps.contains(&"proto".to_string()),
        "the dependency reader found no proto in supervisor/Cargo.toml: {deps:?}"
    );
    assert!(
        !deps.contains(&"runtime".to_string()),
        "the supervisor crate reaches runtime: {deps:?}"
    );
    let files = sources(&root().join("supervisor/src"));
    assert!(!files.is_empty(), "no supervisor sources");
    let found = naming_runtime(&files);
    assert!(
        found.is_empty(),
        "supervisor naming the runtime:\n{}",
        found.join("\n")
    );
}

/// The workers are what runs the runtime: each depends on it (a check that
/// the dependency reader above reads what it should).
#[test]
fn workers_depend_on_runtime() {
    for w in ["worker-tcp", "worker-http", "worker-unix"] {
        let deps = reaches(w);
        assert!(
            deps.contains(&"runtime".to_string()) && deps.contains(&"proto".to_string()),
            "{w}: {deps:?}"
        );
    }
}
