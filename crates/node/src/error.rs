//! The daemon's errors, and how they reach clients as gRPC statuses.

use blixard_core::ApplyError;

/// Errors of the node. "Retry elsewhere / no leader" is kept apart from "this is wrong".
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state machine refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// No leader is known right now (election in progress or no quorum); retry later.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The node is not (yet, or any more) a member of a cluster.
    #[error("{0}")]
    NotInCluster(String),
    /// A peer could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// An error returned by the member a request was forwarded to.
    #[error("{}", .0.message())]
    Forwarded(tonic::Status),
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            NodeError::Rejected(a) => match a {
                ApplyError::Invalid(_) => Status::invalid_argument(msg),
                ApplyError::NotFound { .. } => Status::not_found(msg),
                ApplyError::AlreadyExists { .. } => Status::already_exists(msg),
                ApplyError::NoCapacity(_) | ApplyError::LimitReached(_) => {
                    Status::resource_exhausted(msg)
                }
                ApplyError::StaleEpoch { .. }
                | ApplyError::StaleAttempt { .. }
                | ApplyError::StaleTerm { .. } => Status::failed_precondition(msg),
                ApplyError::IdUsed(_) => Status::already_exists(msg),
            },
            NodeError::NoLeader(_) | NodeError::Unreachable(_) | NodeError::Timeout(_) => {
                Status::unavailable(msg)
            }
            NodeError::NotInCluster(_) => Status::failed_precondition(msg),
            NodeError::Invalid(_) | NodeError::Config(_) => Status::invalid_argument(msg),
            NodeError::Io(_) | NodeError::Raft(_) => Status::internal(msg),
            NodeError::Forwarded(s) => s,
        }
    }
}
