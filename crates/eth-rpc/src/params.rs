//! Parameters of the state methods, read as strictly as a node reads them:
//! `0x`-prefixed hex everywhere, addresses of exactly 20 bytes, slots of 1
//! to 32 bytes, and blocks by tag, number or hash.

use serde_json::Value;

use crate::jsonrpc::{RpcError, STATE_UNAVAILABLE};
use crate::reader::At;

/// The positional parameters of a call: `names` gives each one's name for
/// messages; the last `optional` of them may be left out.
pub fn positional<'a>(
    params: &'a Value,
    names: &[&str],
    optional: usize,
) -> Result<Vec<&'a Value>, RpcError> {
    let given: &[Value] = match params {
        Value::Array(values) => values,
        Value::Null => &[],
        _ => return Err(RpcError::params(format!("expected an array of parameters [{}]", names.join(", ")))),
    };
    let required = names.len() - optional;
    if given.len() < required || given.len() > names.len() {
        let count =
            if optional == 0 { format!("{required}") } else { format!("{required} or {}", names.len()) };
        return Err(RpcError::params(format!(
            "expected {count} parameters [{}], got {}",
            names.join(", "),
            given.len()
        )));
    }
    Ok(given.iter().collect())
}

/// A 20-byte address: `0x` and 40 hex digits (either case).
pub fn address(value: &Value) -> Result<[u8; 20], RpcError> {
    let digits = hex_digits(value, "address")?;
    let mut address = [0u8; 20];
    if digits.len() != 40 || hex::decode_to_slice(digits, &mut address).is_err() {
        return Err(RpcError::params("address: expected 0x and 40 hex digits"));
    }
    Ok(address)
}

/// A storage slot: `0x` and 1 to 64 hex digits, as a 32-byte word.
pub fn slot(value: &Value) -> Result<[u8; 32], RpcError> {
    let digits = hex_digits(value, "slot")?;
    if digits.is_empty() || digits.len() > 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RpcError::params("slot: expected 0x and 1 to 64 hex digits"));
    }
    let padded = format!("{digits:0>64}");
    let mut slot = [0u8; 32];
    hex::decode_to_slice(padded, &mut slot).expect("64 hex digits");
    Ok(slot)
}

/// The block a block parameter names: the tag `latest` (or none), a
/// number, or an EIP-1898 object naming a number or a hash. The tags of
/// state the tables never hold are refused, each with why.
pub fn block(value: Option<&Value>) -> Result<At, RpcError> {
    match value {
        None | Some(Value::Null) => Ok(At::Latest),
        Some(Value::String(tag)) if tag == "latest" => Ok(At::Latest),
        Some(Value::String(text)) if text.starts_with("0x") => Ok(At::Number(quantity(text, "block")?)),
        Some(Value::String(tag)) if tag == "earliest" => Err(unavailable(
            "the block tag \"earliest\": these tables hold the recent blocks of their epoch window only",
        )),
        Some(Value::String(tag)) if tag == "pending" => Err(unavailable(
            "the block tag \"pending\": these tables hold mined blocks only; ask for \"latest\"",
        )),
        Some(Value::String(tag)) if tag == "safe" => Ok(At::Safe),
        Some(Value::String(tag)) if tag == "finalized" => Ok(At::Finalized),
        Some(Value::Object(object)) => match (object.get("blockNumber"), object.get("blockHash")) {
            (Some(Value::String(text)), None) => Ok(At::Number(quantity(text, "blockNumber")?)),
            (None, Some(Value::String(text))) => Ok(At::Hash(hash(text)?)),
            _ => Err(RpcError::params("block: an object names either blockNumber or blockHash")),
        },
        Some(_) => Err(RpcError::params("block: expected a tag (\"latest\") or a 0x-hex block number")),
    }
}

/// A block hash: `0x` and 64 hex digits.
fn hash(text: &str) -> Result<[u8; 32], RpcError> {
    morphogen_eth::parse_hash(text)
        .ok_or_else(|| RpcError::params("blockHash: expected 0x and 64 hex digits"))
}

fn unavailable(what: &str) -> RpcError {
    RpcError::new(STATE_UNAVAILABLE, format!("{what} is not available"))
}

/// A quantity: `0x` and 1 to 16 hex digits without leading zeros (`0x0`
/// for zero).
fn quantity(text: &str, what: &str) -> Result<u64, RpcError> {
    let digits = text.strip_prefix("0x").unwrap_or_default();
    let canonical = digits == "0" || (!digits.is_empty() && !digits.starts_with('0'));
    match u64::from_str_radix(digits, 16) {
        Ok(number) if canonical && digits.len() <= 16 => Ok(number),
        _ => Err(RpcError::params(format!(
            "{what}: expected a quantity, 0x and hex digits without leading zeros"
        ))),
    }
}

/// The digits of a `0x`-prefixed hex string parameter.
fn hex_digits<'a>(value: &'a Value, what: &str) -> Result<&'a str, RpcError> {
    match value {
        Value::String(text) => text
            .strip_prefix("0x")
            .ok_or_else(|| RpcError::params(format!("{what}: expected a 0x-prefixed hex string"))),
        _ => Err(RpcError::params(format!("{what}: expected a 0x-prefixed hex string"))),
    }
}

/// `bytes` as a quantity: big-endian, without leading zeros (`0x0`).
pub fn format_quantity(bytes: &[u8]) -> String {
    let digits = hex::encode(bytes);
    let trimmed = digits.trim_start_matches('0');
    format!("0x{}", if trimmed.is_empty() { "0" } else { trimmed })
}

/// `bytes` as data: `0x` and two hex digits per byte.
pub fn format_data(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::INVALID_PARAMS;
    use serde_json::json;

    #[test]
    fn addresses_and_slots_are_strict() {
        let address_hex = "0x00000000000000000000000000000000000000aB";
        assert_eq!(address(&json!(address_hex)).unwrap()[19], 0xab);
        for bad in [
            json!("00000000000000000000000000000000000000ab"),
            json!("0x00ab"),
            json!("0xzz00000000000000000000000000000000000000"),
            json!(5),
        ] {
            assert_eq!(address(&bad).unwrap_err().code, INVALID_PARAMS, "{bad}");
        }
        assert_eq!(slot(&json!("0x1")).unwrap()[31], 1);
        assert_eq!(slot(&json!(format!("0x{}", "f".repeat(64)))).unwrap(), [0xff; 32]);
        for bad in [json!("0x"), json!("1"), json!(format!("0x{}", "0".repeat(65))), json!("0xg")] {
            assert_eq!(slot(&bad).unwrap_err().code, INVALID_PARAMS, "{bad}");
        }
    }

    #[test]
    fn blocks_are_named_by_tag_number_or_hash() {
        for latest in [None, Some(json!(null)), Some(json!("latest"))] {
            assert_eq!(block(latest.as_ref()), Ok(At::Latest), "{latest:?}");
        }
        assert_eq!(block(Some(&json!("0x2a"))), Ok(At::Number(42)));
        assert_eq!(block(Some(&json!({"blockNumber": "0x2a"}))), Ok(At::Number(42)));
        let hash = format!("0x{}", "ab".repeat(32));
        assert_eq!(block(Some(&json!({"blockHash": hash}))), Ok(At::Hash([0xab; 32])));
        assert_eq!(block(Some(&json!("safe"))), Ok(At::Safe));
        assert_eq!(block(Some(&json!("finalized"))), Ok(At::Finalized));
        for (never, why) in [("earliest", "epoch window"), ("pending", "mined blocks only")] {
            let error = block(Some(&json!(never))).unwrap_err();
            assert_eq!(error.code, STATE_UNAVAILABLE, "{never}");
            assert!(error.message.contains(why), "{}", error.message);
        }
        for bad in [
            json!("0x02a"),
            json!("0x"),
            json!("42"),
            json!(42),
            json!("newest"),
            json!({}),
            json!({"blockHash": "0x00"}),
        ] {
            assert_eq!(block(Some(&bad)).unwrap_err().code, INVALID_PARAMS, "{bad}");
        }
    }

    #[test]
    fn positional_parameters_are_counted() {
        let names = ["address", "block"];
        assert_eq!(positional(&json!(["a"]), &names, 1).unwrap().len(), 1);
        assert_eq!(positional(&json!(["a", "b"]), &names, 1).unwrap().len(), 2);
        for bad in [json!([]), json!(["a", "b", "c"]), json!({"address": "a"})] {
            assert_eq!(positional(&bad, &names, 1).unwrap_err().code, INVALID_PARAMS, "{bad}");
        }
    }

    #[test]
    fn quantities_have_no_leading_zeros() {
        assert_eq!(format_quantity(&[0; 32]), "0x0");
        assert_eq!(format_quantity(&[0, 0, 1, 0]), "0x100");
        assert_eq!(format_data(&[0, 0xab]), "0x00ab");
        assert_eq!(format_data(&[]), "0x");
    }
}
