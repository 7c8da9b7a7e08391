//! Reading Ethereum state through private lookups in the three tables of
//! two servers (`serve --tables eth.json`).

use morphogen_client::{Client, Settings, fetch_catalog};
use morphogen_eth::{
    AccountValue, CODE_CHUNKS, EMPTY_CODE_HASH, TABLE_NAMES, code_chunk_key, code_from_chunks, storage_key,
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
        Ok(StateReader { chain, accounts, storage, code })
    }

    /// The chain and block the tables hold.
    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// The account at `address`; one that does not exist reads as a node
    /// reads it: zero balance, zero nonce, no code.
    pub async fn account(&self, address: &[u8; 20]) -> Result<AccountValue, Error> {
        match self.accounts.get(address).await? {
            Some(value) => AccountValue::decode(&value).map_err(|_| Error::Malformed("account".to_string())),
            None => Ok(AccountValue { balance: [0; 32], nonce: 0, code_hash: EMPTY_CODE_HASH }),
        }
    }

    /// The word in `slot` of `address` (zero if never written).
    pub async fn storage(&self, address: &[u8; 20], slot: &[u8; 32]) -> Result<[u8; 32], Error> {
        match self.storage.get(&storage_key(address, slot)).await? {
            Some(value) => value
                .get(..32)
                .and_then(|word| word.try_into().ok())
                .ok_or(Error::Malformed("storage word".into())),
            None => Ok([0; 32]),
        }
    }

    /// The code of `address`: its account, then all [`CODE_CHUNKS`] chunk
    /// keys of its code hash in one request, whatever the code's length
    /// (an account without code asks for the chunks of the empty code,
    /// which no table holds), so that the lookups are the same for every
    /// account.
    pub async fn code(&self, address: &[u8; 20]) -> Result<Vec<u8>, Error> {
        let account = self.account(address).await?;
        let keys: Vec<[u8; 34]> =
            (0..CODE_CHUNKS).map(|index| code_chunk_key(&account.code_hash, index)).collect();
        let chunks = self.code.get_many(&keys).await?;
        if account.code_hash == EMPTY_CODE_HASH {
            return Ok(Vec::new());
        }
        code_from_chunks(&account.code_hash, &chunks).map_err(Error::Malformed)
    }
}
