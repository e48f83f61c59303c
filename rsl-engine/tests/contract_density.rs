//! Counts, over the non-test code of `src/paxos/`, the `fn` items and the assertion invocations
//! (`assert!`, `assert_eq!`, `assert_ne!` and their `debug_` forms) and fails below two per
//! function (issue 13).
//!
//! What is not counted: comments, string and char literals, every item under `#[cfg(test)]`
//! (a test module, a test-only helper), and every file of a module declared only under
//! `#[cfg(test)]` (`mod directed;`, `mod hostile;`, ... with everything under them). A `fn`
//! counts as a declaration (`fn name`), so `fn(..)` pointer types and closures do not.
//! Nothing weighs the assertions: whether each says something a bug could break is for review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MIN_PER_FN: f64 = 2.0;

const ASSERTIONS: [&str; 6] = ["assert", "assert_eq", "assert_ne", "debug_assert", "debug_assert_eq", "debug_assert_ne"];

/// `text` with comments removed and the contents of string and char literals blanked, so that
/// neither braces nor words inside them count.
fn code_only(text: &str) -> String {
    let s: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    (depth, i) = (depth + 1, i + 2);
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    (depth, i) = (depth - 1, i + 2);
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !s[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_') {
            // A raw string: r"..." or r#"..."#.
            let hashes = s[i + 1..].iter().take_while(|&&h| h == '#').count();
            if s.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < s.len() && !(s[i] == '"' && s[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || s.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{..}'); anything else is a lifetime.
            i += 1;
            while i < s.len() && s[i] != '\'' {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The code with every item under `#[cfg(test)]` removed: up to its matching `}` if it has a
/// body, else up to its `;`.
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.is_none_or(|semi| open < semi) => {
                let mut depth = 0;
                let close = item[open..].char_indices().find_map(|(k, ch)| {
                    depth += match ch {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(open + k)
                });
                close.expect("braces balance")
            }
            (_, Some(semi)) => semi,
            _ => item.len() - 1,
        };
        rest = &item[end + 1..];
    }
    out.push_str(rest);
    out
}

fn words(code: &str) -> Vec<(&str, char)> {
    let mut found = Vec::new();
    let mut start = None;
    for (i, ch) in code.char_indices() {
        let word_char = ch.is_alphanumeric() || ch == '_';
        match (start, word_char) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                let after = code[i..].trim_start().chars().next().unwrap_or(' ');
                found.push((&code[s..i], after));
                start = None;
            }
            _ => {}
        }
    }
    found
}

/// `(fn items, assertions)` in non-test code.
fn count(code: &str) -> (usize, usize) {
    let w = words(code);
    let fns = w.iter().filter(|(word, after)| *word == "fn" && (after.is_alphabetic() || *after == '_')).count();
    let asserts = w.iter().filter(|(word, after)| *after == '!' && ASSERTIONS.contains(word)).count();
    (fns, asserts)
}

/// The modules a file declares only under `#[cfg(test)]` (`#[cfg(test)] mod name;`).
fn test_only_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let item = code[at + "#[cfg(test)]".len()..].trim_start();
        let item = item.strip_prefix("pub(super) ").or_else(|| item.strip_prefix("pub ")).unwrap_or(item);
        if let Some(decl) = item.strip_prefix("mod ") {
            let name: String = decl.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if decl[name.len()..].trim_start().starts_with(';') {
                names.insert(name);
            }
        }
    }
    names
}

/// The non-test source files under `dir`: a module declared only under `#[cfg(test)]` by
/// `parent`'s code is skipped whole (its file, or its directory).
fn sources(dir: &Path, test_only: &BTreeSet<String>, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    // The module file of this directory (`mod.rs`) declares the children.
    let own = entries.iter().find(|p| p.file_name().is_some_and(|n| n == "mod.rs"));
    let declared = own.map(|p| test_only_modules(&code_only(&std::fs::read_to_string(p).unwrap())));
    let test_only = declared.as_ref().unwrap_or(test_only);
    for path in entries {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if test_only.contains(&stem) {
            continue;
        }
        if path.is_dir() {
            // A directory module `x/` whose `x.rs` sits beside it is declared there.
            let sibling = dir.join(format!("{stem}.rs"));
            let declared =
                if sibling.exists() { test_only_modules(&code_only(&std::fs::read_to_string(&sibling).unwrap())) } else { BTreeSet::new() };
            sources(&path, &declared, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let code = without_test_items(&code_only(&std::fs::read_to_string(&path).unwrap()));
            out.push((path, code));
        }
    }
}

#[test]
fn the_paxos_core_carries_at_least_two_assertions_per_function() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let paxos = root.join("paxos");
    // `paxos/mod.rs` is read by `sources`; what `lib.rs` declares test-only is outside it.
    let mut files = Vec::new();
    sources(&paxos, &BTreeSet::new(), &mut files);
    assert!(files.len() >= 10, "found only {} files under {}", files.len(), paxos.display());
    let (mut fns, mut asserts) = (0, 0);
    println!("{:<40} {:>5} {:>8} {:>7}", "file", "fns", "asserts", "per fn");
    for (path, code) in &files {
        let (f, a) = count(code);
        (fns, asserts) = (fns + f, asserts + a);
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        println!("{name:<40} {f:>5} {a:>8} {:>7.2}", a as f64 / f.max(1) as f64);
    }
    let density = asserts as f64 / fns as f64;
    println!("{:<40} {fns:>5} {asserts:>8} {density:>7.2}", "total");
    assert!(density >= MIN_PER_FN, "{asserts} assertions over {fns} functions: {density:.2} per function, below {MIN_PER_FN}");
}

#[test]
fn the_counter_skips_comments_literals_and_test_items() {
    let src = r##"
        // fn commented() { assert!(x); }
        /* fn block() { /* nested */ assert!(y); } */
        fn real() { assert!(a, "fn in a string {}", '{'); debug_assert_eq!(b, c); }
        fn pointer(f: fn(u8) -> u8) -> u8 { let s = r#"assert!(no)"#; f(1) }
        #[cfg(test)]
        fn helper() { assert!(z); }
        #[cfg(test)]
        mod tests { fn t() { assert!(w); { } } }
        #[cfg(test)]
        mod catalogue;
        fn after<'a>(x: &'a str) -> &'a str { debug_assert!(!x.is_empty()); x }
    "##;
    let code = without_test_items(&code_only(src));
    assert_eq!(count(&code), (3, 3), "three fns and three assertions outside comments, literals and tests");
    assert_eq!(test_only_modules(&code_only(src)), BTreeSet::from(["catalogue".to_string()]), "a test module with a body is not a file");
}
