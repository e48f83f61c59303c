//! The specification in `docs/spec/` is what comments and documents cite: every
//! `docs/spec/formats.md §N.M` or `docs/spec/behavior.md §N.M` anywhere in the repository must name
//! a section (or a numbered step, item or erratum) that exists, and nothing may point at a copy of
//! the specification outside the repository.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const SPECS: [&str; 2] = ["formats.md", "behavior.md"];
const SOURCE_EXTENSIONS: [&str; 8] = ["rs", "c", "cpp", "h", "md", "toml", "sh", "py"];
/// Build output, history and the golden files hold no citations; `docs/spec/` cites itself by
/// bare file name.
const NOT_CITING: [&str; 4] = ["target", ".git", "golden", "spec"];
const NOT_TEXT: [&str; 2] = ["target", ".git"];

/// One specification page: its section numbers and erratum labels, and its text to look for
/// numbered steps in.
struct Spec {
    sections: BTreeSet<String>,
    labels: BTreeSet<String>,
    text: String,
}

impl Spec {
    fn load(path: &Path) -> Spec {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut sections = BTreeSet::new();
        let mut labels = BTreeSet::new();
        for line in text.lines() {
            let Some(title) = line.strip_prefix("## ").or(line.strip_prefix("### ")).or(line.strip_prefix("#### ")) else {
                continue;
            };
            let head = title.split_whitespace().next().unwrap_or("");
            let number = head.trim_end_matches('.');
            if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.') {
                sections.insert(number.to_string());
            } else if let Some(label) = erratum_label(number) {
                labels.insert(label);
            }
        }
        for line in text.lines() {
            // The omissions are a bulleted list: "- **O6. Title.**".
            if let Some(rest) = line.trim_start().strip_prefix("- **") {
                if let Some(label) = erratum_label(rest.split('.').next().unwrap_or("")) {
                    labels.insert(label);
                }
            }
        }
        Spec { sections, labels, text }
    }

    /// The text of section `number` and its subsections.
    fn section_text(&self, number: &str) -> String {
        let mut inside = false;
        let mut out = String::new();
        for line in self.text.lines() {
            if line.starts_with("## ") || line.starts_with("### ") {
                let head = line.trim_start_matches('#').split_whitespace().next().unwrap_or("").trim_end_matches('.');
                inside = head == number || head.starts_with(&format!("{number}."));
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Whether section `number` has a numbered list item or table row `item`.
    fn has_item(&self, number: &str, item: &str) -> bool {
        self.section_text(number).lines().any(|line| {
            let line = line.trim_start();
            line.starts_with(&format!("{item}. ")) || line.starts_with(&format!("| {item} |"))
        })
    }
}

/// "D7" or "O12", if `word` is an erratum label.
fn erratum_label(word: &str) -> Option<String> {
    let mut chars = word.chars();
    let first = chars.next()?;
    let rest: String = chars.collect();
    let numbered = !rest.is_empty() && rest.len() <= 2 && rest.chars().all(|c| c.is_ascii_digit());
    ((first == 'D' || first == 'O') && numbered).then(|| word.to_string())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("rsl-engine sits in the workspace").to_path_buf()
}

fn source_files(dir: &Path, skip: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !skip.contains(&name.as_str()) {
                source_files(&path, skip, out);
            }
        } else if path.extension().is_some_and(|e| SOURCE_EXTENSIONS.contains(&e.to_string_lossy().as_ref())) {
            out.push(path);
        }
    }
}

/// A file's text with comment markers gone and lines joined, so a citation wrapped over two
/// comment lines reads as one.
fn flattened(text: &str) -> String {
    text.lines()
        .map(|line| line.trim_start().trim_start_matches("//!").trim_start_matches("///").trim_start_matches("//").trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One citation: the spec page, then what follows its name up to the closing parenthesis, the
/// next citation, or the end of the sentence.
fn citations(text: &str) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for spec in SPECS {
        let needle = format!("docs/spec/{spec}");
        for (start, _) in text.match_indices(&needle) {
            let rest = &text[start + needle.len()..];
            let mut end = rest.find(')').unwrap_or(rest.len());
            if let Some(next) = rest.find("docs/") {
                end = end.min(next);
            }
            if let Some(stop) = rest.find(". ") {
                end = end.min(stop);
            }
            found.push((spec, rest[..end].to_string()));
        }
    }
    found
}

/// What one citation's scope names: section numbers (ranges give both ends), numbered items
/// ("§5 item 15", "§2.9 step 2", "§2.17.5") and erratum labels.
fn check(spec: &Spec, scope: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let words: Vec<&str> = scope.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(').filter(|w| !w.is_empty()).collect();
    for (i, word) in words.iter().enumerate() {
        if let Some(label) = erratum_label(word.trim_end_matches(['.', ':'])) {
            if !spec.labels.contains(&label) {
                missing.push(format!("erratum {label}"));
            }
            continue;
        }
        if !word.starts_with('§') {
            continue;
        }
        for part in word.split(['–', '-']) {
            let number = part.trim_start_matches('§').trim_end_matches(['.', ':']);
            if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
                continue;
            }
            if spec.sections.contains(number) {
                if let (Some(kind), Some(item)) = (words.get(i + 1), words.get(i + 2)) {
                    let item = item.trim_end_matches(['.', ':']);
                    if matches!(*kind, "item" | "step" | "steps") && !spec.has_item(number, item) {
                        missing.push(format!("§{number} {kind} {item}"));
                    }
                }
                continue;
            }
            // "§2.17.5": step 5 of §2.17.
            match number.rsplit_once('.') {
                Some((parent, item)) if spec.sections.contains(parent) && spec.has_item(parent, item) => {}
                _ => missing.push(format!("§{number}")),
            }
        }
    }
    missing
}

#[test]
fn every_cited_section_exists() {
    let root = workspace_root();
    let specs: Vec<Spec> = SPECS.iter().map(|name| Spec::load(&root.join("docs/spec").join(name))).collect();
    assert!(specs.iter().all(|s| s.sections.len() > 40), "the spec pages lost their numbered headings");
    let mut files = Vec::new();
    source_files(&root, &NOT_CITING, &mut files);
    let mut cited = 0;
    let mut broken = Vec::new();
    for file in &files {
        let text = flattened(&fs::read_to_string(file).unwrap_or_default());
        for (name, scope) in citations(&text) {
            let spec = &specs[SPECS.iter().position(|s| *s == name).expect("a known page")];
            cited += scope.matches('§').count();
            for what in check(spec, &scope) {
                let file = file.strip_prefix(&root).unwrap_or(file).display();
                broken.push(format!("{file}: docs/spec/{name} {what} (in \"{}\")", scope.trim()));
            }
        }
    }
    assert!(cited > 100, "only {cited} citations found: is the scan looking in the right place?");
    assert!(broken.is_empty(), "citations of sections that do not exist:\n{}", broken.join("\n"));
}

#[test]
fn nothing_points_outside_the_repository() {
    let root = workspace_root();
    let outside = [concat!("rsl", "-spec"), concat!("shared", "/rsl"), concat!("../../", "shared")];
    let mut files = Vec::new();
    source_files(&root, &NOT_TEXT, &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| fs::read_to_string(file).is_ok_and(|text| outside.iter().any(|o| text.contains(o))))
        .map(|file| file.strip_prefix(&root).unwrap_or(file).display().to_string())
        .collect();
    assert!(offenders.is_empty(), "files that cite the specification outside the repository: {offenders:?}");
}

#[test]
fn the_checker_catches_a_missing_section() {
    let spec = Spec::load(&workspace_root().join("docs/spec/behavior.md"));
    assert!(check(&spec, " §2.8, §2.13–2.15 and O6").is_empty());
    assert!(check(&spec, " §2.17.5 with erratum D7").is_empty());
    assert!(check(&spec, " §5 item 15").is_empty());
    assert_eq!(check(&spec, " §2.99"), vec!["§2.99"]);
    assert_eq!(check(&spec, " §5 item 99"), vec!["§5 item 99"]);
    assert_eq!(check(&spec, " erratum D99"), vec!["erratum D99"]);
}
