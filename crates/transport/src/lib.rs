//! The peer transport: the client half of the `RaftPeer` gRPC service and the snapshot chunk
//! format, shared by the sender (here) and the receiver (`blixard-node`'s peer service).
//!
//! - [`network`]: sends Raft RPCs to peers over gRPC, tagged with the cluster id, in messages
//!   under the peer limit (`AppendEntries` batches cut to size, snapshots in [`chunks`]).
//! - [`chunks`]: a snapshot as a header and bounded chunks, and its reassembly.
//!
//! It lives outside `blixard-raft` so that the consensus crate depends on `blixard-core` only
//! (DESIGN.md's crate graph): the protobuf types (`blixard-api`) and TLS (`blixard-pki`) stop here.
//! The server half lives in `blixard-node`, next to the code that handles forwarded proposals
//! and read-index requests.

pub mod chunks;
pub mod contact;
pub mod network;

pub use contact::PeerContact;
pub use network::PeerNetwork;

// The moved modules name these as `crate::…`; re-exported so they read the same here.
pub(crate) use blixard_raft::{NodeId, SnapshotData, StoreMetrics, TypeConfig};
