//! One conformance suite for every `LogStore`: the in-memory reference and the shard
//! log must answer every read identically after the same writes — and the shard log
//! must answer the same again after a flush and a reopen.

mod common;

use bytes::Bytes;
use quarry::log::{LogError, LogStore, MemLogStore, ShardLog};
use quarry::raft::{ConfState, Entry, EntryPayload, HardState, SnapshotMeta, StorageError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::{dump, entry, run_glommio, small_config, TempDir};

/// Behaviour every store must show, checked directly.
fn contract(store: &mut dyn LogStore) {
    store.append(1, &[entry(1, 1, 10), entry(2, 1, 11), entry(3, 2, 12)]).unwrap();
    store.append(2, &[entry(1, 1, 20)]).unwrap();
    assert_eq!((store.first_index(1), store.last_index(1)), (1, 3));
    assert_eq!(store.term(1, 3), Ok(2));
    assert_eq!(store.term(1, 0), Ok(0), "index 0 is the sentinel");
    assert_eq!(store.term(1, 4), Err(StorageError::Unavailable));
    assert_eq!(store.entries(1, 1, 4, u64::MAX).unwrap().len(), 3);
    assert_eq!(store.entries(1, 1, 4, 1).unwrap().len(), 1, "at least one entry within a tiny limit");

    // A follower's conflict truncates only that group's suffix.
    store.append(1, &[entry(2, 3, 13)]).unwrap();
    assert_eq!(store.last_index(1), 2);
    assert_eq!(store.term(1, 2), Ok(3));
    assert_eq!(store.last_index(2), 1);

    // Gaps and non-contiguous appends are refused, changing nothing.
    assert!(matches!(store.append(1, &[entry(5, 3, 0)]), Err(LogError::Gap { .. })));
    assert!(store.append(1, &[entry(3, 3, 0), entry(5, 3, 0)]).is_err());
    assert_eq!(store.last_index(1), 2);

    let hs = HardState { term: 3, vote: Some(2), commit: 2 };
    store.set_hard_state(1, hs).unwrap();
    assert_eq!(store.hard_state(1), hs);
    assert_eq!(store.hard_state(2), HardState::default());

    // Compaction releases entries up to the snapshot and keeps the rest.
    store.append(1, &[entry(3, 3, 14), entry(4, 3, 15)]).unwrap();
    let meta = SnapshotMeta { index: 2, term: 3, conf_state: ConfState::new([1, 2, 3]) };
    store.compact(1, meta.clone()).unwrap();
    assert_eq!(store.first_index(1), 3);
    assert_eq!(store.term(1, 2), Ok(3));
    assert_eq!(store.term(1, 1), Err(StorageError::Compacted));
    assert_eq!(store.entries(1, 1, 5, u64::MAX), Err(StorageError::Compacted));
    assert_eq!(store.entries(1, 3, 5, u64::MAX).unwrap().len(), 2);
    assert_eq!(store.snapshot_meta(1), meta);
    let wrong_term = SnapshotMeta { index: 4, term: 9, ..meta };
    assert!(store.compact(1, wrong_term).is_err());

    // Installing a snapshot from the leader replaces the whole log.
    let installed = SnapshotMeta { index: 10, term: 4, conf_state: ConfState::new([1, 2]) };
    store.install_snapshot(2, installed.clone()).unwrap();
    assert_eq!((store.first_index(2), store.last_index(2)), (11, 10));
    assert_eq!(store.term(2, 10), Ok(4));
    assert_eq!(store.hard_state(2).commit, 10);
    store.append(2, &[entry(11, 4, 21)]).unwrap();
    assert_eq!(store.last_index(2), 11);
}

#[test]
fn memory_store_meets_the_contract() {
    contract(&mut MemLogStore::default());
}

#[test]
fn shard_log_meets_the_contract_and_keeps_it_across_reopen() {
    let dir = TempDir::new("contract");
    let config = small_config(dir.path());
    let before = run_glommio({
        let config = config.clone();
        move || async move {
            let log = std::cell::RefCell::new(ShardLog::open(config).unwrap());
            contract(&mut *log.borrow_mut());
            let mut writer = quarry::log::io::SegmentWriter::default();
            quarry::log::io::flush(&log, &mut writer).await.unwrap();
            let log = log.into_inner();
            dump(&log)
        }
    });
    let after = dump(&ShardLog::open(config).unwrap());
    assert_eq!(before, after);
}

/// Random operations on many groups, applied to both stores; the shard log uses tiny
/// segments so that rolls, sealed-segment reads and segment release all happen.
#[test]
fn shard_log_matches_the_memory_store_under_random_operations() {
    for seed in 0..8 {
        let dir = TempDir::new(&format!("random-{seed}"));
        let config = small_config(dir.path());
        let (reference, live) = run_glommio({
            let config = config.clone();
            move || async move { random_workload(seed, config).await }
        });
        assert_eq!(live, reference, "seed {seed}: live shard log differs from the reference");
        let reopened = dump(&ShardLog::open(config).unwrap());
        assert_eq!(reopened, reference, "seed {seed}: reopened shard log differs from the reference");
    }
}

async fn random_workload(seed: u64, config: quarry::log::ShardLogConfig) -> (String, String) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut reference = MemLogStore::default();
    let log = std::cell::RefCell::new(ShardLog::open(config).unwrap());
    let mut writer = quarry::log::io::SegmentWriter::default();
    let mut terms = [1u64; 8];
    for step in 0..600 {
        let group = rng.random_range(0..8u64);
        let last = reference.last_index(group);
        let first = reference.first_index(group);
        match rng.random_range(0..10) {
            0..=5 => {
                // Append, sometimes overwriting a suffix with a newer term.
                let from =
                    if last >= first && rng.random_ratio(1, 5) { rng.random_range(first..=last) } else { last + 1 };
                if from <= last {
                    terms[group as usize] += 1;
                }
                let n = rng.random_range(1..6);
                let size = rng.random_range(0..3000);
                let entries: Vec<Entry> = (from..from + n)
                    .map(|i| Entry {
                        index: i,
                        term: terms[group as usize],
                        payload: EntryPayload::Normal(Bytes::from(vec![(i + step) as u8; size])),
                    })
                    .collect();
                reference.append(group, &entries).unwrap();
                log.borrow_mut().append(group, &entries).unwrap();
            }
            6 => {
                let hs = HardState { term: terms[group as usize], vote: Some(rng.random_range(1..4)), commit: last };
                reference.set_hard_state(group, hs).unwrap();
                log.borrow_mut().set_hard_state(group, hs).unwrap();
            }
            7 if last > first => {
                let index = rng.random_range(first..last);
                let term = reference.term(group, index).unwrap();
                let meta = SnapshotMeta { index, term, conf_state: ConfState::new([1, 2, 3]) };
                reference.compact(group, meta.clone()).unwrap();
                log.borrow_mut().compact(group, meta).unwrap();
                log.borrow_mut().release_unneeded_segments().unwrap();
            }
            8 => {
                quarry::log::io::flush(&log, &mut writer).await.unwrap();
            }
            _ => {}
        }
    }
    quarry::log::io::flush(&log, &mut writer).await.unwrap();
    let live = dump(&*log.borrow());
    (dump(&reference), live)
}

#[test]
fn an_oversize_write_is_refused_and_changes_nothing() {
    let dir = TempDir::new("oversize");
    let mut log = ShardLog::open(small_config(dir.path())).unwrap();
    log.append(1, &[entry(1, 1, 1)]).unwrap();
    let huge = Entry { index: 2, term: 1, payload: EntryPayload::Normal(Bytes::from(vec![0; 64 << 10])) };
    assert!(matches!(log.append(1, &[huge]), Err(LogError::TooLarge { .. })));
    assert_eq!(log.last_index(1), 1);
    log.append(1, &[entry(2, 1, 2)]).unwrap();
    assert_eq!(log.last_index(1), 2);
}
