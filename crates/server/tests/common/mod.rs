//! What the server's integration tests share. Each test binary uses a
//! part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use morphogen_scan::{Answers, CpuEngine, Profile, Query, Scan, WritePages};
use morphogen_server::Server;
use morphogen_table::Table;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves `server` on a loopback port of the system's choice; returns its
/// base URL and a sender that stops it when dropped.
pub async fn spawn(server: Server) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, None, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// The CPU engine, made slow: every pass takes at least `pass_time`, so that
/// concurrent requests queue up behind it as they would behind a large table.
pub struct SlowEngine {
    inner: CpuEngine,
    pass_time: Duration,
    write_time: Duration,
    /// Passes begun and ended so far.
    passes: Arc<Passes>,
}

/// Passes of an engine begun and ended, for a test to watch.
#[derive(Default)]
pub struct Passes {
    pub begun: std::sync::atomic::AtomicUsize,
    pub ended: std::sync::atomic::AtomicUsize,
}

impl Passes {
    /// Waits until `count` passes have ended, or at least begun.
    pub async fn wait(&self, count: usize, ended: bool) {
        let counter = if ended { &self.ended } else { &self.begun };
        while counter.load(std::sync::atomic::Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl SlowEngine {
    pub fn new(table: &Table, pass_ms: u64) -> SlowEngine {
        SlowEngine::with_writes(table, pass_ms, 0)
    }

    /// Page writes (updates) take at least `write_ms` too.
    pub fn with_writes(table: &Table, pass_ms: u64, write_ms: u64) -> SlowEngine {
        SlowEngine {
            inner: CpuEngine::new(table.clone()),
            pass_time: Duration::from_millis(pass_ms),
            write_time: Duration::from_millis(write_ms),
            passes: Arc::default(),
        }
    }

    /// The counts of its passes, which a test may watch.
    pub fn passes(&self) -> Arc<Passes> {
        self.passes.clone()
    }
}

impl Scan for SlowEngine {
    fn kind(&self) -> morphogen_scan::EngineKind {
        self.inner.kind()
    }
    fn name(&self) -> &'static str {
        "slow"
    }
    fn device(&self) -> String {
        "test".to_string()
    }
    fn layout(&self) -> &morphogen_table::Layout {
        self.inner.layout()
    }
    fn pass(&mut self, queries: &[Query]) -> Result<Answers, morphogen_scan::Error> {
        self.passes.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.pass_time);
        let answers = self.inner.pass(queries);
        self.passes.ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answers
    }
}

impl WritePages for SlowEngine {
    fn table(&self) -> Option<&Table> {
        self.inner.table()
    }
    fn write_pages(&mut self, writes: &[morphogen_table::PageWrite]) -> Result<(), morphogen_scan::Error> {
        std::thread::sleep(self.write_time);
        self.inner.write_pages(writes)
    }
}

impl Profile for SlowEngine {
    fn plain_read_seconds(&mut self) -> Result<f64, morphogen_scan::Error> {
        self.inner.plain_read_seconds()
    }
}

/// The admin routes of the server at `url`, with `token` and a 30 s limit.
pub fn admin(url: &str, token: &str) -> morphogen_client::Admin {
    let settings = morphogen_client::Settings { timeout: Duration::from_secs(30), ..Default::default() };
    morphogen_client::Admin::new(url, token, &settings).unwrap()
}

/// `value` as the tests' tables store it: zero-padded to 16 bytes.
pub fn padded(value: &str) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.resize(16, 0);
    bytes
}

/// Posts `body` to `{url}/v1/query` as `content_type`; returns the status
/// and the body.
pub async fn post_query(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/query"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
}

/// Posts the JSON `body` to the admin route `route` of `url`, with `token`
/// as bearer token if given; returns the status and the error body (empty
/// when the answer is no error).
pub async fn post_admin(
    url: &str,
    route: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, morphogen_protocol::ErrorBody) {
    let mut request = reqwest::Client::new().post(format!("{url}{route}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or_default())
}

/// How a [`FaultyEngine`] behaves on its next passes and page writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers as the CPU engine does.
    None,
    /// Every pass returns an error.
    Fail,
    /// Every pass panics.
    PanicInPass,
    /// Page writes (updates) panic, outside any pass.
    PanicInWrite,
}

/// The CPU engine with a switch that makes it fail or panic.
pub struct FaultyEngine {
    inner: CpuEngine,
    fault: Arc<std::sync::Mutex<Fault>>,
}

impl FaultyEngine {
    /// The engine over `table`, and the switch of its fault.
    pub fn new(table: &Table) -> (FaultyEngine, Arc<std::sync::Mutex<Fault>>) {
        let fault = Arc::new(std::sync::Mutex::new(Fault::None));
        (FaultyEngine { inner: CpuEngine::new(table.clone()), fault: fault.clone() }, fault)
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

impl Scan for FaultyEngine {
    fn kind(&self) -> morphogen_scan::EngineKind {
        self.inner.kind()
    }
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn device(&self) -> String {
        "test".to_string()
    }
    fn layout(&self) -> &morphogen_table::Layout {
        self.inner.layout()
    }
    fn pass(&mut self, queries: &[Query]) -> Result<Answers, morphogen_scan::Error> {
        match self.fault() {
            Fault::Fail => Err(morphogen_scan::Error::Fault("a test fault".to_string())),
            Fault::PanicInPass => panic!("a test panic in a pass"),
            Fault::None | Fault::PanicInWrite => self.inner.pass(queries),
        }
    }
}

impl WritePages for FaultyEngine {
    fn table(&self) -> Option<&Table> {
        self.inner.table()
    }
    fn write_pages(&mut self, writes: &[morphogen_table::PageWrite]) -> Result<(), morphogen_scan::Error> {
        if self.fault() == Fault::PanicInWrite {
            panic!("a test panic in a page write");
        }
        self.inner.write_pages(writes)
    }
}

impl Profile for FaultyEngine {
    fn plain_read_seconds(&mut self) -> Result<f64, morphogen_scan::Error> {
        self.inner.plain_read_seconds()
    }
}

/// Sends a request head announcing a body of `length` bytes, then streams
/// that much junk while reading; returns the status line the server sent
/// (empty if none) once it answers or closes.
pub async fn post_huge(address: &str, route: &str, headers: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {route} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'['; 1 << 20];
        let mut sent = 0;
        while sent < length {
            let n = chunk.len().min(length - sent);
            if writer.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await.expect("the server answered or closed within 30 s");
    sender.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or("").to_string()
}
