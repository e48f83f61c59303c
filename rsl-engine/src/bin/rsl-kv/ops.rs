//! The operator's commands: `put` and `get` against a running cluster's client ports, and
//! `status`, which scrapes each replica's metrics endpoint (`rsl-kv replica --metrics`) and
//! prints every ring's primary and each replica's decree, lag and connections.

use crate::client::Conn;
use crate::proto::Status;
use clap::Args;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one replica may take to connect and answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest metrics page `status` reads.
const MAX_PAGE: usize = 16 << 20;

#[derive(Args)]
pub struct PutArgs {
    key: String,
    value: String,
    /// Client ports (`host:port,...`): each is tried in turn until the primary takes the put.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
}

#[derive(Args)]
pub struct GetArgs {
    key: String,
    /// Client ports (`host:port,...`): the first that answers reads the key (a fast read of
    /// its own state, which may lag the primary's by a few decrees).
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Metrics endpoints of the replicas (`host:port,...`, as given to `replica --metrics`).
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or(format!("{addr}: not a host:port"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

/// Connects to `addr` and runs `call` on the connection, within [`CALL_TIMEOUT`].
async fn with_conn<T>(addr: SocketAddr, call: impl AsyncFnOnce(&mut Conn) -> std::io::Result<T>) -> Result<T, String> {
    let attempt = async {
        let mut conn = Conn::connect(addr).await?;
        call(&mut conn).await
    };
    match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|e| format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {CALL_TIMEOUT:?}")),
    }
}

/// `rsl-kv put`: prints the sequence number the put executed at; exit 0 once one replica
/// (the primary) took it.
pub fn put(args: PutArgs) -> Result<u8, String> {
    let key = args.key.as_bytes();
    if key.len() > usize::from(u16::MAX) {
        return Err(format!("a key is at most {} bytes", u16::MAX));
    }
    let mut why = Vec::new();
    runtime()?.block_on(async {
        for server in &args.server {
            let addr = resolve(server)?;
            match with_conn(addr, async |c| c.put(key, args.value.as_bytes()).await).await {
                Ok((Status::Ok, seq)) => {
                    println!("ok: executed at sequence {seq} by {addr}");
                    return Ok(0);
                }
                Ok((status, _)) => why.push(format!("{addr}: {status:?}")),
                Err(e) => why.push(e),
            }
        }
        Err(format!("no replica took the put ({})", why.join("; ")))
    })
}

/// `rsl-kv get`: prints the value (empty if the key is absent) and a newline.
pub fn get(args: GetArgs) -> Result<u8, String> {
    let mut why = Vec::new();
    runtime()?.block_on(async {
        for server in &args.server {
            let addr = resolve(server)?;
            match with_conn(addr, async |c| c.get(0, args.key.as_bytes()).await).await {
                Ok((Status::Ok, value)) => {
                    println!("{}", String::from_utf8_lossy(&value));
                    return Ok(0);
                }
                Ok((status, _)) => why.push(format!("{addr}: {status:?}")),
                Err(e) => why.push(e),
            }
        }
        Err(format!("no replica answered the get ({})", why.join("; ")))
    })
}

/// One sample of a metrics page: its name, labels and value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text page (comments skipped; a line that does not parse is
/// an error naming it).
pub fn parse_page(text: &str) -> Result<Vec<Sample>, String> {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = || format!("a metrics line that does not parse: {line:?}");
    let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
    let value = value.parse::<f64>().map_err(|_| bad())?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').ok_or_else(bad)?).ok_or_else(bad)?),
        None => (series, BTreeMap::new()),
    };
    Ok(Sample { name: name.to_string(), labels, value })
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in the values.
fn parse_labels(mut rest: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    c => c,
                }),
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// `GET /metrics` from `addr`: the page's body.
pub async fn scrape(addr: SocketAddr) -> Result<String, String> {
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut page = Vec::new();
        (&mut conn).take(MAX_PAGE as u64 + 1).read_to_end(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    };
    let page = match tokio::time::timeout(CALL_TIMEOUT, fetch).await {
        Ok(page) => page.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("no answer within {CALL_TIMEOUT:?}")),
    };
    if page.len() > MAX_PAGE {
        return Err(format!("a page over {MAX_PAGE} bytes"));
    }
    let page = String::from_utf8(page).map_err(|_| "a page that is not UTF-8".to_string())?;
    let (head, body) = page.split_once("\r\n\r\n").ok_or("not an HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_string())
}

/// What `status` shows of one replica of one ring.
#[derive(Debug, Default)]
pub struct Row {
    pub member: String,
    pub endpoint: String,
    pub role: &'static str,
    pub decree: u64,
    pub peers: Vec<(String, bool)>,
    pub primary_hint: String,
}

/// The rows of every ring the pages show, by ring label.
pub fn rows(pages: &[(String, Vec<Sample>)]) -> BTreeMap<String, Vec<Row>> {
    let mut rings: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    for (endpoint, samples) in pages {
        for s in samples {
            let (Some(ring), Some(member)) = (s.labels.get("ring"), s.labels.get("member")) else { continue };
            let row = rings.entry(ring.clone()).or_default().entry(member.clone()).or_insert_with(|| Row {
                member: member.clone(),
                endpoint: endpoint.clone(),
                role: "other",
                ..Row::default()
            });
            match s.name.as_str() {
                "rsl_decree_executed" => row.decree = s.value as u64,
                "rsl_primary" if s.value == 1.0 => row.role = "primary",
                "rsl_secondary" if s.value == 1.0 && row.role == "other" => row.role = "secondary",
                "rsl_stopped" if s.value == 1.0 && row.role != "failed" => row.role = "stopped",
                "rsl_failed" if s.value == 1.0 => row.role = "failed",
                "rsl_primary_member" => row.primary_hint = s.labels.get("primary").cloned().unwrap_or_default(),
                "rsl_peer_connected" => row.peers.push((s.labels.get("peer").cloned().unwrap_or_default(), s.value == 1.0)),
                _ => {}
            }
        }
    }
    rings.into_iter().map(|(ring, members)| (ring, members.into_values().collect())).collect()
}

/// The report `status` prints.
pub fn report(rings: &BTreeMap<String, Vec<Row>>, unreachable: &[(String, String)]) -> String {
    let mut out = String::new();
    for (ring, rows) in rings {
        let newest = rows.iter().map(|r| r.decree).max().unwrap_or(0);
        let primary = rows.iter().find(|r| r.role == "primary").map(|r| r.member.clone());
        let hint = rows.iter().map(|r| r.primary_hint.as_str()).find(|h| !h.is_empty());
        let primary = primary.or(hint.map(|h| format!("{h} (as the others see it)"))).unwrap_or_else(|| "none".into());
        out += &format!("ring {ring}: primary {primary}, newest decree {newest}\n");
        out += &format!("  {:<10} {:<22} {:<10} {:>10} {:>8}  connections\n", "member", "metrics", "role", "decree", "lag");
        for r in rows {
            let up = r.peers.iter().filter(|p| p.1).count();
            let down: Vec<&str> = r.peers.iter().filter(|p| !p.1).map(|p| p.0.as_str()).collect();
            let down = if down.is_empty() { String::new() } else { format!(" (down: {})", down.join(", ")) };
            out += &format!(
                "  {:<10} {:<22} {:<10} {:>10} {:>8}  {up}/{} peers up{down}\n",
                r.member,
                r.endpoint,
                r.role,
                r.decree,
                newest - r.decree,
                r.peers.len()
            );
        }
    }
    for (endpoint, why) in unreachable {
        out += &format!("unreachable: {endpoint}: {why}\n");
    }
    out
}

/// `rsl-kv status`: exit 0 if every endpoint answered, 2 if some did not (the report shows
/// the others).
pub fn status(args: StatusArgs) -> Result<u8, String> {
    let addrs = args.servers.iter().map(|s| resolve(s)).collect::<Result<Vec<_>, _>>()?;
    let results = runtime()?.block_on(async {
        let scrapes: Vec<_> = addrs.iter().map(|a| tokio::spawn(scrape(*a))).collect();
        let mut results = Vec::new();
        for s in scrapes {
            results.push(s.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        results
    });
    let (mut pages, mut unreachable) = (Vec::new(), Vec::new());
    for (addr, result) in addrs.iter().zip(results) {
        match result.and_then(|page| parse_page(&page)) {
            Ok(samples) => pages.push((addr.to_string(), samples)),
            Err(why) => unreachable.push((addr.to_string(), why)),
        }
    }
    print!("{}", report(&rows(&pages), &unreachable));
    Ok(if unreachable.is_empty() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_parses_with_escaped_labels() {
        let page = "# HELP x y\n# TYPE x gauge\nrsl_primary{ring=\"a\\\"b\",member=\"1\"} 1\nup 0.5\n";
        let samples = parse_page(page).unwrap();
        assert_eq!(samples[0].labels["ring"], "a\"b");
        assert_eq!(samples[0].labels["member"], "1");
        assert_eq!((samples[1].name.as_str(), samples[1].value), ("up", 0.5));
        assert!(parse_page("rsl_primary{ring=\"a} 1").is_err());
    }

    #[test]
    fn the_report_shows_each_replicas_lag_and_connections() {
        let page = |member: &str, primary: f64, decree: u64, peer_up: f64| {
            let l = format!("ring=\"r\",member=\"{member}\"");
            format!("rsl_primary{{{l}}} {primary}\nrsl_decree_executed{{{l}}} {decree}\nrsl_peer_connected{{{l},peer=\"x\"}} {peer_up}\n")
        };
        let pages = vec![
            ("a:1".to_string(), parse_page(&page("1", 1.0, 10, 1.0)).unwrap()),
            ("b:1".to_string(), parse_page(&page("2", 0.0, 7, 0.0)).unwrap()),
        ];
        let text = report(&rows(&pages), &[("c:1".into(), "connection refused".into())]);
        assert!(text.starts_with("ring r: primary 1, newest decree 10\n"), "{text}");
        let lag = |member: &str| {
            text.lines().find(|l| l.trim_start().starts_with(member)).unwrap().split_whitespace().nth(4).unwrap().to_string()
        };
        assert_eq!((lag("1 "), lag("2 ")), ("0".to_string(), "3".to_string()), "{text}");
        assert!(text.contains("0/1 peers up (down: x)") && text.contains("unreachable: c:1: connection refused"), "{text}");
    }
}
