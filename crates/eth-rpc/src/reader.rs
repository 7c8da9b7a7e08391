//! Reading Ethereum state through private lookups in the three tables of
//! two servers (`serve --tables eth.json`).

use std::sync::Arc;

use morphogen_client::{Client, Settings, fetch_catalog};
use morphogen_eth::{
    AccountValue, CODE_CHUNKS, EMPTY_CODE_HASH, FINALIZED, SAFE, TABLE_NAMES, code_chunk_key,
    code_from_chunks, followed_chain, storage_key,
};
use morphogen_protocol::Catalog;
use serde::Deserialize;

/// Why state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lookup failed (a server unreachable, overloaded past the deadline,
    /// or the two disagreeing).
    #[error(transparent)]
    Lookup(#[from] morphogen_client::Error),
    /// The servers do not hold Ethereum tables, or not the same chain and block.
    #[error("{0}")]
    Tables(String),
    /// A value read back is not what `morphogen eth build` writes.
    #[error("the tables hold a malformed {0}")]
    Malformed(String),
    /// The block asked for is not one the tables hold (too new, too old,
    /// or not on the chain they follow); the message says which they hold.
    #[error("{0}")]
    BlockUnavailable(String),
}

/// Reads tried again after the epoch resolved went away ([`StateReader::read_at`]).
const MOVED_RETRIES: u32 = 3;

/// Which block's state to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The newest block all three tables hold on both servers.
    Latest,
    /// The block of this number.
    Number(u64),
    /// The block of this hash (EIP-1898).
    Hash([u8; 32]),
    /// The block the node called safe, as of the newest block held.
    Safe,
    /// The block the node called finalized, as of the newest block held.
    Finalized,
}

/// A block the tables hold, and the epoch that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The block's number.
    pub number: u64,
    /// The epoch of every table that holds its state.
    pub epoch: u64,
}

/// Which chain and block the servers' tables hold (the manifest's fields,
/// published at `/v1/tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Chain {
    /// `eth_chainId`.
    pub chain_id: u64,
    /// `eth_blockNumber`.
    pub block_number: u64,
}

/// Reads accounts, storage and code privately from two servers.
#[derive(Debug)]
pub struct StateReader {
    chain: Chain,
    accounts: Client,
    storage: Client,
    code: Client,
    /// The blocks held as of the newest epoch they were listed at: the
    /// list changes only when that epoch does.
    blocks: std::sync::Mutex<Option<(u64, Arc<Blocks>)>>,
}

/// The blocks the tables hold.
#[derive(Debug)]
struct Blocks {
    /// Oldest first, each with its hash if its label names one.
    chain: Vec<(Held, Option<[u8; 32]>)>,
    /// The blocks the node called safe and finalized when the newest block
    /// that says so was applied.
    safe: Option<u64>,
    finalized: Option<u64>,
}

impl StateReader {
    /// Connects to the `accounts`, `storage` and `code` tables of both
    /// servers and checks that both hold the same chain at the same block.
    pub async fn connect(url_a: &str, url_b: &str, settings: &Settings) -> Result<StateReader, Error> {
        let (a, b) = tokio::try_join!(fetch_catalog(url_a, settings), fetch_catalog(url_b, settings))?;
        let chain_of = |url: &str, catalog: Catalog| -> Result<Chain, Error> {
            if let Some(missing) = TABLE_NAMES.iter().find(|name| !catalog.tables.iter().any(|t| t == *name))
            {
                return Err(Error::Tables(format!(
                    "{url} serves no {missing} table: serve the directory of `morphogen eth build` with --tables DIR/eth.json"
                )));
            }
            serde_json::from_value(catalog.about.into()).map_err(|e| {
                Error::Tables(format!("{url} does not say which chain and block its tables hold: {e}"))
            })
        };
        let chain = chain_of(url_a, a)?;
        let other = chain_of(url_b, b)?;
        if chain != other {
            return Err(Error::Tables(format!(
                "the servers hold different states: chain {} block {} at {url_a}, chain {} block {} at {url_b}",
                chain.chain_id, chain.block_number, other.chain_id, other.block_number
            )));
        }
        let [accounts, storage, code] = TABLE_NAMES;
        let (accounts, storage, code) = tokio::try_join!(
            Client::for_table(url_a, url_b, accounts, settings),
            Client::for_table(url_a, url_b, storage, settings),
            Client::for_table(url_a, url_b, code, settings),
        )?;
        Ok(StateReader { chain, accounts, storage, code, blocks: std::sync::Mutex::new(None) })
    }

    /// The chain and block the tables hold.
    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// The block `at` names, if the tables hold it. Each epoch of the
    /// tables is one block, named by its label (`morphogen eth follow`);
    /// epoch 0 without a label is the block the tables were built at.
    pub async fn resolve(&self, at: At) -> Result<Held, Error> {
        // The newest epoch every table has reached on both servers; each
        // table's epoch `e` is the same block.
        let (accounts, storage, code) =
            tokio::try_join!(self.accounts.epoch(), self.storage.epoch(), self.code.epoch())?;
        let latest = accounts.min(storage).min(code);
        let held = self.blocks(latest).await?;
        let blocks = &held.chain;
        let newest = blocks.last().map(|(block, _)| *block);
        let oldest = blocks.first().map(|(block, _)| *block);
        let Some((newest, oldest)) = newest.zip(oldest) else {
            return Err(Error::BlockUnavailable("the tables name no block they hold".to_string()));
        };
        let holding = || format!("these tables hold blocks {} to {}", oldest.number, newest.number);
        let (number, named) = match at {
            At::Latest => return Ok(newest),
            At::Hash(hash) => {
                return blocks.iter().rev().find(|(_, h)| *h == Some(hash)).map(|(b, _)| *b).ok_or_else(
                    || {
                        Error::BlockUnavailable(format!(
                            "block 0x{} is not held: {}",
                            hex::encode(hash),
                            holding()
                        ))
                    },
                );
            }
            At::Number(number) => (number, format!("block {number}")),
            At::Safe | At::Finalized => {
                let (tag, number) =
                    if at == At::Safe { ("safe", held.safe) } else { ("finalized", held.finalized) };
                let number = number.ok_or_else(|| {
                    Error::BlockUnavailable(format!(
                        "the node named no {tag} block as these tables took their blocks: {}",
                        holding()
                    ))
                })?;
                (number, format!("the {tag} block, {number},"))
            }
        };
        // The newest epoch of that number: the one on the chain followed.
        blocks.iter().rev().find(|(block, _)| block.number == number).map(|(b, _)| *b).ok_or_else(|| {
            let when = if number > newest.number { "not yet held" } else { "no longer held" };
            Error::BlockUnavailable(format!("{named} is {when}: {}", holding()))
        })
    }

    /// The blocks held up to epoch `latest`, from the labels both servers
    /// list (every table's epoch `e` is one block).
    async fn blocks(&self, latest: u64) -> Result<Arc<Blocks>, Error> {
        if let Some((at, blocks)) =
            self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
            && *at == latest
        {
            return Ok(blocks.clone());
        }
        // An epoch is held where every table can answer as of it (each
        // keeps its own window and rewind budget).
        let (entries, storage, code) =
            tokio::try_join!(self.accounts.epochs(0), self.storage.epochs(0), self.code.epochs(0))?;
        let in_all = |epoch: u64| {
            [&storage, &code]
                .iter()
                .all(|list| list.binary_search_by_key(&epoch, |entry| entry.epoch).is_ok())
        };
        let labels: Vec<(u64, Option<&serde_json::Value>)> = entries
            .iter()
            .filter(|entry| entry.epoch <= latest && in_all(entry.epoch))
            .map(|entry| (entry.epoch, entry.label.as_ref()))
            .collect();
        // The chain the labels follow, abandoned blocks left out; and the
        // tables' first epoch, unlabelled, holds the block they were built
        // at (whose hash the manifest does not say).
        let followed = followed_chain(&labels, None);
        // The node's safe and finalized blocks, as the newest label that names them says.
        let tag = |field: &str| {
            followed.iter().find_map(|(epoch, _)| {
                let label = labels.iter().find(|(e, _)| e == epoch)?.1?;
                label.get(field)?.as_u64()
            })
        };
        let (safe, finalized) = (tag(SAFE), tag(FINALIZED));
        let mut chain: Vec<(Held, Option<[u8; 32]>)> = followed
            .into_iter()
            .map(|(epoch, block)| (Held { number: block.number, epoch }, Some(block.hash)))
            .collect();
        let built = self.chain.block_number;
        if labels.first().is_some_and(|&(epoch, label)| epoch == 0 && label.is_none())
            && chain.last().is_none_or(|(held, _)| held.number == built + 1)
        {
            chain.push((Held { number: built, epoch: 0 }, None));
        }
        chain.reverse();
        let blocks = Arc::new(Blocks { chain, safe, finalized });
        *self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((latest, blocks.clone()));
        Ok(blocks)
    }

    /// The account at `address` as of `at`; one that does not exist reads
    /// as a node reads it: zero balance, zero nonce, no code.
    pub async fn account_at(&self, address: &[u8; 20], at: Held) -> Result<AccountValue, Error> {
        match self.accounts.get_at(address, at.epoch).await? {
            Some(value) => AccountValue::decode(&value).map_err(|_| Error::Malformed("account".to_string())),
            None => Ok(AccountValue { balance: [0; 32], nonce: 0, code_hash: EMPTY_CODE_HASH }),
        }
    }

    /// The word in `slot` of `address` as of `at` (zero if never written).
    pub async fn storage_at(&self, address: &[u8; 20], slot: &[u8; 32], at: Held) -> Result<[u8; 32], Error> {
        match self.storage.get_at(&storage_key(address, slot), at.epoch).await? {
            Some(value) => value
                .get(..32)
                .and_then(|word| word.try_into().ok())
                .ok_or(Error::Malformed("storage word".into())),
            None => Ok([0; 32]),
        }
    }

    /// The code of `address` as of `at`: its account, then all
    /// [`CODE_CHUNKS`] chunk keys of its code hash in one request, whatever
    /// the code's length (an account without code asks for the chunks of
    /// the empty code, which no table holds), so that the lookups are the
    /// same for every account.
    pub async fn code_at(&self, address: &[u8; 20], at: Held) -> Result<Vec<u8>, Error> {
        let account = self.account_at(address, at).await?;
        let keys: Vec<[u8; 34]> =
            (0..CODE_CHUNKS).map(|index| code_chunk_key(&account.code_hash, index)).collect();
        let chunks = self.code.get_many_at(&keys, at.epoch).await?;
        if account.code_hash == EMPTY_CODE_HASH {
            return Ok(Vec::new());
        }
        code_from_chunks(&account.code_hash, &chunks).map_err(Error::Malformed)
    }

    /// Reads with `read` as of the block `at` names. If the epoch resolved
    /// went away before the read reached a server (a table swapped to a
    /// snapshot that starts later, grown by the follower; the epoch left a
    /// window), `at` is resolved again and read again: the newest block for
    /// `latest`, an error naming the blocks held for a block no longer held.
    pub async fn read_at<T, F, R>(&self, at: At, read: F) -> Result<T, Error>
    where
        F: Fn(Held) -> R,
        R: std::future::Future<Output = Result<T, Error>>,
    {
        let mut tries = 0;
        loop {
            match read(self.resolve(at).await?).await {
                Err(Error::Lookup(morphogen_client::Error::Server { status: 410, code, .. }))
                    if tries < MOVED_RETRIES
                        && (code == "epoch_unavailable" || code == "snapshot_changed") =>
                {
                    // Every table's epoch read anew: the newest block all
                    // three hold may have moved with the one that refused.
                    for table in [&self.accounts, &self.storage, &self.code] {
                        table.forget_meta();
                    }
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    /// The account at `address` in the newest block held.
    pub async fn account(&self, address: &[u8; 20]) -> Result<AccountValue, Error> {
        self.read_at(At::Latest, |at| self.account_at(address, at)).await
    }

    /// The word in `slot` of `address` in the newest block held.
    pub async fn storage(&self, address: &[u8; 20], slot: &[u8; 32]) -> Result<[u8; 32], Error> {
        self.read_at(At::Latest, |at| self.storage_at(address, slot, at)).await
    }

    /// The code of `address` in the newest block held.
    pub async fn code(&self, address: &[u8; 20]) -> Result<Vec<u8>, Error> {
        self.read_at(At::Latest, |at| self.code_at(address, at)).await
    }
}
