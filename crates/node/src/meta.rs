//! The node's local identity file, `<data-dir>/node.json`: which node this is, which cluster
//! it belongs to and the address it advertises. Local state: it is never replicated, and the
//! replicated state never depends on it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub node_id: u64,
    pub cluster_id: String,
    pub addr: String,
    /// Set once the node has left the cluster; such a directory cannot be resumed.
    #[serde(default)]
    pub left: bool,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

pub fn load(data_dir: &Path) -> Result<Option<NodeMeta>, NodeError> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| NodeError::Config(format!("{} is corrupt: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::io(format!("reading {}", p.display()), e)),
    }
}

/// Writes the file atomically (temp file, fsync, rename).
pub fn store(data_dir: &Path, meta: &NodeMeta) -> Result<(), NodeError> {
    use std::io::Write;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| NodeError::io(format!("creating {}", data_dir.display()), e))?;
    let p = path(data_dir);
    let tmp = data_dir.join("node.json.tmp");
    let bytes = serde_json::to_vec_pretty(meta)
        .map_err(|e| NodeError::io("encoding node.json", e.into()))?;
    let io = |e: std::io::Error| NodeError::io(format!("writing {}", p.display()), e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &p).map_err(io)?;
    Ok(())
}
