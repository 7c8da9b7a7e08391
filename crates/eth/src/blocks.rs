//! Blocks as epoch labels name them. `morphogen eth follow` labels each
//! epoch with its block; a reorganisation adds an epoch that goes back to
//! an earlier block. The feeder and the JSON-RPC endpoint read the labels
//! alike here.

use serde_json::Value;

/// A block as a label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

/// The label field of an epoch that took the records back to an earlier
/// epoch (a reorganisation): that epoch's number. The rest of the label is
/// the block it went back to.
pub const REVERT_TO: &str = "revert_to";

/// The label field naming the block the node called `safe` when the
/// follower applied the labelled block (absent where the node named none).
pub const SAFE: &str = "safe";

/// The label field naming the block the node called `finalized` then.
pub const FINALIZED: &str = "finalized";

impl BlockRef {
    /// The block a label names (its `number` and `hash`), if it names one.
    pub fn of_label(label: &Value) -> Option<BlockRef> {
        let number = label.get("number")?.as_u64()?;
        let hash = hash(label.get("hash")?)?;
        Some(BlockRef { number, hash })
    }
}

/// A 32-byte hash written `0x` and 64 hex digits, as JSON-RPC writes them.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.strip_prefix("0x")?, &mut out).ok()?;
    Some(out)
}

/// A JSON string that is a hash ([`parse_hash`]).
fn hash(value: &Value) -> Option<[u8; 32]> {
    parse_hash(value.as_str()?)
}

/// The epochs of the chain the tables follow, newest first, from `epochs`
/// (each epoch and its label, oldest first): from the newest epoch, each
/// one whose block is the parent of the one after it. Epochs of blocks a
/// reorganisation abandoned are left out, and so is the older of two
/// epochs that hold one block (a revert holds the block it went back to).
/// An epoch without a label ends the walk: the block the tables were built
/// at (`base`, if given) holds it.
pub fn followed_chain(epochs: &[(u64, Option<&Value>)], base: Option<BlockRef>) -> Vec<(u64, BlockRef)> {
    let mut chain = Vec::new();
    let mut expected: Option<[u8; 32]> = None;
    for &(epoch, label) in epochs.iter().rev() {
        let Some(label) = label else {
            if let Some(base) = base.filter(|base| expected.is_none_or(|hash| hash == base.hash)) {
                chain.push((epoch, base));
            }
            break;
        };
        let Some(block) = BlockRef::of_label(label) else { continue };
        if expected.is_some_and(|hash| hash != block.hash) {
            continue;
        }
        chain.push((epoch, block));
        expected = label.get("parent_hash").and_then(hash);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(number: u64, hash: u8, parent: u8) -> Value {
        let hex = |byte: u8| format!("0x{}", hex::encode([byte; 32]));
        serde_json::json!({"number": number, "hash": hex(hash), "parent_hash": hex(parent)})
    }

    #[test]
    fn the_chain_followed_skips_abandoned_blocks_and_the_older_of_two_epochs_of_a_block() {
        // Blocks 1, 2, 3; then a revert to block 1 (epoch 4) and a new block 2 (0xb2).
        let labels = [
            label(1, 0x01, 0x00),
            label(2, 0x02, 0x01),
            label(3, 0x03, 0x02),
            label(1, 0x01, 0x00),
            label(2, 0xb2, 0x01),
        ];
        let mut epochs: Vec<(u64, Option<&Value>)> = vec![(0, None)];
        epochs.extend(labels.iter().enumerate().map(|(i, label)| (i as u64 + 1, Some(label))));
        let base = BlockRef { number: 0, hash: [0; 32] };
        let chain: Vec<(u64, u64, u8)> =
            followed_chain(&epochs, Some(base)).iter().map(|(e, b)| (*e, b.number, b.hash[0])).collect();
        assert_eq!(chain, [(5, 2, 0xb2), (4, 1, 0x01), (0, 0, 0x00)]);
        // Without a reorganisation every epoch is on it.
        let straight = followed_chain(&epochs[..4], Some(base));
        assert_eq!(straight.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [3, 2, 1, 0]);
        // A base the chain does not lead to is left out.
        let other = BlockRef { number: 0, hash: [9; 32] };
        assert_eq!(followed_chain(&epochs[..2], Some(other)).len(), 1);
    }
}
