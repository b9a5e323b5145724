//! The simulator's replicated state machine: a register per key with compare-and-swap.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub type Key = u8;
pub type Value = u64;

/// A write as it travels through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCommand {
    Put {
        key: Key,
        value: Value,
    },
    /// Sets `key` to `new` if it currently holds `expected` (`None`: absent).
    Cas {
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

const TAG_PUT: u8 = 1;
const TAG_CAS: u8 = 2;
const TAG_CAS_ABSENT: u8 = 3;

impl KvCommand {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(18);
        match *self {
            KvCommand::Put { key, value } => {
                buf.put_u8(TAG_PUT);
                buf.put_u8(key);
                buf.put_u64(value);
            }
            KvCommand::Cas { key, expected, new } => {
                buf.put_u8(if expected.is_some() { TAG_CAS } else { TAG_CAS_ABSENT });
                buf.put_u8(key);
                buf.put_u64(new);
                buf.put_u64(expected.unwrap_or(0));
            }
        }
        buf.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Option<KvCommand> {
        if data.len() < 10 {
            return None;
        }
        let (tag, key, value) = (data.get_u8(), data.get_u8(), data.get_u64());
        match tag {
            TAG_PUT => Some(KvCommand::Put { key, value }),
            TAG_CAS | TAG_CAS_ABSENT if data.len() == 8 => {
                let expected = data.get_u64();
                let expected = (tag == TAG_CAS).then_some(expected);
                Some(KvCommand::Cas { key, expected, new: value })
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: BTreeMap<Key, Value>,
}

impl KvStore {
    /// Applies a command; for a CAS, returns whether it swapped.
    pub fn apply(&mut self, command: KvCommand) -> bool {
        match command {
            KvCommand::Put { key, value } => {
                self.values.insert(key, value);
                true
            }
            KvCommand::Cas { key, expected, new } => {
                if self.values.get(&key).copied() != expected {
                    return false;
                }
                self.values.insert(key, new);
                true
            }
        }
    }

    pub fn get(&self, key: Key) -> Option<Value> {
        self.values.get(&key).copied()
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.values.len() * 9);
        for (&key, &value) in &self.values {
            buf.put_u8(key);
            buf.put_u64(value);
        }
        buf.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Option<KvStore> {
        let mut values = BTreeMap::new();
        while data.len() >= 9 {
            values.insert(data.get_u8(), data.get_u64());
        }
        data.is_empty().then_some(KvStore { values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn commands_round_trip(key: u8, value: u64, expected: Option<u64>, cas: bool) {
            let command = if cas { KvCommand::Cas { key, expected, new: value } } else { KvCommand::Put { key, value } };
            prop_assert_eq!(KvCommand::decode(&command.encode()), Some(command));
        }
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut kv = KvStore::default();
        assert!(kv.apply(KvCommand::Cas { key: 1, expected: None, new: 5 }));
        assert!(!kv.apply(KvCommand::Cas { key: 1, expected: Some(4), new: 6 }));
        assert!(kv.apply(KvCommand::Cas { key: 1, expected: Some(5), new: 6 }));
        assert_eq!(KvStore::decode(&kv.encode()), Some(kv.clone()));
        assert_eq!(kv.get(1), Some(6));
    }
}
