//! What an operator sees of a running `rsl-kv` cluster: `put` and `get` from the command line,
//! `status` (each ring's primary, each replica's decree, lag and connections), the
//! Prometheus page of `replica --metrics`, and logs whose every line names its ring and
//! member, as text without colours when stderr is a file, or as JSON.

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::{free_base, primary, rt, Cluster};

/// Far beyond what any wait here needs.
const BOUND: Duration = Duration::from_secs(60);

fn rsl_kv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rsl-kv")).args(args).output().expect("rsl-kv runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET /metrics` over a plain socket: the status line and the body.
fn scrape(addr: SocketAddr, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    conn.set_read_timeout(Some(BOUND)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The samples of a page: (name, labels, value).
fn samples(page: &str) -> Vec<(String, String, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {l:?}"));
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            (name.to_string(), labels.to_string(), value.parse().unwrap_or_else(|_| panic!("a value: {l:?}")))
        })
        .collect()
}

/// Runs `status` until its report satisfies `done` (bounded); returns the last report.
fn status_until(servers: &str, done: impl Fn(&str, Option<i32>) -> bool) -> String {
    let until = Instant::now() + BOUND;
    loop {
        let out = rsl_kv(&["status", "--servers", servers]);
        let report = text(&out.stdout);
        if done(&report, out.status.code()) {
            return report;
        }
        assert!(Instant::now() < until, "status never showed what was expected:\n{report}{}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_operator_writes_reads_scrapes_and_reads_the_status_of_a_cluster() {
    let metrics_base = free_base(3);
    let metrics: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from(([127, 0, 0, 1], metrics_base + i))).collect();
    let mut c = Cluster::new(3, 0, &[]);
    for (i, launch) in c.launch.iter_mut().enumerate() {
        launch.args.extend(["--metrics".to_string(), metrics[i].to_string()]);
    }
    // Replica 1 without NO_COLOR (its stderr is still a file: no colours), replica 3 in JSON.
    c.launch[0].shell = Some("unset NO_COLOR".into());
    c.launch[2].shell = Some("export RSL_LOG_FORMAT=json".into());
    (0..3).for_each(|i| c.spawn(i, true));
    let p = rt().block_on(primary(&c));
    let clients = c.running().iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");

    // put through whichever replica is primary; get from the primary.
    let put = rsl_kv(&["put", "colour", "teal", "--server", &clients]);
    assert!(put.status.success() && text(&put.stdout).starts_with("ok: executed at sequence"), "{put:?}");
    let get = rsl_kv(&["get", "colour", "--server", &c.client(p).to_string()]);
    assert_eq!((get.status.code(), text(&get.stdout)), (Some(0), "teal\n".to_string()), "{get:?}");

    // The page names each replica's ring and member; one primary among the three.
    let mut primaries = 0.0;
    for (i, at) in metrics.iter().enumerate() {
        let (status, page) = scrape(*at, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
        let all = samples(&page);
        let labels = format!("ring=\"ring0\",member=\"{}\"", i + 1);
        let value = |name: &str| all.iter().find(|s| s.0 == name && s.1.starts_with(&labels)).map(|s| s.2);
        primaries += value("rsl_primary").unwrap_or_else(|| panic!("no rsl_primary{{{labels}}}:\n{page}"));
        for name in ["rsl_decree_executed", "rsl_ballot", "rsl_peers_connected", "rsl_log_writes_total", "rsl_decrees_executed_total"] {
            assert!(value(name).is_some(), "no {name}{{{labels}}}:\n{page}");
        }
    }
    assert_eq!(primaries, 1.0);
    let (status, _) = scrape(metrics[0], "GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = scrape(metrics[0], "POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

    // status: every replica of the ring caught up and connected to both peers. A secondary of
    // an idle ring may stay one decree behind: it learns the primary's last decree was chosen
    // only from the next one's vote.
    let servers = metrics.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",");
    let caught_up = |r: &str| {
        let rows: Vec<Vec<&str>> = r.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
        let lag_ok = |row: &Vec<&str>| match row.get(2) {
            Some(&"primary") => row.get(4) == Some(&"0"),
            _ => matches!(row.get(4), Some(&"0") | Some(&"1")),
        };
        rows.len() == 3 && rows.iter().all(|row| lag_ok(row) && row.get(5) == Some(&"2/2"))
    };
    let report = status_until(&servers, |r, code| code == Some(0) && caught_up(r));
    assert!(report.starts_with(&format!("ring ring0: primary {}, newest decree", p + 1)), "{report}");
    assert_eq!(report.lines().count(), 5, "a ring line, a header, three replicas:\n{report}");

    // One replica stopped: status says which endpoint did not answer, and the others that
    // their connections to it are down.
    let gone = (p + 1) % 3;
    c.kill9(gone);
    let report = status_until(&servers, |r, code| code == Some(2) && r.contains(&format!("(down: {})", gone + 1)));
    assert!(report.contains(&format!("unreachable: {}", metrics[gone])), "{report}");

    // Every log line names its ring and member; no colours in a file, NO_COLOR or not.
    for i in [0, 1] {
        let log = c.stderr(i);
        assert!(log.lines().count() > 0 && !log.contains('\x1b'), "replica {}:\n{log}", i + 1);
        let tag = format!("rsl{{ring=ring0 member={}}}", i + 1);
        for line in log.lines() {
            assert!(line.contains(&tag), "replica {}: a line without {tag}: {line}", i + 1);
        }
    }
    let json = c.stderr(2);
    assert!(json.lines().count() > 0, "replica 3 logged nothing");
    for line in json.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(entry["span"]["member"], "3", "{line}");
        assert_eq!(entry["span"]["ring"], "ring0", "{line}");
    }
}

#[test]
fn a_bad_log_setting_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_rsl-kv"))
        .args(["status", "--servers", "127.0.0.1:1"])
        .env("RSL_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("RSL_LOG_FORMAT=xml: want text or json"), "{out:?}");
}
