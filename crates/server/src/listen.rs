//! Accepting connections: the connection limit, TLS, and the time limits of
//! the HTTP layer, in front of the routes.
//!
//! One accept loop per listener. It takes a connection slot before it
//! accepts, so that past the limit new connections wait in the kernel's
//! backlog instead of costing the server memory; a connection from a
//! client address that already holds its share of the slots is closed at
//! once, so that one client cannot hold them all. Each connection then
//! gets its own task: the TLS handshake (bounded by the header timeout),
//! then HTTP/1.1, whose request heads must arrive within the header timeout
//! (an idle keep-alive connection is closed after it too) and whose writes
//! may not stall longer than the write timeout (a client that pipelines
//! requests and never reads the answers is cut off). Body and request
//! deadlines are enforced by the routes' layers (see [`Limits`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::Limits;

/// How long a graceful shutdown waits for requests in flight before it
/// closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stopped` changes, then stops
/// accepting and waits (up to [`SHUTDOWN_GRACE`]) for open connections to
/// finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: &Limits,
    metrics: crate::metrics::Metrics,
    mut stopped: watch::Receiver<()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(ClientCounts::new(limits.max_connections_per_client));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Room for the largest head the routes accept (they answer a larger
        // one with a JSON 431 themselves) and the start of a body.
        .max_buf_size((4 * limits.max_header_bytes).max(MIN_HYPER_BUFFER));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stopped.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: neither stops the server. Pause a moment so
                // that a persistent error does not spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(client_slot) = clients.take(peer.ip()) else {
            // Dropped unanswered: the client holds its share already.
            metrics.connection_refused("per_client_limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = Box::pin(stream);
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_timeout;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _client_slot = client_slot;
            let _open = metrics.connection_opened();
            let result = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await
                        }
                        Ok(Err(error)) => {
                            metrics.tls_handshake_failed();
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.tls_handshake_failed();
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = result {
                // Timeouts, resets and malformed heads (answered 400/431 by
                // hyper) end up here; they are the client's doing.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

/// Open connections by client: an IPv4 address, or the /64 of an IPv6 one
/// (what one host is usually given).
struct ClientCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

impl ClientCounts {
    fn new(max: usize) -> ClientCounts {
        ClientCounts { open: Mutex::new(HashMap::new()), max }
    }

    /// A slot for one more connection of `address`'s client, if it has
    /// fewer than its share open.
    fn take(self: &Arc<Self>, address: IpAddr) -> Option<ClientSlot> {
        let client = match address {
            IpAddr::V4(_) => address,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        };
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot { counts: self.clone(), client })
    }
}

/// One open connection of a client, given back when dropped.
struct ClientSlot {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The smallest read buffer hyper accepts.
const MIN_HYPER_BUFFER: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_share_of_connections_by_address_or_ipv6_prefix() {
        let counts = Arc::new(ClientCounts::new(2));
        let address = |text: &str| text.parse::<IpAddr>().unwrap();
        let first = counts.take(address("192.0.2.1")).unwrap();
        let _second = counts.take(address("192.0.2.1")).unwrap();
        assert!(counts.take(address("192.0.2.1")).is_none(), "a third of one address");
        assert!(counts.take(address("::ffff:192.0.2.1")).is_none(), "the same address, mapped to IPv6");
        let _other = counts.take(address("192.0.2.2")).expect("another address has its own share");
        drop(first);
        let _again = counts.take(address("192.0.2.1")).expect("a closed connection gives its slot back");

        // One IPv6 host is usually given a /64: its addresses share one count.
        let _a = counts.take(address("2001:db8:1:2::1")).unwrap();
        let _b = counts.take(address("2001:db8:1:2:ffff::9")).unwrap();
        assert!(counts.take(address("2001:db8:1:2::77")).is_none());
        let _c = counts.take(address("2001:db8:1:3::1")).expect("another /64");
    }
}
