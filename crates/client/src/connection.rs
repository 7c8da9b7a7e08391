//! One server: reaching it, reading its metadata, sending it queries, and
//! reading what it answers, never more of it than it can be.

use std::time::{Duration, Instant};

use morphogen_layout::Layout;
use morphogen_protocol::{
    CONTENT_TYPE, Catalog, EpochEntry, EpochList, ErrorBody, HEADER_LEN, Meta, PROTOCOL_VERSION, Response,
    is_table_name,
};
use rand::RngExt;
use reqwest::Url;
use reqwest::header::RETRY_AFTER;

use crate::http::http_client;
use crate::{Error, Settings};

/// First wait before sending a request again that a server refused as
/// overloaded; it doubles on every refusal.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two tries, whatever the server's Retry-After says:
/// a pass takes milliseconds, Retry-After counts whole seconds.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Largest JSON body a server may answer (metadata, the list of tables,
/// admin replies): far beyond any real one, far below a client's memory.
pub(crate) const MAX_JSON_BODY: usize = 1 << 20;
/// Largest error body read; a longer one is cut off there.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest metrics page read.
const MAX_METRICS_BODY: usize = 16 << 20;

/// One server: where it is, what its metadata says, and how to send it
/// queries. [`crate::Client`] holds two; a load test may use one alone to measure
/// one server's capacity.
#[derive(Debug)]
pub struct Connection {
    http: reqwest::Client,
    pub(crate) url: Url,
    /// The table's routes (`meta`, `query`) are relative to this.
    routes: Url,
    pub(crate) meta: Meta,
    pub(crate) layout: Layout,
    pub(crate) timeout: Duration,
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
    pub(crate) async fn open(
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

    /// The epochs the server can answer as of, from `from` on (`GET
    /// …/epochs`, page after page), with their digests and labels.
    pub async fn fetch_epochs(&self, from: u64, deadline: Instant) -> Result<Vec<EpochEntry>, Error> {
        every_epoch(from, |from| async move {
            let path = format!("epochs?from={from}");
            let bytes = fetch(&self.http, &self.url, &self.routes, &path, MAX_JSON_BODY, deadline).await?;
            serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
                server: self.url.to_string(),
                message: format!("unreadable epoch list: {e}"),
            })
        })
        .await
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

pub(crate) fn parse_url(text: &str) -> Result<Url, Error> {
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

/// Every epoch a server lists from `from` on: the pages `fetch` gets, one
/// after the other, until the server's current epoch.
pub(crate) async fn every_epoch<F, Fut>(from: u64, mut fetch: F) -> Result<Vec<EpochEntry>, Error>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<EpochList, Error>>,
{
    let mut entries = Vec::new();
    let mut from = from;
    loop {
        let list = fetch(from).await?;
        let Some(last) = list.epochs.last().map(|entry| entry.epoch) else { break };
        entries.extend(list.epochs);
        if last >= list.current {
            break;
        }
        from = last + 1;
    }
    Ok(entries)
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

pub(crate) fn transport_error(server: &Url, error: reqwest::Error) -> Error {
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

/// The layout a server's metadata describes.
pub(crate) fn layout_of(meta: &Meta) -> Result<Layout, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::meta;

    fn url(text: &str) -> Url {
        parse_url(text).unwrap()
    }

    #[test]
    fn urls_get_a_trailing_slash_and_must_be_http_or_https() {
        assert_eq!(url("http://127.0.0.1:8080").as_str(), "http://127.0.0.1:8080/");
        assert_eq!(url("https://pir.example.org/base/").as_str(), "https://pir.example.org/base/");
        for bad in ["ftp://example.org", "127.0.0.1:8080", "not a url", ""] {
            assert!(matches!(parse_url(bad), Err(Error::Url { .. })), "{bad:?}");
        }
    }

    #[test]
    fn table_routes_name_the_table_or_refuse_a_bad_name() {
        let server = url("http://127.0.0.1:8080/pir");
        assert_eq!(table_routes(&server, "v1/", None).unwrap().as_str(), "http://127.0.0.1:8080/pir/v1/");
        let named = table_routes(&server, "admin/v1/", Some("storage")).unwrap();
        assert_eq!(named.as_str(), "http://127.0.0.1:8080/pir/admin/v1/tables/storage/");
        for bad in ["../meta", "Storage", "a/b", ""] {
            assert!(matches!(table_routes(&server, "v1/", Some(bad)), Err(Error::Url { .. })), "{bad:?}");
        }
    }

    #[test]
    fn only_this_machine_counts_as_loopback() {
        for local in [
            "http://127.0.0.1:1",
            "http://127.8.9.10:1",
            "http://[::1]:1",
            "http://localhost:1",
            "http://LocalHost:1",
        ] {
            assert!(is_loopback(&url(local)), "{local}");
        }
        for remote in [
            "http://10.0.0.5:1",
            "http://[2001:db8::1]:1",
            "http://pir.example.org:1",
            "http://localhost.example.org:1",
        ] {
            assert!(!is_loopback(&url(remote)), "{remote}");
        }
    }

    #[test]
    fn refused_certificates_come_with_what_to_do() {
        let cases = [
            ("invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", "morphogen cert"),
            ("invalid peer certificate: UnknownIssuer", "--ca"),
            ("invalid peer certificate: NotValidForName", "a name the certificate has"),
        ];
        for (message, advice) in cases {
            assert!(tls_hint(message).is_some_and(|hint| hint.contains(advice)), "{message}");
        }
        assert_eq!(tls_hint("Connection refused (os error 111)"), None);
    }

    #[test]
    fn the_layout_follows_the_metadata_and_rejects_what_cannot_be() {
        let layout = layout_of(&meta()).unwrap();
        assert_eq!((layout.page_size(), layout.choices(), layout.pages_per_table()), (512, 2, 8));
        let cases = [
            (Meta { hash_seed: "33".repeat(15), ..meta() }, "hash seed"),
            (Meta { hash_seed: "zz".repeat(16), ..meta() }, "hash seed"),
            (Meta { sub_tables: vec![8, 9], ..meta() }, "different sizes"),
            (Meta { row_size: 40, ..meta() }, "row size"),
            (Meta { page_size: 500, ..meta() }, "page"),
        ];
        for (bad, words) in cases {
            let error = layout_of(&bad).unwrap_err();
            assert!(error.contains(words), "{words}: {error}");
        }
    }

    /// A response as reqwest hands it over, from status, headers and body.
    fn response(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> reqwest::Response {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        reqwest::Response::from(builder.body(body).unwrap())
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_what_they_can_be() {
        let server = url("http://127.0.0.1:8080");
        assert_eq!(success_body(&server, response(200, &[], vec![7; 100]), 100).await.unwrap(), vec![7; 100]);
        let long = success_body(&server, response(200, &[], vec![7; 101]), 100).await.unwrap_err();
        assert!(
            matches!(&long, Error::Protocol { message, .. } if message.contains("at most 100")),
            "{long}"
        );
        let announced = response(200, &[("content-length", "101")], vec![7; 101]);
        assert!(matches!(success_body(&server, announced, 100).await, Err(Error::Protocol { .. })));

        let redirect = response(302, &[("location", "http://elsewhere/")], Vec::new());
        let error = success_body(&server, redirect, 100).await.unwrap_err();
        assert!(matches!(&error, Error::Protocol { message, .. } if message.contains("redirect")), "{error}");

        let refusal = br#"{"error": "the queue is full", "code": "overloaded"}"#.to_vec();
        let error = success_body(&server, response(503, &[], refusal), 100).await.unwrap_err();
        assert!(
            matches!(&error, Error::Server { status: 503, code, message, .. } if code == "overloaded" && message == "the queue is full"),
            "{error}"
        );
        // An error body is read up to its cap and no further.
        let error = success_body(&server, response(500, &[], vec![b'x'; 1 << 20]), 100).await.unwrap_err();
        assert!(
            matches!(&error, Error::Server { code, message, .. } if code == "unknown" && message.len() <= 200),
            "{error}"
        );
    }
}
