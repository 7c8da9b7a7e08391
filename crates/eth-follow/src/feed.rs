//! The follower's loop: where the servers stand (from their labels alone),
//! bringing a table that is behind up to the others, and sending each new
//! block to every table of every server as one batch per table, with the
//! same sequence number, so that epoch `e` is the same block everywhere.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use morphogen_client::Admin;
use morphogen_eth::{BlockRef, FINALIZED, REVERT_TO, SAFE, TABLE_NAMES, followed_chain};
use morphogen_protocol::{ChangeBody, EpochEntry, GrowRequest, RevertRequest, SwapState, UpdateRequest};
use serde_json::{Value, json};

use crate::Error;
use crate::Metrics;
use crate::changes::{TableChanges, Touched, table_changes, touched};
use crate::node::{Block, Node, StateAt, hex32};

/// How the follower follows.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Blocks behind the node's newest one to stay: a block is applied once
    /// this many more are built on it.
    pub confirmations: u64,
    /// How long to wait before asking the node again when it has no new block.
    pub poll_interval: Duration,
}

impl Block {
    /// The label of the epoch that holds this block: its number and hash,
    /// and the header fields a reader of the epoch may want.
    pub fn label(&self) -> Value {
        json!({
            "number": self.number,
            "hash": hex32(&self.hash),
            "parent_hash": hex32(&self.parent_hash),
            "timestamp": self.timestamp,
            "base_fee": self.base_fee,
            "gas_limit": self.gas_limit,
            "coinbase": format!("0x{}", hex::encode(self.coinbase)),
            "prevrandao": hex32(&self.prevrandao),
        })
    }

    fn reference(&self) -> BlockRef {
        BlockRef { number: self.number, hash: self.hash }
    }
}

/// Where the time of a block went, before it was sent.
#[derive(Clone, Copy, Debug)]
struct Timings {
    /// The node's traces of its transactions.
    trace: Duration,
    /// Reading the values it touched.
    read: Duration,
}

/// How often a table being grown is asked whether it is done.
const GROW_POLL: Duration = Duration::from_millis(100);

/// The longest wait between tries while the node or a server is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// One server's three tables, in [`TABLE_NAMES`] order.
struct Server {
    url: String,
    tables: Vec<Admin>,
}

/// Where one table of one server stands.
struct Standing {
    epoch: u64,
    label: Option<Value>,
}

/// Feeds the tables of several servers from one node.
pub struct Follower {
    node: Node,
    servers: Vec<Server>,
    settings: Settings,
    metrics: Metrics,
}

/// What one [`Follower::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The node's chain left the block the servers held: the tables were
    /// taken back to this block, the newest both chains share, at this epoch.
    Reorganised {
        /// The block gone back to.
        to: BlockRef,
        /// The epoch that holds it again.
        epoch: u64,
        /// Blocks taken back.
        depth: u64,
    },
    /// It applied this block, at this epoch.
    Applied {
        /// The block.
        block: BlockRef,
        /// The epoch it made.
        epoch: u64,
    },
    /// The node has no block to apply yet; the servers hold this one.
    Waiting {
        /// The newest block the servers hold.
        block: BlockRef,
    },
}

impl Follower {
    /// A follower of `node` feeding the tables of the servers whose admin
    /// routes are at `admin_urls`, with `token`; `client` bounds each
    /// server request.
    pub fn new(
        node: Node,
        admin_urls: &[String],
        token: &str,
        client: &morphogen_client::Settings,
        settings: Settings,
    ) -> Result<Follower, Error> {
        let servers = admin_urls
            .iter()
            .map(|url| {
                let tables = TABLE_NAMES
                    .iter()
                    .map(|table| Admin::for_table(url, table, token, client))
                    .collect::<Result<_, _>>()
                    .map_err(|error| Error::Config(error.to_string()))?;
                Ok(Server { url: url.clone(), tables })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Follower { node, servers, settings, metrics: Metrics::new() })
    }

    /// What it counts, for an operator to scrape.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Follows until `stop` completes, or until an error it cannot go on
    /// from. Each block is logged as it is applied. While the node or a
    /// server cannot be reached (a restart, a network fault), it says so
    /// and tries again, waiting longer each time up to a minute.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        tokio::pin!(stop);
        let mut last_block = Instant::now();
        let mut retry = self.settings.poll_interval;
        loop {
            let step = tokio::select! {
                () = &mut stop => return Ok(()),
                step = self.step() => step,
            };
            let step = match step {
                Ok(step) => {
                    retry = self.settings.poll_interval;
                    step
                }
                Err(error) if error.is_transient() => {
                    self.metrics.retry();
                    self.metrics.since_block(last_block.elapsed());
                    tracing::warn!(%error, retry_seconds = retry.as_secs_f64(), "cannot go on yet; trying again");
                    tokio::select! {
                        () = &mut stop => return Ok(()),
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
                Err(error) => return Err(error),
            };
            match step {
                Step::Applied { .. } | Step::Reorganised { .. } => {
                    last_block = Instant::now();
                    self.metrics.since_block(Duration::ZERO);
                }
                Step::Waiting { block } => {
                    self.metrics.since_block(last_block.elapsed());
                    tracing::debug!(
                        block = block.number,
                        idle_seconds = last_block.elapsed().as_secs(),
                        "no new block yet"
                    );
                    tokio::select! {
                        () = &mut stop => return Ok(()),
                        () = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
            }
        }
    }

    /// Brings every table of every server up to the newest epoch any of
    /// them holds, then applies the node's next block, if it has one with
    /// enough confirmations. Keeps no state between calls: where to go on
    /// from is read from the servers each time.
    pub async fn step(&self) -> Result<Step, Error> {
        let standings = self.standings().await?;
        let newest = standings.values().map(|standing| standing.epoch).max().expect("at least one table");
        self.level(&standings, newest).await?;
        let held = self.held_block(&standings, newest).await?;
        // Is the block held still the node's, at the depth followed?
        let head = self.node.block_number().await?;
        self.metrics.position(held.number, head);
        let canonical = self.node.block_by_number(held.number).await?;
        if canonical.is_none_or(|block| block.hash != held.hash) {
            if head < held.number.saturating_add(self.settings.confirmations) {
                // A shorter chain for now: wait until it is confirmed past the block held.
                return Ok(Step::Waiting { block: held });
            }
            return self.reorganise(newest, held).await;
        }
        let next = held.number + 1;
        if head < next.saturating_add(self.settings.confirmations) {
            return Ok(Step::Waiting { block: held });
        }
        let block = self.node.block_by_number(next).await?.ok_or_else(|| {
            Error::Chain(format!("the node has no block {next} though its head is past it"))
        })?;
        if block.parent_hash != held.hash {
            // The node's chain changed between the two reads: look again.
            return Ok(Step::Waiting { block: held });
        }
        let epoch = newest + 1;
        let started = Instant::now();
        let ((changes, timings), (safe, finalized)) =
            tokio::try_join!(self.changes(&block), self.node.safe_and_finalized())?;
        // The blocks the node calls safe and finalized, as it says now: a
        // reader of the epoch answers those tags with them.
        let mut label = block.label();
        for (tag, number) in [(SAFE, safe), (FINALIZED, finalized)] {
            if let Some(number) = number.filter(|&number| number <= block.number) {
                label[tag] = json!(number);
            }
        }
        let sending = Instant::now();
        let pairs: Vec<(usize, usize)> = self.pairs().collect();
        self.send(&pairs, epoch, &label, &changes).await?;
        let sent = sending.elapsed();
        self.metrics.block_applied(started.elapsed());
        self.metrics.position(block.number, head);
        tracing::info!(
            block = block.number,
            epoch,
            accounts = changes.accounts.len(),
            slots = changes.storage.len(),
            code_chunks = changes.code.len(),
            trace_ms = timings.trace.as_millis() as u64,
            read_ms = timings.read.as_millis() as u64,
            send_ms = sent.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "block applied"
        );
        Ok(Step::Applied { block: block.reference(), epoch })
    }

    /// Takes every table back to the newest block of the chain followed
    /// that is still the node's, as epoch `newest + 1`, labelled with that
    /// block and the epoch gone back to. The abandoned blocks' epochs stay
    /// in the log; the labels tell them apart.
    async fn reorganise(&self, newest: u64, held: BlockRef) -> Result<Step, Error> {
        let entries = self.all_epochs(0, 0, 0).await?;
        let labels: Vec<(u64, Option<&Value>)> =
            entries.iter().map(|entry| (entry.epoch, entry.label.as_ref())).collect();
        let base = self.base_block().await.ok();
        let chain = followed_chain(&labels, base);
        let mut ancestor = None;
        for &(epoch, block) in &chain {
            if let Some(node) =
                self.node.block_by_number(block.number).await?.filter(|node| node.hash == block.hash)
            {
                ancestor = Some((epoch, node));
                break;
            }
        }
        let Some((to, node_block)) = ancestor else {
            return Err(Error::Chain(format!(
                "the node's chain shares no block the tables hold (they hold {} epochs back to block {}): \
                 rebuild the tables from the node's state",
                chain.len(),
                chain.last().map_or(held.number, |(_, block)| block.number)
            )));
        };
        let block = node_block.reference();
        let mut label = node_block.label();
        label[REVERT_TO] = json!(to);
        let epoch = newest + 1;
        let pairs: Vec<(usize, usize)> = self.pairs().collect();
        self.revert(&pairs, epoch, to, &label).await?;
        let depth = held.number.saturating_sub(block.number);
        self.metrics.reorg();
        tracing::warn!(
            from_block = held.number,
            to_block = block.number,
            depth,
            epoch,
            "reorganisation: the tables went back to the newest block both chains share"
        );
        Ok(Step::Reorganised { to: block, epoch, depth })
    }

    /// Sends the revert to epoch `to`, as epoch `epoch` with `label`, to
    /// the tables `pairs`.
    async fn revert(
        &self,
        pairs: &[(usize, usize)],
        epoch: u64,
        to: u64,
        label: &Value,
    ) -> Result<(), Error> {
        let request = RevertRequest { sequence: epoch, to, label: Some(label.clone()) };
        try_join_all(pairs.iter().map(|&(s, t)| {
            let request = &request;
            async move {
                self.servers[s].tables[t].revert(request).await.map_err(|e| self.server_error(s, t, e))?;
                Ok::<_, Error>(())
            }
        }))
        .await?;
        Ok(())
    }

    /// Every epoch table `t` of server `s` lists from `from` on.
    async fn all_epochs(&self, s: usize, t: usize, from: u64) -> Result<Vec<EpochEntry>, Error> {
        self.servers[s].tables[t].epochs(from).await.map_err(|e| self.server_error(s, t, e))
    }

    /// The block the tables were built at, from their manifest.
    async fn base_block(&self) -> Result<BlockRef, Error> {
        let catalog = self.servers[0].tables[0].catalog().await.map_err(|e| self.server_error(0, 0, e))?;
        let number = catalog.about.get("block_number").and_then(Value::as_u64).ok_or_else(|| {
            Error::Chain(
                "the first epoch has no label, and the server's manifest names no block_number: \
                 were these tables built by `morphogen eth build`?"
                    .to_string(),
            )
        })?;
        let block = self.node.block_by_number(number).await?.ok_or_else(|| {
            Error::Chain(format!("the tables were built at block {number}, which the node lacks"))
        })?;
        Ok(block.reference())
    }

    /// Every (server, table) pair, by index.
    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.servers.iter().enumerate().flat_map(|(s, server)| (0..server.tables.len()).map(move |t| (s, t)))
    }

    /// Where every table of every server stands.
    async fn standings(&self) -> Result<BTreeMap<(usize, usize), Standing>, Error> {
        let statuses = try_join_all(self.pairs().map(|(s, t)| async move {
            let status = self.servers[s].tables[t].status().await.map_err(|e| self.server_error(s, t, e))?;
            Ok::<_, Error>(((s, t), Standing { epoch: status.meta.epoch, label: status.meta.label }))
        }))
        .await?;
        Ok(statuses.into_iter().collect())
    }

    /// The block the tables at epoch `epoch` hold: their label's, or, at the
    /// tables' first epoch, the block their manifest was built at.
    async fn held_block(
        &self,
        standings: &BTreeMap<(usize, usize), Standing>,
        epoch: u64,
    ) -> Result<BlockRef, Error> {
        let label =
            standings.values().find(|standing| standing.epoch == epoch).and_then(|s| s.label.as_ref());
        match label {
            Some(label) => BlockRef::of_label(label).ok_or_else(|| {
                Error::Chain(format!(
                    "the label of epoch {epoch} names no block: was it made by another feeder?"
                ))
            }),
            None => self.base_block().await,
        }
    }

    /// Brings every table behind epoch `newest` up to it, block by block,
    /// with the batches the tables ahead were given: rebuilt from the
    /// blocks their labels name, they are the same batches.
    async fn level(&self, standings: &BTreeMap<(usize, usize), Standing>, newest: u64) -> Result<(), Error> {
        let behind: Vec<((usize, usize), u64)> = standings
            .iter()
            .filter(|(_, standing)| standing.epoch < newest)
            .map(|(pair, standing)| (*pair, standing.epoch))
            .collect();
        let Some(oldest) = behind.iter().map(|(_, epoch)| *epoch).min() else {
            return Ok(());
        };
        // The labels of a table ahead that still lists the first epoch
        // needed (a table grown since lists only its epochs from then on).
        let mut labels: BTreeMap<u64, Option<Value>> = BTreeMap::new();
        for (&(s, t), _) in standings.iter().filter(|(_, standing)| standing.epoch == newest) {
            labels = self
                .all_epochs(s, t, oldest + 1)
                .await?
                .into_iter()
                .map(|entry| (entry.epoch, entry.label))
                .collect();
            if labels.contains_key(&(oldest + 1)) {
                break;
            }
        }
        for epoch in oldest + 1..=newest {
            let label = labels.get(&epoch).cloned().flatten().ok_or_else(|| {
                Error::Chain(format!(
                    "a table is behind at epoch {}, and the epoch {epoch} that it lacks is no longer \
                     listed with its block by the tables ahead (out of their window)",
                    epoch - 1
                ))
            })?;
            let pairs: Vec<(usize, usize)> =
                behind.iter().filter(|(_, at)| *at < epoch).map(|(pair, _)| *pair).collect();
            if let Some(to) = label.get(REVERT_TO).and_then(Value::as_u64) {
                tracing::warn!(
                    epoch,
                    to,
                    tables = pairs.len(),
                    "bringing tables that are behind up (a revert)"
                );
                self.revert(&pairs, epoch, to, &label).await?;
                continue;
            }
            let reference = BlockRef::of_label(&label)
                .ok_or_else(|| Error::Chain(format!("the label of epoch {epoch} names no block")))?;
            let block = self.node.block_by_hash(&reference.hash).await?.ok_or_else(|| {
                Error::Chain(format!("the node does not know block {} of epoch {epoch}", reference.number))
            })?;
            tracing::warn!(
                epoch,
                block = block.number,
                tables = pairs.len(),
                "bringing tables that are behind up"
            );
            let (changes, _) = self.changes(&block).await?;
            // The label the tables ahead were given, as it was.
            self.send(&pairs, epoch, &label, &changes).await?;
        }
        Ok(())
    }

    /// What `block` changes in the three tables, read from the node.
    /// The values are read by the block's number, which every node answers
    /// fast, and then the node's block of that number is checked to be
    /// still this one; if it is not (the chain moved meanwhile, or this is
    /// a block off the node's chain), they are read again by its hash.
    async fn changes(&self, block: &Block) -> Result<(TableChanges, Timings), Error> {
        let started = Instant::now();
        let txs = self.node.trace(&block.hash).await?;
        let traced = started.elapsed();
        let touched = touched(block, &txs);
        let mut changes = self.read_changes(&touched, StateAt::Number(block.number)).await?;
        let canonical = self.node.block_by_number(block.number).await?;
        if canonical.is_none_or(|canonical| canonical.hash != block.hash) {
            changes = self.read_changes(&touched, StateAt::Hash(block.hash)).await?;
        }
        Ok((changes, Timings { trace: traced, read: started.elapsed() - traced }))
    }

    /// The tables' changes for what a block touched, from the values at `at`.
    async fn read_changes(&self, touched: &Touched, at: StateAt) -> Result<TableChanges, Error> {
        let accounts: Vec<[u8; 20]> = touched.accounts.keys().copied().collect();
        let unknown_code: Vec<[u8; 20]> =
            touched.accounts.iter().filter(|(_, code)| code.is_none()).map(|(address, _)| *address).collect();
        let slots: Vec<([u8; 20], [u8; 32])> = touched.slots.iter().copied().collect();
        let (funds, codes, words) = tokio::try_join!(
            self.node.funds(at, &accounts),
            self.node.codes(at, &unknown_code),
            self.node.words(at, &slots),
        )?;
        let codes = unknown_code.into_iter().zip(codes).collect();
        table_changes(touched, &funds, &codes, &words)
    }

    /// Sends a block's batches, as epoch `epoch` labelled `label`, to the
    /// tables `pairs`. A batch that does not fit its table grows the table
    /// ([`Follower::grow`]).
    async fn send(
        &self,
        pairs: &[(usize, usize)],
        epoch: u64,
        label: &Value,
        changes: &TableChanges,
    ) -> Result<(), Error> {
        let per_table: [&Vec<ChangeBody>; 3] = [&changes.accounts, &changes.storage, &changes.code];
        try_join_all(pairs.iter().map(|&(s, t)| {
            let request =
                UpdateRequest { sequence: epoch, changes: per_table[t].clone(), label: Some(label.clone()) };
            async move {
                match self.servers[s].tables[t].update(&request).await {
                    Ok(_) => Ok(()),
                    Err(morphogen_client::Error::Server { status: 409, code, .. })
                        if code == "table_full" =>
                    {
                        self.grow(s, t, request).await
                    }
                    Err(error) => Err(self.server_error(s, t, error)),
                }
            }
        }))
        .await?;
        Ok(())
    }

    /// Applies `batch`, which does not fit table `t` of server `s`, by
    /// growing the table to twice its pages: the server builds the larger
    /// table of its records with the batch applied and swaps to it as the
    /// batch's epoch, with the batch's label, while the old table answers.
    /// Every server of the table comes here with the same table and batch,
    /// so they grow it alike. Waits until the swap is done.
    async fn grow(&self, s: usize, t: usize, batch: UpdateRequest) -> Result<(), Error> {
        let admin = &self.servers[s].tables[t];
        let sequence = batch.sequence;
        let status = admin.status().await.map_err(|e| self.server_error(s, t, e))?;
        let pages_per_table = status.meta.sub_tables.first().copied().unwrap_or(1).saturating_mul(2);
        tracing::warn!(
            table = TABLE_NAMES[t],
            server = %self.servers[s].url,
            epoch = sequence,
            records = status.meta.records,
            pages_per_table,
            "the block does not fit the table: growing it to twice its pages"
        );
        let started = Instant::now();
        let changes = batch.changes.len();
        match admin.grow(&GrowRequest { pages_per_table, batch }).await {
            Ok(_) => {}
            // One under way already: a follower before this one asked for it.
            Err(morphogen_client::Error::Server { status: 409, code, .. }) if code == "swap_in_progress" => {}
            Err(error) => return Err(self.server_error(s, t, error)),
        }
        loop {
            tokio::time::sleep(GROW_POLL).await;
            let status = admin.status().await.map_err(|e| self.server_error(s, t, e))?;
            if status.meta.epoch >= sequence {
                self.metrics.grown(TABLE_NAMES[t]);
                tracing::info!(
                    table = TABLE_NAMES[t],
                    server = %self.servers[s].url,
                    epoch = status.meta.epoch,
                    records = status.meta.records,
                    free_rows = status.meta.free_rows,
                    changes,
                    seconds = started.elapsed().as_secs_f64(),
                    "the table grew"
                );
                return Ok(());
            }
            match status.snapshot_swap {
                Some(swap) if swap.sequence == sequence && swap.state == SwapState::Loading => {}
                Some(swap) if swap.sequence == sequence && swap.state == SwapState::Failed => {
                    return Err(Error::Chain(format!(
                        "server {}, table {}: growing the table failed: {}",
                        self.servers[s].url,
                        TABLE_NAMES[t],
                        swap.error.unwrap_or_default()
                    )));
                }
                // The server restarted and forgot it: the next step sends the block again.
                _ => {
                    return Err(Error::Interrupted(format!(
                        "server {} stopped growing table {} (restarted?)",
                        self.servers[s].url, TABLE_NAMES[t]
                    )));
                }
            }
        }
    }

    fn server_error(&self, server: usize, table: usize, error: morphogen_client::Error) -> Error {
        Error::Server { server: self.servers[server].url.clone(), table: TABLE_NAMES[table], source: error }
    }
}
