//! Moving blocking work off the async workers.
//!
//! The daemon's async workers must never wait on the disk: a slow `std::fs` call (or a driver
//! that scans run directories with it) there stalls every request, heartbeat and Raft RPC
//! scheduled on that worker. Filesystem work goes to tokio's blocking pool through [`fs`];
//! calls into the VM driver (whose implementations mix `std::fs` with async waits) go through
//! [`driver`], which runs the whole future on a blocking thread.

use std::future::Future;

/// Runs `f` (filesystem work) on the blocking pool.
pub async fn fs<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(std::io::Error::other(format!(
            "blocking filesystem work was cancelled (the runtime is shutting down): {e}"
        ))),
    }
}

/// Runs `fut` (a VM driver call) on a blocking thread, driven by this runtime: its `std::fs`
/// calls block that thread, not an async worker. `None` if the runtime shut down meanwhile.
pub async fn driver<T, F>(fut: F) -> Option<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(fut)).await {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_and_errors_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let q = p.clone();
        fs(move || std::fs::write(&q, b"x")).await.unwrap();
        assert_eq!(fs(move || std::fs::read(&p)).await.unwrap(), b"x");
        let missing = dir.path().join("missing");
        assert!(fs(move || std::fs::read(missing)).await.is_err());
        let v = driver(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            7
        })
        .await;
        assert_eq!(v, Some(7));
    }
}
