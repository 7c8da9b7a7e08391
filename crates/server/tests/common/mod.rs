//! What the server's integration tests share.

use morphogen_server::Server;
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

/// `value` as the tests' tables store it: zero-padded to 16 bytes.
pub fn padded(value: &str) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.resize(16, 0);
    bytes
}
