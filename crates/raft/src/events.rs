//! The node's event ring ([`blixard_core::EventSource`]) fed by the state machine, with a
//! notification for followers of the stream. See `core::events` for why events are derived
//! per node from the applied entries rather than stored in the replicated state.

use std::sync::{Arc, Mutex, MutexGuard};

use blixard_core::{ClusterState, Event, EventSource};
use tokio::sync::watch;

/// Shared handle on the ring. Cloning shares it.
#[derive(Clone)]
pub struct EventLog {
    source: Arc<Mutex<EventSource>>,
    /// The last applied index whose events are in the ring; bumped after each applied batch.
    notify: Arc<watch::Sender<u64>>,
}

impl EventLog {
    pub fn new(state: &ClusterState, floor: u64) -> Self {
        let (tx, _) = watch::channel(floor);
        Self {
            source: Arc::new(Mutex::new(EventSource::new(state, floor))),
            notify: Arc::new(tx),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, EventSource> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn applied_up_to(&self, index: u64) {
        self.notify.send_replace(index);
    }

    /// The events after `since` (whole indexes, about `max` events), with a resync marker
    /// first when `since` is older than what this node keeps; and the cursor to resume from.
    pub fn since(&self, since: u64, max: usize) -> (Vec<Event>, u64) {
        self.lock().since(since, max)
    }

    /// The VMs whose rows the entries after `since` touched, or `None` when this node no
    /// longer knows (see [`EventSource::vms_touched_since`]).
    pub fn vms_touched_since(&self, since: u64) -> Option<std::collections::BTreeSet<String>> {
        self.lock().vms_touched_since(since)
    }

    /// The oldest index a client may resume from without a resync marker.
    pub fn floor(&self) -> u64 {
        self.lock().floor()
    }

    /// Events emitted on this node since it started, by type.
    pub fn counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.lock().counts().clone()
    }

    /// Wakes when a batch was applied (the value: its last index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}
