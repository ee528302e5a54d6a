//! Membership changes on the running node: joining (learner, then voter while voters are below
//! the target), promoting learners, removing members (with the eviction notice and the
//! departed's VMs stopped), and noticing that this node itself was removed.

use super::*;

impl Node {
    /// Adds `id` at `addr` as a learner, then promotes it while voters are below the target.
    /// Idempotent for the same address; refused for a known id with another address.
    pub async fn join_member(
        &self,
        id: u64,
        addr: String,
        forwarded: bool,
    ) -> Result<pb::JoinReply, NodeError> {
        if addr.is_empty() || addr.len() > blixard_core::spec::MAX_ADDR_LEN {
            return Err(NodeError::Invalid(
                "join address must be 1 to 256 bytes".into(),
            ));
        }
        if !self.is_leader() {
            if forwarded {
                return Err(NodeError::retry(RetryReason::NotLeader { node: self.id }));
            }
            let req = pb::JoinRequest {
                node_id: id,
                addr: addr.clone(),
            };
            let on_leader = self.on_leader(|mut c| {
                let req = forwarded_request(req.clone());
                async move { c.join(req).await.map(|r| r.into_inner()) }
            });
            if let Some(reply) = on_leader.await? {
                return Ok(reply);
            }
        }
        let _guard = self.membership_lock.lock().await;
        if self.state.read().state.id_was_used(id) {
            // A wiped node rejoining under an old id could split the quorum (openraft's
            // membership docs): ids are never reused.
            return Err(NodeError::Rejected(blixard_core::ApplyError::IdUsed(id)));
        }
        let membership = self.metrics().membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&id) {
            if existing.addr != addr {
                return Err(NodeError::Invalid(format!(
                    "node {id} is already a member at {}; refusing a second address {addr} (remove it first)",
                    existing.addr
                )));
            }
        } else {
            // Blocking: returns once the learner has caught up (bounded, so an unreachable
            // joiner cannot hold the membership lock forever).
            let add = self
                .raft
                .add_learner(id, BasicNode { addr: addr.clone() }, true);
            tokio::time::timeout(Duration::from_secs(60), add)
                .await
                .map_err(|_| {
                    NodeError::Timeout(format!("node {id} at {addr} did not catch up within 60s"))
                })?
                .map_err(|e| membership_err(&format!("adding node {id} as learner"), e))?;
            tracing::info!(node = id, %addr, "added learner");
        }
        let voter = self.promote_if_needed(id).await?;
        Ok(pb::JoinReply {
            cluster_id: self.cluster_id.to_string(),
            voter,
            leader_id: self.id,
        })
    }

    /// Promotes learner `id` to voter when the cluster has fewer voters than its target.
    /// Returns whether `id` is a voter afterwards.
    async fn promote_if_needed(&self, id: u64) -> Result<bool, NodeError> {
        let membership = self.metrics().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            return Ok(true);
        }
        if voters.len() >= self.config.target_voters {
            return Ok(false);
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| membership_err(&format!("promoting node {id} to voter"), e))?;
        tracing::info!(node = id, "promoted to voter");
        Ok(true)
    }

    /// On the leader, periodically: promote caught-up learners while voters are below target.
    pub(crate) async fn promote_learners(&self) {
        if !self.is_leader() {
            return;
        }
        let (learners, matched, last) = {
            let m = self.metrics();
            let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
            let matched: BTreeMap<u64, u64> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map(|l| l.index()).unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            (learners, matched, m.last_log_index.unwrap_or(0))
        };
        let _guard = self.membership_lock.lock().await;
        for id in learners {
            // Only learners that are close to the leader's log are worth promoting.
            if matched
                .get(&id)
                .is_some_and(|m| last.saturating_sub(*m) <= 100)
            {
                match self.promote_if_needed(id).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => tracing::warn!(node = id, error = %e, "could not promote learner"),
                }
            }
        }
    }

    /// Removes a member (voter or learner) through Raft, then forgets it as a worker.
    pub async fn remove_member(&self, id: u64, forwarded: bool) -> Result<(), NodeError> {
        if !self.is_leader() {
            if forwarded {
                return Err(NodeError::retry(RetryReason::NotLeader { node: self.id }));
            }
            let on_leader = self.on_leader(|mut c| {
                // The entry node checked the `--force` guards (service `remove_member`).
                let req = forwarded_request(pb::RemoveMemberRequest {
                    node_id: id,
                    force: true,
                });
                async move { c.remove_member(req).await.map(|_| ()) }
            });
            if on_leader.await?.is_some() {
                return Ok(());
            }
        }
        let guard = self.membership_lock.lock().await;
        let term = self.metrics().current_term;
        let membership = self.metrics().membership_config.membership().clone();
        let Some(removed_addr) = membership.get_node(&id).map(|n| n.addr.clone()) else {
            return Err(NodeError::Rejected(blixard_core::ApplyError::not_found(
                "member", id,
            )));
        };
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(NodeError::Invalid(format!(
                    "node {id} is the last voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| membership_err(&format!("removing node {id}"), e))?;
        drop(guard);
        tracing::info!(node = id, "removed from membership");
        crate::security::revoke_node(self, id).await;
        // Its VMs may be placed elsewhere only once they have stopped there: either the node
        // confirms it stopped them, or its lease has run out (it can no longer renew it: the
        // leader refuses heartbeats from non-members). Until then the worker record, and so
        // the placements, stay.
        let fenced = if id == self.id {
            self.stop_all_vms().await
        } else {
            self.notify_evicted(id, &removed_addr).await
        };
        if fenced {
            if let Err(e) = self
                .propose_verdict(term, Command::RemoveWorker { id, term })
                .await
            {
                tracing::debug!(node = id, error = %e, "removing worker record");
            }
        } else {
            tracing::warn!(node = id, "the removed node did not confirm its VMs stopped: they move once its lease has expired");
        }
        Ok(())
    }

    /// Stops every VM on this host (before leaving the cluster). Returns whether all stopped.
    pub(crate) async fn stop_all_vms(&self) -> bool {
        self.liveness.revoke(&crate::liveness::lease_file(self));
        let vms = match self.driver.list().await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "listing VMs to stop them");
                return false;
            }
        };
        let mut ok = true;
        for vm in vms.into_iter().filter(|v| v.state.is_alive()) {
            if let Err(e) = self
                .driver
                .stop(&vm.name, crate::executor::STOP_GRACE)
                .await
            {
                tracing::error!(vm = %vm.name, error = %e, "stopping VM");
                ok = false;
            }
        }
        ok
    }

    /// Tells a removed node so; it stops its VMs and confirms (false: no confirmation).
    async fn notify_evicted(&self, id: u64, addr: &str) -> bool {
        let Ok(mut client) = peer_client(addr, &self.tls.client) else {
            return false;
        };
        let Ok(req) = peer_request(&self.cluster_id, &(), Some(crate::executor::STOP_GRACE * 2))
        else {
            return false;
        };
        let req = req.map(|_| pb::EvictedNotice { node_id: id });
        match client.evicted(req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(node = id, error = %e.message(), "could not tell the removed node");
                false
            }
        }
    }

    /// On the leader: the registered workers that are no longer members of the applied
    /// membership and that `keep` selects; none on a follower or before any membership.
    pub(crate) fn departed_workers(
        &self,
        keep: impl Fn(&blixard_core::ClusterState, u64) -> bool,
    ) -> Vec<u64> {
        if !self.is_leader() {
            return Vec::new();
        }
        let a = self.state.read();
        let m = a.membership.membership();
        if m.nodes().next().is_none() {
            return Vec::new();
        }
        a.state
            .workers
            .keys()
            .filter(|id| m.get_node(id).is_none() && keep(&a.state, **id))
            .copied()
            .collect()
    }

    /// On the leader: forget workers that are no longer members (a removal whose follow-up
    /// was interrupted, for instance).
    pub(crate) async fn forget_departed_workers(&self) {
        let departed = self.departed_workers(|_, _| true);
        // Only once they cannot be running any more: silent for lease + grace, as judged by
        // the leader of this term.
        let term = self.metrics().current_term;
        let after = Duration::from_millis(self.liveness_settings().down_after_ms(now_ms()));
        let departed: Vec<u64> = departed
            .into_iter()
            .filter(|id| self.liveness.silent_for(*id) > after)
            .collect();
        for id in departed {
            tracing::info!(node = id, "forgetting worker that is no longer a member");
            if let Err(e) = self
                .propose_verdict(term, Command::RemoveWorker { id, term })
                .await
            {
                tracing::debug!(node = id, error = %e, "removing worker record");
            }
        }
    }

    /// True once this node's applied membership no longer lists it, after having listed it.
    pub(crate) fn removed_from_cluster(&self, was_member: &mut bool) -> bool {
        let a = self.state.read();
        let m = a.membership.membership();
        let member = m.get_node(&self.id).is_some();
        if member {
            *was_member = true;
        }
        *was_member && !member && m.nodes().next().is_some()
    }
}

/// Leadership changes and concurrent changes are worth retrying; the rest are not.
fn membership_err(
    what: &str,
    e: RaftError<blixard_raft::TypeConfig, ClientWriteError<blixard_raft::TypeConfig>>,
) -> NodeError {
    use openraft::error::ChangeMembershipError as Cme;
    match &e {
        RaftError::APIError(
            ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
        )
        | RaftError::APIError(ClientWriteError::ChangeMembershipError(Cme::InProgress(_))) => {
            NodeError::retry(RetryReason::Raft {
                what: what.to_string(),
                why: e.to_string(),
            })
        }
        _ => NodeError::Raft(format!("{what}: {e}")),
    }
}
