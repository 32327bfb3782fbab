//! `proto` is two layers under one crate name until they become two crates
//! (issue 19): the vocabulary every process speaks (graph, plan, control
//! messages, fd passing, ...) and the runtime only workers run (the loop,
//! connections, dialer, relays, ...). Nothing in the vocabulary may name
//! the runtime, and the supervisor may name only the vocabulary: then
//! moving the runtime into its own crate is a move of files, and the
//! supervisor stops linking code it never runs. This test keeps it so until
//! the compiler can.

use std::path::{Path, PathBuf};

/// proto's modules that only workers run.
const RUNTIME: &[&str] = &[
    "accept",
    "backend",
    "balance",
    "conns",
    "duplex",
    "event_loop",
    "fdrelay",
    "health",
    "hold",
    "pipes",
    "relay",
    "stream",
    "worker",
    "proxy_header",
    "slab",
    "prober",
];

/// proto's modules that every process speaks (a file `x.rs` or a
/// directory `x/`).
const VOCABULARY: &[&str] = &[
    "graph", "plan", "ctl", "fdpass", "text", "stat", "log", "privs", "mem", "timer", "tick",
    "types", "limits",
];

/// Every `.rs` file at `p` (a file, or a directory walked whole).
fn sources(p: &Path) -> Vec<PathBuf> {
    if p.is_file() {
        return vec![p.to_path_buf()];
    }
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

/// Lines of `files` that name `prefix` + a runtime module (`crate::relay`,
/// `proto::health::...`), as `file:line: text`. `code_only`: comment lines
/// do not count (prose saying where a worker does something is no
/// dependency; an intra-doc link in the vocabulary would be one for
/// rustdoc, so there they count).
fn naming_runtime(files: &[PathBuf], prefix: &str, code_only: bool) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if code_only && line.trim_start().starts_with("//") {
                continue;
            }
            for m in RUNTIME {
                let path = format!("{prefix}{m}");
                let named = line.match_indices(&path).any(|(i, _)| {
                    // `crate::relay` but not `crate::relayed`.
                    !line[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if named {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn vocabulary_names_no_runtime_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for m in VOCABULARY {
        let (file, dir) = (src.join(format!("{m}.rs")), src.join(m));
        assert!(file.exists() || dir.exists(), "no module {m}");
        files.extend(sources(&file));
        files.extend(sources(&dir));
    }
    let found = naming_runtime(&files, "crate::", false);
    assert!(
        found.is_empty(),
        "vocabulary naming the runtime:\n{}",
        found.join("\n")
    );
}

#[test]
fn supervisor_names_no_runtime_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../supervisor/src");
    let files = sources(&root);
    assert!(
        !files.is_empty(),
        "no supervisor sources at {}",
        root.display()
    );
    let found = naming_runtime(&files, "proto::", true);
    assert!(
        found.is_empty(),
        "supervisor naming the runtime:\n{}",
        found.join("\n")
    );
}

/// Every module of the crate is in one layer or the other, so a new one
/// must be placed on purpose.
#[test]
fn every_module_has_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(m) = line
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            assert!(
                RUNTIME.contains(&m) || VOCABULARY.contains(&m),
                "module {m} is in neither layer (tests/layers.rs)"
            );
        }
    }
}
