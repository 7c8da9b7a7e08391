//! The morphogen client: looks keys up in a table held by two servers
//! without either server learning which keys they were.
//!
//! For each key it finds the key's candidate page in every sub-table, makes
//! a DPF key pair per page, sends one key of each pair to each server, and
//! XORs the two answers back into the pages, where it finds the key's row.
//! Both servers must serve the same snapshot (digest and parameters). Their
//! tables change by epochs: the client asks both for the newest epoch both
//! have reached, re-reading their metadata at most every second and
//! whenever a server says the epoch asked for is not available, so it never
//! combines answers from different epochs. When the servers swap to a new
//! snapshot (a server says `snapshot_changed`), the client re-reads their
//! metadata, waits while only one of them has swapped, and asks again with
//! keys for the new snapshot's parameters.

mod admin;
mod http;

use std::time::{Duration, Instant};

pub use admin::Admin;
use http::http_client;
pub use http::{DEFAULT_TIMEOUT, Settings, Trust};

use morphogen_dpf::{Key, generate};
use morphogen_protocol::{
    CONTENT_TYPE, Catalog, Epoch, ErrorBody, HEADER_LEN, Meta, PROTOCOL_VERSION, Request, Response,
    is_table_name,
};
use morphogen_table::{KeyDigest, Layout, MAX_KEY_LEN};
use rand::RngExt;
use reqwest::Url;
use reqwest::header::RETRY_AFTER;

/// First wait before sending a request again that a server refused as
/// overloaded; it doubles on every refusal.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two tries, whatever the server's Retry-After says:
/// a pass takes milliseconds, Retry-After counts whole seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long the servers' metadata (and so the epoch asked for) is used
/// before it is read again.
const META_REFRESH: Duration = Duration::from_secs(1);

/// Largest JSON body a server may answer (metadata, the list of tables,
/// admin replies): far beyond any real one, far below a client's memory.
pub(crate) const MAX_JSON_BODY: usize = 1 << 20;
/// Largest error body read; a longer one is cut off there.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest metrics page read.
const MAX_METRICS_BODY: usize = 16 << 20;

/// Times a lookup re-reads the metadata after a server said the epoch
/// asked for is not available or the snapshot changed, before it gives up.
const EPOCH_RETRIES: u32 = 3;

/// A client of two servers holding the same table.
pub struct Client {
    servers: [Connection; 2],
    view: std::sync::Mutex<View>,
}

/// What the client knows of the two servers now.
#[derive(Clone)]
struct View {
    /// Their common metadata: `max_batch` the smaller, `epoch` the older.
    meta: Meta,
    layout: Layout,
    read_at: Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &[&self.servers[0].url, &self.servers[1].url])
            .field("meta", &self.meta())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to two servers (base URLs such as `http://127.0.0.1:8080`)
    /// with the default [`Settings`], reads both servers' metadata and
    /// checks that they serve the same table.
    pub async fn new(url_a: &str, url_b: &str) -> Result<Client, Error> {
        Client::with_settings(url_a, url_b, &Settings::default()).await
    }

    /// Like [`Client::new`], with a time limit for every lookup (retries
    /// of requests a server refused as overloaded included) and the
    /// certificates `https` servers must present.
    pub async fn with_settings(url_a: &str, url_b: &str, settings: &Settings) -> Result<Client, Error> {
        Client::open(url_a, url_b, None, settings).await
    }

    /// Like [`Client::with_settings`], for the table `table` of servers
    /// that serve several (`GET /v1/tables` lists them).
    pub async fn for_table(
        url_a: &str,
        url_b: &str,
        table: &str,
        settings: &Settings,
    ) -> Result<Client, Error> {
        Client::open(url_a, url_b, Some(table), settings).await
    }

    async fn open(
        url_a: &str,
        url_b: &str,
        table: Option<&str>,
        settings: &Settings,
    ) -> Result<Client, Error> {
        let (url_a, url_b) = (parse_url(url_a)?, parse_url(url_b)?);
        for url in [&url_a, &url_b] {
            warn_if_plain(url, "key shares");
        }
        let http = http_client(settings, &[&url_a, &url_b])?;
        let timeout = settings.timeout;
        let (a, b) = tokio::try_join!(
            Connection::open(http.clone(), url_a, table, timeout),
            Connection::open(http, url_b, table, timeout)
        )?;
        check_two_servers(&a, &b.meta)?;
        let view = View::of(&a.meta, &b.meta, a.layout.clone())?;
        Ok(Client { servers: [a, b], view: std::sync::Mutex::new(view) })
    }

    /// The servers' common metadata as last read: `max_batch` is the
    /// smaller of the two, `epoch` the older.
    pub fn meta(&self) -> Meta {
        self.lock_view().meta.clone()
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view to look up with: the last one, or the servers' metadata
    /// read again if it is older than [`META_REFRESH`] or `fresh` is asked.
    async fn view(&self, fresh: bool, deadline: Instant) -> Result<View, Error> {
        let view = self.lock_view().clone();
        if !fresh && view.read_at.elapsed() < META_REFRESH {
            return Ok(view);
        }
        let mut wait = FIRST_BACKOFF;
        let (a, b) = loop {
            let (a, b) =
                tokio::try_join!(self.servers[0].fetch_meta(deadline), self.servers[1].fetch_meta(deadline))?;
            // A swap reaches the two servers a moment apart: while only one
            // has swapped, wait for the other (View::of refuses the pair
            // once the deadline is near).
            if a.snapshot_digest == b.snapshot_digest || Instant::now() + wait >= deadline {
                break (a, b);
            }
            let jittered = wait.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::time::sleep(jittered).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        };
        check_two_servers(&self.servers[0], &b)?;
        let layout = if a.snapshot_digest == view.meta.snapshot_digest {
            view.layout
        } else {
            layout_of(&a)
                .map_err(|message| Error::Protocol { server: self.servers[0].url.to_string(), message })?
        };
        let view = View::of(&a, &b, layout)?;
        *self.lock_view() = view.clone();
        Ok(view)
    }

    /// Looks one key up: its value (`value_size` bytes, zero-padded) or `None`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_many(&[key]).await?.pop().flatten())
    }

    /// Looks keys up, in one request per server for every `max_batch` keys;
    /// results are in the order of `keys`.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(self.meta().max_batch.max(1)) {
            values.extend(self.lookup_batch(batch).await?);
        }
        Ok(values)
    }

    async fn lookup_batch<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let deadline = Instant::now() + self.servers[0].timeout;
        let mut retries = 0;
        let mut fresh = false;
        loop {
            let view = self.view(fresh, deadline).await?;
            match self.lookup_at(&view, keys, deadline).await {
                // The epoch fell out of a window, a server restarted behind
                // it, or a server swapped to another snapshot: read where
                // both servers are, and ask again.
                Err(Error::Server { status: 410, ref code, .. })
                    if (code == "epoch_unavailable" || code == "snapshot_changed")
                        && retries < EPOCH_RETRIES =>
                {
                    retries += 1;
                    fresh = true;
                }
                result => return result,
            }
        }
    }

    /// Looks `keys` up as of the view's epoch.
    async fn lookup_at<K: AsRef<[u8]>>(
        &self,
        view: &View,
        keys: &[K],
        deadline: Instant,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let layout = &view.layout;
        let mut digests = Vec::with_capacity(keys.len());
        let (mut queries_a, mut queries_b) = (Vec::new(), Vec::new());
        for (index, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(Error::KeyLength { index, len: key.len() });
            }
            let digest = KeyDigest::of(key);
            let (keys_a, keys_b) = key_shares(layout, &digest)?;
            queries_a.push(keys_a);
            queries_b.push(keys_b);
            digests.push(digest);
        }
        let epoch = Epoch::Exact(view.meta.epoch);
        let (body_a, body_b) = (encode_request(epoch, queries_a)?, encode_request(epoch, queries_b)?);
        let (answer_a, answer_b) = tokio::try_join!(
            self.servers[0].query(&body_a, keys.len(), layout, deadline),
            self.servers[1].query(&body_b, keys.len(), layout, deadline)
        )?;
        if answer_a.epoch != view.meta.epoch || answer_b.epoch != view.meta.epoch {
            return Err(Error::Mismatch("epoch of the answers"));
        }

        let page_size = layout.page_size() as usize;
        let mut page = vec![0u8; page_size];
        let mut values = Vec::with_capacity(keys.len());
        for (q, digest) in digests.iter().enumerate() {
            let (a, b) = (answer_a.answer(q), answer_b.answer(q));
            let mut value = None;
            for sub_table in 0..usize::from(layout.choices()) {
                let range = sub_table * page_size..(sub_table + 1) * page_size;
                for ((p, x), y) in page.iter_mut().zip(&a[range.clone()]).zip(&b[range]) {
                    *p = x ^ y;
                }
                if let Some(found) = layout.find(&page, digest).expect("pages have the page size") {
                    value = Some(found.to_vec());
                    break;
                }
            }
            values.push(value);
        }
        Ok(values)
    }
}

/// The two servers' DPF keys for `digest`'s candidate pages: one key per
/// sub-table for each server. Either list alone says nothing of the pages.
pub fn key_shares(layout: &Layout, digest: &KeyDigest) -> Result<(Vec<Key>, Vec<Key>), Error> {
    let mut rng = rand::rng();
    let pairs = layout
        .locate(digest)
        .as_slice()
        .iter()
        .map(|&page| generate(layout.pages_per_table(), page, &mut rng))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Setup(e.to_string()))?;
    Ok(pairs.into_iter().unzip())
}

/// The body of a request for `queries` (one key per sub-table each).
pub fn encode_request(epoch: Epoch, queries: Vec<Vec<Key>>) -> Result<Vec<u8>, Error> {
    Request { epoch, queries }.encode().map_err(|e| Error::Setup(e.to_string()))
}

/// One server: where it is, what its metadata says, and how to send it
/// queries. [`Client`] holds two; a load test may use one alone to measure
/// one server's capacity.
#[derive(Debug)]
pub struct Connection {
    http: reqwest::Client,
    url: Url,
    /// The table's routes (`meta`, `query`) are relative to this.
    routes: Url,
    meta: Meta,
    layout: Layout,
    timeout: Duration,
}

impl Connection {
    /// Reads the metadata of the server at `url`; the settings' timeout
    /// bounds every later request, retries included.
    pub async fn connect(url: &str, settings: &Settings) -> Result<Connection, Error> {
        let url = parse_url(url)?;
        Connection::open(http_client(settings, &[&url])?, url, None, settings.timeout).await
    }

    /// Reads the metadata of the table `table` (the server's only table if
    /// `None`) of the server at `url`.
    async fn open(
        http: reqwest::Client,
        url: Url,
        table: Option<&str>,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        let routes = table_routes(&url, "v1/", table)?;
        let deadline = Instant::now() + timeout;
        let meta = fetch_meta(&http, &url, &routes, deadline).await?;
        let layout =
            layout_of(&meta).map_err(|message| Error::Protocol { server: url.to_string(), message })?;
        Ok(Connection { http, url, routes, meta, layout, timeout })
    }

    /// The server's metadata when it was connected to.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Reads the server's metadata now.
    pub async fn fetch_meta(&self, deadline: Instant) -> Result<Meta, Error> {
        fetch_meta(&self.http, &self.url, &self.routes, deadline).await
    }

    /// The layout of the server's table when it was connected to.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The time limit of one request, retries included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends an encoded request of `queries` queries made for `layout` and
    /// checks the shape of the answer. A server at capacity (503 `overloaded`) is asked again
    /// after a growing, jittered wait while `deadline` allows; resending the
    /// same keys to the same server tells it nothing new.
    pub async fn query(
        &self,
        body: &[u8],
        queries: usize,
        layout: &Layout,
        deadline: Instant,
    ) -> Result<Response, Error> {
        let url = self.routes.join("query").expect("a fixed relative path");
        let mut backoff = FIRST_BACKOFF;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unreachable {
                    server: self.url.to_string(),
                    message: "timed out".to_string(),
                });
            }
            let response = self
                .http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_vec())
                .timeout(remaining)
                .send()
                .await
                .map_err(|e| transport_error(&self.url, e))?;
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs);
            let expected = HEADER_LEN + queries * usize::from(layout.choices()) * layout.page_size() as usize;
            match success_body(&self.url, response, expected).await {
                Ok(bytes) => return self.check_answer(&bytes, queries, layout),
                // 503 is transient by definition, from the server or a proxy.
                Err(Error::Server { status: 503, .. }) => {
                    let cap = retry_after.unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF);
                    let wait = backoff.min(cap).mul_f64(rand::rng().random_range(0.5..1.0));
                    if Instant::now() + wait >= deadline {
                        return Err(Error::Server {
                            server: self.url.to_string(),
                            status: 503,
                            code: "overloaded".to_string(),
                            message: "the server stayed at capacity until the deadline".to_string(),
                        });
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn check_answer(&self, bytes: &[u8], queries: usize, layout: &Layout) -> Result<Response, Error> {
        let server = &self.url;
        let answer = Response::decode(bytes)
            .map_err(|e| Error::Protocol { server: server.to_string(), message: e.to_string() })?;
        let expected = (queries, usize::from(layout.choices()), layout.page_size() as usize);
        if (answer.queries, answer.choices, answer.page_size) != expected {
            return Err(Error::Protocol {
                server: server.to_string(),
                message: format!(
                    "answered {} queries of {} pages of {} bytes, expected {} of {} of {}",
                    answer.queries, answer.choices, answer.page_size, expected.0, expected.1, expected.2
                ),
            });
        }
        Ok(answer)
    }
}

fn parse_url(text: &str) -> Result<Url, Error> {
    let with_slash = if text.ends_with('/') { text.to_string() } else { format!("{text}/") };
    let url =
        Url::parse(&with_slash).map_err(|e| Error::Url { url: text.to_string(), message: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Url {
            url: text.to_string(),
            message: "the scheme must be http or https".to_string(),
        });
    }
    Ok(url)
}

/// The routes under `base` (`v1/` or `admin/v1/`) of the table `table` of
/// the server at `url`, or of its only table if `None`.
pub(crate) fn table_routes(url: &Url, base: &str, table: Option<&str>) -> Result<Url, Error> {
    let routes = match table {
        None => url.join(base),
        Some(name) if is_table_name(name) => url.join(&format!("{base}tables/{name}/")),
        Some(name) => {
            return Err(Error::Url { url: url.to_string(), message: format!("{name:?} names no table") });
        }
    };
    Ok(routes.expect("a relative path of URL-safe characters"))
}

/// The Prometheus metrics of the server at `url` (`GET /metrics`, beside
/// `/v1/`), as text: for tools that watch a server, such as the load
/// generator reading its memory.
pub async fn fetch_metrics(url: &str, settings: &Settings) -> Result<String, Error> {
    let server = parse_url(url)?;
    let deadline = Instant::now() + settings.timeout;
    let http = http_client(settings, &[&server])?;
    let bytes = fetch(&http, &server, &server, "metrics", MAX_METRICS_BODY, deadline).await?;
    String::from_utf8(bytes).map_err(|_| Error::Protocol {
        server: server.to_string(),
        message: "metrics that are not UTF-8 text".to_string(),
    })
}

/// The tables the server at `url` serves and what its operator says about
/// them (`GET /v1/tables`).
pub async fn fetch_catalog(url: &str, settings: &Settings) -> Result<Catalog, Error> {
    let server = parse_url(url)?;
    let routes = server.join("v1/").expect("a fixed relative path");
    let deadline = Instant::now() + settings.timeout;
    let http = http_client(settings, &[&server])?;
    let bytes = fetch(&http, &server, &routes, "tables", MAX_JSON_BODY, deadline).await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
        server: server.to_string(),
        message: format!("unreadable list of tables: {e}"),
    })
}

/// The body of `GET {routes}{path}` from `server`, of at most `limit` bytes.
async fn fetch(
    http: &reqwest::Client,
    server: &Url,
    routes: &Url,
    path: &str,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Error> {
    let url = routes.join(path).expect("a fixed relative path");
    let timeout = deadline.saturating_duration_since(Instant::now());
    let response = http.get(url).timeout(timeout).send().await.map_err(|e| transport_error(server, e))?;
    success_body(server, response, limit).await
}

async fn fetch_meta(
    http: &reqwest::Client,
    server: &Url,
    routes: &Url,
    deadline: Instant,
) -> Result<Meta, Error> {
    let bytes = fetch(http, server, routes, "meta", MAX_JSON_BODY, deadline).await?;
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
        server: server.to_string(),
        message: format!("unreadable metadata: {e}"),
    })?;
    if meta.protocol_version != PROTOCOL_VERSION {
        return Err(Error::Protocol {
            server: server.to_string(),
            message: format!(
                "speaks protocol version {}, this client {PROTOCOL_VERSION}",
                meta.protocol_version
            ),
        });
    }
    Ok(meta)
}

/// The body of a 2xx answer of at most `limit` bytes, or the server's
/// error. A longer body is refused as soon as it is announced or has
/// arrived past the limit: a server cannot make the client hold more. A
/// redirect is not followed (the client follows none): it is an error.
pub(crate) async fn success_body(
    server: &Url,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let status = response.status();
    if status.is_redirection() {
        return Err(Error::Protocol {
            server: server.to_string(),
            message: format!(
                "answered a redirect ({status}); the client follows none: give the URL the server answers at"
            ),
        });
    }
    let limit = if status.is_success() { limit } else { MAX_ERROR_BODY };
    let too_long = |length: u64| Error::Protocol {
        server: server.to_string(),
        message: format!("answered a body of {length} bytes or more where at most {limit} can be right"),
    };
    if let Some(length) = response.content_length().filter(|&length| length > limit as u64)
        && status.is_success()
    {
        return Err(too_long(length));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(server, e))? {
        if bytes.len() + chunk.len() > limit {
            if status.is_success() {
                return Err(too_long((bytes.len() + chunk.len()) as u64));
            }
            // An error's message: its start is enough.
            bytes.extend_from_slice(&chunk[..limit - bytes.len()]);
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(bytes);
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => (body.code, body.error),
        Err(_) => ("unknown".to_string(), String::from_utf8_lossy(&bytes).chars().take(200).collect()),
    };
    Err(Error::Server { server: server.to_string(), status: status.as_u16(), code, message })
}

fn transport_error(server: &Url, error: reqwest::Error) -> Error {
    let message = if error.is_timeout() {
        "timed out".to_string()
    } else {
        // reqwest's own message names only the URL; the causes say why
        // (connection refused, a certificate no trusted authority signed).
        let mut causes = Vec::new();
        let mut cause = std::error::Error::source(&error);
        while let Some(error) = cause {
            causes.push(error.to_string());
            cause = error.source();
        }
        let what = if error.is_connect() { "could not connect" } else { "the request failed" };
        let message =
            if causes.is_empty() { what.to_string() } else { format!("{what}: {}", causes.join(": ")) };
        match tls_hint(&message) {
            Some(hint) => format!("{message}. {hint}"),
            None => message,
        }
    };
    Error::Unreachable { server: server.to_string(), message }
}

/// Refuses two URLs that reach the same server (the instance id of `a`'s
/// metadata and `b`'s): it would receive both shares of every key.
fn check_two_servers(a: &Connection, b: &Meta) -> Result<(), Error> {
    if !a.meta.instance.is_empty() && a.meta.instance == b.instance {
        return Err(Error::SameServer { instance: b.instance.clone() });
    }
    Ok(())
}

/// Warns when `what` would cross plain HTTP to a host that is not this
/// machine: anyone on the path sees it.
pub(crate) fn warn_if_plain(url: &Url, what: &str) {
    if url.scheme() == "http" && !is_loopback(url) {
        tracing::warn!(
            server = %url,
            "sending {what} over plain HTTP to a host that is not this machine: anyone on the path can read \
             them; use https"
        );
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

/// What to do about a certificate the client refused, where rustls's
/// reason alone does not say.
fn tls_hint(message: &str) -> Option<&'static str> {
    if message.contains("CaUsedAsEndEntity") {
        Some(
            "The server's certificate is marked as a certificate authority (as `openssl req -x509` makes \
             them), and an authority cannot be a server's own certificate: make a private authority and \
             certificates for the servers with `morphogen cert`, or add `-addext basicConstraints=CA:FALSE` \
             to openssl",
        )
    } else if message.contains("UnknownIssuer") {
        Some(
            "No authority the client trusts signed the server's certificate: give the authority's \
             certificate with --ca (`morphogen cert` makes one)",
        )
    } else if message.contains("NotValidForName") {
        Some(
            "The server's certificate does not name the host in its URL: reach it by a name the certificate has",
        )
    } else {
        None
    }
}

impl View {
    /// The common view of two servers' metadata; refuses two servers that
    /// do not serve the same table.
    fn of(a: &Meta, b: &Meta, layout: Layout) -> Result<View, Error> {
        check_same_table(a, b)?;
        let older = if a.epoch <= b.epoch { a } else { b };
        let meta = Meta { max_batch: a.max_batch.min(b.max_batch), ..older.clone() };
        Ok(View { meta, layout, read_at: Instant::now() })
    }
}

/// Refuses two servers that do not serve the same snapshot, or whose
/// tables differ at the same epoch.
fn check_same_table(a: &Meta, b: &Meta) -> Result<(), Error> {
    let checks = [
        (a.snapshot_digest == b.snapshot_digest, "snapshot digest"),
        (a.epoch != b.epoch || a.digest == b.digest, "digest of their common epoch"),
        (a.page_size == b.page_size, "page size"),
        (a.row_size == b.row_size, "row size"),
        (a.value_size == b.value_size, "value size"),
        (a.sub_tables == b.sub_tables, "sub-table sizes"),
        (a.hash_seed == b.hash_seed, "hash seed"),
    ];
    match checks.iter().find(|(same, _)| !same) {
        Some(&(_, what)) => Err(Error::Mismatch(what)),
        None => Ok(()),
    }
}

/// The layout a server's metadata describes.
fn layout_of(meta: &Meta) -> Result<Layout, String> {
    let seed: [u8; 16] = hex::decode(&meta.hash_seed)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("the hash seed is not 16 bytes of hex")?;
    let choices = u8::try_from(meta.sub_tables.len()).map_err(|_| "too many sub-tables")?;
    let pages = meta.sub_tables.first().copied().unwrap_or(0);
    if meta.sub_tables.iter().any(|&p| p != pages) {
        return Err("sub-tables of different sizes are not supported".to_string());
    }
    let layout =
        Layout::new(meta.page_size, meta.value_size, choices, pages, seed).map_err(|e| e.to_string())?;
    if layout.row_size() != meta.row_size {
        return Err(format!("row size {} does not match the layout's {}", meta.row_size, layout.row_size()));
    }
    Ok(layout)
}

/// Why a lookup failed. Messages name servers and parameters, never keys or values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server URL is malformed.
    #[error("server URL {url:?}: {message}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A server could not be reached or did not answer in time.
    #[error("server {server}: {message}")]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What happened.
        message: String,
    },
    /// A server answered with an error.
    #[error("server {server} answered {status} ({code}): {message}")]
    Server {
        /// The server's URL.
        server: String,
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A server's answer does not follow the protocol.
    #[error("server {server}: {message}")]
    Protocol {
        /// The server's URL.
        server: String,
        /// What is wrong.
        message: String,
    },
    /// The two servers do not serve the same table.
    #[error("the two servers disagree on the {0}; they must serve the same table")]
    Mismatch(&'static str),
    /// The two URLs reach one server, which would see both shares of every key.
    #[error(
        "both server URLs reach the same server (instance {instance}), which would learn every key looked up: \
         give the URLs of two servers run by parties that do not collude"
    )]
    SameServer {
        /// The server's instance id.
        instance: String,
    },
    /// A key to look up is empty or too long.
    #[error("key {index} is {len} bytes; keys are 1 to 64 bytes")]
    KeyLength {
        /// Position of the key in the request.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The client could not be set up or could not form a request.
    #[error("client setup: {0}")]
    Setup(String),
}
