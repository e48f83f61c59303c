//! Three replica processes of the example key-value service whose Paxos packets go through
//! shared-memory rings (`rsl-kv replica --transport shm`, docs/rdma.md): they replicate under
//! load, the primary is killed with SIGKILL and restarted, and afterwards every acknowledged
//! write is on every replica and all replicas hold the same state. And a ring that mixes
//! both: two replicas on rings, the third on TCP.

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;

mod support;

use support::{load_while, primary, rt, spec, verify, wait_done, Cluster};

/// What a replica logs (at info) when a peer's ring to it is set up.
const RING_OPENED: &str = "shared-memory ring session opened";

#[test]
fn kill_9_the_primary_over_shared_memory() {
    rt().block_on(async {
        let mut c = Cluster::start(3, 0, &["--transport", "shm"]);
        primary(&c).await;
        let spec = spec(3000);
        let mut killed = None;
        let acked = load_while(&mut c, &spec, async |c, progress| {
            let p = primary(c).await;
            killed = Some(p);
            c.kill9(p);
            wait_done(c, progress, 2000).await;
            c.spawn(p, true);
        })
        .await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
        let killed = killed.expect("a primary was killed");
        for i in 0..3 {
            let log = c.stderr(i);
            // The restarted replica's log holds both of its lives: each had rings from both peers.
            let want = if i == killed { 4 } else { 2 };
            assert!(log.matches(RING_OPENED).count() >= want, "replica {}: fewer than {want} rings opened:\n{log}", i + 1);
        }
    });
}

#[test]
fn a_ring_mixes_shared_memory_and_tcp() {
    rt().block_on(async {
        let mut c = Cluster::new(3, 0, &[]);
        for (i, transport) in ["shm", "shm", "tcp"].into_iter().enumerate() {
            c.launch[i].args.extend(["--transport".to_string(), transport.to_string()]);
            c.spawn(i, true);
        }
        primary(&c).await;
        let spec = spec(1500);
        let acked = load_while(&mut c, &spec, async |_, _| {}).await;
        verify(&c, &[0, 1, 2], &acked, &spec).await;
        // Replicas 1 and 2 read each other's ring; replica 3 declines every offer (and offers
        // none), and the other two reach it over TCP.
        for i in 0..2 {
            assert!(c.stderr(i).contains(RING_OPENED), "replica {}: no ring opened:\n{}", i + 1, c.stderr(i));
        }
        assert!(!c.stderr(2).contains(RING_OPENED), "the TCP replica opened a ring:\n{}", c.stderr(2));
    });
}
