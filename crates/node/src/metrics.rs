//! Prometheus metrics (`GET /metrics`), with `prometheus-client`.
//!
//! Counters and histograms that code paths update live in [`Metrics`] (one per node, on
//! [`crate::node::Node`]). Everything that is a reading of the current state (Raft term and
//! indexes, VMs by state, pending VMs, nodes by state, events by type) is read at scrape time
//! from the node, so it cannot drift. Names: `blixard_` prefix, base units (seconds), `_total`
//! counters; every label has a fixed, small set of values (states, event types, HTTP route
//! templates, status codes), never a VM name or id.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (e.g. `/v1/vms/{name}`), or `unmatched`.
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Live counters and histograms of one node.
#[derive(Debug)]
pub struct Metrics {
    /// Proposals this node made or forwarded, by result (`ok`, `rejected`, `failed`).
    pub proposals: Family<ResultLabels, Counter>,
    /// Time from proposing to the applied outcome, as the proposer sees it.
    pub propose_seconds: Histogram,
    /// HTTP API requests by route template, method and status code.
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Family<RouteLabels, Histogram>,
    /// Reconcile steps of the executor that failed (a VM it could not start, stop or report).
    pub reconcile_errors: Counter,
    /// Apply latency and snapshots, measured by the state-machine store.
    pub store: blixard_raft::StoreMetrics,
}

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            proposals: Family::default(),
            propose_seconds: latency_buckets(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_buckets),
            reconcile_errors: Counter::default(),
            store: Default::default(),
        }
    }
}

impl Metrics {
    pub fn observe_proposal(&self, result: &str, took: Duration) {
        self.proposals
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        self.propose_seconds.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of this node's metrics.
    pub fn render(&self, node: &Node) -> String {
        let mut reg = Registry::with_prefix("blixard");
        reg.register(
            "proposals",
            "Proposals made or forwarded by this node, by result",
            self.proposals.clone(),
        );
        reg.register(
            "propose_duration_seconds",
            "Time from proposal to applied outcome",
            self.propose_seconds.clone(),
        );
        reg.register(
            "http_requests",
            "HTTP API requests by route, method and status code",
            self.http_requests.clone(),
        );
        reg.register(
            "http_request_duration_seconds",
            "HTTP API request latency by route",
            self.http_seconds.clone(),
        );
        reg.register(
            "executor_reconcile_errors",
            "Executor reconcile steps that failed",
            self.reconcile_errors.clone(),
        );

        let st = &self.store;
        reg.register(
            "raft_apply_duration_seconds",
            "Time to apply a batch of committed entries",
            st.apply_seconds.clone(),
        );
        reg.register(
            "raft_applied_entries",
            "Log entries applied on this node since it started",
            st.applied_entries.clone(),
        );
        reg.register(
            "raft_state_row_commits",
            "Commits of applied rows to the state database (several batches each)",
            st.row_commits.clone(),
        );
        reg.register(
            "raft_snapshots_built",
            "Snapshots built since the node started",
            st.snapshots_built.clone(),
        );
        reg.register(
            "raft_snapshots_installed",
            "Snapshots installed from the leader",
            st.snapshots_installed.clone(),
        );
        reg.register(
            "raft_snapshot_chunks_sent",
            "Snapshot chunks sent to lagging followers",
            st.snapshot_chunks_sent.clone(),
        );
        reg.register(
            "raft_snapshot_chunks_received",
            "Snapshot chunks received and accepted from the leader",
            st.snapshot_chunks_received.clone(),
        );
        reg.register(
            "raft_snapshots_refused",
            "Snapshot streams refused (header, cap, order, size)",
            st.snapshots_refused.clone(),
        );
        reg.register(
            "raft_appends_split",
            "AppendEntries batches cut short to stay under the peer message limit",
            st.appends_split.clone(),
        );

        let gauge = |reg: &mut Registry, name: &str, help: &str, v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            reg.register(name, help, g);
        };
        let m = node.metrics();
        let idx = |l: Option<u64>| l.unwrap_or(0) as i64;
        gauge(
            &mut reg,
            "raft_term",
            "Current Raft term",
            m.current_term as i64,
        );
        gauge(
            &mut reg,
            "raft_leader_id",
            "Id of the known leader (0: none)",
            m.current_leader.unwrap_or(0) as i64,
        );
        gauge(
            &mut reg,
            "raft_is_leader",
            "1 when this node leads",
            i64::from(m.current_leader == Some(node.id)),
        );
        gauge(
            &mut reg,
            "raft_commit_index",
            "Highest log index known committed",
            idx(m.local_committed.as_ref().map(|l| l.index())),
        );
        gauge(
            &mut reg,
            "raft_applied_index",
            "Highest log index applied",
            idx(m.last_applied.as_ref().map(|l| l.index())),
        );
        gauge(
            &mut reg,
            "raft_last_log_index",
            "Highest log index stored",
            idx(m.last_log_index),
        );
        gauge(
            &mut reg,
            "raft_snapshot_index",
            "Log index of the latest snapshot",
            idx(m.snapshot.as_ref().map(|l| l.index())),
        );
        gauge(
            &mut reg,
            "raft_purged_index",
            "Log index up to which the log was purged",
            idx(m.purged.as_ref().map(|l| l.index())),
        );

        let vms: Family<StateLabels, Gauge> = Family::default();
        let nodes: Family<StateLabels, Gauge> = Family::default();
        let tasks: Family<StateLabels, Gauge> = Family::default();
        let pending_vms: Gauge = Gauge::default();
        {
            let a = node.state.read();
            use blixard_core::{NodeState, TaskState, VmState};
            for s in [
                VmState::Pending,
                VmState::Starting,
                VmState::Running,
                VmState::Stopping,
                VmState::Stopped,
                VmState::Failed,
                VmState::Lost,
            ] {
                let _ = vms.get_or_create(&StateLabels {
                    state: s.as_str().into(),
                });
            }
            for s in [
                NodeState::Up,
                NodeState::Down,
                NodeState::Draining,
                NodeState::ShuttingDown,
            ] {
                let _ = nodes.get_or_create(&StateLabels {
                    state: s.as_str().into(),
                });
            }
            for s in [TaskState::Pending, TaskState::Running] {
                let _ = tasks.get_or_create(&StateLabels {
                    state: s.as_str().into(),
                });
            }
            for vm in a.state.vms.values() {
                vms.get_or_create(&StateLabels {
                    state: vm.state.as_str().into(),
                })
                .inc();
                if vm.node_id.is_none() && vm.desired == blixard_core::Desired::Running {
                    pending_vms.inc();
                }
            }
            for w in a.state.workers.values() {
                nodes
                    .get_or_create(&StateLabels {
                        state: w.state.as_str().into(),
                    })
                    .inc();
            }
            for t in a.state.tasks.values() {
                tasks
                    .get_or_create(&StateLabels {
                        state: t.state.as_str().into(),
                    })
                    .inc();
            }
        }
        reg.register("vms", "VMs in the cluster by state", vms);
        reg.register("nodes", "Registered workers by state", nodes);
        reg.register("tasks", "Tasks kept by the cluster by state", tasks);
        reg.register(
            "scheduler_pending_vms",
            "VMs that want to run and have no node",
            pending_vms,
        );

        let events: Family<TypeLabels, Counter> = Family::default();
        let counts = node.events.counts();
        let placements: Counter = Counter::default();
        placements.inc_by(counts.get("vm_placed").copied().unwrap_or(0));
        for (t, n) in counts {
            events
                .get_or_create(&TypeLabels {
                    r#type: t.to_string(),
                })
                .inc_by(n);
        }
        reg.register(
            "events",
            "Cluster events applied on this node since it started, by type",
            events,
        );
        reg.register(
            "scheduler_placements",
            "VM placements applied on this node since it started",
            placements,
        );

        let mut out = String::new();
        if let Err(e) = encode(&mut out, &reg) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
