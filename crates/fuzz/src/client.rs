//! Targets of the client path: every client request as a node decodes and checks it, every
//! reply as the CLI decodes and renders it, and the credential and lease files.

use blixard_api::pb;
use blixard_core::VmSpec;
use prost::Message;

use crate::{s, Target};

fn spec(m: Option<pb::VmSpec>) -> Result<(), String> {
    let spec = VmSpec::try_from(m.ok_or("missing spec")?)?;
    spec.validate().map_err(s)
}

fn task(m: Option<pb::TaskSpec>) -> Result<(), String> {
    blixard_core::TaskSpec::from(m.ok_or("missing spec")?)
        .validate()
        .map_err(s)
}

fn name(n: &str) -> Result<(), String> {
    blixard_core::spec::validate_name(n).map_err(s)
}

fn json_str(t: &str) -> Result<(), String> {
    serde_json::from_str::<serde_json::Value>(t)
        .map(|_| ())
        .map_err(s)
}

/// The client messages: each request as a node decodes and checks it, each reply as the CLI
/// decodes and renders it. The first byte picks the message type.
pub const CLIENT: &[(&str, Target)] = &[
    ("ReadOptions", |b| {
        pb::ReadOptions::decode(b).map(|_| ()).map_err(s)
    }),
    ("JoinRequest", |b| {
        pb::JoinRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("RemoveMemberRequest", |b| {
        pb::RemoveMemberRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("SetNodeStateRequest", |b| {
        let m = pb::SetNodeStateRequest::decode(b).map_err(s)?;
        blixard_api::parse_node_state(&m.state).map(|_| ())
    }),
    ("CreateVmRequest", |b| {
        spec(pb::CreateVmRequest::decode(b).map_err(s)?.spec)
    }),
    ("VmRef", |b| name(&pb::VmRef::decode(b).map_err(s)?.name)),
    ("SetVmDesiredRequest", |b| {
        let m = pb::SetVmDesiredRequest::decode(b).map_err(s)?;
        name(&m.name)?;
        blixard_api::parse_desired(&m.desired).map(|_| ())
    }),
    ("GetVmRequest", |b| {
        name(&pb::GetVmRequest::decode(b).map_err(s)?.name)
    }),
    ("SchedulerSettings", |b| {
        let m = pb::SchedulerSettings::decode(b).map_err(s)?;
        let _ = blixard_api::json::settings_json(&m);
        if m.strategy.is_empty() {
            return Ok(());
        }
        m.strategy
            .parse::<blixard_core::Strategy>()
            .map(|_| ())
            .map_err(s)
    }),
    ("VmLogsRequest", |b| {
        name(&pb::VmLogsRequest::decode(b).map_err(s)?.name)
    }),
    ("SubmitTaskRequest", |b| {
        task(pb::SubmitTaskRequest::decode(b).map_err(s)?.spec)
    }),
    ("GetTaskRequest", |b| {
        blixard_core::task::validate_task_id(&pb::GetTaskRequest::decode(b).map_err(s)?.id)
            .map_err(s)
    }),
    ("ListTasksRequest", |b| {
        let m = pb::ListTasksRequest::decode(b).map_err(s)?;
        if m.state.is_empty() {
            return Ok(());
        }
        blixard_core::TaskState::parse(&m.state)
            .map(|_| ())
            .ok_or_else(|| "unknown task state".to_string())
    }),
    ("TaskRef", |b| {
        blixard_core::task::validate_task_id(&pb::TaskRef::decode(b).map_err(s)?.id).map_err(s)
    }),
    ("EventsRequest", |b| {
        pb::EventsRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("PageRequest", |b| {
        pb::PageRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("CreateJoinTokenRequest", |b| {
        pb::CreateJoinTokenRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("JoinTokenRef", |b| {
        blixard_core::tokens::validate_token_id(&pb::JoinTokenRef::decode(b).map_err(s)?.id)
            .map_err(s)
    }),
    ("EnrollRequest", |b| {
        let m = pb::EnrollRequest::decode(b).map_err(s)?;
        blixard_core::tokens::validate_token_id(&m.token_id).map_err(s)
    }),
    ("CreateNetworkRequest", |b| {
        let m = pb::CreateNetworkRequest::decode(b).map_err(s)?;
        blixard_core::network::validate_network_name(&m.name).map_err(s)?;
        m.cidr.parse::<blixard_core::Cidr>().map(|_| ()).map_err(s)
    }),
    ("NetworkRef", |b| {
        blixard_core::network::validate_network_name(&pb::NetworkRef::decode(b).map_err(s)?.name)
            .map_err(s)
    }),
    ("ClusterStatusReply", |b| {
        let _ = blixard_api::json::status_json(&pb::ClusterStatusReply::decode(b).map_err(s)?);
        Ok(())
    }),
    ("NodeList", |b| {
        for n in &pb::NodeList::decode(b).map_err(s)?.nodes {
            let _ = blixard_api::json::node_json(n);
        }
        Ok(())
    }),
    ("VmList", |b| {
        for v in &pb::VmList::decode(b).map_err(s)?.vms {
            let _ = blixard_api::json::vm_json(v);
        }
        Ok(())
    }),
    ("TaskList", |b| {
        for t in &pb::TaskList::decode(b).map_err(s)?.tasks {
            let _ = blixard_api::json::task_json(t);
        }
        Ok(())
    }),
    ("PlacementExplanation", |b| {
        let _ = blixard_api::json::explain_json(&pb::PlacementExplanation::decode(b).map_err(s)?);
        Ok(())
    }),
    ("NetworkList", |b| {
        for n in &pb::NetworkList::decode(b).map_err(s)?.networks {
            let _ = blixard_api::json::network_json(n);
        }
        Ok(())
    }),
    ("JoinTokenList", |b| {
        pb::JoinTokenList::decode(b).map(|_| ()).map_err(s)
    }),
    ("EventMsg", |b| {
        json_str(&pb::EventMsg::decode(b).map_err(s)?.json)
    }),
    ("LogChunk", |b| {
        pb::LogChunk::decode(b).map(|_| ()).map_err(s)
    }),
    ("EnrollReply", |b| {
        let m = pb::EnrollReply::decode(b).map_err(s)?;
        let material = blixard_pki::TlsMaterial {
            ca_pem: m.ca_cert,
            own: blixard_pki::CertKey {
                cert_pem: m.node_cert,
                key_pem: m.node_key,
            },
        };
        material.identity().map_err(s)?;
        material.client_config().map(|_| ()).map_err(s)
    }),
];

/// A client message (see [`CLIENT`]).
pub fn client_pb(b: &[u8]) -> Result<(), String> {
    let (&sel, rest) = b.split_first().ok_or("empty input")?;
    (CLIENT[sel as usize % CLIENT.len()].1)(rest)
}

/// A join token string, as `node --join --token` and the enrollment read it.
pub fn join_token(b: &[u8]) -> Result<(), String> {
    blixard_pki::JoinTokenString::parse(&String::from_utf8_lossy(b)).map(|_| ())
}

/// A credentials file, as the CLI loads it (and the TLS configuration made from it).
pub fn credentials(b: &[u8]) -> Result<(), String> {
    let c = blixard_pki::Credentials::parse(b, "input").map_err(s)?;
    c.client_config().map(|_| ()).map_err(s)
}

/// A certificate's identity, as read from a verified peer or client certificate.
pub fn identity_der(b: &[u8]) -> Result<(), String> {
    blixard_pki::Identity::from_der(b)
        .map(|_| ())
        .ok_or_else(|| "no blixard identity".into())
}

/// A VM's lease file, as its supervisor reads it.
pub fn lease(b: &[u8]) -> Result<(), String> {
    blixard_vmm::supervisor::Lease::parse(&String::from_utf8_lossy(b)).map(|_| ())
}
