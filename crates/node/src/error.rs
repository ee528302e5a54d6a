//! The daemon's errors, and how they reach clients as gRPC statuses ([`From<NodeError>`] for
//! [`tonic::Status`] is the one place that maps them) and come back from other members
//! ([`NodeError::from_status`]).
//!
//! Three kinds a caller must tell apart, by variant and never by message:
//! - [`NodeError::Retry`]: nothing was decided (no leader yet, leadership moved, the leader
//!   could not be reached); the same request may succeed shortly. `with_leader` retries these
//!   itself for a while; clients see `UNAVAILABLE`.
//! - [`NodeError::Rejected`]: the state machine (or the same check before proposing) refused
//!   the request; final, nothing changed.
//! - everything else: this node failed (storage, the hypervisor driver, configuration, ...).

use blixard_core::ApplyError;
use tonic::{Code, Status};

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// Nothing was decided and the request may succeed if tried again shortly.
    #[error("{why} (retry shortly)")]
    Retry { why: RetryReason },
    /// This node is not (yet, or any more) a member of a cluster.
    #[error("node {node} is not part of a cluster yet (still joining?): retry shortly or address another member")]
    NotInCluster { node: u64 },
    /// A request this node refuses before it reaches the state machine.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The node's configuration or data directory is not usable as given.
    #[error("configuration: {0}")]
    Config(String),
    /// A local file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A host operation failed without an I/O error of its own (a host command exited with a
    /// failure, or printed what could not be parsed).
    #[error("{0}")]
    Host(String),
    /// The Raft log or state machine store failed.
    #[error("storage: {what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor driver failed.
    #[error("driver: {0}")]
    Driver(#[from] blixard_vmm::DriverError),
    /// Raft failed for good (not a leadership change: those are `Retry`).
    #[error("raft: {0}")]
    Raft(String),
    /// A bounded wait ran out (a learner catching up, a read barrier).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A final answer from the member a request was forwarded to, kept as it is (code and
    /// message).
    #[error("{}", .0.message())]
    Forwarded(Status),
}

/// Why a [`NodeError::Retry`] happened: what a client should wait out before trying again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryReason {
    /// No leader is known: an election is under way, or too few members are up for a quorum.
    #[error(
        "no leader elected yet (an election is under way, or too few members are up for a quorum)"
    )]
    NoLeader,
    /// Leadership moved while the request was in flight (to `to`, when known).
    #[error("leadership moved{}", .to.map(|t| format!(" to node {t}")).unwrap_or_default())]
    LeaderChanged { to: Option<u64> },
    /// This node was asked as the leader (a forwarded request, a leader-only verdict) but does
    /// not lead (in that term).
    #[error("node {node} is not the leader")]
    NotLeader { node: u64 },
    /// The leader could not be reached, or did not answer in time.
    #[error("forwarding to leader {leader} at {addr}: {why}")]
    Forwarding {
        leader: u64,
        addr: String,
        why: String,
    },
    /// Raft could not finish it now (an entry a new leader discarded, another membership
    /// change in flight); `what` says what was being done.
    #[error("{what}: {why}")]
    Raft { what: String, why: String },
    /// Another member could not be reached (or answered that it is unavailable).
    #[error("{0}")]
    Unreachable(String),
    /// Fewer than a majority of the voters are reachable from this node and no leader was
    /// heard from recently (see `quorum`): nothing can be decided until enough are back.
    #[error("no quorum: {reachable} of {voters} voters reachable from node {node} (a majority, {}, is needed to decide anything)", voters / 2 + 1)]
    NoQuorum {
        node: u64,
        reachable: usize,
        voters: usize,
    },
}

impl NodeError {
    /// A failed local I/O operation, saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NodeError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn retry(why: RetryReason) -> Self {
        NodeError::Retry { why }
    }

    /// True when the request may succeed if tried again shortly (see [`RetryReason`]).
    pub fn is_retry(&self) -> bool {
        matches!(self, NodeError::Retry { .. })
    }

    /// The error another member answered with: a transport failure or `UNAVAILABLE` is a
    /// [`NodeError::Retry`]; the cluster's own answers (refusals, not found, permission, ...)
    /// are final and kept as they are.
    pub fn from_status(s: Status) -> Self {
        if is_final_answer(s.code()) {
            NodeError::Forwarded(s)
        } else {
            NodeError::retry(RetryReason::Unreachable(s.message().to_string()))
        }
    }

    /// The one gRPC code each error travels as.
    pub fn code(&self) -> Code {
        match self {
            NodeError::Rejected(a) => match a {
                ApplyError::Invalid(_) => Code::InvalidArgument,
                ApplyError::NotFound { .. } => Code::NotFound,
                ApplyError::AlreadyExists { .. } | ApplyError::IdUsed(_) => Code::AlreadyExists,
                ApplyError::NoCapacity(_) | ApplyError::LimitReached(_) => Code::ResourceExhausted,
                ApplyError::StaleEpoch { .. }
                | ApplyError::StaleAttempt { .. }
                | ApplyError::StaleTerm { .. } => Code::FailedPrecondition,
            },
            NodeError::Retry { .. } | NodeError::Timeout(_) => Code::Unavailable,
            NodeError::NotInCluster { .. } => Code::FailedPrecondition,
            NodeError::Invalid(_) | NodeError::Config(_) => Code::InvalidArgument,
            NodeError::Io { .. }
            | NodeError::Host(_)
            | NodeError::Storage { .. }
            | NodeError::Driver(_)
            | NodeError::Raft(_) => Code::Internal,
            NodeError::Forwarded(s) => s.code(),
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Forwarded(s) => s,
            e => Status::new(e.code(), e.to_string()),
        }
    }
}

/// A code the cluster answers with on purpose (a refusal), as opposed to one that says it
/// could not be reached or could not decide (`UNAVAILABLE`, `UNKNOWN`, `CANCELLED`,
/// `DEADLINE_EXCEEDED`: a connection reset while the leader changes, a timeout; `INTERNAL`:
/// the member failed, perhaps only for now).
pub(crate) fn is_final_answer(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::NotFound
            | Code::ResourceExhausted
            | Code::Unimplemented
            | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_code() {
        let retry = NodeError::retry(RetryReason::NoLeader);
        assert!(retry.is_retry());
        assert_eq!(Status::from(retry).code(), Code::Unavailable);
        let rejected = NodeError::Rejected(ApplyError::not_found("VM", "a"));
        assert!(!rejected.is_retry());
        assert_eq!(Status::from(rejected).code(), Code::NotFound);
        let io = NodeError::io("creating /x", std::io::Error::other("disk full"));
        assert_eq!(io.to_string(), "creating /x: disk full");
        assert!(std::error::Error::source(&io).is_some());
        assert_eq!(
            Status::from(NodeError::NotInCluster { node: 4 }).code(),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn statuses_from_other_members_are_retried_only_when_nothing_was_decided() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
        ] {
            assert!(
                NodeError::from_status(Status::new(code, "x")).is_retry(),
                "{code:?}"
            );
        }
        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::InvalidArgument,
        ] {
            let e = NodeError::from_status(Status::new(code, "x"));
            assert!(!e.is_retry(), "{code:?}");
            // Kept as it is.
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn retry_messages_say_what_to_wait_for() {
        let e = NodeError::retry(RetryReason::LeaderChanged { to: Some(3) });
        assert_eq!(e.to_string(), "leadership moved to node 3 (retry shortly)");
        let e = NodeError::retry(RetryReason::LeaderChanged { to: None });
        assert_eq!(e.to_string(), "leadership moved (retry shortly)");
    }
}
