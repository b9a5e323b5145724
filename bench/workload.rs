//! What each client sends next: the operation, its key, and its value.

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Zipf};

use crate::args::{Distribution, Plan, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Get,
    Cas,
    Append,
    SqlInsert,
    SqlQuery,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    /// Key number in 0..keys.
    pub key: u64,
}

pub struct Generator {
    workload: Workload,
    read_ratio: f64,
    keys: u64,
    zipf: Option<Zipf<f64>>,
    key_size: usize,
    value_size: usize,
    prefix: String,
}

impl Generator {
    /// `prefix` starts every key (a `--verify` run uses fresh keys).
    pub fn new(plan: &Plan, prefix: &str) -> Result<Generator, String> {
        let a = &plan.args;
        let zipf = match a.distribution {
            Distribution::Uniform => None,
            Distribution::Zipfian => {
                Some(Zipf::new(a.keys as f64, a.zipf_exponent).map_err(|e| format!("zipfian distribution: {e}"))?)
            }
        };
        if prefix.len() >= a.key_size {
            return Err(format!("--key-size {} leaves no room after the key prefix {prefix:?}", a.key_size));
        }
        Ok(Generator {
            workload: a.workload,
            read_ratio: a.read_ratio,
            keys: a.keys,
            zipf,
            key_size: a.key_size,
            value_size: a.value_size,
            prefix: prefix.to_string(),
        })
    }

    pub fn next(&self, rng: &mut ChaCha8Rng) -> Op {
        let kind = match self.workload {
            Workload::Put => OpKind::Put,
            Workload::Get => OpKind::Get,
            Workload::Mixed if rng.random::<f64>() < self.read_ratio => OpKind::Get,
            Workload::Mixed => OpKind::Put,
            Workload::Cas => OpKind::Cas,
            Workload::Append => OpKind::Append,
            Workload::SqlInsert => OpKind::SqlInsert,
            Workload::SqlQuery => OpKind::SqlQuery,
        };
        let key = match &self.zipf {
            // Zipf draws 1..=n, most often 1: key 0 is the hottest.
            Some(zipf) => (zipf.sample(rng) as u64).clamp(1, self.keys) - 1,
            None => rng.random_range(0..self.keys),
        };
        Op { kind, key }
    }

    /// Key number `n` as `key_size` bytes: the prefix, then the number zero-padded.
    pub fn key(&self, n: u64) -> Bytes {
        let width = self.key_size - self.prefix.len();
        Bytes::from(format!("{}{n:0width$}", self.prefix))
    }

    /// A value of `value_size` bytes starting with `id` (little-endian, as far as it
    /// fits), so a read tells which write it saw.
    pub fn value(&self, id: u64) -> Bytes {
        let mut value = BytesMut::with_capacity(self.value_size.max(8));
        value.put_u64_le(id);
        value.resize(self.value_size.max(8), b'x');
        value.truncate(self.value_size);
        value.freeze()
    }
}

/// The writer id a value starts with, if it is long enough to carry one.
pub fn value_id(value: &[u8]) -> Option<u64> {
    value.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;
    use rand::SeedableRng;

    fn generator(extra: &[&str]) -> Generator {
        let mut argv = vec!["quarry-bench", "--endpoints", "x:1"];
        argv.extend_from_slice(extra);
        Generator::new(&Args::parse_from(argv).check().unwrap(), "k").unwrap()
    }

    #[test]
    fn keys_and_values_have_the_asked_sizes_and_carry_ids() {
        let g = generator(&["--keys", "1000", "--key-size", "10", "--value-size", "256"]);
        assert_eq!(g.key(7), Bytes::from("k000000007"));
        let v = g.value(0xdead_beef);
        assert_eq!((v.len(), value_id(&v)), (256, Some(0xdead_beef)));
        let g = generator(&["--value-size", "3"]);
        assert_eq!(g.value(1).len(), 3);
    }

    #[test]
    fn mixed_reads_at_the_ratio_and_zipfian_favours_low_keys() {
        let g = generator(&["--workload", "mixed", "--read-ratio", "0.9", "--keys", "1000"]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let ops: Vec<Op> = (0..10_000).map(|_| g.next(&mut rng)).collect();
        let gets = ops.iter().filter(|o| o.kind == OpKind::Get).count();
        assert!((8_700..9_300).contains(&gets), "{gets} gets of 10,000");
        assert!(ops.iter().all(|o| o.key < 1000));
        let z = generator(&["--distribution", "zipfian", "--keys", "1000"]);
        let hot = (0..10_000).filter(|_| z.next(&mut rng).key < 10).count();
        assert!(hot > 3_000, "zipfian: {hot} of 10,000 on the 10 hottest keys");
    }
}
