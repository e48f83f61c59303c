//! `rsl-inspect`: shows what RSL log, checkpoint and message files hold and whether they are
//! intact. All decoding is `rsl_engine::format`'s; this file only walks files and prints.
//! Exit status 1 means something is damaged; stderr then names the file and the offset.
//! Output cut short by its reader (`rsl-inspect log … | head`) ends the program quietly.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use rsl_engine::format::checkpoint::{self, CheckpointError, CheckpointHeader, CheckpointReader};
use rsl_engine::format::codec::{round_up_512, DecodeError, Reader, PAGE};
use rsl_engine::format::log::{self, LogContents, Mode};
use rsl_engine::format::message::{self, Body, Checksum, Header, JoinBody, Message, MsgKind, Prefix, StatusBody, VoteBody, MAGIC};
use rsl_engine::format::packet::{self, Frame};
use rsl_engine::format::{Ballot, MemberId, MemberSet, Version};
use serde::{de, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(version, about = "Inspect RSL log, checkpoint and message files")]
struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every record of a log file, or of each *.log file of a directory.
    Log { path: PathBuf },
    /// Show a checkpoint's header and verify its data blocks.
    Checkpoint { file: PathBuf },
    /// Decode a file holding one message (zero padding allowed) or one Paxos-port packet.
    Message { file: PathBuf },
}

/// `println!` for stdout that, once the reader has gone (a broken pipe), ends the program
/// quietly with status 0 instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { out_line(format_args!($($arg)*)) };
}

fn out_line(line: fmt::Arguments) {
    if let Err(e) = writeln!(io::stdout().lock(), "{line}") {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("rsl-inspect: stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Log { path } => log_cmd(path).map(|out| print(&out, cli.json)),
        Command::Checkpoint { file } => checkpoint_cmd(file).map(|out| print(&out, cli.json)),
        Command::Message { file } => message_cmd(file).map(|out| print(&out, cli.json)),
    };
    let problems = result.unwrap_or_else(|e| vec![e]);
    problems.iter().for_each(|p| eprintln!("rsl-inspect: {p}"));
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What a command found wrong, one line each, naming the file and the offset.
type Problems = Vec<String>;

/// A command's output: JSON, or text with the same content.
trait Report: Serialize {
    fn problems(&self) -> Problems;

    fn print_text(&self) {
        let doc = serde_json::to_string(self).expect("output structs serialize");
        serde_json::from_str::<Tree>(&doc).expect("our own JSON parses").print("", 0);
    }
}

fn print(out: &impl Report, json: bool) -> Problems {
    if json {
        outln!("{}", serde_json::to_string_pretty(out).expect("output structs serialize"));
    } else {
        out.print_text();
    }
    out.problems()
}

/// A JSON document with its keys in order (`serde_json::Value` sorts them).
enum Tree {
    Leaf(String),
    Null,
    Node(Vec<(String, Tree)>),
}

impl Tree {
    /// `key: value` lines; an object or array of scalars that fits goes on one line.
    fn print(&self, key: &str, depth: usize) {
        let pad = "  ".repeat(depth.saturating_sub(1));
        let kids = match self {
            Tree::Leaf(v) => return outln!("{pad}{key}: {v}"),
            Tree::Null => return,
            Tree::Node(kids) => kids,
        };
        let scalars: Option<Vec<String>> = kids
            .iter()
            .filter(|(_, t)| !matches!(t, Tree::Null))
            .map(|(k, t)| match t {
                Tree::Leaf(v) => Some(format!("{k}={v}")),
                _ => None,
            })
            .collect();
        match scalars.map(|s| s.join("  ")) {
            Some(line) if depth > 0 && line.len() <= 120 => outln!("{pad}{key}: {}", if line.is_empty() { "none" } else { &line }),
            _ => {
                if depth > 0 {
                    outln!("{pad}{key}:");
                }
                kids.iter().for_each(|(k, t)| t.print(k, depth + 1));
            }
        }
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
                Ok(Tree::Leaf(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
                Ok(Tree::Leaf(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
                Ok(Tree::Leaf(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
                Ok(Tree::Leaf(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut kids = Vec::new();
                while let Some(t) = a.next_element()? {
                    kids.push((format!("[{}]", kids.len()), t))
                }
                Ok(Tree::Node(kids))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut kids = Vec::new();
                while let Some(kid) = a.next_entry()? {
                    kids.push(kid)
                }
                Ok(Tree::Node(kids))
            }
        }
        d.deserialize_any(V)
    }
}

fn hex(v: u64) -> String {
    format!("{v:#018x}")
}

fn escape(b: &[u8], max: usize) -> String {
    let s = b[..b.len().min(max)].escape_ascii().to_string();
    if b.len() > max {
        s + "..."
    } else {
        s
    }
}

/// Member ids and ballots with any non-printable bytes escaped.
fn id(m: &MemberId) -> String {
    m.as_bytes().escape_ascii().to_string()
}

fn ballot(b: &Ballot) -> String {
    format!("({},{})", b.id, id(&b.member))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

// ---------------------------------------------------------------------------------------------
// Pieces shared by the commands. Ballots are shown as "(id,member)".

#[derive(Serialize)]
struct HeaderOut {
    kind: String,
    code: u16,
    version: u16,
    length: usize,
    sender: String,
    decree: u64,
    config: u32,
    ballot: String,
    payload: String,
}

impl HeaderOut {
    fn new(kind: MsgKind, h: &Header, length: usize) -> Self {
        let (kind, code, version, sender) = (format!("{kind:?}"), kind.code(), h.version.get(), id(&h.sender));
        HeaderOut {
            kind,
            code,
            version,
            length,
            sender,
            decree: h.decree,
            config: h.config,
            ballot: ballot(&h.ballot),
            payload: hex(h.payload),
        }
    }
}

/// `verdict` is "OK", "BAD", or "not set" (a stored 0 where a checksum is optional).
#[derive(Serialize)]
struct ChecksumOut {
    stored: String,
    computed: Option<String>,
    verdict: &'static str,
}

/// The checksum verdict of the message at the start of `raw`, whose prefix is valid.
fn checksum_out(raw: &Bytes, optional: bool) -> (ChecksumOut, Option<DecodeError>) {
    let stored = Prefix::decode(&mut Reader::new(raw)).map_or(0, |p| p.checksum);
    let (computed, verdict, err) = match message::verify_checksum(raw) {
        _ if optional && stored == 0 => (None, "not set", None),
        Ok(()) => (Some(stored), "OK", None),
        Err(e @ DecodeError::Checksum { computed, .. }) => (Some(computed), "BAD", Some(e)),
        Err(e) => (None, "BAD", Some(e)),
    };
    (ChecksumOut { stored: hex(stored), computed: computed.map(hex), verdict }, err)
}

/// A replica; the second port is the learn port from v4 on, the app port before.
#[derive(Serialize)]
struct NodeOut {
    id: String,
    ip: String,
    rsl_port: u16,
    learn_port: Option<u16>,
    app_port: Option<u16>,
    host: String,
}

#[derive(Serialize)]
struct MemberSetOut {
    members: Vec<NodeOut>,
    cookie_len: usize,
    cookie: String,
}

impl MemberSetOut {
    fn new(set: &MemberSet, v: Version) -> Self {
        let members = set.nodes.iter().map(|n| NodeOut {
            id: id(&n.id),
            ip: n.ip.to_string(),
            rsl_port: n.rsl_port,
            learn_port: v.has_string_ids().then_some(n.learn_port),
            app_port: (!v.has_string_ids()).then_some(n.app_port),
            host: escape(&n.host_name, 255),
        });
        MemberSetOut { members: members.collect(), cookie_len: set.cookie.len(), cookie: escape(&set.cookie, 64) }
    }
}

// ---------------------------------------------------------------------------------------------
// `log`

#[derive(Serialize)]
struct LogOut {
    files: Vec<LogFileOut>,
}

#[derive(Serialize)]
struct LogFileOut {
    path: String,
    size: usize,
    records: Vec<RecordOut>,
    /// Where only zero bytes remain, if any do.
    end_of_data: Option<usize>,
    summary: LogSummary,
}

/// One record, or one page that should hold a record and does not. `reconfiguration` is the
/// member count of a reconfiguration vote's new configuration.
#[derive(Serialize, Default)]
struct RecordOut {
    offset: usize,
    ok: bool,
    length: Option<u32>,
    header: Option<HeaderOut>,
    requests: Option<usize>,
    request_bytes: Option<usize>,
    reconfiguration: Option<usize>,
    checksum: Option<ChecksumOut>,
    error: Option<String>,
}

#[derive(Serialize)]
struct LogSummary {
    records: usize,
    bad_records: usize,
    /// What startup replay (`LogContents::scan` in restore mode) makes of the file: "ok",
    /// "torn tail" (it discards the tail from `offset`) or "corrupt" (it fails at `offset`).
    replay: &'static str,
    offset: Option<usize>,
    /// The replay verdict as a sentence.
    detail: String,
    /// Decree -> record offset, as that scan builds it; absent when replay fails.
    decree_index: Option<BTreeMap<u64, usize>>,
}

impl Report for LogOut {
    fn problems(&self) -> Problems {
        let files = self.files.iter().map(|f| {
            let bad = f.records.iter().filter(|r| !r.ok);
            let bad = bad.map(|r| format!("{}: bad record at offset {}: {}", f.path, r.offset, r.error.as_deref().unwrap_or("?")));
            bad.chain((f.summary.replay != "ok").then(|| format!("{}: {}", f.path, f.summary.detail))).collect::<Vec<_>>()
        });
        files.flatten().collect()
    }

    fn print_text(&self) {
        if self.files.is_empty() {
            outln!("no *.log files");
        }
        self.files.iter().for_each(print_log_file);
    }
}

fn log_cmd(path: &Path) -> Result<LogOut, String> {
    let files = if path.is_dir() { log_files(path)? } else { vec![path.to_path_buf()] };
    let files = files.iter().map(|f| Ok(inspect_log(f, &std::fs::read(f).map_err(io_err(f))?.into())));
    Ok(LogOut { files: files.collect::<Result<_, String>>()? })
}

/// The `*.log` files of `dir` by the leading decimal number of their names (names without one,
/// which RSL's startup rejects, come last).
fn log_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("log")) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let number = name.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>().ok();
            files.push((number.is_none(), number, path));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(.., path)| path).collect())
}

fn inspect_log(path: &Path, data: &Bytes) -> LogFileOut {
    let (mut records, mut end_of_data, mut offset) = (Vec::new(), None, Some(0));
    while let Some(at) = offset.filter(|&at| at < data.len()) {
        if data[at..].iter().all(|&b| b == 0) {
            end_of_data = Some(at);
            break;
        }
        let (record, next) = inspect_record(data, at);
        records.push(record);
        offset = next;
    }
    let (replay, offset, detail, decree_index) = match LogContents::scan(data, Mode::Restore) {
        Ok(c) if data[c.data_len..].iter().all(|&b| b == 0) => ("ok", None, "OK".into(), Some(c.decree_index())),
        Ok(c) => ("torn tail", Some(c.data_len), format!("torn tail at {} (replay discards it)", c.data_len), Some(c.decree_index())),
        Err(e) => ("corrupt", Some(e.offset), format!("corrupt at {}: {} (replay fails)", e.offset, e.error), None),
    };
    let bad_records = records.iter().filter(|r| !r.ok).count();
    let summary = LogSummary { records: records.len(), bad_records, replay, offset, detail, decree_index };
    LogFileOut { path: path.display().to_string(), size: data.len(), records, end_of_data, summary }
}

/// Examines the page at `offset`; returns what it holds and where to look next. A record whose
/// header parses claims RUP512(length) bytes however bad the rest is; a page whose header does
/// not parse is skipped alone.
fn inspect_record(data: &Bytes, offset: usize) -> (RecordOut, Option<usize>) {
    let mut out = RecordOut { offset, ..Default::default() };
    let rest = data.len() - offset;
    if rest < PAGE {
        out.error = Some(format!("partial page: the file ends {rest} bytes after it starts"));
        return (out, None);
    }
    let prefix = match log::parse_record_header(&data[offset..offset + PAGE]) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(format!("unparseable record header: {}", e.shifted(offset)));
            return (out, Some(offset + PAGE));
        }
    };
    let len = prefix.length as usize;
    out.length = Some(prefix.length);
    let mut errors = Vec::new();
    let extent = offset + round_up_512(len);
    let next = if extent <= data.len() {
        Some(extent)
    } else {
        errors.push(format!("record needs {} bytes on disk, the file has {rest} from here", extent - offset));
        // Its length may be what is damaged: resume at the next page that looks like a record.
        (offset + PAGE..data.len() - rest % PAGE).step_by(PAGE).find(|&at| log::parse_record_header(&data[at..at + PAGE]).is_ok())
    };
    if len <= rest {
        let raw = data.slice(offset..offset + len);
        match Message::decode(&raw) {
            Ok(m) => {
                out.header = Some(HeaderOut::new(m.kind(), &m.header, len));
                errors.extend(layout_problems(&m, &raw, data, offset));
                if let Some(VoteBody { requests, reconfig, .. }) = m.as_vote() {
                    (out.requests, out.request_bytes) = (Some(requests.len()), Some(requests.iter().map(|r| r.len()).sum()));
                    out.reconfiguration = reconfig.as_ref().map(|s| s.nodes.len());
                }
            }
            Err(e) => {
                errors.push(e.shifted(offset).to_string());
                // Show what the header says even when the body is damaged.
                let header = Header::decode(&mut Reader::new(&raw)).ok();
                out.header = header.map(|(kind, h, _)| HeaderOut::new(kind, &h, len));
            }
        }
        let (checksum, err) = checksum_out(&raw, false);
        errors.extend(err.map(|e| e.shifted(offset).to_string()));
        out.checksum = Some(checksum);
    }
    out.ok = errors.is_empty();
    out.error = (!errors.is_empty()).then(|| errors.join("; "));
    (out, next)
}

/// Byte-for-byte conformance beyond the checksum (docs/spec/formats.md §8.2): the record re-encodes to
/// exactly its bytes, and its padding to the next 512-byte boundary is zero.
fn layout_problems(m: &Message, raw: &Bytes, data: &Bytes, offset: usize) -> Vec<String> {
    let mut problems = Vec::new();
    match m.encode(Checksum::Always) {
        Ok(again) if again == *raw => {}
        Ok(again) => {
            let at = again.iter().zip(raw.iter()).position(|(a, b)| a != b).unwrap_or(again.len().min(raw.len()));
            problems.push(format!("not canonical: re-encoding differs at offset {}", offset + at));
        }
        Err(e) => problems.push(format!("cannot re-encode: {e}")),
    }
    let end = (offset + round_up_512(raw.len())).min(data.len());
    if let Some(at) = data[offset + raw.len()..end].iter().position(|&b| b != 0) {
        problems.push(format!("padding not zero at offset {}", offset + raw.len() + at));
    }
    problems
}

impl RecordOut {
    /// The record's line in the text listing.
    fn cells(&self) -> [String; 9] {
        let h = |get: fn(&HeaderOut) -> String| self.header.as_ref().map_or("-".into(), get);
        let requests = match (self.reconfiguration, self.requests, self.request_bytes) {
            (Some(n), ..) => format!("reconfig({n} members)"),
            (_, Some(n), Some(bytes)) => format!("{n} req/{bytes} B"),
            _ => "-".into(),
        };
        let verdict = if self.ok { "OK".into() } else { format!("BAD  {}", self.error.as_deref().unwrap_or("")) };
        let length = self.length.map_or("-".into(), |l| l.to_string());
        let (kind, version, decree) = (h(|h| h.kind.clone()), h(|h| format!("v{}", h.version)), h(|h| h.decree.to_string()));
        [self.offset.to_string(), kind, version, decree, h(|h| h.ballot.clone()), h(|h| h.config.to_string()), requests, length, verdict]
    }
}

fn print_log_file(f: &LogFileOut) {
    outln!("== {} ({} bytes)", f.path, f.size);
    let header = ["OFFSET", "TYPE", "VER", "DECREE", "BALLOT", "CONFIG", "REQUESTS", "LENGTH", "CHECKSUM"].map(String::from);
    for c in std::iter::once(header).chain(f.records.iter().map(RecordOut::cells)) {
        outln!("{:>10}  {:<23}  {:>3}  {:>8}  {:<10}  {:>6}  {:<20}  {:>7}  {}", c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]);
    }
    if let Some(at) = f.end_of_data {
        outln!("{at:>10}  end of data ({} zero bytes follow)", f.size - at);
    }
    let s = &f.summary;
    outln!("records: {}, bad: {}\nreplay (restore mode): {}", s.records, s.bad_records, s.detail);
    match &s.decree_index {
        Some(index) if index.is_empty() => outln!("decree index: empty"),
        Some(index) => {
            outln!("decree index: {} ({} decrees; --json maps each to its offset)", decree_ranges(index.keys().copied()), index.len())
        }
        None => outln!("decree index: none (replay fails)"),
    }
}

/// Runs of consecutive decrees (`5..=900, 902, 904..=1000`): a log of thousands of decrees
/// still fits one short line. `decrees` ascend, as a `BTreeMap`'s keys do.
fn decree_ranges(decrees: impl Iterator<Item = u64>) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for d in decrees {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(d) => *last = d,
            _ => runs.push((d, d)),
        }
    }
    let run = |&(first, last): &(u64, u64)| if first == last { first.to_string() } else { format!("{first}..={last}") };
    runs.iter().map(run).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------------------
// `checkpoint`

#[derive(Serialize)]
struct CheckpointOut {
    path: String,
    file_size: u64,
    header: Option<CheckpointHeaderOut>,
    /// Bytes of application data (`CheckpointReader::size`).
    data_size: Option<u64>,
    /// v4+ data blocks with their checksums (absent if the reader rejects the file).
    blocks: Option<Vec<BlockOut>>,
    error: Option<String>,
}

#[derive(Serialize)]
struct CheckpointHeaderOut {
    version: u16,
    /// The header region's length: where application data starts.
    header_length: usize,
    member: String,
    last_executed: u64,
    max_ballot: String,
    config: Option<ConfigOut>, // v3+
    state_saved: Option<bool>, // v4+
    size: Option<u64>,         // v4+
    block_size: Option<u32>,   // v4+
    next_vote: MessageOut,
}

#[derive(Serialize)]
struct ConfigOut {
    number: u32,
    initial_decree: u64,
    #[serde(flatten)]
    members: MemberSetOut,
}

#[derive(Serialize)]
struct BlockOut {
    offset: u64,
    data_len: u64,
    checksum_offset: u64,
    stored: String,
    computed: String,
    ok: bool,
}

impl Report for CheckpointOut {
    fn problems(&self) -> Problems {
        let blocks = self.blocks.iter().flatten().enumerate().filter(|(_, b)| !b.ok).map(|(i, b)| {
            format!(
                "{}: block {i} at offset {}: stored checksum {} (at offset {}), computed {}",
                self.path, b.offset, b.stored, b.checksum_offset, b.computed
            )
        });
        self.error.iter().cloned().chain(blocks).collect()
    }
}

fn checkpoint_cmd(path: &Path) -> Result<CheckpointOut, String> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let file_size = file.metadata().map_err(io_err(path))?.len();
    let read = |len: usize| -> Result<Bytes, String> {
        let mut buf = vec![0; len.min(file_size as usize)];
        file.read_exact_at(&mut buf, 0).map_err(io_err(path))?;
        Ok(buf.into())
    };
    let mut out = CheckpointOut { path: path.display().to_string(), file_size, header: None, data_size: None, blocks: None, error: None };
    // The header alone first, so that it shows even when the reader rejects the file.
    let mut canonical = None;
    let header = match checkpoint::header_region_len(&read(PAGE)?) {
        Ok(len) => read(len).map(|region| {
            CheckpointHeader::decode(&region).map(|(h, l)| {
                canonical = header_problem(&h, &region);
                checkpoint_header_out(&h, l, &region)
            })
        })?,
        Err(e) => Err(e),
    };
    let vote_at = match &header {
        Ok(h) => h.next_vote.offset,
        Err(e) => {
            out.error = Some(format!("{}: bad header: {e}", out.path));
            return Ok(out);
        }
    };
    out.header = header.ok();
    if let Some(problem) = canonical {
        out.error = Some(format!("{}: {problem}", out.path));
        return Ok(out);
    }
    match CheckpointReader::open(path).and_then(|r| Ok((r.size(), r.blocks()?))) {
        Ok((size, blocks)) => {
            out.data_size = Some(size);
            out.blocks = Some(
                blocks
                    .iter()
                    .map(|b| {
                        let (stored, computed, checksum_offset) = (hex(b.stored), hex(b.computed), b.offset + b.data_len);
                        BlockOut { offset: b.offset, data_len: b.data_len, checksum_offset, stored, computed, ok: b.ok() }
                    })
                    .collect(),
            );
        }
        // The size field is the 12 bytes before the vote: u64 size, u32 block size.
        Err(e @ CheckpointError::Size { .. }) => out.error = Some(format!("{e} (size field at offset {})", vote_at - 12)),
        Err(e) => out.error = Some(e.to_string()),
    }
    Ok(out)
}

/// Byte-for-byte conformance of a checkpoint header (docs/spec/formats.md §9.2): the fields and the
/// next vote re-encode to exactly the stored bytes, and the vote's padding is zero. (The slack
/// after it is indeterminate in the original's files, so it is not compared.)
fn header_problem(h: &CheckpointHeader, region: &Bytes) -> Option<String> {
    let again = match h.encode() {
        Ok(b) => b,
        Err(e) => return Some(format!("header cannot be re-encoded: {e}")),
    };
    let vote_at = h.vote_offset();
    let vote_len = Prefix::decode(&mut Reader::new(&region.slice(vote_at..))).map_or(0, |p| p.length as usize);
    let end = (vote_at + vote_len).min(again.len()).min(region.len());
    if let Some(at) = (0..end).find(|&i| again[i] != region[i]) {
        return Some(format!("header not canonical: re-encoding differs at offset {at}"));
    }
    let padded = (vote_at + round_up_512(vote_len)).min(region.len());
    region[end..padded].iter().position(|&b| b != 0).map(|at| format!("vote padding not zero at offset {}", end + at))
}

fn checkpoint_header_out(h: &CheckpointHeader, l: usize, region: &Bytes) -> CheckpointHeaderOut {
    let (v, vote_at, c) = (h.version, h.vote_offset(), &h.config);
    let vote_len = Prefix::decode(&mut Reader::new(&region.slice(vote_at..))).map_or(0, |p| p.length as usize);
    let blocked = v.has_string_ids();
    CheckpointHeaderOut {
        version: v.get(),
        header_length: l,
        member: id(&h.member),
        last_executed: h.last_executed,
        max_ballot: ballot(&h.max_ballot),
        config: v.has_config().then(|| ConfigOut {
            number: c.number,
            initial_decree: c.initial_decree,
            members: MemberSetOut::new(&c.members, v),
        }),
        state_saved: blocked.then_some(h.state_saved),
        size: blocked.then_some(h.size),
        block_size: blocked.then_some(h.block_size),
        next_vote: message_out(&h.next_vote, &region.slice(vote_at..vote_at + vote_len), vote_at),
    }
}

// ---------------------------------------------------------------------------------------------
// `message`

/// `packet` is set when the file holds a Paxos-port packet rather than a bare message.
#[derive(Serialize)]
struct MessageFileOut {
    path: String,
    size: usize,
    packet: Option<PacketOut>,
    message: Option<MessageOut>,
    error: Option<String>,
}

/// `checksum` is "OK" or "BAD".
#[derive(Serialize)]
struct PacketOut {
    size: Option<usize>,
    checksum: &'static str,
    error: Option<String>,
}

#[derive(Serialize)]
struct MessageOut {
    offset: usize,
    #[serde(flatten)]
    header: HeaderOut,
    checksum: ChecksumOut,
    body: BodyOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BodyOut {
    None,
    Vote {
        cookie: String,
        relinquish: bool,
        reconfiguration: Option<MemberSetOut>,
        request_bytes: usize,
        requests: Vec<String>,
    },
    Prepare {
        cookie: String,
    },
    PrepareAccepted {
        vote: Box<MessageOut>,
    },
    /// `state`: 0 inactive, 1 stable primary, 2 stable secondary, 3 preparing, 4 initializing.
    StatusResponse {
        query_decree: u64,
        query_ballot: String,
        last_received_ago_ms: i64,
        min_decree_in_log: u64,
        checkpointed_decree: u64,
        checkpoint_size: u64,
        max_ballot: String,
        state: u32,
    },
    Join {
        learn_port: u16,
        min_decree_in_log: u64,
        checkpointed_decree: u64,
        checkpoint_size: u64,
    },
    Bootstrap {
        #[serde(flatten)]
        members: MemberSetOut,
    },
}

impl MessageOut {
    /// Bad checksums, this message's and its embedded vote's.
    fn problems(&self, path: &str) -> Problems {
        let c = &self.checksum;
        let computed = c.computed.as_deref().unwrap_or("?");
        let bad = format!("{path}: {} at offset {}: checksum BAD: stored {}, computed {computed}", self.header.kind, self.offset, c.stored);
        let mut problems: Problems = (c.verdict == "BAD").then_some(bad).into_iter().collect();
        if let BodyOut::PrepareAccepted { vote } = &self.body {
            problems.extend(vote.problems(path));
        }
        problems
    }
}

impl Report for MessageFileOut {
    fn problems(&self) -> Problems {
        let errors = self.packet.iter().flat_map(|p| &p.error).chain(&self.error).map(|e| format!("{}: {e}", self.path));
        errors.chain(self.message.iter().flat_map(|m| m.problems(&self.path))).collect()
    }
}

fn message_cmd(path: &Path) -> Result<MessageFileOut, String> {
    let data = Bytes::from(std::fs::read(path).map_err(io_err(path))?);
    // A message starts with its version and has the magic at 14; a packet starts with its size.
    let is_message =
        data.len() >= 18 && Version::new(u16::from_le_bytes([data[0], data[1]])).is_some() && data[14..18] == MAGIC.to_le_bytes();
    let packet = (!is_message).then(|| {
        let (size, error) = match packet::decode(&data, packet::DEFAULT_MAX_PACKET) {
            Ok(Frame::Packet { consumed, .. }) => (Some(consumed), None),
            Ok(Frame::NeedMore(n)) => (None, Some(format!("truncated packet: needs {n} bytes, the file has {}", data.len()))),
            Err(e @ DecodeError::Checksum { .. }) => (None, Some(e.to_string())),
            Err(e) => (None, Some(format!("packet: {e}"))),
        };
        PacketOut { size, checksum: if error.is_some() { "BAD" } else { "OK" }, error }
    });
    let at = if is_message { 0 } else { packet::HEADER_SIZE.min(data.len()) };
    let mut r = Reader::window(&data, at, data.len());
    let (message, error) = match Message::decode_from(&mut r) {
        Ok(m) if data[r.pos()..].iter().all(|&b| b == 0) => (Some(message_out(&m, &data.slice(at..r.pos()), at)), None),
        Ok(_) => (None, Some(format!("message: non-zero bytes after it, from offset {}", r.pos()))),
        Err(e) => (None, Some(format!("message: {e}"))),
    };
    Ok(MessageFileOut { path: path.display().to_string(), size: data.len(), packet, message, error })
}

/// `raw` holds exactly the message `m`, found at file offset `at`.
fn message_out(m: &Message, raw: &Bytes, at: usize) -> MessageOut {
    let v = m.header.version;
    let body = match &m.body {
        Body::Vote(b) => BodyOut::Vote {
            cookie: escape(&b.cookie, 64),
            relinquish: b.relinquish,
            reconfiguration: b.reconfig.as_ref().map(|s| MemberSetOut::new(s, v)),
            request_bytes: b.requests.iter().map(|r| r.len()).sum(),
            requests: b.requests.iter().map(|r| escape(r, 48)).collect(),
        },
        Body::Prepare(cookie) => BodyOut::Prepare { cookie: escape(cookie, 64) },
        Body::PrepareAccepted(vote) => {
            let inner = Header::size(v); // the embedded vote follows the outer header
            BodyOut::PrepareAccepted { vote: Box::new(message_out(vote, &raw.slice(inner..), at + inner)) }
        }
        &Body::StatusResponse(StatusBody {
            query_decree,
            query_ballot,
            last_received_ago_ms,
            min_decree_in_log,
            checkpointed_decree,
            checkpoint_size,
            max_ballot,
            state,
        }) => {
            let (query_ballot, max_ballot) = (ballot(&query_ballot), ballot(&max_ballot));
            BodyOut::StatusResponse {
                query_decree,
                query_ballot,
                last_received_ago_ms,
                min_decree_in_log,
                checkpointed_decree,
                checkpoint_size,
                max_ballot,
                state,
            }
        }
        &Body::Join(JoinBody { learn_port, min_decree_in_log, checkpointed_decree, checkpoint_size }) => {
            BodyOut::Join { learn_port, min_decree_in_log, checkpointed_decree, checkpoint_size }
        }
        Body::Bootstrap(set) => BodyOut::Bootstrap { members: MemberSetOut::new(set, v) },
        _ => BodyOut::None,
    };
    let (checksum, _) = checksum_out(raw, m.kind() != MsgKind::Vote);
    MessageOut { offset: at, header: HeaderOut::new(m.kind(), &m.header, raw.len()), checksum, body }
}
