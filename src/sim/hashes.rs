//! Prefix hashes of a replica's log, so the checker compares whole logs in O(1).

use std::hash::{Hash, Hasher};

use crate::raft::{Entry, Index, Term};

/// Hash of a log prefix ending at an entry: equal hashes mean equal prefixes.
pub fn chain_hash(prev: u64, entry: &Entry) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (prev, entry.index, entry.term, &entry.payload).hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Debug)]
pub struct LogHashes {
    /// Index of `chain[0]` (the snapshot index).
    pub base: Index,
    /// Invariant: never empty.
    pub chain: Vec<u64>,
}

impl Default for LogHashes {
    fn default() -> Self {
        LogHashes { base: 0, chain: vec![0] }
    }
}

impl LogHashes {
    pub fn at(&self, index: Index) -> Option<u64> {
        index.checked_sub(self.base).and_then(|k| self.chain.get(k as usize)).copied()
    }

    pub fn last_index(&self) -> Index {
        self.base + self.chain.len() as u64 - 1
    }

    pub fn reset(&mut self, base: Index, base_hash: u64) {
        self.base = base;
        self.chain = vec![base_hash];
    }

    /// Appends entries (truncating a conflicting suffix); returns each new prefix hash.
    pub fn append(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Term, u64)>, String> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        if first.index <= self.base || first.index > self.last_index() + 1 {
            return Err(format!(
                "entries from {} written to a log hashed {}..={}",
                first.index,
                self.base,
                self.last_index()
            ));
        }
        self.chain.truncate((first.index - self.base) as usize);
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let hash = chain_hash(*self.chain.last().expect("chain has a base"), entry);
            self.chain.push(hash);
            out.push((entry.index, entry.term, hash));
        }
        Ok(out)
    }

    /// Forgets hashes below `index` (the log was compacted there).
    pub fn compact(&mut self, index: Index) {
        if index > self.base && index <= self.last_index() {
            self.chain.drain(..(index - self.base) as usize);
            self.base = index;
        }
    }
}
