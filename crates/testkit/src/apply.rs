//! The apply fixture: a [`ClusterState`] driven through `apply` the way the log drives it, with
//! the checks every apply test wants after each command: the invariants hold, and a refused
//! command changed nothing (same digest).

use blixard_core::{ApplyError, ClusterState, Command, Reply, Request, Resources};

/// A replicated state machine in a test: commands applied at consecutive log indexes, at
/// `term`, with the request time `index * 100` ms.
pub struct Applier {
    pub s: ClusterState,
    /// Index of the last applied command.
    pub index: u64,
    /// Term of the next commands (leader-only verdicts must carry it).
    pub term: u64,
}

impl Default for Applier {
    fn default() -> Self {
        Self {
            s: ClusterState::default(),
            index: 0,
            term: 1,
        }
    }
}

impl Applier {
    /// An empty state with the workers `(id, vcpus, memory_mb)` registered.
    pub fn with_workers(nodes: &[(u64, u32, u64)]) -> Self {
        let mut a = Self::default();
        for &(id, vcpus, memory_mb) in nodes {
            a.register(id, vcpus, memory_mb);
        }
        a
    }

    /// Registers worker `id` (address `127.0.0.1:<id>`, 100 GB of disk, no KVM, no labels).
    pub fn register(&mut self, id: u64, vcpus: u32, memory_mb: u64) -> Reply {
        self.ok(Command::RegisterWorker {
            id,
            addr: format!("127.0.0.1:{id}"),
            capacity: Resources::new(vcpus, memory_mb, 100),
            kvm: false,
            labels: Default::default(),
        })
    }

    /// Applies `c` at the next index; panics if an invariant broke or if a refusal changed
    /// the state.
    pub fn apply(&mut self, c: Command) -> Result<Reply, ApplyError> {
        self.index += 1;
        let before = self.s.digest();
        let out = self
            .s
            .apply_at(self.term, self.index, &Request::new(c, self.index * 100));
        self.s
            .check_invariants()
            .unwrap_or_else(|e| panic!("invariant broken: {e}"));
        if out.is_err() {
            assert_eq!(
                before,
                self.s.digest(),
                "a refused command changed the state"
            );
        }
        out
    }

    /// Applies `c`, which must be accepted.
    pub fn ok(&mut self, c: Command) -> Reply {
        self.apply(c).unwrap_or_else(|e| panic!("refused: {e}"))
    }
}
