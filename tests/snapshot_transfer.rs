//! Snapshot images over Arrow Flight, against a real Flight endpoint on 127.0.0.1:
//! a cut transfer resumes from the last good chunk, a corrupted chunk is fetched
//! again, an image that fails its checksum is never handed over; and the files are
//! plain Arrow IPC that pyarrow reads.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::Bytes;
use quarry::raft::{ConfState, SnapshotMeta};
use quarry::snapshot::image::CHUNK_BYTES;
use quarry::snapshot::SnapshotStore;
use quarry::transport::flight::{fetch_snapshot, FlightEndpoint};
use quarry::transport::wire::SnapshotOffer;
use tonic::transport::{Channel, Server};

const GROUP: u64 = 3;

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta { index, term: 2, conf_state: ConfState { voters: [1, 2, 3].into(), ..Default::default() } }
}

/// An image that is not the same byte repeated, so misplaced chunks would show.
fn image(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
}

fn offer(index: u64, image: &[u8]) -> SnapshotOffer {
    SnapshotOffer {
        group: GROUP,
        from: 1,
        to: 2,
        term: 2,
        meta: meta(index),
        size: image.len() as u64,
        crc32: crc32fast::hash(image),
    }
}

/// A Flight endpoint serving `dir`'s snapshot files; the channel to it.
async fn serve(dir: &Path) -> (FlightEndpoint, Channel) {
    let endpoint = FlightEndpoint::new(vec![dir.to_path_buf()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = FlightServiceServer::new(endpoint.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    (endpoint, channel)
}

fn store_with(dir: &Path, index: u64, image: &[u8]) {
    SnapshotStore::open(dir).expect("store").save(GROUP, &meta(index), image).expect("saved");
}

#[tokio::test]
async fn a_cut_transfer_resumes_from_the_last_good_chunk() {
    let dir = tempfile::tempdir().expect("dir");
    let image = image(5 * CHUNK_BYTES + 123);
    store_with(dir.path(), 40, &image);
    let (endpoint, channel) = serve(dir.path()).await;
    endpoint.faults.fail_after_chunks.store(3, Ordering::Relaxed);
    let fetched = fetch_snapshot(channel, &offer(40, &image)).await.expect("fetched despite the cut");
    assert_eq!(fetched, image);
    let offsets = endpoint.faults.requested_offsets.lock().unwrap().clone();
    assert_eq!(offsets, vec![0, 3 * CHUNK_BYTES as u64], "the second request resumes after three chunks");
}

#[tokio::test]
async fn a_corrupted_chunk_is_detected_and_fetched_again() {
    let dir = tempfile::tempdir().expect("dir");
    let image = image(4 * CHUNK_BYTES);
    store_with(dir.path(), 41, &image);
    let (endpoint, channel) = serve(dir.path()).await;
    endpoint.faults.corrupt_chunk.store(2, Ordering::Relaxed);
    let fetched = fetch_snapshot(channel, &offer(41, &image)).await.expect("fetched despite the bad chunk");
    assert_eq!(fetched, image);
    let offsets = endpoint.faults.requested_offsets.lock().unwrap().clone();
    assert_eq!(offsets, vec![0, 2 * CHUNK_BYTES as u64], "only the bad chunk onwards is fetched again");
}

#[tokio::test]
async fn an_image_that_fails_its_checksum_is_never_handed_over() {
    let dir = tempfile::tempdir().expect("dir");
    let image = image(CHUNK_BYTES + 10);
    store_with(dir.path(), 42, &image);
    let (_endpoint, channel) = serve(dir.path()).await;
    let mut wrong_crc = offer(42, &image);
    wrong_crc.crc32 ^= 1;
    assert!(fetch_snapshot(channel.clone(), &wrong_crc).await.is_err(), "a checksum mismatch is refused");
    let mut wrong_size = offer(42, &image);
    wrong_size.size += 1;
    assert!(fetch_snapshot(channel.clone(), &wrong_size).await.is_err(), "a size mismatch is refused");
    let missing = offer(43, &image);
    assert!(fetch_snapshot(channel, &missing).await.is_err(), "an image the sender lacks is refused");
}

#[tokio::test]
async fn transfer_rate_on_loopback() {
    let dir = tempfile::tempdir().expect("dir");
    let image = image(64 * CHUNK_BYTES);
    store_with(dir.path(), 50, &image);
    let (_endpoint, channel) = serve(dir.path()).await;
    let started = Instant::now();
    let fetched = fetch_snapshot(channel, &offer(50, &image)).await.expect("fetched");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(fetched.len(), image.len());
    // Reported, not asserted: speed is measured, not tested.
    eprintln!("snapshot transfer: {} MiB in {seconds:.2} s = {:.0} MiB/s", image.len() >> 20, 64.0 / seconds);
}

#[test]
fn pyarrow_reads_a_snapshot_file_as_it_is() {
    let dir = tempfile::tempdir().expect("dir");
    let image = image(2 * CHUNK_BYTES + 77);
    store_with(dir.path(), 44, &image);
    let file = std::fs::read_dir(dir.path()).expect("dir").next().expect("one file").expect("entry").path();
    let script = r#"
import sys, zlib
import pyarrow.ipc as ipc
reader = ipc.open_file(sys.argv[1])
meta = {k.decode(): v.decode() for k, v in reader.schema.metadata.items()}
table = reader.read_all()
image = b"".join(table.column("data").to_pylist())
print(meta["quarry.group"], meta["quarry.index"], meta["quarry.voters"], len(image),
      zlib.crc32(image) == int(meta["quarry.crc32"]), reader.num_record_batches)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("python3 runs (CI installs pyarrow)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), format!("3 44 1,2,3 {} True 3", image.len()));
}
