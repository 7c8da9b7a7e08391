//! The admin side of a server: its state, update batches and snapshot
//! swaps, behind its bearer token.

use std::time::{Duration, Instant};

use morphogen_protocol::{
    AdminStatus, Catalog, EpochEntry, EpochList, GrowRequest, RevertRequest, SnapshotRequest, SwapStatus,
    UpdateReply, UpdateRequest,
};
use reqwest::Url;

use crate::connection::{
    MAX_JSON_BODY, every_epoch, parse_url, success_body, table_routes, transport_error, warn_if_plain,
};
use crate::http::http_client;
use crate::{Error, Settings};

/// One server's admin routes.
pub struct Admin {
    http: reqwest::Client,
    url: Url,
    /// The table's admin routes (`status`, `updates`, `snapshot`) are relative to this.
    routes: Url,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("Admin").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin routes at `url` (the server's `--admin-listen` address, or
    /// its public one), authenticated by `token`; every request is bounded by
    /// the settings' timeout.
    pub fn new(url: &str, token: &str, settings: &Settings) -> Result<Admin, Error> {
        Admin::open(url, None, token, settings)
    }

    /// Like [`Admin::new`], for the table `table` of a server that serves
    /// several (`serve --tables`): its routes under `/admin/v1/tables/{table}/`.
    pub fn for_table(url: &str, table: &str, token: &str, settings: &Settings) -> Result<Admin, Error> {
        Admin::open(url, Some(table), token, settings)
    }

    fn open(url: &str, table: Option<&str>, token: &str, settings: &Settings) -> Result<Admin, Error> {
        let url = parse_url(url)?;
        warn_if_plain(&url, "the admin token");
        Ok(Admin {
            http: http_client(settings, &[&url])?,
            routes: table_routes(&url, "admin/v1/", table)?,
            url,
            token: token.trim().to_string(),
            timeout: settings.timeout,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The server's metadata as of its current epoch (the next sequence
    /// number is its `epoch` plus one) and its latest snapshot swap.
    pub async fn status(&self) -> Result<AdminStatus, Error> {
        let url = self.routes.join("status").expect("a fixed relative path");
        let request = self.http.get(url).bearer_auth(&self.token);
        let bytes = self.send(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable status: {e}")))
    }

    /// The epochs the table can answer as of, from `from` (or its oldest)
    /// on, with their digests and labels, page after page.
    pub async fn epochs(&self, from: u64) -> Result<Vec<EpochEntry>, Error> {
        every_epoch(from, |from| async move {
            let mut url = self.routes.join("epochs").expect("a fixed relative path");
            url.set_query(Some(&format!("from={from}")));
            let bytes = self.send(self.http.get(url).bearer_auth(&self.token)).await?;
            serde_json::from_slice::<EpochList>(&bytes)
                .map_err(|e| self.protocol(format!("unreadable epoch list: {e}")))
        })
        .await
    }

    /// What the server says about its tables (`GET /admin/v1/tables`, as
    /// `GET /v1/tables`): their names and its operator's manifest.
    pub async fn catalog(&self) -> Result<Catalog, Error> {
        let url = self.url.join("admin/v1/tables").expect("a fixed relative path");
        let bytes = self.send(self.http.get(url).bearer_auth(&self.token)).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable catalog: {e}")))
    }

    /// Sends one update batch; it is answered once the server has it in its
    /// log, synced, and in its engine.
    pub async fn update(&self, batch: &UpdateRequest) -> Result<UpdateReply, Error> {
        let url = self.routes.join("updates").expect("a fixed relative path");
        let request = self.http.post(url).bearer_auth(&self.token).json(batch);
        let bytes = self.send(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable update reply: {e}")))
    }

    /// Takes the table's records back to an earlier epoch, as the next
    /// sequenced step; answered like an update batch, and as safe to send again.
    pub async fn revert(&self, request: &RevertRequest) -> Result<UpdateReply, Error> {
        let url = self.routes.join("revert").expect("a fixed relative path");
        let bytes = self.send(self.http.post(url).bearer_auth(&self.token).json(request)).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable revert reply: {e}")))
    }

    /// Asks the server to swap to a snapshot file of its snapshot
    /// directory; answered at once, while the server loads it. Follow it
    /// with [`Admin::status`].
    pub async fn swap(&self, request: &SnapshotRequest) -> Result<SwapStatus, Error> {
        let url = self.routes.join("snapshot").expect("a fixed relative path");
        let request = self.http.post(url).bearer_auth(&self.token).json(request);
        let bytes = self.send(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable swap status: {e}")))
    }

    /// Applies a batch that does not fit the table (409 `table_full`) by
    /// growing it: the server builds a larger table of its records with the
    /// batch applied and swaps to it as the batch's epoch; answered at
    /// once, while it builds. Follow it with [`Admin::status`].
    pub async fn grow(&self, request: &GrowRequest) -> Result<SwapStatus, Error> {
        let url = self.routes.join("grow").expect("a fixed relative path");
        let request = self.http.post(url).bearer_auth(&self.token).json(request);
        let bytes = self.send(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unreadable swap status: {e}")))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, Error> {
        let deadline = Instant::now() + self.timeout;
        let response = request
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .send()
            .await
            .map_err(|e| transport_error(&self.url, e))?;
        success_body(&self.url, response, MAX_JSON_BODY).await
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol { server: self.url.to_string(), message }
    }
}
