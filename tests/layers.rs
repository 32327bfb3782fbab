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

/// A module path inside a crate's `src/` (`["backend", "dialer"]`) of
/// file `f`: `lib.rs`, `main.rs` and `mod.rs` are their directory's.
fn module_of(src: &Path, f: &Path) -> Vec<String> {
    let rel = f.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if m.last()
        .is_some_and(|l| ["lib", "main", "mod"].contains(&l.as_str()))
    {
        m.pop();
    }
    m
}

/// Production text of a source: no test module, no comment line.
fn production(f: &Path) -> String {
    if f.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(f).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `text` (of module `me`) names: `crate::a::b`,
/// `crate::{a, b}`, `super::x` (a sibling of `me`).
fn named(me: &[String], text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `pvx_crate::`, not ours
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let p = ident(part.trim());
                if !p.is_empty() {
                    out.push(vec![p]);
                }
            }
        } else {
            let p = ident(rest);
            if !p.is_empty() {
                out.push(vec![p]);
            }
        }
    }
    for (i, _) in text.match_indices("super::") {
        if text[..i].ends_with("super::") {
            continue; // inside a `super::super::` chain, read from its start
        }
        let mut rest = &text[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            up += 1;
        }
        let p = ident(rest);
        if !p.is_empty() && up <= me.len() {
            let mut path = me[..me.len() - up].to_vec();
            path.push(p);
            out.push(path);
        }
    }
    out
}

/// Import circles among sibling modules of the crate at `src`: for each
/// reference from module `a` to module `b`, an edge between the two
/// siblings under their closest common parent (a child using its parent's
/// items is no circle: the parent owns it). Returns each circle found.
fn import_circles(src: &Path) -> Vec<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in sources(src) {
        let me = module_of(src, &f);
        for to in named(&me, &production(&f)) {
            let k = me.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if k < me.len() && k < to.len() {
                edges
                    .entry(me[..=k].to_vec())
                    .or_default()
                    .insert(to[..=k].to_vec());
            }
        }
    }
    // A circle: a node that reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<Vec<Vec<String>>> = vec![vec![start.clone()]];
        while let Some(path) = todo.pop() {
            let last = path.last().unwrap();
            for next in edges.get(last).into_iter().flatten() {
                if next == start {
                    let names = path.iter().map(|m| m.join("::")).collect();
                    circles.push(names);
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    todo.push(p);
                }
            }
        }
    }
    circles
}

/// No module of any crate imports a sibling that imports it back,
/// directly or around a longer circle (issue 19): each crate's modules
/// read as a tree of layers, leaf vocabulary at the bottom.
#[test]
fn no_import_circle_in_any_crate() {
    let mut found = Vec::new();
    for krate in [
        "proto",
        "runtime",
        "supervisor",
        "worker-tcp",
        "worker-unix",
        "worker-http",
    ] {
        let src = root().join(krate).join("src");
        assert!(src.is_dir(), "{krate}: no src");
        for c in import_circles(&src) {
            found.push(format!("{krate}: {}", c.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

/// The circle finder finds one (so a pass above means something).
#[test]
fn the_circle_finder_sees_a_circle() {
    let dir = std::env::temp_dir().join(format!("pvx-layers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a; mod b;\n").unwrap();
    std::fs::write(dir.join("a/mod.rs"), "use crate::b::X;\nmod c;\n").unwrap();
    std::fs::write(dir.join("a/c.rs"), "use super::super::b;\nuse super::Y;\n").unwrap();
    std::fs::write(dir.join("b.rs"), "// crate::a is prose\nfn f() {}\n").unwrap();
    assert!(import_circles(&dir).is_empty());
    std::fs::write(dir.join("b.rs"), "use crate::{a::Y, other};\n").unwrap();
    let found = import_circles(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(found.iter().any(|c| c == &["a", "b"]), "{found:?}");
}
