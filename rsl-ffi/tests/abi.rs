//! The C ABI called as C would: argument checking (NULL, bad member ids, short buffers, a
//! closed handle), the checkpoint utility against the original's files, the streams, the
//! checksum against golden values, and logging.
//!
//! SAFETY (every `unsafe` block here): the calls pass pointers to live locals with the lengths
//! they state, or NULL where the test is about NULL, as the C contract allows.

use rsl_ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The original's files, kept in the repository (`compat-tests/golden/`).
fn golden() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../compat-tests/golden"))
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn node(id: &str, ip: [u8; 4], rsl_port: u16, learn_port: u16, host: &str) -> rsl_node {
    let mut n: rsl_node = unsafe { std::mem::zeroed() };
    for (d, s) in n.member_id.iter_mut().zip(id.bytes()) {
        *d = s as c_char;
    }
    for (d, s) in n.host_name.iter_mut().zip(host.bytes()) {
        *d = s as c_char;
    }
    n.ip = u32::from_ne_bytes(ip);
    (n.rsl_port, n.learn_port) = (rsl_port, learn_port);
    n
}

/// The member set of the golden checkpoints (docs/spec/formats.md §12.3).
fn golden_members() -> Vec<rsl_node> {
    (0..3u16)
        .map(|i| node(&(i + 1).to_string(), [127, 0, 0, i as u8 + 1], 20000 + 10 * i, 20001 + 10 * i, &format!("host{}", i + 1)))
        .collect()
}

fn id_of(n: &rsl_node) -> String {
    // SAFETY: the array is NUL-terminated.
    unsafe { CStr::from_ptr(n.member_id.as_ptr()) }.to_str().unwrap().to_string()
}

unsafe extern "C" fn write_hello(ctx: *mut c_void, w: *mut rsl_checkpoint_writer) {
    let parts: [&[u8]; 2] = [b"hello ", b"checkpoint"];
    for p in parts {
        assert_eq!(unsafe { rsl_checkpoint_writer_write(w, p.as_ptr().cast(), p.len() as u32) }, 0);
    }
    assert_eq!(unsafe { rsl_checkpoint_writer_write(null_mut(), b"x".as_ptr().cast(), 1) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_writer_write(w, null(), 1) }, 87);
    unsafe { *ctx.cast::<usize>() += 1 };
}

fn save(dir: &CStr, version: u32, members: &[rsl_node]) -> rsl_status {
    let mut calls = 0usize;
    let st = unsafe {
        rsl_checkpoint_save(
            dir.as_ptr(),
            version,
            4,
            1,
            members.as_ptr(),
            members.len(),
            null(),
            0,
            Some(write_hello),
            (&mut calls as *mut usize).cast(),
        )
    };
    assert!(st != RSL_SUCCESS || calls == 1, "write_state runs once");
    st
}

#[test]
fn checkpoint_save_matches_the_original_utility() {
    let golden = golden();
    for v in [2u32, 3, 4, 6] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = c(tmp.path().to_str().unwrap());
        assert_eq!(save(&dir, v, &golden_members()), RSL_SUCCESS, "v{v}");
        let ours = std::fs::read(tmp.path().join("4.codex")).unwrap();
        let theirs = std::fs::read(golden.join(format!("cp_util_v{v}/4.codex"))).unwrap();
        assert!(ours == theirs, "v{v}: rsl_checkpoint_save differs from cp_util_v{v}/4.codex");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary file is left");
        // An existing checkpoint is never replaced.
        assert_eq!(save(&dir, v, &golden_members()), RSL_E_IO);
    }
}

#[test]
fn checkpoint_save_checks_its_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = c(tmp.path().to_str().unwrap());
    let members = golden_members();
    let call = |dir: *const c_char, v: u32, seq: u64, members: &[rsl_node], f| unsafe {
        rsl_checkpoint_save(dir, v, seq, 1, members.as_ptr(), members.len(), null(), 0, f, null_mut())
    };
    assert_eq!(call(null(), 6, 4, &members, Some(write_hello)), RSL_E_NULL);
    assert_eq!(call(dir.as_ptr(), 6, 4, &members, None), RSL_E_NULL);
    assert_eq!(call(dir.as_ptr(), 6, 0, &members, Some(write_hello)), RSL_INVALID_PARAMETER);
    assert_eq!(call(dir.as_ptr(), 7, 4, &members, Some(write_hello)), RSL_INVALID_PARAMETER);
    assert_eq!(call(dir.as_ptr(), 6, 4, &[], Some(write_hello)), RSL_INVALID_PARAMETER, "v3+ needs a member set");
    let bad_ids =
        [node("", [127, 0, 0, 1], 1, 0, ""), node(&"x".repeat(64), [127, 0, 0, 1], 1, 0, ""), node("1", [127, 0, 0, 1], 0, 0, "")];
    for bad in bad_ids {
        assert_eq!(call(dir.as_ptr(), 6, 4, &[bad], Some(write_hello)), RSL_INVALID_PARAMETER);
    }
    assert_eq!(
        call(dir.as_ptr(), 3, 4, &[node("one", [127, 0, 0, 1], 1, 0, "")], Some(write_hello)),
        RSL_INVALID_PARAMETER,
        "v3 ids are numbers"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing is left behind");
}

#[test]
fn checkpoint_files_latest_replica_set_and_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = c(tmp.path().to_str().unwrap());
    let mut buf = [0 as c_char; 4096];
    assert_eq!(unsafe { rsl_checkpoint_get_latest(dir.as_ptr(), buf.as_mut_ptr(), buf.len()) }, RSL_E_IO, "no checkpoint yet");
    assert_eq!(save(&dir, 6, &golden_members()), RSL_SUCCESS);
    std::fs::write(tmp.path().join("notes.txt"), b"not a checkpoint").unwrap();
    assert_eq!(unsafe { rsl_checkpoint_get_latest(dir.as_ptr(), buf.as_mut_ptr(), 5) }, RSL_E_BUFFER);
    assert_eq!(unsafe { rsl_checkpoint_get_latest(dir.as_ptr(), null_mut(), 5) }, RSL_E_NULL);
    assert_eq!(unsafe { rsl_checkpoint_get_latest(dir.as_ptr(), buf.as_mut_ptr(), buf.len()) }, RSL_SUCCESS);
    let file = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_owned();
    assert_eq!(PathBuf::from(file.to_str().unwrap()), tmp.path().join("4.codex"));

    // The member set: short buffers report the sizes needed.
    let mut nodes = [node("", [0; 4], 0, 0, ""); 3];
    let (mut count, mut cookie_len) = (0usize, 0u32);
    let get = |nodes: &mut [rsl_node], cap: usize, count: *mut usize, cookie: *mut c_void, len: *mut u32| unsafe {
        rsl_checkpoint_get_replica_set(file.as_ptr(), nodes.as_mut_ptr(), cap, count, cookie, len)
    };
    assert_eq!(get(&mut nodes, 2, &mut count, null_mut(), null_mut()), RSL_E_BUFFER);
    assert_eq!(count, 3);
    assert_eq!(get(&mut nodes, 3, null_mut(), null_mut(), null_mut()), RSL_E_NULL);
    assert_eq!(get(&mut nodes, 3, &mut count, null_mut(), &mut cookie_len), RSL_SUCCESS);
    assert_eq!((nodes.map(|n| id_of(&n)), cookie_len), (["1", "2", "3"].map(String::from), 0));
    assert_eq!((nodes[1].ip.to_ne_bytes(), nodes[1].rsl_port, nodes[1].learn_port), ([127, 0, 0, 2], 20010, 20011));

    // Replace it (with a cookie), then read it back.
    let new = [node("7", [10, 0, 0, 7], 7000, 0, "seven")];
    let cfg_cookie = b"cfg";
    let st = unsafe { rsl_checkpoint_change_replica_set(file.as_ptr(), new.as_ptr(), 1, cfg_cookie.as_ptr().cast(), 3) };
    assert_eq!(st, RSL_SUCCESS);
    let mut cookie = [0u8; 8];
    let mut cookie_len = 2u32;
    assert_eq!(get(&mut nodes, 3, &mut count, cookie.as_mut_ptr().cast(), &mut cookie_len), RSL_E_BUFFER);
    assert_eq!(cookie_len, 3);
    cookie_len = cookie.len() as u32;
    assert_eq!(get(&mut nodes, 3, &mut count, cookie.as_mut_ptr().cast(), &mut cookie_len), RSL_SUCCESS);
    assert_eq!((count, id_of(&nodes[0]), nodes[0].learn_port, &cookie[..cookie_len as usize]), (1, "7".into(), 7001, &b"cfg"[..]));

    // The data survived the rewrite: read it through the stream functions.
    let mut r = null_mut();
    assert_eq!(unsafe { rsl_checkpoint_reader_open(file.as_ptr(), &mut r) }, 0);
    assert_eq!(unsafe { rsl_checkpoint_reader_size(r) }, 16);
    let (mut data, mut read) = (null(), 0u32);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(r, &mut data, 5, &mut read) }, 0);
    assert_eq!(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), read as usize) }, b"hello");
    assert_eq!(unsafe { rsl_checkpoint_reader_skip(r, 1) }, 0);
    let mut out = [0u8; 32];
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(r, out.as_mut_ptr().cast(), 32, &mut read) }, 0);
    assert_eq!(&out[..read as usize], b"checkpoint");
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(r, out.as_mut_ptr().cast(), 32, &mut read) }, 38, "end of data");
    assert_eq!(unsafe { rsl_checkpoint_reader_seek(r, 17) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_seek(r, 6) }, 0);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(r, out.as_mut_ptr().cast(), 5, &mut read) }, 0);
    assert_eq!(&out[..5], b"check");
    // NULL arguments are ERROR_INVALID_PARAMETER.
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(r, null_mut(), 5, &mut read) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(r, null_mut(), 5, &mut read) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(null_mut(), &mut data, 5, &mut read) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_skip(null_mut(), 1) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_size(null()) }, 0);
    unsafe { rsl_checkpoint_reader_close(r) };
    unsafe { rsl_checkpoint_reader_close(null_mut()) };

    // Opening: NULL, missing and corrupt files.
    assert_eq!(unsafe { rsl_checkpoint_reader_open(null(), &mut r) }, 87);
    assert_eq!(unsafe { rsl_checkpoint_reader_open(file.as_ptr(), null_mut()) }, 87);
    assert_ne!(unsafe { rsl_checkpoint_reader_open(c("/nonexistent/1.codex").as_ptr(), &mut r) }, 0);
    assert!(r.is_null());
    let mut bytes = std::fs::read(tmp.path().join("4.codex")).unwrap();
    bytes.pop();
    std::fs::write(tmp.path().join("4.codex"), &bytes).unwrap();
    assert_eq!(unsafe { rsl_checkpoint_reader_open(file.as_ptr(), &mut r) }, 23, "size mismatch");
}

#[test]
fn multi_block_golden_checkpoint_through_the_reader() {
    let golden = golden();
    let file = c(golden.join("cp_multiblock_v4/100.codex").to_str().unwrap());
    let mut r = null_mut();
    assert_eq!(unsafe { rsl_checkpoint_reader_open(file.as_ptr(), &mut r) }, 0);
    assert_eq!(unsafe { rsl_checkpoint_reader_size(r) }, 4_194_306);
    let (mut data, mut read) = (null(), 0u32);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(r, &mut data, u32::MAX, &mut read) }, 0);
    assert_eq!(read, 4_194_296, "never crosses a block");
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(r, &mut data, u32::MAX, &mut read) }, 0);
    assert_eq!(read, 10);
    let tail = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), 10) };
    let expected: Vec<u8> = (4_194_296..4_194_306usize).map(|i| ((7 * i + (i >> 8)) % 256) as u8).collect();
    assert_eq!(tail, &expected[..]);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data_pointer(r, &mut data, 1, &mut read) }, 38);
    unsafe { rsl_checkpoint_reader_close(r) };
}

#[test]
fn checksum_matches_golden_values() {
    let sum = |b: &[u8]| unsafe { rsl_calculate_checksum(b.as_ptr().cast(), b.len()) };
    assert_eq!(sum(b"hello"), 0x2E68EB152273854B, "docs/spec/formats.md §13.5");
    assert_eq!(sum(b"hello checkpoint"), 0x2c9220572d26c787);
    assert_eq!(unsafe { rsl_calculate_checksum(null(), 0) }, sum(b""));
    assert_eq!(unsafe { rsl_calculate_checksum(null(), 5) }, 0);
    let golden = golden();
    // A vote's checksum covers bytes 14.. (stored at 6); a block's follows its data.
    let vote = std::fs::read(golden.join("vote_v6.bin")).unwrap();
    assert_eq!(sum(&vote[14..]), u64::from_le_bytes(vote[6..14].try_into().unwrap()));
    let cp = std::fs::read(golden.join("cp_legislator_v6/4.codex")).unwrap();
    assert_eq!(sum(&cp[1024..1029]).to_le_bytes(), cp[1029..1037]);
}

// ---- replicas ----

/// Counts the callbacks a test cares about.
#[derive(Default)]
struct Seen {
    loads: AtomicUsize,
    shutdowns: AtomicUsize,
    reentrant_unload: Mutex<Option<rsl_status>>,
    handle: Mutex<usize>,
}

unsafe extern "C" fn load_state(ctx: *mut c_void, reader: *mut rsl_checkpoint_reader) -> bool {
    assert!(reader.is_null(), "a fresh directory has no checkpoint");
    unsafe { &*ctx.cast::<Seen>() }.loads.fetch_add(1, SeqCst);
    true
}
unsafe extern "C" fn execute(_: *mut c_void, _: *const c_void, _: usize, _: *mut c_void, _: *mut bool) {}
unsafe extern "C" fn fast_read(_: *mut c_void, _: *const c_void, _: usize, _: *mut c_void) {}
unsafe extern "C" fn abort_request(_: *mut c_void, _: rsl_status, _: *mut c_void) {}
unsafe extern "C" fn save_state(_: *mut c_void, _: *mut rsl_checkpoint_writer) {}
unsafe extern "C" fn notify_status(_: *mut c_void, _: bool) {}
unsafe extern "C" fn config_changed(_: *mut c_void, _: *mut c_void) {}
unsafe extern "C" fn abort_config(_: *mut c_void, _: rsl_status, _: *mut c_void) {}
unsafe extern "C" fn shut_down(ctx: *mut c_void, status: rsl_status) {
    assert_eq!(status, RSL_SHUTTING_DOWN);
    let seen = unsafe { &*ctx.cast::<Seen>() };
    seen.shutdowns.fetch_add(1, SeqCst);
    // Unloading itself from its own callback would wait for itself: refused.
    let handle = *seen.handle.lock().unwrap() as *mut rsl_replica;
    *seen.reentrant_unload.lock().unwrap() = Some(unsafe { rsl_replica_unload(handle) });
    unsafe { rsl_replica_destroy(handle) }; // ignored (logged): it would free itself mid-call
}

fn callbacks(seen: &Seen) -> rsl_callbacks {
    rsl_callbacks {
        context: (seen as *const Seen).cast_mut().cast(),
        load_state: Some(load_state),
        execute_replicated_request: Some(execute),
        execute_fast_read_request: Some(fast_read),
        abort_request: Some(abort_request),
        save_state: Some(save_state),
        notify_status: Some(notify_status),
        notify_configuration_changed: Some(config_changed),
        abort_change_configuration: Some(abort_config),
        shut_down: Some(shut_down),
        before_execute_replicated_requests: None,
        after_execute_replicated_requests: None,
        try_save_state: None,
        notify_primary_recovered: None,
        state_saved: None,
        state_copied: None,
        can_become_primary: None,
        accept_message_from_replica: None,
        resolve_node: None,
    }
}

fn config(dir: &std::path::Path) -> rsl_config {
    let mut cfg: rsl_config = unsafe { std::mem::zeroed() };
    unsafe { rsl_config_init(&mut cfg) };
    for (d, s) in cfg.working_dir.iter_mut().zip(dir.to_str().unwrap().bytes()) {
        *d = s as c_char;
    }
    cfg
}

/// A port from the OS whose successor (the learn port) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if port < 65_000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

#[test]
fn initialize_checks_its_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let cb = callbacks(&seen);
    let cfg = config(tmp.path());
    let me = node("1", [127, 0, 0, 1], free_port(), 0, "");
    let mut out = std::ptr::dangling_mut::<rsl_replica>(); // set to NULL on failure
    let init = |cfg: *const rsl_config,
                me: *const rsl_node,
                v: u32,
                cb: *const rsl_callbacks,
                members: &[rsl_node],
                out: *mut *mut rsl_replica| unsafe {
        rsl_replica_initialize(cfg, me, v, false, cb, if members.is_empty() { null() } else { members.as_ptr() }, members.len(), out)
    };
    assert_eq!(init(null(), &me, 6, &cb, &[me], &mut out), RSL_E_NULL);
    assert_eq!(init(&cfg, null(), 6, &cb, &[me], &mut out), RSL_E_NULL);
    assert_eq!(init(&cfg, &me, 6, null(), &[me], &mut out), RSL_E_NULL);
    assert_eq!(init(&cfg, &me, 6, &cb, &[me], null_mut()), RSL_E_NULL);
    let mut missing = cb;
    missing.shut_down = None;
    assert_eq!(init(&cfg, &me, 6, &missing, &[me], &mut out), RSL_E_NULL, "a required callback is NULL");
    assert!(out.is_null(), "*out is NULL on failure");
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &cb, null(), 2, &mut out) }, RSL_E_NULL);
    for bad in [node("", [127, 0, 0, 1], 1, 0, ""), node(&"x".repeat(64), [127, 0, 0, 1], 1, 0, "")] {
        assert_eq!(init(&cfg, &bad, 6, &cb, &[me], &mut out), RSL_INVALID_PARAMETER, "bad member id");
        assert_eq!(init(&cfg, &me, 6, &cb, &[me, bad], &mut out), RSL_INVALID_PARAMETER, "bad member id in the set");
    }
    let mut no_host_nul = me;
    no_host_nul.host_name = [b'h' as c_char; 256];
    assert_eq!(init(&cfg, &no_host_nul, 6, &cb, &[me], &mut out), RSL_INVALID_PARAMETER);
    assert_eq!(init(&cfg, &me, 0, &cb, &[me], &mut out), RSL_INVALID_PARAMETER, "version 0");
    assert_eq!(init(&cfg, &me, 3, &cb, &[], &mut out), RSL_INVALID_PARAMETER, "no member list before v4");
    let mut bad_cfg = cfg;
    bad_cfg.election_delay_sec = 0;
    assert_eq!(init(&bad_cfg, &me, 6, &cb, &[me], &mut out), RSL_E_CONFIG);
    bad_cfg = cfg;
    bad_cfg.working_dir = [b'd' as c_char; 4097];
    assert_eq!(init(&bad_cfg, &me, 6, &cb, &[me], &mut out), RSL_E_CONFIG, "unterminated working dir");
    let mut empty_dir: rsl_config = unsafe { std::mem::zeroed() };
    unsafe { rsl_config_init(&mut empty_dir) };
    assert_eq!(init(&empty_dir, &me, 6, &cb, &[me], &mut out), RSL_E_CONFIG, "no working dir");
    assert_eq!(seen.loads.load(SeqCst), 0, "nothing was loaded");
    unsafe { rsl_config_init(null_mut()) };
}

#[test]
fn null_handles_are_refused() {
    let n = null_mut();
    let mut node_out = node("", [0; 4], 0, 0, "");
    let mut count = 0usize;
    let mut stats = rsl_stats::default();
    unsafe {
        assert_eq!(rsl_replica_replicate_request(n, b"x".as_ptr().cast(), 1, null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_replicate_request_exclusive_vote(n, b"x".as_ptr().cast(), 1, null_mut(), false), RSL_E_NULL);
        assert_eq!(rsl_replica_fast_read_request(n, 0, b"x".as_ptr().cast(), 1, null_mut(), 0), RSL_E_NULL);
        assert_eq!(rsl_replica_current_sequence_number(n), 0);
        assert_eq!(rsl_replica_highest_passed_sequence_number(n), 0);
        assert_eq!(rsl_replica_get_configuration(n, null_mut(), 0, &mut count, null_mut(), null_mut(), null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_get_current_primary(n, &mut node_out), RSL_E_NULL);
        assert_eq!(rsl_replica_relinquish_primary(n), RSL_E_NULL);
        assert_eq!(rsl_replica_attempt_promotion(n), RSL_E_NULL);
        assert_eq!(rsl_replica_set_vote_payload(n, 1), RSL_E_NULL);
        assert_eq!(rsl_replica_set_accept_messages(n, true), RSL_E_NULL);
        assert_eq!(rsl_replica_allow_save_state(n, true), RSL_E_NULL);
        assert_eq!(rsl_replica_copy_state_from_replica(n, null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_get_replicas_information(n, null_mut(), 0, &mut count), RSL_E_NULL);
        assert_eq!(rsl_replica_get_statistics_snapshot(n, &mut stats), RSL_E_NULL);
        assert!(!rsl_replica_is_primary(n));
        assert_eq!(rsl_replica_unload(n), RSL_E_NULL);
        rsl_replica_destroy(n);
    }
}

/// A Prepare from an outsider with a ballot nothing can outbid, to the Paxos port `port`.
fn send_forged_prepare(port: u16) {
    use rsl_engine::format::{Ballot, Body, Header, MemberId, Message, Version};
    use std::io::Write;
    let outsider = MemberId::new("666").unwrap();
    let header = Header::new(Version::V6, outsider, 1, 1, Ballot::new(u32::MAX, outsider));
    let packet = rsl_engine::runtime::transport::frame(&Message::new(header, Body::Prepare(Default::default())), &mut Default::default());
    std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap().write_all(&packet).unwrap();
}

#[test]
fn a_replica_checks_calls_then_refuses_them_once_unloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Box::new(Seen::default());
    let cb = callbacks(&seen);
    let cfg = config(tmp.path());
    let port = free_port();
    let me = node("1", [127, 0, 0, 1], port, 0, "me");
    let others = [me, node("2", [127, 0, 0, 1], port + 2, 0, ""), node("3", [127, 0, 0, 1], port + 4, 0, "")];
    let mut r = null_mut();
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, true, &cb, others.as_ptr(), 3, &mut r) }, RSL_SUCCESS);
    *seen.handle.lock().unwrap() = r as usize;
    assert_eq!(seen.loads.load(SeqCst), 1, "LoadState ran inside initialize");

    unsafe {
        // Requests: NULL data, empty, not primary.
        assert_eq!(rsl_replica_replicate_request(r, null(), 3, null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_replicate_request(r, b"x".as_ptr().cast(), 1, null_mut()), RSL_NOT_PRIMARY);
        assert_eq!(rsl_replica_fast_read_request(r, 1_000, b"x".as_ptr().cast(), 1, null_mut(), 0), RSL_FAST_READ_STALE);
        // The configuration, with short buffers.
        let mut nodes = [node("", [0; 4], 0, 0, ""); 3];
        let (mut count, mut number, mut cookie_len) = (0usize, 0u32, 0u32);
        // The protocol thread publishes the configuration once it runs.
        let until = Instant::now() + Duration::from_secs(10);
        while rsl_replica_get_configuration(r, null_mut(), 0, &mut count, null_mut(), null_mut(), null_mut()) != RSL_E_BUFFER {
            assert!(Instant::now() < until, "the configuration is published");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rsl_replica_get_configuration(r, nodes.as_mut_ptr(), 2, &mut count, &mut number, null_mut(), null_mut()), RSL_E_BUFFER);
        assert_eq!(count, 3);
        assert_eq!(rsl_replica_get_configuration(r, nodes.as_mut_ptr(), 3, null_mut(), null_mut(), null_mut(), null_mut()), RSL_E_NULL);
        let st = rsl_replica_get_configuration(r, nodes.as_mut_ptr(), 3, &mut count, &mut number, null_mut(), &mut cookie_len);
        assert_eq!((st, count, number, cookie_len), (RSL_SUCCESS, 3, 1, 0));
        assert_eq!((id_of(&nodes[0]), nodes[0].rsl_port, nodes[0].learn_port), ("1".into(), port, port + 1));
        // Member sets: a bad id, an oversized cookie, an empty set.
        let bad = [node("", [127, 0, 0, 1], 1, 0, "")];
        assert_eq!(rsl_replica_change_configuration(r, bad.as_ptr(), 1, null(), 0, null_mut()), RSL_INVALID_PARAMETER);
        let big = vec![0u8; 8193];
        assert_eq!(rsl_replica_change_configuration(r, others.as_ptr(), 3, big.as_ptr().cast(), 8193, null_mut()), RSL_INVALID_PARAMETER);
        assert_eq!(rsl_replica_bootstrap(r, others.as_ptr(), 0, null(), 0, 1), RSL_INVALID_PARAMETER);
        let mut health = [std::mem::zeroed::<rsl_replica_health>(); 4];
        assert_eq!(rsl_replica_get_replicas_information(r, health.as_mut_ptr(), 4, null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_get_replicas_information(r, health.as_mut_ptr(), 4, &mut count), RSL_SUCCESS);
        assert_eq!(count, 0, "not primary");
        let mut stats = rsl_stats::default();
        assert_eq!(rsl_replica_get_statistics_snapshot(r, null_mut()), RSL_E_NULL);
        // A forged Prepare is dropped and counted (each snapshot resets the counters).
        send_forged_prepare(port);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(rsl_replica_get_statistics_snapshot(r, &mut stats), RSL_SUCCESS);
            if stats.messages_rejected > 0 {
                break;
            }
            assert!(Instant::now() < until, "a forged Prepare is counted in messages_rejected");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rsl_replica_set_vote_payload(r, 7), RSL_SUCCESS);
        assert_eq!(rsl_replica_allow_save_state(r, true), RSL_SUCCESS);
        let mut primary = node("x", [0; 4], 0, 0, "");
        assert_eq!(rsl_replica_get_current_primary(r, null_mut()), RSL_E_NULL);
        assert_eq!(rsl_replica_get_current_primary(r, &mut primary), RSL_SUCCESS);

        // Unload: ShutDown once (its re-entrant unload refused), then every call is refused.
        assert_eq!(rsl_replica_unload(r), RSL_SUCCESS);
        assert_eq!(seen.shutdowns.load(SeqCst), 1);
        assert_eq!(*seen.reentrant_unload.lock().unwrap(), Some(RSL_E_STATE));
        assert_eq!(rsl_replica_unload(r), RSL_SHUTTING_DOWN);
        assert_eq!(rsl_replica_replicate_request(r, b"x".as_ptr().cast(), 1, null_mut()), RSL_SHUTTING_DOWN);
        assert_eq!(rsl_replica_fast_read_request(r, 0, b"x".as_ptr().cast(), 1, null_mut(), 0), RSL_SHUTTING_DOWN);
        assert_eq!(
            rsl_replica_get_configuration(r, nodes.as_mut_ptr(), 3, &mut count, null_mut(), null_mut(), null_mut()),
            RSL_SHUTTING_DOWN
        );
        assert_eq!(rsl_replica_attempt_promotion(r), RSL_SHUTTING_DOWN);
        assert_eq!(rsl_replica_copy_state_from_replica(r, null_mut()), RSL_SHUTTING_DOWN);
        assert!(!rsl_replica_is_primary(r));
        rsl_replica_destroy(r);
    }
    assert_eq!(seen.shutdowns.load(SeqCst), 1, "destroy after unload does not shut down twice");

    // The ports are free again: a replica can start on the same directory and ports.
    let mut again = null_mut();
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, true, &cb, others.as_ptr(), 3, &mut again) }, RSL_SUCCESS);
    *seen.handle.lock().unwrap() = again as usize;
    *seen.reentrant_unload.lock().unwrap() = None;
    unsafe { rsl_replica_destroy(again) };
    assert_eq!(seen.shutdowns.load(SeqCst), 2, "destroy unloads");
    assert_eq!(*seen.reentrant_unload.lock().unwrap(), Some(RSL_E_STATE));
}

/// Asks for a checkpoint after every request.
unsafe extern "C" fn execute_and_save(_: *mut c_void, _: *const c_void, _: usize, _: *mut c_void, save: *mut bool) {
    unsafe { *save = true };
}

#[test]
fn a_failed_replica_calls_shut_down_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Box::new(Seen::default());
    let mut cb = callbacks(&seen);
    cb.execute_replicated_request = Some(execute_and_save);
    let mut cfg = config(tmp.path());
    (cfg.election_delay_sec, cfg.heart_beat_interval_sec, cfg.new_leader_grace_period_sec) = (1, 1, 1);
    let me = node("1", [127, 0, 0, 1], free_port(), 0, "");
    let mut r = null_mut();
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &cb, &me, 1, &mut r) }, RSL_SUCCESS);
    *seen.handle.lock().unwrap() = r as usize;
    let mut why = [0 as c_char; 512];
    assert!(!unsafe { rsl_replica_failure(r, why.as_mut_ptr(), why.len()) }, "a running replica has not failed");
    let until = Instant::now() + Duration::from_secs(20);
    while !unsafe { rsl_replica_is_primary(r) } {
        assert!(Instant::now() < until, "a one-member ring elects itself");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Checkpoints are written in Temp/ first: a file in its place makes the next save fail,
    // whoever runs the test (root included).
    let temp = tmp.path().join("1").join("Temp");
    std::fs::remove_dir_all(&temp).unwrap();
    std::fs::write(&temp, b"not a directory").unwrap();
    assert_eq!(unsafe { rsl_replica_replicate_request(r, b"x".as_ptr().cast(), 1, null_mut()) }, RSL_SUCCESS);
    while !unsafe { rsl_replica_failure(r, why.as_mut_ptr(), why.len()) } {
        assert!(Instant::now() < until, "the replica fails");
        std::thread::sleep(Duration::from_millis(10));
    }
    let why = unsafe { CStr::from_ptr(why.as_ptr()) }.to_str().unwrap().to_string();
    assert!(why.contains("could not be saved") && why.contains("Temp"), "{why}");
    while seen.shutdowns.load(SeqCst) == 0 {
        assert!(Instant::now() < until, "shut_down is called");
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe {
        assert_eq!(rsl_replica_replicate_request(r, b"x".as_ptr().cast(), 1, null_mut()), RSL_SHUTTING_DOWN);
        let mut short = [1 as c_char; 8];
        assert!(rsl_replica_failure(r, short.as_mut_ptr(), short.len()), "the reason, cut to fit");
        assert_eq!(CStr::from_ptr(short.as_ptr()).to_bytes(), &why.as_bytes()[..7]);
        assert!(rsl_replica_failure(r, null_mut(), 0));
        assert!(!rsl_replica_failure(null(), null_mut(), 0));
        assert_eq!(rsl_replica_unload(r), RSL_SUCCESS);
        assert!(rsl_replica_failure(r, null_mut(), 0), "still known after unload");
        rsl_replica_destroy(r);
    }
    assert_eq!(seen.shutdowns.load(SeqCst), 1, "shut_down once");
}

#[test]
fn the_metrics_text_names_each_replica_and_fits_or_is_left_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Box::new(Seen::default());
    let cb = callbacks(&seen);
    let mut cfg = config(tmp.path());
    (cfg.election_delay_sec, cfg.heart_beat_interval_sec, cfg.new_leader_grace_period_sec) = (1, 1, 1);
    let port = free_port();
    let me = node("1", [127, 0, 0, 1], port, 0, "");
    let mut r = null_mut();
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &cb, &me, 1, &mut r) }, RSL_SUCCESS);
    *seen.handle.lock().unwrap() = r as usize;
    let until = Instant::now() + Duration::from_secs(20);
    while !unsafe { rsl_replica_is_primary(r) } {
        assert!(Instant::now() < until, "a one-member ring elects itself");
        std::thread::sleep(Duration::from_millis(10));
    }
    let needed = unsafe { rsl_metrics_render(null_mut(), 0) };
    let mut short = [1 as c_char; 16];
    assert!(unsafe { rsl_metrics_render(short.as_mut_ptr(), short.len()) } >= needed.min(16));
    assert_eq!(short[0], 0, "a text that does not fit leaves the empty string");
    // Other tests' replicas may add to the text meanwhile: room to spare.
    let mut buf = vec![0 as c_char; needed + (1 << 20)];
    let len = unsafe { rsl_metrics_render(buf.as_mut_ptr(), buf.len()) };
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
    assert_eq!(text.len(), len);
    assert!(text.contains(&format!("rsl_primary{{ring=\"{port}\",member=\"1\"}} 1\n")), "{text}");
    unsafe { rsl_replica_destroy(r) };
}

static LOGGED: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

unsafe extern "C" fn log_cb(level: i32, message: *const c_char) {
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    LOGGED.lock().unwrap().push((level, text));
}

#[test]
fn init_logs_to_the_callback_and_a_file_and_may_be_called_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = c(tmp.path().join("logs").to_str().unwrap());
    assert_eq!(unsafe { rsl_init(null(), false, None) }, RSL_SUCCESS);
    assert_eq!(unsafe { rsl_init(dir.as_ptr(), false, Some(log_cb)) }, RSL_SUCCESS);
    // A configuration error is logged at Error (4).
    let mut cfg = config(tmp.path());
    cfg.max_cache_length_mb = 5000;
    let seen = Seen::default();
    let me = node("1", [127, 0, 0, 1], 1, 0, "");
    let mut out = null_mut();
    let st = unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &callbacks(&seen), &me, 1, &mut out) };
    assert_eq!(st, RSL_E_CONFIG);
    let until = Instant::now() + Duration::from_secs(10);
    while !LOGGED.lock().unwrap().iter().any(|(l, m)| *l == 4 && m.contains("m_maxCacheLengthMB")) {
        assert!(Instant::now() < until, "the error reached the callback: {:?}", LOGGED.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let file = std::fs::read_to_string(tmp.path().join("logs/rsl.log")).unwrap();
    assert!(file.contains("m_maxCacheLengthMB"), "{file}");
    // A replica's lines name its ring and member: the warning about an outsider's message.
    let port = free_port();
    let me = node("1", [127, 0, 0, 1], port, 0, "");
    let cfg = config(tmp.path());
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &callbacks(&seen), &me, 1, &mut out) }, RSL_SUCCESS);
    let tag = format!("rsl{{ring={port} member=1}}: ");
    send_forged_prepare(port);
    while !LOGGED.lock().unwrap().iter().any(|(l, m)| *l == 3 && m.contains(&tag)) {
        assert!(Instant::now() < until, "a warning with {tag}: {:?}", LOGGED.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { rsl_replica_destroy(out) };
}

/// Only refusals here: a call that succeeded would turn TLS on for every replica the other
/// tests of this process start (the settings are process-wide, as the original's).
#[test]
fn tls_settings_are_checked_when_set() {
    let thumb = c(&"ab".repeat(20));
    let (short, not_hex) = (c("abcd"), c(&"zz".repeat(20)));
    let bad_list = c(&format!("{};{}", "ab".repeat(20), "zz".repeat(20)));
    let (subject, empty) = (c("CN=ring"), c(" ; "));
    let (ca, cert, key, pin) = (c("/ca.pem"), c("/c.pem"), c("/k.pem"), c(&"0f".repeat(32)));
    unsafe {
        assert!(!rsl_set_thumbprints_for_ssl(short.as_ptr(), null(), true, false));
        assert!(!rsl_set_thumbprints_for_ssl(thumb.as_ptr(), not_hex.as_ptr(), true, false), "B is checked too");
        assert!(!rsl_set_subject_names_for_ssl(subject.as_ptr(), bad_list.as_ptr(), null(), null(), true));
        assert!(!rsl_set_subject_names_for_ssl(subject.as_ptr(), empty.as_ptr(), null(), null(), true), "no issuer");
        assert!(!rsl_set_tls_files(ca.as_ptr(), cert.as_ptr(), null(), null(), null()), "a certificate without its key");
        assert!(!rsl_set_tls_files(null(), cert.as_ptr(), key.as_ptr(), null(), null()), "nothing says whom to admit");
        assert!(!rsl_set_tls_files(null(), cert.as_ptr(), key.as_ptr(), pin.as_ptr(), subject.as_ptr()), "names without a CA");
        assert!(!rsl_set_tls_files(ca.as_ptr(), cert.as_ptr(), key.as_ptr(), thumb.as_ptr(), null()), "a pin of 20 bytes");
    }
}

// ---- errors ----

/// This thread's `rsl_last_error`, checked against `rsl_last_error_length`.
fn last_error() -> String {
    let text = unsafe { CStr::from_ptr(rsl_last_error()) }.to_str().unwrap().to_owned();
    assert_eq!(text.len(), rsl_last_error_length());
    text
}

#[test]
fn every_status_has_a_message_and_unknown_ones_a_generic_one() {
    let message = |code| unsafe { CStr::from_ptr(rsl_status_message(code)) }.to_str().unwrap().to_owned();
    let defined: Vec<String> = (RSL_E_PANIC..=RSL_INVALID_PARAMETER).map(message).collect();
    assert!(defined.iter().all(|m| !m.is_empty() && m != "unknown status"), "{defined:?}");
    let mut distinct = defined.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), defined.len(), "each status says something different: {defined:?}");
    assert_eq!(message(RSL_NOT_PRIMARY), defined[(RSL_NOT_PRIMARY - RSL_E_PANIC) as usize]);
    for unknown in [7, -7, i32::MAX, i32::MIN] {
        assert_eq!(message(unknown), "unknown status");
    }
}

#[test]
fn a_failed_call_says_why_until_the_next_call_on_its_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = Seen::default();
    let cb = callbacks(&seen);
    let me = node("1", [127, 0, 0, 1], free_port(), 0, "");
    let mut out = null_mut();
    assert_eq!(last_error(), "", "nothing failed yet on this thread");

    // A working directory below a regular file cannot be created: the path is named.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let cfg = config(&file.join("data"));
    assert_eq!(unsafe { rsl_replica_initialize(&cfg, &me, 6, false, &cb, &me, 1, &mut out) }, RSL_E_IO);
    let io = last_error();
    assert!(io.starts_with(unsafe { CStr::from_ptr(rsl_status_message(RSL_E_IO)) }.to_str().unwrap()), "{io}");
    assert!(io.contains(file.to_str().unwrap()), "names the directory: {io}");
    // Calls that return no status leave it; the pointer stays valid across them.
    let kept = rsl_last_error();
    assert_ne!(unsafe { rsl_calculate_checksum(b"x".as_ptr().cast(), 1) }, 0);
    assert!(!rsl_status_message(RSL_E_NULL).is_null());
    assert_eq!(unsafe { CStr::from_ptr(kept) }.to_str().unwrap(), io);

    let mut bad = config(tmp.path());
    bad.election_delay_sec = 0;
    assert_eq!(unsafe { rsl_replica_initialize(&bad, &me, 6, false, &cb, &me, 1, &mut out) }, RSL_E_CONFIG);
    assert!(last_error().contains("m_electionDelaySec = 0"), "{}", last_error());
    let mut missing = cb;
    missing.notify_status = None;
    assert_eq!(unsafe { rsl_replica_initialize(&config(tmp.path()), &me, 6, false, &missing, &me, 1, &mut out) }, RSL_E_NULL);
    assert!(last_error().contains("notify_status"), "names the callback: {}", last_error());
    assert_eq!(unsafe { rsl_replica_initialize(&config(tmp.path()), &me, 99, false, &cb, &me, 1, &mut out) }, RSL_INVALID_PARAMETER);
    assert!(last_error().contains("protocol version 99"), "{}", last_error());
    assert_eq!(unsafe { rsl_replica_replicate_request(null_mut(), null(), 0, null_mut()) }, RSL_E_NULL);
    assert_eq!(last_error(), unsafe { CStr::from_ptr(rsl_status_message(RSL_E_NULL)) }.to_str().unwrap(), "no cause: the status alone");

    // A success clears it.
    let dir = c(tmp.path().to_str().unwrap());
    assert_eq!(save(&dir, 6, &golden_members()), RSL_SUCCESS);
    assert_eq!(last_error(), "");
    assert_eq!(save(&dir, 6, &golden_members()), RSL_E_IO, "the checkpoint exists");
    assert!(last_error().contains(tmp.path().to_str().unwrap()), "{}", last_error());

    // The TLS setters and the checkpoint streams report the same way.
    let cert = c("/c.pem");
    assert!(!unsafe { rsl_set_tls_files(null(), cert.as_ptr(), null(), null(), null()) });
    assert!(last_error().starts_with("invalid parameter") && last_error().contains("both a certificate and a key"), "{}", last_error());
    let (missing, saved) = (tmp.path().join("9.codex"), tmp.path().join("4.codex"));
    let mut reader = null_mut();
    assert_ne!(unsafe { rsl_checkpoint_reader_open(c(missing.to_str().unwrap()).as_ptr(), &mut reader) }, 0);
    assert!(last_error().starts_with("Win32 error") && last_error().contains(missing.to_str().unwrap()), "{}", last_error());
    assert_eq!(unsafe { rsl_checkpoint_reader_open(c(saved.to_str().unwrap()).as_ptr(), &mut reader) }, 0);
    assert_eq!(last_error(), "");
    let (mut buf, mut read) = ([0u8; 64], 0u32);
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(reader, buf.as_mut_ptr().cast(), 64, &mut read) }, 0);
    assert_eq!(&buf[..read as usize], b"hello checkpoint");
    assert_eq!(unsafe { rsl_checkpoint_reader_get_data(reader, buf.as_mut_ptr().cast(), 64, &mut read) }, 38);
    assert!(last_error().starts_with("Win32 error 38 (end of data)"), "{}", last_error());
    unsafe { rsl_checkpoint_reader_close(reader) };
}

#[test]
fn the_last_error_is_per_thread() {
    assert_eq!(unsafe { rsl_replica_initialize(null(), null(), 6, false, null(), null(), 0, null_mut()) }, RSL_E_NULL);
    let mine = last_error();
    assert!(mine.contains("rsl_replica_initialize"), "{mine}");
    let theirs = std::thread::spawn(|| {
        let before = last_error();
        assert_eq!(unsafe { rsl_replica_unload(null_mut()) }, RSL_E_NULL);
        (before, last_error())
    })
    .join()
    .unwrap();
    assert_eq!(theirs.0, "", "another thread's failure is not seen");
    assert_ne!(theirs.1, mine);
    assert_eq!(last_error(), mine, "nor does it replace this thread's");
}
