//! Servers that misbehave on purpose, on loopback: the client holds no more
//! of a reply than it can be, and follows no redirect.

use std::time::{Duration, Instant};

use morphogen_client::{Client, Error, Settings};
use morphogen_protocol::{Meta, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a fake server answers to every request for a path.
#[derive(Clone)]
enum Reply {
    /// 200 with this JSON.
    Json(String),
    /// 200 with `bytes` of junk, announced by Content-Length or chunked.
    Endless { bytes: u64, announced: bool },
    /// 302 to this location.
    Redirect(String),
}

/// Serves `route` (a function of the request path) on a loopback port; its URL.
async fn fake_server(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let route = std::sync::Arc::new(route);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let route = route.clone();
            tokio::spawn(async move { answer(stream, route.as_ref()).await });
        }
    });
    url
}

async fn answer(mut stream: TcpStream, route: &(dyn Fn(&str) -> Reply + Send + Sync)) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    match route(&path) {
        Reply::Json(body) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
        }
        Reply::Redirect(location) => {
            let reply = format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
        }
        Reply::Endless { bytes, announced } => {
            let framing = if announced {
                format!("content-length: {bytes}")
            } else {
                "transfer-encoding: chunked".into()
            };
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 1 << 20];
            let mut sent = 0;
            while sent < bytes {
                let written = if announced {
                    stream.write_all(&chunk).await
                } else {
                    let size = format!("{:x}\r\n", chunk.len());
                    let mut framed = size.into_bytes();
                    framed.extend_from_slice(&chunk);
                    framed.extend_from_slice(b"\r\n");
                    stream.write_all(&framed).await
                };
                if written.is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
        }
    }
}

/// Metadata of a small, valid table, as a server of instance `instance` publishes it.
fn meta_json(instance: &str) -> String {
    let meta = Meta {
        protocol_version: PROTOCOL_VERSION,
        digest: "00".repeat(32),
        epoch: 0,
        snapshot_digest: "00".repeat(32),
        oldest_epoch: 0,
        epoch_window: 0,
        page_size: 512,
        row_size: 24,
        value_size: 16,
        sub_tables: vec![8, 8],
        hash_seed: "00".repeat(16),
        records: 0,
        free_rows: 0,
        engine: "fake".to_string(),
        max_batch: 8,
        instance: instance.to_string(),
        label: None,
    };
    serde_json::to_string(&meta).unwrap()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

fn settings() -> Settings {
    Settings { timeout: Duration::from_secs(20), ..Settings::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_larger_than_any_can_be_is_refused_without_being_held() {
    let honest = fake_server(|_| Reply::Json(meta_json("aa"))).await;
    for announced in [true, false] {
        let huge = fake_server(move |_| Reply::Endless { bytes: 3_000 << 20, announced }).await;
        let before = resident_bytes();
        let started = Instant::now();
        let error = Client::with_settings(&honest, &huge, &settings()).await.unwrap_err();
        let grown = resident_bytes().saturating_sub(before);
        assert!(matches!(&error, Error::Protocol { message, .. } if message.contains("at most")), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10), "refused after {:?}", started.elapsed());
        assert!(grown < 16 << 20, "resident memory grew by {} MiB", grown >> 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_longer_than_the_request_allows_is_refused() {
    let route = |instance: &'static str| {
        move |path: &str| {
            if path.ends_with("/meta") {
                Reply::Json(meta_json(instance))
            } else {
                Reply::Endless { bytes: 1 << 30, announced: false }
            }
        }
    };
    let (a, b) = (fake_server(route("aa")).await, fake_server(route("bb")).await);
    let client = Client::with_settings(&a, &b, &settings()).await.unwrap();
    let started = Instant::now();
    let error = client.get(b"some key").await.unwrap_err();
    // One query of two 512-byte pages and the header: 1,040 bytes at most.
    assert!(matches!(&error, Error::Protocol { message, .. } if message.contains("at most 1040")), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    let honest = fake_server(|_| Reply::Json(meta_json("aa"))).await;
    let target = fake_server(|_| Reply::Json(meta_json("bb"))).await;
    let redirecting = fake_server(move |path| Reply::Redirect(format!("{target}{path}"))).await;
    let error = Client::with_settings(&honest, &redirecting, &settings()).await.unwrap_err();
    assert!(matches!(&error, Error::Protocol { message, .. } if message.contains("redirect")), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_urls_of_one_server_are_refused() {
    let one = fake_server(|_| Reply::Json(meta_json("5eed"))).await;
    let other_name = one.replace("127.0.0.1", "localhost");
    for (a, b) in [(one.clone(), format!("{one}/")), (one.clone(), other_name)] {
        let error = Client::with_settings(&a, &b, &settings()).await.unwrap_err();
        assert!(matches!(&error, Error::SameServer { instance } if instance == "5eed"), "{a} {b}: {error}");
    }
}
