//! The state to serve: accounts with balance, nonce, code and storage, from
//! a geth genesis file (`alloc`) or a geth state dump (one JSON account per
//! line), parsed strictly: every error names the account and the field.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde_json::{Map, Value};

/// One account of the state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Its address.
    pub address: [u8; 20],
    /// Balance in wei, a 256-bit big-endian number.
    pub balance: [u8; 32],
    /// Transactions sent (or contracts created).
    pub nonce: u64,
    /// Contract bytecode; empty for an externally owned account.
    pub code: Vec<u8>,
    /// Non-zero storage words by slot.
    pub storage: BTreeMap<[u8; 32], [u8; 32]>,
}

/// Which chain and block the state is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// `config.chainId` of the genesis file.
    pub chain_id: u64,
    /// The block the state is as of: the genesis block's `number`, or the
    /// block a state dump was taken at.
    pub block_number: u64,
}

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The genesis file is not a genesis file.
    #[error("the genesis file: {0}")]
    Genesis(String),
    /// A line of the state dump is not JSON, or not an account.
    #[error("state dump line {line}: {message}")]
    DumpLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// An account's field is malformed.
    #[error("account {account}: {message}")]
    Account {
        /// The address as written.
        account: String,
        /// The field and what is wrong with it.
        message: String,
    },
    /// The same address twice.
    #[error("account {0} appears twice")]
    Duplicate(String),
    /// Reading the input failed.
    #[error("reading the state dump: {0}")]
    Io(#[from] std::io::Error),
    /// Building or writing the tables failed.
    #[error("{0}")]
    Write(String),
}

/// Reads a genesis file: its chain and block, and its `alloc` accounts.
pub fn read_genesis(text: &str) -> Result<(Chain, Vec<Account>), Error> {
    let genesis: Value = serde_json::from_str(text).map_err(|e| Error::Genesis(e.to_string()))?;
    let genesis = genesis.as_object().ok_or_else(|| Error::Genesis("not a JSON object".to_string()))?;
    let config = genesis.get("config").and_then(Value::as_object);
    let chain_id = config
        .and_then(|config| config.get("chainId"))
        .ok_or_else(|| Error::Genesis("no config.chainId".to_string()))
        .and_then(|id| quantity_u64(id).map_err(|e| Error::Genesis(format!("config.chainId: {e}"))))?;
    let block_number = match genesis.get("number") {
        Some(number) => quantity_u64(number).map_err(|e| Error::Genesis(format!("number: {e}")))?,
        None => 0,
    };
    let alloc = genesis
        .get("alloc")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Genesis("no alloc object".to_string()))?;
    let mut accounts = Vec::with_capacity(alloc.len());
    for (address, fields) in alloc {
        let fields = fields.as_object().ok_or_else(|| account_error(address, "is not a JSON object"))?;
        accounts.push(account(address, fields, Dialect::Genesis)?);
    }
    refuse_duplicates(&accounts)?;
    Ok((Chain { chain_id, block_number }, accounts))
}

/// Reads a geth state dump (`geth dump --iterative`): one JSON account per
/// line with its `address`; a line with only `root` (the dump's first) and
/// blank lines are skipped.
pub fn read_dump(reader: impl BufRead) -> Result<Vec<Account>, Error> {
    let mut accounts = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let dump_error = |message: String| Error::DumpLine { line: line_number, message };
        let value: Value = serde_json::from_str(&line).map_err(|e| dump_error(e.to_string()))?;
        let fields = value.as_object().ok_or_else(|| dump_error("not a JSON object".to_string()))?;
        if fields.len() == 1 && fields.contains_key("root") {
            continue;
        }
        let address = match fields.get("address") {
            Some(Value::String(address)) => address,
            _ => {
                return Err(dump_error(
                    "no address (the dump holds only its hash: dump with address preimages)".to_string(),
                ));
            }
        };
        accounts.push(account(address, fields, Dialect::Dump)?);
    }
    refuse_duplicates(&accounts)?;
    Ok(accounts)
}

/// Where an account comes from: the two write storage words differently.
#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    /// Words are `0x`-prefixed hex.
    Genesis,
    /// Words are minimal hex without `0x` (geth's dump); `0x` is accepted too.
    Dump,
}

fn account(address: &str, fields: &Map<String, Value>, dialect: Dialect) -> Result<Account, Error> {
    let fail = |field: &str, message: String| account_error(address, format!("{field}: {message}"));
    let parsed_address = parse_address(address).map_err(|e| fail("address", e))?;
    let balance = match fields.get("balance") {
        Some(Value::String(text)) => parse_u256(text).map_err(|e| fail("balance", e))?,
        Some(Value::Number(number)) => parse_u256(&number.to_string()).map_err(|e| fail("balance", e))?,
        Some(_) => return Err(fail("balance", "is not a number or a string".to_string())),
        None => [0; 32],
    };
    let nonce = match fields.get("nonce") {
        Some(nonce) => quantity_u64(nonce).map_err(|e| fail("nonce", e))?,
        None => 0,
    };
    let code = match fields.get("code") {
        Some(Value::String(text)) => parse_bytes(text).map_err(|e| fail("code", e))?,
        Some(_) => return Err(fail("code", "is not a hex string".to_string())),
        None => Vec::new(),
    };
    let mut storage = BTreeMap::new();
    match fields.get("storage") {
        Some(Value::Object(words)) => {
            for (slot, word) in words {
                let slot_bytes =
                    parse_word(slot, true).map_err(|e| fail(&format!("storage slot {slot}"), e))?;
                let word = word
                    .as_str()
                    .ok_or_else(|| "is not a hex string".to_string())
                    .and_then(|text| parse_word(text, dialect == Dialect::Genesis))
                    .map_err(|e| fail(&format!("storage slot {slot}"), e))?;
                // A zero word is an empty slot, as a node reads it.
                if word != [0; 32] && storage.insert(slot_bytes, word).is_some() {
                    return Err(fail(&format!("storage slot {slot}"), "appears twice".to_string()));
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => return Err(fail("storage", "is not an object".to_string())),
    }
    Ok(Account { address: parsed_address, balance, nonce, code, storage })
}

fn account_error(account: &str, message: impl Into<String>) -> Error {
    Error::Account { account: account.to_string(), message: message.into() }
}

fn refuse_duplicates(accounts: &[Account]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::with_capacity(accounts.len());
    for account in accounts {
        if !seen.insert(account.address) {
            return Err(Error::Duplicate(format!("0x{}", hex::encode(account.address))));
        }
    }
    Ok(())
}

/// An address: 40 hex digits, with or without `0x` (genesis files write
/// both).
pub(crate) fn parse_address(text: &str) -> Result<[u8; 20], String> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if digits.len() != 40 {
        return Err(format!("an address is 40 hex digits, not {}", digits.len()));
    }
    let mut address = [0u8; 20];
    hex::decode_to_slice(digits, &mut address).map_err(|e| e.to_string())?;
    Ok(address)
}

/// A 256-bit number: `0x` and 1 to 64 hex digits, or decimal digits.
pub(crate) fn parse_u256(text: &str) -> Result<[u8; 32], String> {
    if let Some(digits) = text.strip_prefix("0x") {
        return left_padded(digits, "hex digits");
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a decimal or 0x-hex number"));
    }
    let mut number = [0u8; 32];
    for digit in text.bytes().map(|b| b - b'0') {
        // number = number * 10 + digit, big-endian, with the carry out checked.
        let mut carry = u16::from(digit);
        for byte in number.iter_mut().rev() {
            let product = u16::from(*byte) * 10 + carry;
            *byte = product as u8;
            carry = product >> 8;
        }
        if carry != 0 {
            return Err(format!("{text} does not fit in 256 bits"));
        }
    }
    Ok(number)
}

/// A 64-bit quantity: a JSON number, or a string of decimal digits or `0x`
/// and hex digits.
pub(crate) fn quantity_u64(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(number) => {
            number.as_u64().ok_or_else(|| format!("{number} is not a 64-bit unsigned number"))
        }
        Value::String(text) => {
            let parsed = match text.strip_prefix("0x") {
                Some(digits) if !digits.is_empty() => u64::from_str_radix(digits, 16),
                Some(_) => return Err("\"0x\" has no digits".to_string()),
                None if text.bytes().all(|b| b.is_ascii_digit()) => text.parse::<u64>(),
                None => return Err(format!("{text:?} is not a decimal or 0x-hex number")),
            };
            parsed.map_err(|e| format!("{text:?}: {e}"))
        }
        _ => Err("is not a number or a string".to_string()),
    }
}

/// A storage slot or word: 1 to 64 hex digits, left-padded to 32 bytes;
/// `0x` required if `prefixed`, optional otherwise.
pub(crate) fn parse_word(text: &str, prefixed: bool) -> Result<[u8; 32], String> {
    match text.strip_prefix("0x") {
        Some(digits) => left_padded(digits, "hex digits after 0x"),
        None if !prefixed => left_padded(text, "hex digits"),
        None => Err(format!("{text:?} does not start with 0x")),
    }
}

/// Bytes: `0x` and an even number of hex digits (`0x` alone is empty).
pub(crate) fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("0x").ok_or_else(|| "does not start with 0x".to_string())?;
    hex::decode(digits).map_err(|e| e.to_string())
}

fn left_padded(digits: &str, what: &str) -> Result<[u8; 32], String> {
    if digits.is_empty() || digits.len() > 64 {
        return Err(format!("1 to 64 {what} expected, got {}", digits.len()));
    }
    let mut even = String::with_capacity(64);
    for _ in digits.len()..64 {
        even.push('0');
    }
    even.push_str(digits);
    let mut word = [0u8; 32];
    hex::decode_to_slice(&even, &mut word).map_err(|e| e.to_string())?;
    Ok(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decimal_and_hex_agree_with_the_native_parser(n in any::<u128>(), shift in 0u32..128) {
            let n = n >> shift;
            prop_assert_eq!(parse_u256(&n.to_string()).unwrap(), u256(n));
            prop_assert_eq!(parse_u256(&format!("0x{n:x}")).unwrap(), u256(n));
        }
    }

    fn u256(n: u128) -> [u8; 32] {
        let mut word = [0u8; 32];
        word[16..].copy_from_slice(&n.to_be_bytes());
        word
    }

    #[test]
    fn numbers_parse_in_decimal_and_hex_and_refuse_overflow() {
        assert_eq!(parse_u256("0").unwrap(), [0; 32]);
        assert_eq!(parse_u256("1000000000000000000").unwrap(), u256(1_000_000_000_000_000_000));
        assert_eq!(parse_u256("0xde0b6b3a7640000").unwrap(), u256(1_000_000_000_000_000_000));
        let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        assert_eq!(parse_u256(max).unwrap(), [0xff; 32]);
        assert!(
            parse_u256("115792089237316195423570985008687907853269984665640564039457584007913129639936")
                .is_err()
        );
        assert!(parse_u256(&format!("0x1{}", "0".repeat(64))).is_err());
        for bad in ["", "0x", "-1", "1e18", " 1", "0xg"] {
            assert!(parse_u256(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quantity_u64(&serde_json::json!("0x10")).unwrap(), 16);
        assert_eq!(quantity_u64(&serde_json::json!(7)).unwrap(), 7);
        assert!(quantity_u64(&serde_json::json!(-1)).is_err());
        assert!(quantity_u64(&serde_json::json!("0x1ffffffffffffffff")).is_err());
    }

    #[test]
    fn addresses_and_words_are_exact() {
        let address = "0x7df9a875a174b3bc565e6424a0050ebc1b2d1d82";
        assert_eq!(parse_address(address).unwrap(), parse_address(&address[2..]).unwrap());
        assert!(parse_address("0x7df9a875a174b3bc565e6424a0050ebc1b2d1d8").is_err());
        assert!(parse_address("0x7df9a875a174b3bc565e6424a0050ebc1b2d1d8z").is_err());
        assert_eq!(parse_word("0x01", true).unwrap(), u256(1));
        assert_eq!(parse_word("01", false).unwrap(), u256(1));
        assert!(parse_word("01", true).is_err());
        assert_eq!(parse_bytes("0x").unwrap(), Vec::<u8>::new());
        assert!(parse_bytes("0x123").is_err());
    }
}
