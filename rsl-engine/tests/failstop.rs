//! `rsl-kv replica` as a supervisor sees it: a replica that stops on its own (here: a full
//! disk, made with `ulimit -f`) ends the process with exit code 3, and SIGTERM or SIGINT ends
//! it within 5 s whatever state it is in.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the interface promises between a signal and the process's exit.
const SIGNAL_BOUND: Duration = Duration::from_secs(5);

/// One single-member ring in its own `rsl-kv replica` process.
struct Replica {
    child: Child,
    /// What the process wrote on stderr so far, and the thread reading it.
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

/// A port whose successor (the learn port) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind").local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

impl Replica {
    /// Starts the replica; with `max_file_blocks`, under `ulimit -f` (512-byte blocks) and with
    /// SIGXFSZ ignored, so a write past the limit fails with EFBIG as on a full disk.
    fn start(max_file_blocks: Option<u32>) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let client_port = free_port();
        let limit = max_file_blocks.map_or(String::new(), |b| format!("ulimit -f {b}; "));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(r#"trap "" XFSZ; {limit}exec "$0" "$@""#))
            .arg(env!("CARGO_BIN_EXE_rsl-kv"))
            .args(["replica", "--id", "1", "--port", &port.to_string(), "--client-port", &client_port.to_string()])
            .args(["--members", &format!("1={port}"), "--election-delay", "1", "--heartbeat", "1"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn rsl-kv replica");
        let pipe = BufReader::new(child.stderr.take().expect("stderr"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let text = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                let mut text = text.lock().expect("stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Replica { child, stderr, reader: Some(reader), dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("1").join("0.log")
    }

    /// Waits until the log holds at least `bytes` (the replica is primary and writing).
    fn wait_log(&self, bytes: u64, within: Duration) {
        let until = Instant::now() + within;
        while log_len(&self.log()) < bytes {
            assert!(Instant::now() < until, "the log did not reach {bytes} bytes within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stderr holds `needle`.
    fn wait_stderr(&self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        while !self.stderr.lock().expect("stderr").contains(needle) {
            assert!(Instant::now() < until, "stderr did not say {needle:?} within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().expect("kill");
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits for the process to exit; its status and what it wrote on stderr.
    fn exit_within(&mut self, within: Duration) -> (ExitStatus, String) {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.reader.take().expect("one exit").join().expect("stderr reader");
                return (status, self.stderr.lock().expect("stderr").clone());
            }
            assert!(Instant::now() < until, "rsl-kv replica did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn sigterm_and_sigint_end_a_healthy_replica_with_exit_code_0() {
    for signal in ["TERM", "INT"] {
        let mut r = Replica::start(None);
        r.wait_log(1024, Duration::from_secs(30));
        r.signal(signal);
        let (status, stderr) = r.exit_within(SIGNAL_BOUND);
        assert_eq!(status.code(), Some(0), "SIG{signal}: {stderr}");
    }
}

#[test]
fn a_full_disk_ends_the_process_with_exit_code_3() {
    // 4 blocks: the log takes four records (an election's Prepare and three votes), then a
    // heartbeat's vote fails with EFBIG.
    let mut r = Replica::start(Some(4));
    r.wait_log(2048, Duration::from_secs(30));
    // The next heartbeat (1 s) fails to write; the process reports and exits within 5 s.
    let (status, stderr) = r.exit_within(Duration::from_secs(1) + SIGNAL_BOUND);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("File too large"), "stderr names the error: {stderr}");
    assert_eq!(log_len(&r.log()), 2048, "nothing past the limit");
}

#[test]
fn sigterm_ends_a_replica_whose_disk_is_full() {
    let mut r = Replica::start(Some(4));
    // The write has failed (the journal says so); a signal now, whether the process has
    // noticed yet or not, ends it in time with the failure's exit code.
    r.wait_stderr("File too large", Duration::from_secs(30));
    r.signal("TERM");
    let (status, stderr) = r.exit_within(SIGNAL_BOUND);
    assert_eq!(status.code(), Some(3), "{stderr}");
}
