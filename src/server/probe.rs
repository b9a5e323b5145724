//! Measures the round trip to every peer, as etcd's prober does: a `Peer.Ping` to each
//! member every `PROBE_EVERY`, on the channel the node's other calls to it use.

use std::time::{Duration, Instant};

use crate::proto::peer_client::PeerClient;
use crate::proto::PeerPing;

use super::metrics::PeerLabel;
use super::router::Router;

pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A ping not answered by then counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings every member this node knows, every `PROBE_EVERY`, for as long as it runs.
pub fn probe_peers(router: Router) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROBE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for peer in router.book.all().into_keys().filter(|&p| p != router.node) {
                let Some(channel) = router.channel(peer) else { continue };
                let router = router.clone();
                tokio::spawn(async move {
                    let label = PeerLabel { peer };
                    let started = Instant::now();
                    match tokio::time::timeout(PROBE_TIMEOUT, PeerClient::new(channel).ping(PeerPing {})).await {
                        Ok(Ok(_)) => {
                            let took = started.elapsed().as_secs_f64();
                            router.metrics().peer_round_trip_seconds.get_or_create(&label).observe(took);
                        }
                        _ => drop(router.metrics().peer_probes_failed.get_or_create(&label).inc()),
                    }
                });
            }
        }
    });
}
