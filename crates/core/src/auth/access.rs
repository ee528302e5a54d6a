//! The one table saying which [`Role`] each gRPC method and each HTTP route needs; the node
//! checks every request against it (`blixard-node`'s `authz`), and a test checks it against
//! the proto contract.

use super::Role;

/// Who may call an RPC or a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone reaching the port (join enrollment: the token is the credential; health).
    Public,
    /// Cluster members only (node certificates): Raft and node-to-node traffic.
    Peer,
    /// A client with at least this role (or a member forwarding for one).
    Role(Role),
}

/// The role table for gRPC: what each method (`/package.Service/Method`) needs. Methods not
/// listed are refused to every client (fail closed).
pub fn grpc_access(path: &str) -> Option<Access> {
    use Access::{Peer, Public, Role as R};
    use Role::{Admin, Operator, Viewer};
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("blixard.v1.Enroll", "Enroll") => Public,
        ("blixard.v1.RaftPeer", _) => Peer,
        (
            "blixard.v1.Blixard",
            "ClusterStatus" | "ListNodes" | "GetVm" | "ListVms" | "ListVmsPage"
            | "ExplainPlacement" | "ExplainMove" | "VmLogs" | "GetTask" | "ListTasks" | "TaskLogs"
            | "Events",
        ) => R(Viewer),
        ("blixard.v1.Networks", "ListNetworks") => R(Viewer),
        (
            "blixard.v1.Blixard",
            // The console is a root shell in the guest: an operator's.
            "CreateVm" | "DeleteVm" | "SetVmDesired" | "SubmitTask" | "CancelTask" | "Console",
        ) => R(Operator),
        ("blixard.v1.Networks", "CreateNetwork" | "DeleteNetwork") => R(Operator),
        (
            "blixard.v1.Blixard",
            // Membership and node states (drain), settings, join tokens, credentials.
            "Join"
            | "RemoveMember"
            | "Leave"
            | "SetNodeState"
            | "SetSchedulerSettings"
            | "CreateJoinToken"
            | "ListJoinTokens"
            | "RevokeJoinToken",
        ) => R(Admin),
        ("blixard.v1.Auth", "IssueCredential" | "CreateBearerToken" | "ListAuth" | "Revoke") => {
            R(Admin)
        }
        // Who am I: any authenticated client.
        ("blixard.v1.Auth", "WhoAmI") => R(Viewer),
        _ => return None,
    })
}

/// The role table for HTTP: what each route (axum's matched path) needs for `method`.
/// Routes not listed need `admin` (fail closed).
pub fn http_access(method: &str, route: &str) -> Access {
    use Access::{Public, Role as R};
    use Role::{Admin, Operator, Viewer};
    let read = matches!(method, "GET" | "HEAD");
    match route {
        // Liveness probes, and the dashboard's static files (the page itself holds no data; its
        // API calls carry the token).
        "/healthz" | "/readyz" | "/" | "/ui" | "/ui/" | "/ui/:file" if read => Public,
        "/metrics" if read => R(Viewer),
        "/v1/cluster"
        | "/v1/nodes"
        | "/v1/vms"
        | "/v1/vms/:name"
        | "/v1/tasks"
        | "/v1/tasks/:id"
        | "/v1/events"
        | "/v1/networks"
        | "/v1/openapi.json"
        | "/v1/vms/:name/logs"
        | "/v1/tasks/:id/logs"
        | "/v1/cluster/settings"
            if read =>
        {
            R(Viewer)
        }
        "/v1/vms"
        | "/v1/vms/:name"
        | "/v1/vms/:name/start"
        | "/v1/vms/:name/stop"
        | "/v1/tasks"
        | "/v1/tasks/:id/cancel"
        | "/v1/networks"
        | "/v1/networks/:name"
            if matches!(method, "POST" | "DELETE") =>
        {
            R(Operator)
        }
        _ => R(Admin),
    }
}
