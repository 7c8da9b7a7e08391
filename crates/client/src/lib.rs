//! The morphogen client: looks keys up in a table held by two servers
//! without either server learning which keys they were.
//!
//! For each key it finds the key's candidate page in every sub-table, makes
//! a DPF key pair per page, sends one key of each pair to each server, and
//! XORs the two answers back into the pages, where it finds the key's row.
//! Both servers must serve the same snapshot (digest and parameters). Their
//! tables change by epochs: the client asks both for the newest epoch both
//! have reached, re-reading their metadata at most every
//! [`Settings::meta_refresh`] (a second by default) and
//! whenever a server says the epoch asked for is not available, so it never
//! combines answers from different epochs. When the servers swap to a new
//! snapshot (a server says `snapshot_changed`), the client re-reads their
//! metadata, waits while only one of them has swapped, and asks again with
//! keys for the new snapshot's parameters.

mod admin;
mod connection;
mod error;
mod http;
mod view;

use std::time::{Duration, Instant};

pub use admin::Admin;
pub use connection::{Connection, fetch_catalog, fetch_metrics};
pub use error::Error;
pub use http::{DEFAULT_META_REFRESH, DEFAULT_TIMEOUT, Settings, Trust};

use connection::{FIRST_BACKOFF, MAX_BACKOFF, layout_of, parse_url, warn_if_plain};
use http::http_client;
use morphogen_dpf::{Key, generate};
use morphogen_layout::{KeyDigest, Layout, MAX_KEY_LEN};
use morphogen_protocol::{Epoch, EpochEntry, Meta, Request};
use rand::RngExt;
use view::{View, check_two_servers};

/// Times a lookup re-reads the metadata after a server said the epoch
/// asked for is not available or the snapshot changed, before it gives up.
const EPOCH_RETRIES: u32 = 3;

/// A client of two servers holding the same table.
pub struct Client {
    servers: [Connection; 2],
    view: std::sync::Mutex<View>,
    /// [`Settings::meta_refresh`].
    meta_refresh: Duration,
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
        check_two_servers(&a.meta, &b.meta)?;
        let view = View::of(&a.meta, &b.meta, a.layout.clone())?;
        Ok(Client { servers: [a, b], view: std::sync::Mutex::new(view), meta_refresh: settings.meta_refresh })
    }

    /// The servers' common metadata as last read: `max_batch` is the
    /// smaller of the two, `epoch` the older.
    pub fn meta(&self) -> Meta {
        self.lock_view().meta.clone()
    }

    /// Reads the servers' metadata again before the next lookup, however
    /// recently it was read: for a caller that learned the servers moved
    /// on (another table of theirs swapped, say).
    pub fn forget_meta(&self) {
        self.lock_view().stale = true;
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The view to look up with: the last one, or the servers' metadata
    /// read again if it is older than [`Settings::meta_refresh`] or `fresh`
    /// is asked.
    async fn view(&self, fresh: bool, deadline: Instant) -> Result<View, Error> {
        let view = self.lock_view().clone();
        if !fresh && !view.stale && view.read_at.elapsed() < self.meta_refresh {
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
        check_two_servers(&a, &b)?;
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
        self.get_many_as_of(keys, None).await
    }

    /// Like [`Client::get`], as of epoch `epoch` (see [`Client::get_many_at`]).
    pub async fn get_at(&self, key: &[u8], epoch: u64) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_many_at(&[key], epoch).await?.pop().flatten())
    }

    /// Like [`Client::get_many`], as of epoch `epoch`: both servers must be
    /// able to answer as of it (410 `epoch_unavailable` otherwise, which is
    /// returned, not retried).
    pub async fn get_many_at<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        epoch: u64,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.get_many_as_of(keys, Some(epoch)).await
    }

    async fn get_many_as_of<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        epoch: Option<u64>,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut values = Vec::with_capacity(keys.len());
        for batch in keys.chunks(self.meta().max_batch.max(1)) {
            values.extend(self.lookup_batch(batch, epoch).await?);
        }
        Ok(values)
    }

    /// The epoch both servers answer from now, the older of their current
    /// ones (the metadata read again if older than
    /// [`Settings::meta_refresh`]).
    pub async fn epoch(&self) -> Result<u64, Error> {
        let deadline = Instant::now() + self.servers[0].timeout;
        Ok(self.view(false, deadline).await?.meta.epoch)
    }

    /// The epochs both servers can answer as of, from `from` on, oldest
    /// first, with their digests and labels. An epoch both list must have
    /// the same digest on both (and so the same label): otherwise
    /// [`Error::Mismatch`].
    pub async fn epochs(&self, from: u64) -> Result<Vec<EpochEntry>, Error> {
        let deadline = Instant::now() + self.servers[0].timeout;
        let (a, b) = tokio::try_join!(
            self.servers[0].fetch_epochs(from, deadline),
            self.servers[1].fetch_epochs(from, deadline)
        )?;
        let theirs: std::collections::BTreeMap<u64, &EpochEntry> =
            b.iter().map(|entry| (entry.epoch, entry)).collect();
        let mut entries = Vec::new();
        for entry in a {
            if let Some(other) = theirs.get(&entry.epoch) {
                if other.digest != entry.digest || other.label != entry.label {
                    return Err(Error::Mismatch("digest of an epoch both hold"));
                }
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    async fn lookup_batch<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        at: Option<u64>,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let deadline = Instant::now() + self.servers[0].timeout;
        let mut retries = 0;
        let mut fresh = false;
        loop {
            let view = self.view(fresh, deadline).await?;
            let epoch = at.unwrap_or(view.meta.epoch);
            match self.lookup_at(&view, epoch, keys, deadline).await {
                // The epoch fell out of a window, a server restarted behind
                // it, or a server swapped to another snapshot: read where
                // both servers are, and ask again (an epoch asked for is
                // the caller's to change).
                Err(Error::Server { status: 410, ref code, .. })
                    if (code == "epoch_unavailable" || code == "snapshot_changed")
                        && retries < EPOCH_RETRIES
                        && at.is_none() =>
                {
                    retries += 1;
                    fresh = true;
                }
                // The epoch asked for is gone: whatever the caller asks
                // next is looked up with the servers' metadata read anew.
                Err(error @ Error::Server { status: 410, .. }) => {
                    self.forget_meta();
                    return Err(error);
                }
                result => return result,
            }
        }
    }

    /// Looks `keys` up as of `epoch`, with the view's layout.
    async fn lookup_at<K: AsRef<[u8]>>(
        &self,
        view: &View,
        epoch: u64,
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
        let (body_a, body_b) = (
            encode_request(Epoch::Exact(epoch), queries_a)?,
            encode_request(Epoch::Exact(epoch), queries_b)?,
        );
        let (answer_a, answer_b) = tokio::try_join!(
            self.servers[0].query(&body_a, keys.len(), layout, deadline),
            self.servers[1].query(&body_b, keys.len(), layout, deadline)
        )?;
        if answer_a.epoch != epoch || answer_b.epoch != epoch {
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
