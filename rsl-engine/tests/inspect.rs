//! Runs the `rsl-inspect` binary on the original RSL's golden files and on damaged copies.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The original's files, kept in the repository (`compat-tests/golden/`).
fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../compat-tests/golden"))
}

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsl-inspect")).args(args).output().expect("rsl-inspect runs")
}

fn text(args: &[&str]) -> (bool, String, String) {
    let out = inspect(args);
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn json(args: &[&str]) -> (bool, Value) {
    let out = inspect(&[&["--json"], args].concat());
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), doc)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of `src` in a fresh temp dir with the byte at `at` inverted.
fn corrupt_copy(src: &Path, at: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(src.file_name().unwrap());
    let mut bytes = std::fs::read(src).unwrap();
    bytes[at] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// The text line that lists the record at `offset`, split into words.
fn record_line(stdout: &str, offset: usize) -> Vec<String> {
    let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(&offset.to_string()));
    line.unwrap_or_else(|| panic!("no line for offset {offset} in\n{stdout}")).split_whitespace().map(String::from).collect()
}

/// docs/spec/formats.md §13.4.
const LOG_V6: [(usize, &str, u64); 6] =
    [(0, "Vote", 5), (512, "Prepare", 5), (1024, "Vote", 5), (1536, "Vote", 6), (2048, "Vote", 7), (2560, "ReconfigurationDecision", 7)];

#[test]
fn log_lists_every_record_and_flags_a_flipped_byte() {
    let g = golden();
    let log = g.join("log_v6/5.log");

    let (ok, stdout, _) = text(&["log", s(&log)]);
    assert!(ok, "{stdout}");
    for (offset, kind, decree) in LOG_V6 {
        let words = record_line(&stdout, offset);
        assert_eq!(words[1], kind, "{words:?}");
        assert_eq!(words[3], decree.to_string(), "{words:?}");
        assert_eq!(words.last().unwrap(), "OK", "{words:?}");
    }
    assert!(stdout.contains("records: 6, bad: 0"), "{stdout}");
    assert!(stdout.contains("decree index: 5..=7 (3 decrees;"), "{stdout}");

    let (ok, doc) = json(&["log", s(&log)]);
    assert!(ok);
    let file = &doc["files"][0];
    let records = file["records"].as_array().unwrap();
    assert_eq!(records.len(), 6);
    for (r, (offset, kind, decree)) in records.iter().zip(LOG_V6) {
        assert_eq!((r["offset"].as_u64(), r["header"]["kind"].as_str()), (Some(offset as u64), Some(kind)));
        assert_eq!(r["header"]["decree"], decree);
        assert_eq!(r["checksum"]["verdict"], "OK");
    }
    assert_eq!(records[0]["checksum"]["stored"], "0x51adc2c3a4ec8675");
    assert_eq!((records[3]["requests"].as_u64(), records[3]["request_bytes"].as_u64()), (Some(2), Some(8)));
    assert_eq!(records[4]["reconfiguration"], 2);
    assert_eq!(records[2]["header"]["ballot"], "(3,2)");
    assert_eq!(file["summary"]["replay"], "ok");
    assert_eq!(file["summary"]["decree_index"], serde_json::json!({"5": 1024, "6": 1536, "7": 2048}));

    // A byte flipped inside the third record: that record is BAD and replay fails there.
    let (_dir, bad) = corrupt_copy(&log, 1024 + 100);
    let (ok, stdout, stderr) = text(&["log", s(&bad)]);
    assert!(!ok);
    assert!(record_line(&stdout, 1024).contains(&"BAD".to_string()), "{stdout}");
    assert_eq!(record_line(&stdout, 1536).last().unwrap(), "OK");
    assert!(stderr.contains(s(&bad)) && stderr.contains("offset 1024"), "{stderr}");
    assert!(stdout.contains("replay (restore mode): corrupt at 1024: message checksum"), "{stdout}");

    let (ok, doc) = json(&["log", s(&bad)]);
    assert!(!ok);
    let file = &doc["files"][0];
    let bad_records: Vec<&Value> = file["records"].as_array().unwrap().iter().filter(|r| r["ok"] == false).collect();
    assert_eq!(bad_records.len(), 1);
    assert_eq!(bad_records[0]["offset"], 1024);
    assert_eq!(bad_records[0]["checksum"]["verdict"], "BAD");
    assert_eq!(file["summary"]["bad_records"], 1);
    assert_eq!((file["summary"]["replay"].as_str(), file["summary"]["offset"].as_u64()), (Some("corrupt"), Some(1024)));
}

#[test]
fn log_torn_tail_and_directory_order() {
    let g = golden();
    let log = g.join("log_v6/5.log");
    let (_dir, torn) = corrupt_copy(&log, 2560 + 100);
    let (ok, doc) = json(&["log", s(&torn)]);
    assert!(!ok);
    let summary = &doc["files"][0]["summary"];
    assert_eq!((summary["replay"].as_str(), summary["offset"].as_u64()), (Some("torn tail"), Some(2560)));
    assert_eq!(summary["decree_index"]["7"], 2048);

    let dir = tempfile::tempdir().unwrap();
    for n in [10, 9, 100] {
        std::fs::copy(&log, dir.path().join(format!("{n}.log"))).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not a log").unwrap();
    let (ok, doc) = json(&["log", s(dir.path())]);
    assert!(ok);
    let names: Vec<String> =
        doc["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().rsplit('/').next().unwrap().into()).collect();
    assert_eq!(names, ["9.log", "10.log", "100.log"]);
}

#[test]
fn checkpoints_show_their_header_and_blocks() {
    let g = golden();

    // docs/spec/formats.md §13.5.
    let cp = g.join("cp_legislator_v6/4.codex");
    let (ok, doc) = json(&["checkpoint", s(&cp)]);
    assert!(ok, "{doc}");
    let h = &doc["header"];
    assert_eq!((h["version"].as_u64(), h["header_length"].as_u64()), (Some(6), Some(1024)));
    assert_eq!((h["member"].as_str(), h["last_executed"].as_u64()), (Some("1"), Some(4)));
    assert_eq!(h["max_ballot"], "(2,1)");
    assert_eq!((h["config"]["number"].as_u64(), h["config"]["initial_decree"].as_u64()), (Some(1), Some(1)));
    assert_eq!(h["config"]["members"].as_array().unwrap().len(), 3);
    assert_eq!(
        h["config"]["members"][2],
        serde_json::json!({"id": "3", "ip": "127.0.0.3", "rsl_port": 20020, "learn_port": 20021, "app_port": null, "host": "host3"})
    );
    assert_eq!(h["config"]["cookie_len"], 0);
    assert_eq!((h["state_saved"].as_bool(), h["size"].as_u64(), h["block_size"].as_u64()), (Some(true), Some(1037), Some(4194304)));
    let vote = &h["next_vote"];
    assert_eq!((vote["offset"].as_u64(), vote["decree"].as_u64(), vote["ballot"].as_str()), (Some(422), Some(5), Some("(2,1)")));
    assert_eq!(vote["body"]["requests"], serde_json::json!(["hello"]));
    assert_eq!(vote["checksum"]["stored"], "0x51adc2c3a4ec8675");
    assert_eq!(vote["checksum"]["verdict"], "OK");
    assert_eq!(doc["data_size"], 5);
    assert_eq!(
        doc["blocks"],
        serde_json::json!([{"offset": 1024, "data_len": 5, "checksum_offset": 1029,
        "stored": "0x2e68eb152273854b", "computed": "0x2e68eb152273854b", "ok": true}])
    );
    let (ok, stdout, _) = text(&["checkpoint", s(&cp)]);
    assert!(ok && stdout.contains("stored=0x2e68eb152273854b") && stdout.contains("data_size: 5"), "{stdout}");

    let (_dir, bad) = corrupt_copy(&cp, 1024 + 2);
    let (ok, stdout, stderr) = text(&["checkpoint", s(&bad)]);
    assert!(!ok);
    assert!(stdout.lines().any(|l| l.contains("offset=1024") && l.ends_with("ok=false")), "{stdout}");
    assert!(stderr.contains(s(&bad)) && stderr.contains("offset 1024"), "{stderr}");

    // docs/spec/formats.md §13.6.
    let cp = g.join("cp_multiblock_v4/100.codex");
    let (ok, doc) = json(&["checkpoint", s(&cp)]);
    assert!(ok, "{doc}");
    assert_eq!((doc["header"]["version"].as_u64(), doc["header"]["size"].as_u64()), (Some(4), Some(4195346)));
    assert_eq!(doc["data_size"], 4194306);
    let blocks = doc["blocks"].as_array().unwrap();
    let summary: Vec<_> = blocks
        .iter()
        .map(|b| {
            (
                b["data_len"].as_u64().unwrap(),
                b["checksum_offset"].as_u64().unwrap(),
                b["stored"].as_str().unwrap(),
                b["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(4194296, 4195320, "0x701389df80497f16", true), (10, 4195338, "0x38ab5d06357bea40", true)]);

    let (_dir, bad) = corrupt_copy(&cp, 4195346 - 12);
    let (ok, doc) = json(&["checkpoint", s(&bad)]);
    assert!(!ok);
    let verdicts: Vec<_> = doc["blocks"].as_array().unwrap().iter().map(|b| b["ok"].as_bool().unwrap()).collect();
    assert_eq!(verdicts, [true, false]);
}

#[test]
fn messages_and_packets_decode() {
    let g = golden();

    let (ok, doc) = json(&["message", s(&g.join("wire/prepareaccepted_v6.bin"))]);
    assert!(ok, "{doc}");
    let m = &doc["message"];
    assert_eq!((m["kind"].as_str(), m["length"].as_u64()), (Some("PrepareAccepted"), Some(359)));
    assert_eq!(m["checksum"]["verdict"], "not set");
    let vote = &m["body"]["vote"];
    assert_eq!((vote["offset"].as_u64(), vote["kind"].as_str(), vote["decree"].as_u64()), (Some(172), Some("Vote"), Some(5)));
    assert_eq!(vote["checksum"]["stored"], "0x51adc2c3a4ec8675");
    assert_eq!(vote["checksum"]["verdict"], "OK");
    assert_eq!(vote["body"]["requests"], serde_json::json!(["hello"]));
    let (ok, stdout, _) = text(&["message", s(&g.join("wire/prepareaccepted_v6.bin"))]);
    assert!(ok && stdout.contains("type: prepare_accepted") && stdout.contains("requests: [0]=hello"), "{stdout}");

    let packet = g.join("wire/packet_voteaccepted_v6.bin");
    let (ok, doc) = json(&["message", s(&packet)]);
    assert!(ok, "{doc}");
    assert_eq!((doc["packet"]["size"].as_u64(), doc["packet"]["checksum"].as_str()), (Some(192), Some("OK")));
    let h = &doc["message"];
    assert_eq!(
        (h["kind"].as_str(), h["sender"].as_str(), h["payload"].as_str()),
        (Some("VoteAccepted"), Some("2"), Some("0x1122334455667788"))
    );
    let (ok, stdout, _) = text(&["message", s(&packet)]);
    assert!(ok && stdout.contains("packet: size=192  checksum=OK") && stdout.contains("kind: VoteAccepted"), "{stdout}");

    let (_dir, bad) = corrupt_copy(&packet, 100);
    let (ok, _, stderr) = text(&["message", s(&bad)]);
    assert!(!ok && stderr.contains("packet checksum at offset 12"), "{stderr}");

    // A vote as it sits in a log (zero padded), and a damaged one.
    let (ok, doc) = json(&["message", s(&g.join("vote_v6_padded.bin"))]);
    assert!(ok && doc["message"]["checksum"]["verdict"] == "OK", "{doc}");
    let (_dir, bad) = corrupt_copy(&g.join("vote_v6.bin"), 183);
    let (ok, _, stderr) = text(&["message", s(&bad)]);
    assert!(!ok && stderr.contains("offset 0") && stderr.contains("checksum BAD"), "{stderr}");
}

/// The checksum covers only the message; the padding after it must be zero too (docs/spec/formats.md
/// §8.2), and `rsl-inspect` says where it is not.
#[test]
fn nonzero_padding_is_reported() {
    let golden = golden();
    // The vote at 1024 is 187 bytes long: 1024 + 300 is in its padding.
    let (_dir, path) = corrupt_copy(&golden.join("log_v6/5.log"), 1324);
    let (ok, stdout, stderr) = text(&["log", s(&path)]);
    assert!(!ok, "exits non-zero");
    let line = record_line(&stdout, 1024).join(" ");
    assert!(line.contains("padding not zero at offset 1324"), "{line}\n{stderr}");
}

/// `rsl-inspect log … | head`: once the reader is gone, the tool stops quietly (exit 0, nothing
/// on stderr) instead of panicking on the broken pipe.
#[test]
fn a_closed_stdout_ends_the_listing_quietly() {
    use rsl_engine::format::message::{Body, Header, Message, VoteBody};
    use rsl_engine::format::{Ballot, MemberId, Version};
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // 2000 records: far more text than a pipe holds, so the tool is still writing when the
    // reader goes away.
    let dir = tempfile::tempdir().unwrap();
    let id = MemberId::new("1").unwrap();
    let mut bytes = bytes::BytesMut::new();
    for decree in 0..2000 {
        let vote = Message::new(Header::new(Version::V6, id, decree, 1, Ballot::new(1, id)), Body::Vote(VoteBody::default()));
        rsl_engine::format::log::encode_record(&vote, &mut bytes).unwrap();
    }
    let log = dir.path().join("0.log");
    std::fs::write(&log, &bytes).unwrap();
    for args in [&["log", s(&log)][..], &["--json", "log", s(&log)]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rsl-inspect"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rsl-inspect runs");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap(); // then the reader is dropped, as head does
        assert!(!first.is_empty());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{args:?}: {:?}, stderr: {stderr}", out.status);
    }
}

/// The text listing gives the decree index as runs of consecutive decrees, so that a log of
/// thousands of decrees does not print one line of tens of thousands of characters.
#[test]
fn the_decree_index_prints_as_ranges() {
    use rsl_engine::format::message::{Body, Header, Message, VoteBody};
    use rsl_engine::format::{Ballot, MemberId, Version};
    let dir = tempfile::tempdir().unwrap();
    let id = MemberId::new("1").unwrap();
    let mut bytes = bytes::BytesMut::new();
    for decree in (5..=900).chain([902]).chain(904..=1000) {
        let vote = Message::new(Header::new(Version::V6, id, decree, 1, Ballot::new(1, id)), Body::Vote(VoteBody::default()));
        rsl_engine::format::log::encode_record(&vote, &mut bytes).unwrap();
    }
    let log = dir.path().join("5.log");
    std::fs::write(&log, &bytes).unwrap();
    let (ok, stdout, stderr) = text(&["log", s(&log)]);
    assert!(ok, "{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("decree index:")).expect("a decree index line");
    assert_eq!(line, "decree index: 5..=900, 902, 904..=1000 (994 decrees; --json maps each to its offset)");
    let (_, doc) = json(&["log", s(&log)]);
    assert_eq!(doc["files"][0]["summary"]["decree_index"].as_object().map(|m| m.len()), Some(994));
}
