//! Log records: LogContents::scan in both modes, and read_record streaming (strict mode,
//! at_eof = false) over growing prefixes, both growing exactly to what NeedMore asks for and
//! in 100-byte steps. Every way of reading must agree record for record: good records are
//! the same in every mode, and a mode only decides what happens at the first bad one.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rsl_engine::format::log::{read_record, LogContents, Mode, Record, Step};
use rsl_engine::format::MsgKind;
use std::collections::BTreeMap;

/// Reads records from the whole buffer (at_eof) until the first thing that is not a record.
fn records(buf: &Bytes, mode: Mode) -> (Vec<Record>, usize, bool) {
    let (mut recs, mut off) = (Vec::new(), 0);
    loop {
        match read_record(buf, off, mode, true) {
            Ok(Step::Record(r)) => {
                assert_eq!(r.offset, off);
                off += r.disk_len();
                assert!(off <= buf.len());
                recs.push(r);
            }
            Ok(Step::End) => return (recs, off, false),
            Ok(Step::NeedMore(n)) => panic!("NeedMore({n}) at EOF"),
            Err(e) => {
                assert_eq!(e.offset, off);
                return (recs, off, true);
            }
        }
    }
}

/// Strict streaming over prefixes; `chunk` 0 grows the prefix to exactly what is asked for.
fn stream(buf: &Bytes, chunk: usize) -> (Vec<Record>, Option<usize>) {
    let (mut recs, mut off, mut avail) = (Vec::new(), 0, 0);
    loop {
        match read_record(&buf.slice(..avail), off, Mode::Strict, false) {
            Ok(Step::Record(r)) => {
                off += r.disk_len();
                assert!(off <= avail);
                recs.push(r);
            }
            Ok(Step::NeedMore(n)) => {
                assert!(n > avail, "NeedMore({n}) with {avail} bytes");
                if avail == buf.len() {
                    return (recs, None);
                }
                avail = if chunk == 0 { n } else { avail + chunk }.min(buf.len());
            }
            Ok(Step::End) => panic!("a stream still arriving ended at {off}"),
            Err(e) => {
                assert_eq!(e.offset, off);
                return (recs, Some(off));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let (good, stop, failed) = records(&buf, Mode::Strict);

    match LogContents::scan(&buf, Mode::Strict) {
        Ok(log) => assert!(!failed && log.records == good && log.data_len == buf.len()),
        Err(e) => assert!(failed && e.offset == stop),
    }
    match LogContents::scan(&buf, Mode::Restore) {
        Ok(log) => {
            assert_eq!(log.records, good);
            assert_eq!(log.data_len, stop);
            let mut index = BTreeMap::new();
            for r in log.records.iter().filter(|r| r.message.kind() == MsgKind::Vote) {
                index.insert(r.message.header.decree, r.offset);
            }
            assert_eq!(log.decree_index(), index);
        }
        Err(e) => assert_eq!(e.offset, stop),
    }
    for chunk in [0, 100] {
        let (recs, err) = stream(&buf, chunk);
        assert_eq!(recs, good, "chunk {chunk}");
        if let Some(at) = err {
            assert!(failed && at == stop, "chunk {chunk}: streaming failed at {at}");
        }
    }
});
