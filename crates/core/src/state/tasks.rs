//! The task rules: submitting, placing, finishing, retrying and retaining one-shot tasks.

use super::{ClusterState, RowKey};
use crate::command::{ApplyError, Outcome, Reply};
use crate::model::NodeState;
use crate::spec::{NodeId, Resources};
use crate::task::{self, TaskRecord, TaskSpec, TaskState, MAX_ACTIVE_TASKS, MAX_FINISHED_TASKS};

impl ClusterState {
    pub(super) fn submit_task(
        &mut self,
        index: u64,
        now: u64,
        id: &str,
        spec: &TaskSpec,
    ) -> Outcome {
        task::validate_task_id(id)?;
        spec.validate()?;
        if self.tasks.contains_key(id) {
            return Err(ApplyError::AlreadyExists {
                what: "task".into(),
                name: id.to_string(),
            });
        }
        let active = self.tasks.len() - self.finished_tasks.len();
        if active >= MAX_ACTIVE_TASKS {
            return Err(ApplyError::LimitReached(format!(
                "the cluster already holds {MAX_ACTIVE_TASKS} unfinished tasks"
            )));
        }
        let weight = crate::budget::task_spec_bytes(spec);
        if self.bytes.tasks + weight > crate::budget::MAX_TASK_SPEC_BYTES {
            return Err(ApplyError::LimitReached(format!(
                "the cluster's tasks already take {} KiB of their {} KiB budget: wait for tasks to finish, or cancel some",
                self.bytes.tasks >> 10,
                crate::budget::MAX_TASK_SPEC_BYTES >> 10
            )));
        }
        if let Some(pin) = spec.node {
            let Some(w) = self.workers.get(&pin) else {
                return Err(ApplyError::not_found("node", pin));
            };
            let cap = self.settings.effective_capacity(&w.capacity);
            if !cap.fits(&spec.resources()) {
                return Err(ApplyError::NoCapacity(format!(
                    "node {pin} can never fit this task: it offers {} vCPUs and {} MiB memory",
                    cap.vcpus, cap.memory_mb
                )));
            }
        }
        let t = TaskRecord {
            id: id.to_string(),
            spec: spec.clone(),
            node_id: None,
            state: TaskState::Pending,
            attempt: 0,
            epoch: index,
            exit_code: None,
            duration_ms: None,
            reason: None,
            cancel_requested: false,
            submitted_ms: now,
            started_ms: None,
            finished_ms: None,
            finished_index: None,
            updated_ms: now,
            created_by: None,
        };
        self.pending_tasks.insert((now, id.to_string()));
        self.bytes.tasks += weight;
        self.tasks.insert(id.to_string(), t);
        self.touched.insert(RowKey::Task(id.to_string()));
        self.place_pending_tasks(index, now);
        Ok(Reply::Task(Box::new(self.tasks[id].clone())))
    }

    /// The task `id` if (`node`, `epoch`) is its current, unfinished assignment.
    pub(super) fn current_task(
        &mut self,
        id: &str,
        node: NodeId,
        epoch: u64,
    ) -> Result<&mut TaskRecord, ApplyError> {
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(ApplyError::not_found("task", id));
        };
        if t.epoch != epoch || t.node_id != Some(node) || t.state.is_finished() {
            return Err(ApplyError::StaleAttempt {
                id: id.to_string(),
                got: epoch,
                current: t.epoch,
                node: t.node_id,
            });
        }
        Ok(t)
    }

    /// Ends task `id` in `state`: frees what it held and records it as finished. (Eviction of
    /// old finished tasks is left to the caller, after it has read the record.)
    pub(super) fn finish_task(
        &mut self,
        id: &str,
        index: u64,
        now: u64,
        state: TaskState,
        reason: Option<String>,
    ) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.state.is_finished() {
            return;
        }
        let held = t.node_id.map(|n| (n, t.spec.resources()));
        if t.node_id.is_none() {
            self.pending_tasks.remove(&(t.submitted_ms, id.to_string()));
        }
        t.state = state;
        t.reason = reason;
        t.finished_ms = Some(now);
        t.finished_index = Some(index);
        t.updated_ms = now;
        self.finished_tasks.insert((index, id.to_string()));
        self.touched.insert(RowKey::Task(id.to_string()));
        if let Some((n, res)) = held {
            self.release_task(n, &res);
        }
    }

    /// Forgets the oldest finished tasks beyond [`MAX_FINISHED_TASKS`].
    pub(super) fn evict_finished_tasks(&mut self) {
        while self.finished_tasks.len() > MAX_FINISHED_TASKS {
            let Some((_, id)) = self.finished_tasks.pop_first() else {
                break;
            };
            if let Some(t) = self.tasks.remove(&id) {
                self.bytes.tasks = self
                    .bytes
                    .tasks
                    .saturating_sub(crate::budget::task_spec_bytes(&t.spec));
            }
            self.touched.insert(RowKey::Task(id));
        }
    }

    pub(super) fn release_task(&mut self, node: NodeId, res: &Resources) {
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_sub(res);
            self.touched.insert(RowKey::Worker(node));
        }
    }

    /// Node `id` is gone (down, removed, or shrunk): each unfinished task assigned there is
    /// retried elsewhere with a new attempt while attempts remain, else it is lost (or
    /// cancelled, when a cancel was pending).
    pub(super) fn requeue_tasks_from_node(&mut self, id: NodeId, index: u64, now: u64, why: &str) {
        let on_node: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.node_id == Some(id) && !t.state.is_finished())
            .map(|t| t.id.clone())
            .collect();
        for tid in on_node {
            let Some(t) = self.tasks.get(&tid) else {
                continue;
            };
            let (cancel, attempt, max) = (t.cancel_requested, t.attempt, t.spec.max_attempts);
            if cancel {
                self.finish_task(
                    &tid,
                    index,
                    now,
                    TaskState::Cancelled,
                    Some(format!("cancelled; {why}")),
                );
            } else if attempt >= max {
                self.finish_task(
                    &tid,
                    index,
                    now,
                    TaskState::Lost,
                    Some(format!(
                        "{why} during attempt {attempt} of {max}; no attempt left"
                    )),
                );
            } else {
                let res = t.spec.resources();
                let Some(t) = self.tasks.get_mut(&tid) else {
                    continue;
                };
                t.node_id = None;
                t.state = TaskState::Pending;
                t.started_ms = None;
                t.reason = Some(format!("{why} during attempt {attempt} of {max}; retrying"));
                t.updated_ms = now;
                let key = (t.submitted_ms, tid.clone());
                self.pending_tasks.insert(key);
                self.touched.insert(RowKey::Task(tid.clone()));
                self.release_task(id, &res);
            }
        }
        self.evict_finished_tasks();
    }

    /// Where task `spec` would go now: an up node (the pinned one, if any) with room, the one
    /// with the most free vCPUs, then memory, then the lowest id. `Err` says why none.
    pub(super) fn choose_task_node(&self, spec: &TaskSpec) -> Result<NodeId, String> {
        let need = spec.resources();
        let mut best: Option<(u32, u64, NodeId)> = None;
        for w in self.workers.values() {
            if w.state != NodeState::Up || spec.node.is_some_and(|p| p != w.id) {
                continue;
            }
            let free = self
                .settings
                .effective_capacity(&w.capacity)
                .saturating_sub(&w.allocated);
            if !free.fits(&need) {
                continue;
            }
            let better = match best {
                None => true,
                Some((c, m, _)) => (free.vcpus, free.memory_mb) > (c, m),
            };
            if better {
                best = Some((free.vcpus, free.memory_mb, w.id));
            }
        }
        match (best, spec.node) {
            (Some((_, _, n)), _) => Ok(n),
            (None, Some(p)) => match self.workers.get(&p) {
                Some(w) if w.state != NodeState::Up => {
                    Err(format!("waiting for node {p}: it is {}", w.state.as_str()))
                }
                Some(_) => Err(format!(
                    "waiting for node {p} to have {} free vCPUs and {} MiB memory",
                    need.vcpus, need.memory_mb
                )),
                None => Err(format!("node {p} is no longer in the cluster")),
            },
            (None, None) => Err(format!(
                "waiting for an up node with {} free vCPUs and {} MiB memory",
                need.vcpus, need.memory_mb
            )),
        }
    }

    /// Assigns every waiting task that fits somewhere, oldest first; the others keep waiting
    /// (with the reason). Each assignment is a new attempt whose epoch is `index`.
    pub(super) fn place_pending_tasks(&mut self, index: u64, now: u64) {
        let waiting: Vec<(u64, String)> = self.pending_tasks.iter().cloned().collect();
        for key in waiting {
            let Some(t) = self.tasks.get(&key.1) else {
                continue;
            };
            match self.choose_task_node(&t.spec) {
                Ok(node) => {
                    let res = t.spec.resources();
                    self.pending_tasks.remove(&key);
                    let Some(t) = self.tasks.get_mut(&key.1) else {
                        continue;
                    };
                    t.node_id = Some(node);
                    t.attempt += 1;
                    t.epoch = index;
                    t.state = TaskState::Pending;
                    t.reason = None;
                    t.updated_ms = now;
                    self.touched.insert(RowKey::Task(key.1.clone()));
                    if let Some(w) = self.workers.get_mut(&node) {
                        w.allocated = w.allocated.saturating_add(&res);
                        self.touched.insert(RowKey::Worker(node));
                    }
                }
                Err(why) => {
                    let Some(t) = self.tasks.get_mut(&key.1) else {
                        continue;
                    };
                    // A retry keeps the story of why it is waiting until it is placed again.
                    if t.attempt == 0 && t.reason.as_deref() != Some(why.as_str()) {
                        t.reason = Some(why);
                        t.updated_ms = now;
                        self.touched.insert(RowKey::Task(key.1.clone()));
                    }
                }
            }
        }
    }

    /// Unassigned tasks, in the order they are placed.
    pub fn pending_task_ids(&self) -> impl Iterator<Item = &str> {
        self.pending_tasks.iter().map(|k| k.1.as_str())
    }
}
