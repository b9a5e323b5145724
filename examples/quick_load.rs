//! A first, rough load test until `quarry-bench` exists: closed-loop puts of 256-byte
//! values from C concurrent clients for S seconds against a running cluster.
//!
//! `cargo run --profile ci --example quick_load -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 64 10`

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use quarry::proto::kv_client::KvClient;
use quarry::proto::PutRequest;
use tonic::transport::Endpoint;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoints: Vec<String> =
        args.get(1).map_or("127.0.0.1:7001".into(), |s| s.clone()).split(',').map(String::from).collect();
    let clients: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut channels = Vec::new();
    for e in &endpoints {
        channels
            .push(Endpoint::from_shared(format!("http://{e}")).expect("endpoint").connect().await.expect("connect"));
    }
    let value = Bytes::from(vec![b'v'; 256]);
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let value = value.clone();
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let (mut ok, mut errors, mut i) = (0u64, 0u64, 0u64);
            while Instant::now() < stop {
                i += 1;
                let key = Bytes::from(format!("load-{c}-{}", i % 1000));
                let started = Instant::now();
                match kv.put(PutRequest { key, value: value.clone(), client_id: 0, sequence: 0 }).await {
                    Ok(_) => {
                        ok += 1;
                        histogram.record(started.elapsed().as_micros() as u64).expect("record");
                    }
                    Err(_) => errors += 1,
                }
            }
            (histogram, ok, errors)
        });
    }
    let mut all = Histogram::<u64>::new(3).expect("histogram");
    let (mut ok, mut errors) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (h, o, e) = done.expect("task");
        all.add(h).expect("merge");
        ok += o;
        errors += e;
    }
    println!(
        "{clients} clients, {seconds}s: {:.0} puts/s, {errors} errors, latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        ok as f64 / seconds as f64,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
}
