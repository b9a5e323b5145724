//! Recovery after damage to the newest segment: a torn tail (truncation anywhere in
//! the data) or a flipped byte anywhere. The recovered log must be exactly the state
//! after some prefix of whole batches (nothing half-written); it may lack only batches
//! of the damaged flush when that is the last one (a crash tearing a flush means it
//! was never acknowledged); damage to anything acknowledged before it must stop the
//! log with an error naming the file.

mod common;

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use proptest::prelude::*;
use quarry::log::io::{flush, SegmentWriter};
use quarry::log::{LogError, LogStore, MemLogStore, ShardLog, ShardLogConfig};
use quarry::raft::HardState;

use common::{dump, entry, run_glommio, TempDir};

const FLUSHES: u64 = 6;

/// What was written: the state after each batch (index 0: empty), and per flush its
/// end offset and how many batches preceded its end.
struct Written {
    dumps: Vec<String>,
    ends: Vec<u64>,
    batches_at_end: Vec<usize>,
    path: PathBuf,
}

fn write_flushes(config: ShardLogConfig) -> Written {
    run_glommio(move || async move {
        let log = RefCell::new(ShardLog::open(config).unwrap());
        let mut reference = MemLogStore::default();
        let mut writer = SegmentWriter::default();
        let mut dumps = vec![dump(&reference)];
        let (mut ends, mut batches_at_end) = (Vec::new(), Vec::new());
        for f in 0..FLUSHES {
            for group in 0..3 {
                let entries: Vec<_> = (1..=4).map(|i| entry(f * 4 + i, 1, (f * 3 + group) as u8)).collect();
                reference.append(group, &entries).unwrap();
                log.borrow_mut().append(group, &entries).unwrap();
                dumps.push(dump(&reference));
                let hs = HardState { term: 1, vote: Some(1), commit: f * 4 };
                reference.set_hard_state(group, hs).unwrap();
                log.borrow_mut().set_hard_state(group, hs).unwrap();
                dumps.push(dump(&reference));
            }
            flush(&log, &mut writer).await.unwrap();
            ends.push(log.borrow().active_position().1);
            batches_at_end.push(dumps.len() - 1);
        }
        let path = log.borrow().active_position().0;
        Written { dumps, ends, batches_at_end, path }
    })
}

fn setup(label: &str) -> (TempDir, ShardLogConfig, Written) {
    let dir = TempDir::new(label);
    let config = ShardLogConfig { segment_bytes: 1 << 20, ..ShardLogConfig::new(dir.path()) };
    let written = write_flushes(config.clone());
    (dir, config, written)
}

/// How many batches the reopened log holds (it must hold exactly a prefix), or its error.
fn reopen(config: ShardLogConfig, dumps: &[String]) -> Result<usize, LogError> {
    let recovered = dump(&ShardLog::open(config)?);
    Ok(dumps.iter().position(|d| *d == recovered).expect("recovered state is exactly a prefix of whole batches"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_torn_tail_loses_only_what_follows_it(cut_fraction in 0.0f64..1.0) {
        let (_dir, config, w) = setup("torn");
        let data_start = 4096u64;
        let cut = data_start + ((w.ends[w.ends.len() - 1] - data_start) as f64 * cut_fraction) as u64;
        OpenOptions::new().write(true).open(&w.path).unwrap().set_len(cut).unwrap();
        let intact_flushes = w.ends.iter().filter(|&&end| end <= cut).count();
        let intact_batches = if intact_flushes == 0 { 0 } else { w.batches_at_end[intact_flushes - 1] };
        let recovered = reopen(config, &w.dumps).unwrap();
        prop_assert!(recovered >= intact_batches, "cut at {}: {} batches recovered, {} intact", cut, recovered, intact_batches);
    }

    #[test]
    fn a_flipped_byte_is_never_silent_loss(position_fraction in 0.0f64..1.0, bit in 0u8..8) {
        let (_dir, config, w) = setup("flip");
        let (dumps, ends, path) = (&w.dumps, &w.ends, &w.path);
        let last_end = ends[ends.len() - 1];
        let at = ((last_end + 4096) as f64 * position_fraction) as u64;
        let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(at)).unwrap();
        file.read_exact(&mut byte).unwrap();
        byte[0] ^= 1 << bit;
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&byte).unwrap();
        drop(file);
        let last_flush_start = ends[ends.len() - 2];
        let all = dumps.len() - 1;
        let before_last_flush = w.batches_at_end[w.batches_at_end.len() - 2];
        match reopen(config.clone(), dumps) {
            Ok(k) if k == all => {}
            // Only batches of the last flush may be lost, and only if the damage is in it.
            Ok(k) => {
                prop_assert!(k >= before_last_flush && at >= last_flush_start, "kept {} of {} batches for damage at {}", k, all, at);
                // A flipped bit is damage, not a torn write: the node must know it lost data.
                prop_assert!(ShardLog::open(config).unwrap().recovered_damage().is_some(), "damage at {} taken for a torn write", at);
            }
            Err(LogError::Corrupt { path: bad, .. }) => {
                prop_assert_eq!(&bad, path);
                prop_assert!(at < last_flush_start, "damage at {} in the last flush is a torn tail, not an error", at);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

/// A page of an earlier flush that never reached the disk (a lost write) reads as
/// zeroes: recovery must refuse it, not take it for the end of the log and silently
/// drop every later flush.
#[test]
fn a_lost_page_before_the_last_flush_is_refused() {
    for flush in 0..FLUSHES as usize - 1 {
        let (_dir, config, w) = setup("lost-page");
        let start = if flush == 0 { 4096 } else { w.ends[flush - 1] };
        let mut file = OpenOptions::new().write(true).open(&w.path).unwrap();
        file.seek(SeekFrom::Start(start)).unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        drop(file);
        match ShardLog::open(config) {
            Err(LogError::Corrupt { path, offset, .. }) => assert_eq!((path, offset), (w.path.clone(), start)),
            Err(e) => panic!("flush {flush}: unexpected error {e}"),
            Ok(_) => panic!("flush {flush}: a lost write before later flushes was taken for the end of the log"),
        }
    }
}

/// A tail cut in the middle of a page leaves the cut batch's remains before the next
/// page, where writing resumes: later recoveries must step over them (the resumed
/// flush says where the cut was) instead of taking them for damage to acknowledged
/// data followed by a later flush.
#[test]
fn writes_after_a_cut_mid_page_survive_the_next_recovery() {
    let (_dir, config, w) = setup("resume");
    // Inside the second batch of the last flush: the first one stays whole.
    let flush_start = w.ends[w.ends.len() - 2];
    let data = std::fs::read(&w.path).unwrap();
    let first_batch = quarry::log::codec::decode_batch(&data[flush_start as usize..]).unwrap();
    let cut = flush_start + first_batch.len as u64 + 10;
    assert!(!cut.is_multiple_of(4096) && cut < w.ends[w.ends.len() - 1]);
    OpenOptions::new().write(true).open(&w.path).unwrap().set_len(cut).unwrap();
    let first = dump(&ShardLog::open(config.clone()).unwrap());
    let config_for_writes = config.clone();
    let expected = run_glommio(move || async move {
        let log = RefCell::new(ShardLog::open(config_for_writes).unwrap());
        let next = log.borrow().index().group(0).map_or(0, |g| g.last_index()) + 1;
        log.borrow_mut().append(0, &[entry(next, 2, 99)]).unwrap();
        flush(&log, &mut SegmentWriter::default()).await.unwrap();
        let state = dump(&*log.borrow());
        state
    });
    assert_ne!(first, expected, "the new entry was written");
    for _ in 0..2 {
        let recovered = ShardLog::open(config.clone()).expect("the cut's remains are stepped over");
        assert_eq!(dump(&recovered), expected);
    }
}
