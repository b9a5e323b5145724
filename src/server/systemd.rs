//! systemd's notify protocol, for `Type=notify` units: READY once every shard has
//! recovered its log and the listeners are up; WATCHDOG pings (at half the unit's
//! `WatchdogSec`) only while every shard answers, so a wedged shard gets the node
//! restarted; STOPPING on shutdown. Without `NOTIFY_SOCKET` (not under systemd)
//! nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;

use super::metrics::collect_status;
use super::shard_thread::ShardInput;

/// How often readiness is checked while the shards recover.
const RECOVERY_POLL: Duration = Duration::from_millis(100);

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Waits until every shard answers (recovery done), says READY, then keeps the
/// watchdog fed while they go on answering.
pub fn announce_when_ready(shards: Vec<flume::Sender<ShardInput>>) {
    tokio::spawn(async move {
        while collect_status(&shards).await.is_none() {
            tokio::time::sleep(RECOVERY_POLL).await;
        }
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        let Some(timeout) = sd_notify::watchdog_enabled() else { return };
        let period = timeout / 2;
        loop {
            tokio::time::sleep(period).await;
            if collect_status(&shards).await.is_some() {
                notify(&[NotifyState::Watchdog]);
            }
        }
    });
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
