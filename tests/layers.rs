//! The layers of DESIGN.md, enforced: every `crate::<module>` path in `src/` (a `use`, a
//! qualified call, a `crate::info!`-style macro) must follow an allowed edge below. A path from
//! a lower layer to a higher one is a cycle in the making and fails this test, naming the file
//! and line.
//!
//! Data flows down: comm -> tune -> sim -> exec -> algo -> topo, exec -> transport -> bootstrap,
//! and everything may use the base (error, log, sys). Doc comments and comments are not code and
//! are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may name (itself is always allowed).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sys", &[]),
    // The macro that declares the crate's enum tables (DataType, ReduceOp, Collective,
    // Algorithm): used by the layers that define them, it names none.
    ("enum_table", &[]),
    ("error", &[]),
    ("log", &["sys"]),
    ("bootstrap", &["error", "log", "sys"]),
    ("reduce", &["error", "log", "sys"]),
    ("topo", &["bootstrap", "error", "log", "sys"]),
    (
        "transport",
        &["bootstrap", "reduce", "topo", "error", "log", "sys"],
    ),
    ("algo", &["topo", "reduce", "error", "log", "sys"]),
    (
        "exec",
        &["algo", "transport", "reduce", "error", "log", "sys"],
    ),
    ("sim", &["algo", "topo", "error", "log", "sys"]),
    (
        "tune",
        &["sim", "algo", "topo", "reduce", "error", "log", "sys"],
    ),
    (
        "comm",
        &[
            "tune",
            "sim",
            "exec",
            "algo",
            "topo",
            "transport",
            "bootstrap",
            "reduce",
            "error",
            "log",
            "sys",
        ],
    ),
];

/// Macros exported at the crate root by `log.rs`.
const LOG_MACROS: &[&str] = &["info", "warn", "trace", "debug"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/comm/api.rs` and `src/comm.rs` are
/// both `comm`); `None` for the crate root and the binaries.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "bin" && name != "main").then_some(name)
}

/// The code of a line: without its `//` comment (doc comments included), strings not parsed
/// (a `//` inside a string literal cuts the line short, which can only hide a path, not add one).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every top-level module a piece of code names through `crate::`: `crate::a::x`, `crate::a!`
/// and each first segment of `crate::{a::x, b}` (nested braces followed to their end).
fn targets(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `$crate::` (inside a macro) and `oxccl_crate::` are not this crate's paths from here.
        let before = rest[..i].chars().next_back();
        let after = &rest[i + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut seg = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if !seg.is_empty() {
                            out.push(std::mem::take(&mut seg));
                        }
                        first = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && first {
                    if is_ident(c) {
                        seg.push(c);
                    } else if !seg.is_empty() {
                        out.push(std::mem::take(&mut seg));
                        first = false;
                    }
                }
            }
            if !seg.is_empty() {
                out.push(seg);
            }
            continue;
        }
        let name: String = after.chars().take_while(|&c| is_ident(c)).collect();
        if name.is_empty() {
            continue;
        }
        if after[name.len()..].starts_with('!') && LOG_MACROS.contains(&name.as_str()) {
            out.push("log".to_string());
        } else {
            out.push(name);
        }
    }
    out
}

/// Joins a `use crate::{...};` spread over several lines into one piece of code, so that its
/// group is read whole; other lines stay as they are. An inline `#[cfg(test)] mod ... { }` is
/// left out: unit tests are not part of the library's layering (a test of a lower layer may
/// build what it checks with a higher one).
fn statements(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    let mut after_cfg_test = false;
    let mut skip_until: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        if let Some(end) = &skip_until {
            if line.trim_end() == end {
                skip_until = None;
            }
            continue;
        }
        if line.trim() == "#[cfg(test)]" {
            after_cfg_test = true;
            continue;
        }
        if std::mem::take(&mut after_cfg_test) {
            let head = line.trim_start();
            if head.starts_with("mod ") && line.trim_end().ends_with('{') {
                let indent = &line[..line.len() - head.len()];
                skip_until = Some(format!("{indent}}}"));
                continue;
            }
        }
        let code = code_of(line);
        if let Some((start, mut acc)) = open.take() {
            acc.push_str(code);
            if code.contains(';') {
                out.push((start, acc));
            } else {
                open = Some((start, acc));
            }
            continue;
        }
        let head = code.trim_start();
        let is_use = ["use ", "pub use ", "pub(crate) use "]
            .iter()
            .any(|u| head.starts_with(u));
        if is_use && !code.contains(';') {
            open = Some((n + 1, code.to_string()));
            continue;
        }
        out.push((n + 1, code.to_string()));
    }
    out
}

/// The crate root's re-exports (`pub use comm::{Communicator, Config}` in lib.rs): which module
/// `crate::Communicator` really names.
fn root_reexports(root: &Path) -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("read lib.rs");
    let mut out = BTreeMap::new();
    for (_, code) in statements(&lib) {
        let Some(rest) = code.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim_end_matches(';').trim();
        let names = names.strip_prefix('{').unwrap_or(names);
        for name in names.trim_end_matches('}').split(',') {
            let name = name.trim();
            if !name.is_empty() {
                out.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// Every `file:line: from -> to` path in `src/` that the table does not allow.
fn upward_imports(root: &Path) -> (Vec<String>, BTreeMap<(String, String), usize>) {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let reexports = root_reexports(root);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut edges = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(root.join("src")).expect("under src");
        let Some(from) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        for (line, code) in statements(&text) {
            for to in targets(&code) {
                let to = reexports.get(&to).cloned().unwrap_or(to);
                if to == from {
                    continue;
                }
                *edges.entry((from.clone(), to.clone())).or_insert(0) += 1;
                let ok = allowed
                    .get(from.as_str())
                    .is_some_and(|list| list.contains(&to.as_str()));
                if !ok {
                    bad.push(format!(
                        "src/{}:{line}: {from} -> {to}: {}",
                        rel.display(),
                        code.trim()
                    ));
                }
            }
        }
    }
    (bad, edges)
}

#[test]
fn every_module_is_in_the_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut entries: Vec<_> = std::fs::read_dir(root.join("src"))
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| module_of(p.strip_prefix(root.join("src")).expect("under src")))
        .collect();
    entries.sort();
    entries.dedup();
    for m in entries {
        assert!(
            ALLOWED.iter().any(|(name, _)| *name == m),
            "src/{m} is in no layer: add it to ALLOWED in tests/layers.rs (and to DESIGN.md)"
        );
    }
}

#[test]
fn no_upward_imports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (bad, edges) = upward_imports(root);
    assert!(
        edges.len() > 10,
        "the scan found too few edges to be reading the sources: {edges:?}"
    );
    assert!(
        bad.is_empty(),
        "{} upward import(s) (allowed edges: tests/layers.rs ALLOWED):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The `Link` trait (src/transport/mod.rs) is what every transport implements and the executor
/// drives: it names no concrete transport (`shm::`, `tcp::`, `mpath::`, `rdma::`) outside the
/// `mod` lines that declare them.
#[test]
fn the_link_trait_names_no_transport() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("src/transport/mod.rs")).expect("read");
    let bad: Vec<String> = statements(&text)
        .into_iter()
        .filter(|(_, code)| {
            ["shm::", "tcp::", "mpath::", "rdma::"]
                .iter()
                .any(|t| code.contains(t))
        })
        .map(|(n, code)| format!("src/transport/mod.rs:{n}: {}", code.trim()))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_scanner_sees_every_form() {
    assert_eq!(targets("use crate::comm::Config;"), ["comm"]);
    assert_eq!(
        targets("use crate::{algo::{Op, Program}, error::Result, sys};"),
        ["algo", "error", "sys"]
    );
    assert_eq!(targets("    crate::info!(Some(1), \"x\");"), ["log"]);
    assert_eq!(targets("let x = crate::comm::DEFAULT_CHUNK;"), ["comm"]);
    assert!(targets("$crate::log::emit()").is_empty());
    assert!(code_of("/// see [`crate::comm`]").trim().is_empty());
    let joined = statements("use crate::{\n    tune,\n    comm::X,\n};\n");
    assert_eq!(targets(&joined[0].1), ["tune", "comm"]);
    let with_tests =
        "use crate::sys;\n#[cfg(test)]\nmod tests {\n    use crate::comm;\n}\nuse crate::log;\n";
    let seen: Vec<String> = statements(with_tests)
        .iter()
        .flat_map(|(_, code)| targets(code))
        .collect();
    assert_eq!(
        seen,
        ["sys", "log"],
        "unit-test modules are skipped, the rest is read"
    );
}
