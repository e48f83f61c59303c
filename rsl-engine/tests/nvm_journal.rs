//! The NVM journal with real replica processes: a ring whose replicas acknowledge from a
//! persistent log on `/dev/shm` (`rsl-kv replica --nvm`), under load, survives kill -9 of its
//! primary and of the whole cluster with every acknowledged write on every replica, and its
//! log files are the original's format (`rsl-inspect`).

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{load_while, primary, rt, spec, verify, wait_done, Cluster};

/// A directory on `/dev/shm` (the emulation's home: memory, as persistent memory would be),
/// removed at the end; a temporary directory where there is no `/dev/shm`.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(tag: u16) -> ShmDir {
        let root = Path::new("/dev/shm");
        let root = if root.is_dir() { root.to_path_buf() } else { std::env::temp_dir() };
        let dir = root.join(format!("rsl-nvm-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("nvm dir");
        ShmDir(dir)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Three replicas, each with a 1 MiB persistent log (small: full logs make appends wait for
/// the files) and 1 MiB log files (they roll over while records wait in the persistent log).
fn nvm_cluster() -> (Cluster, ShmDir) {
    let mut c = Cluster::new(3, 0, &["--max-log-mb", "1", "--nvm-size", "1"]);
    let shm = ShmDir::new(c.base);
    for i in 0..3 {
        let path = shm.0.join(format!("{}.nvm", i + 1));
        c.launch[i].args.extend(["--nvm".to_string(), path.display().to_string()]);
    }
    for i in 0..3 {
        c.spawn(i, true);
    }
    (c, shm)
}

#[test]
fn a_ring_on_the_nvm_journal_survives_kill_9_of_the_primary_and_a_full_restart() {
    rt().block_on(async {
        let (mut c, shm) = nvm_cluster();
        primary(&c).await;
        let spec = spec(3000);
        let acked = load_while(&mut c, &spec, async |c, progress| {
            let p = primary(c).await;
            c.kill9(p);
            wait_done(c, progress, 1500).await;
            c.spawn(p, true);
            wait_done(c, progress, 2000).await;
            // The whole cluster at once, mid-load: what each acknowledged only in its
            // persistent log must come back from there.
            for i in 0..3 {
                c.kill9(i);
            }
            for i in 0..3 {
                c.spawn(i, true);
            }
        })
        .await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
        c.assert_no_panic();
        for i in 0..3 {
            // The last batch is released only by the next one's publish: a replica killed under
            // load always restarts with records to write back from its persistent log.
            let recovered = c.stderr(i).contains("persistent log replayed into the log files");
            assert!(recovered, "replica {} recovered from its persistent log{}", i + 1, c.diagnosis());
            let replayed = c.stderr(i).lines().filter(|l| l.contains("persistent log replayed")).map(str::to_owned).collect::<Vec<_>>();
            eprintln!("replica {}: {}", i + 1, replayed.join(" | "));
        }
        for i in 0..3 {
            assert!(shm.0.join(format!("{}.nvm", i + 1)).is_file(), "replica {} journals on /dev/shm", i + 1);
        }
        for i in 0..3 {
            c.sigterm(i);
        }
        for i in 0..3 {
            let status = c.wait_exit(i, std::time::Duration::from_secs(10)).await.expect("stopped");
            assert!(status.success(), "replica {} stopped cleanly: {status}", i + 1);
            inspect_clean(&c.data_dir(i));
        }
    });
}

/// `rsl-inspect` reads every log of a data directory in the original's format without a
/// complaint.
fn inspect_clean(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_rsl-inspect")).arg("log").arg(dir).output().expect("rsl-inspect");
    assert!(out.status.success(), "rsl-inspect log {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
}
