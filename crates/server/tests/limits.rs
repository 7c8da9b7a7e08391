//! What one client may hold of a server: slow heads and bodies are cut
//! off, a request past its deadline is answered, and connections beyond the
//! limit wait. Each test talks raw HTTP over TCP where a well-behaved
//! client library would not misbehave on purpose.

mod common;

use common::{SlowEngine, spawn};

use std::time::{Duration, Instant};

use morphogen_dpf::generate;
use morphogen_protocol::{CONTENT_TYPE, Epoch, ErrorBody, Request};
use morphogen_server::{Config, DEFAULT_TABLE, Limits, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..500).map(|i| (format!("key-{i}").into_bytes(), format!("value-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 2, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// A server whose passes take `pass_ms`, with `limits`; its address
/// (host:port) and the sender that stops it.
async fn start(table: &Table, pass_ms: u64, limits: Limits) -> (String, oneshot::Sender<()>) {
    let config = Config { limits, ..Config::default() };
    let engine = Box::new(SlowEngine::new(table, pass_ms));
    let server = Server::new(vec![ServedTable::new(DEFAULT_TABLE, TableInfo::of(table), engine)], config);
    let (url, stop) = spawn(server.unwrap()).await;
    (url.trim_start_matches("http://").to_string(), stop)
}

/// A valid query body for `table`.
fn query_body(table: &Table) -> Vec<u8> {
    let pages = table.layout().pages_per_table();
    let mut rng = StdRng::seed_from_u64(9);
    let keys = (0..2).map(|_| generate(pages, 0, &mut rng).unwrap().0).collect();
    Request { epoch: Epoch::Latest, queries: vec![keys] }.encode().unwrap()
}

fn head(address: &str, content_length: usize) -> String {
    format!(
        "POST /v1/query HTTP/1.1\r\nhost: {address}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

/// Reads until the server closes the connection or `within` passes;
/// returns what was read and whether the server closed it.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// The JSON error at the end of a raw HTTP answer.
fn error_of(answer: &str) -> ErrorBody {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_else(|| panic!("no body in {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_stalls_is_cut_off_at_the_header_timeout() {
    let table = table();
    let limits = Limits { header_timeout: Duration::from_millis(300), ..Limits::default() };
    let (address, _stop) = start(&table, 0, limits).await;

    // Half a request line, then nothing.
    let mut stalled = TcpStream::connect(&address).await.unwrap();
    stalled.write_all(b"POST /v1/qu").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(closed, "a stalled head held its connection for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout");

    // An idle connection is closed after as long: no request at all.
    let mut idle = TcpStream::connect(&address).await.unwrap();
    let (received, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed && received.is_empty(), "an idle connection stayed open: {received:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_body_timeout() {
    let table = table();
    let limits = Limits { body_timeout: Duration::from_millis(300), ..Limits::default() };
    let (address, _stop) = start(&table, 0, limits).await;
    let body = query_body(&table);

    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(head(&address, body.len()).as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "a stalled body held its connection for 5 s: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(error_of(&answer).code, "body_timeout");

    // The same body sent whole is answered.
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(head(&address, body.len()).as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut answer = vec![0u8; 12];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_answered_by_its_deadline_gets_503_deadline_exceeded() {
    let table = table();
    let limits = Limits { request_timeout: Duration::from_millis(200), ..Limits::default() };
    // Every pass takes 600 ms: no query can make its deadline.
    let (address, _stop) = start(&table, 600, limits).await;
    let url = format!("http://{address}");
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/query"))
        .header("content-type", CONTENT_TYPE)
        .body(query_body(&table))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let error: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error.code, "deadline_exceeded");
    assert!(elapsed < Duration::from_millis(550), "answered after {elapsed:?}, not at the deadline");

    // Quick routes are unaffected, and the refusal is counted.
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("morphogen_deadline_exceeded_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let table = table();
    let limits = Limits { max_connections: 2, ..Limits::default() };
    let (address, _stop) = start(&table, 0, limits).await;
    let health = format!("GET /v1/health HTTP/1.1\r\nhost: {address}\r\n\r\n");

    let mut first = TcpStream::connect(&address).await.unwrap();
    let mut second = TcpStream::connect(&address).await.unwrap();
    for held in [&mut first, &mut second] {
        held.write_all(health.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        held.read_exact(&mut status).await.unwrap();
        assert_eq!(&status, b"HTTP/1.1 200");
    }
    // The third connects (the kernel's backlog) but is not served...
    let mut third = TcpStream::connect(&address).await.unwrap();
    third.write_all(health.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut status)).await;
    assert!(waited.is_err(), "a third connection was served past a limit of two");
    // ...until one of the first two closes.
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut status)).await.unwrap().unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
}

#[test]
fn limits_that_would_answer_nothing_are_refused() {
    let table = table();
    let cases = [
        Limits { max_connections: 0, ..Limits::default() },
        Limits { header_timeout: Duration::ZERO, ..Limits::default() },
        Limits { request_timeout: Duration::ZERO, ..Limits::default() },
        Limits { max_header_bytes: 100, ..Limits::default() },
    ];
    for limits in cases {
        let config = Config { limits: limits.clone(), ..Config::default() };
        let engine = Box::new(SlowEngine::new(&table, 0));
        let served = ServedTable::new(DEFAULT_TABLE, TableInfo::of(&table), engine);
        assert!(Server::new(vec![served], config).is_err(), "{limits:?}");
    }
}

/// A connection to `address` from the loopback address `source`
/// (127.0.0.2 and so on: another client, as far as the server can tell).
async fn connect_from(source: [u8; 4], address: &str) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(address.parse().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection() {
    let table = table();
    let limits = Limits { max_connections: 256, max_connections_per_client: 16, ..Limits::default() };
    let (address, _stop) = start(&table, 0, limits).await;
    let url = format!("http://{address}");
    let pipelined = format!("GET /v1/health HTTP/1.1\r\nhost: {address}\r\n\r\n").repeat(20);

    // 1,000 connections of one client, each pipelining requests and never
    // reading an answer.
    let mut hogs = Vec::new();
    for _ in 0..1_000 {
        if let Ok(mut stream) = connect_from([127, 0, 0, 2], &address).await {
            let _ = stream.write_all(pipelined.as_bytes()).await;
            hogs.push(stream);
        }
    }
    assert!(hogs.len() >= 900, "only {} connections were made", hogs.len());

    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/query"))
        .header("content-type", CONTENT_TYPE)
        .body(query_body(&table))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("another client is served");
    assert_eq!(response.status().as_u16(), 200);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "a lookup took {elapsed:?} beside the hogs");
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("morphogen_connections_refused_total{reason=\"per_client_limit\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_connection_at_the_write_timeout() {
    let table = table();
    let limits = Limits {
        write_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let (address, _stop) = start(&table, 0, limits).await;
    // Requests pipelined without end and no answer read: once the sockets'
    // buffers are full the server's writes stall, and it stops reading
    // requests, so ours stall too. Only the server closing the connection
    // makes a write fail; without a write timeout they would stall for good.
    let pipelined = format!("GET /metrics HTTP/1.1\r\nhost: {address}\r\n\r\n").repeat(100);
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let writing = async {
        loop {
            if stream.write_all(pipelined.as_bytes()).await.is_err() {
                return;
            }
        }
    };
    let cut_off = tokio::time::timeout(Duration::from_secs(30), writing).await;
    assert!(cut_off.is_ok(), "the server kept a client that did not read for 30 s");
}
