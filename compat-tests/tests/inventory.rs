//! Every golden file is covered by a compatibility test: a file added to the golden set without
//! a test fails here.

use std::path::Path;

const COVERED: [&str; 32] = [
    "configinfo_v3.bin",
    "configinfo_v4.bin",
    "cp_legislator_v6/4.codex",
    "cp_multiblock_v4/100.codex",
    "cp_util_v2/4.codex",
    "cp_util_v3/4.codex",
    "cp_util_v4/4.codex",
    "cp_util_v6/4.codex",
    "log_v3/5.log",
    "log_v6/5.log",
    "vote_v1.bin",
    "vote_v1_padded.bin",
    "vote_v2.bin",
    "vote_v2_padded.bin",
    "vote_v3.bin",
    "vote_v3_padded.bin",
    "vote_v4.bin",
    "vote_v4_padded.bin",
    "vote_v5.bin",
    "vote_v5_padded.bin",
    "vote_v6.bin",
    "vote_v6_cookie_relinquish.bin",
    "vote_v6_padded.bin",
    "wire/bootstrap_v4.bin",
    "wire/join_v4.bin",
    "wire/notaccepted_v4.bin",
    "wire/packet_voteaccepted_v6.bin",
    "wire/prepare_v6.bin",
    "wire/prepareaccepted_v6.bin",
    "wire/statusquery_v3.bin",
    "wire/statusresponse_v6.bin",
    "wire/voteaccepted_v6.bin",
];

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else if path.file_name().is_some_and(|n| n != "README.md") {
            out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn all_32_golden_files_are_covered() {
    let dir = compat_tests::golden_dir();
    let mut found = Vec::new();
    files_under(&dir, &dir, &mut found);
    found.sort();
    assert_eq!(found, COVERED);
}
