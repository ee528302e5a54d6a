//! Small file helpers for run directories: the last lines or bytes of a log, a line search
//! bounded in size, and atomic writes (temp file + rename).

use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::Path;

use super::READY_SCAN_LIMIT;
use crate::DriverError;

/// The last `n` lines of a file (lossy UTF-8), empty if it does not exist.
pub fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 16 * 1024;
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `max` bytes of a file; `None` if it does not exist or is empty.
pub(super) fn read_last(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len == 0 {
        return None;
    }
    file.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// True if some line of the file (within its first 16 MiB) contains `needle`.
pub fn file_contains_line(path: &Path, needle: &str) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let reader = io::BufReader::new(file.take(READY_SCAN_LIMIT));
    let needle = needle.as_bytes();
    reader
        .split(b'\n')
        .map_while(Result::ok)
        .any(|line| line.windows(needle.len()).any(|w| w == needle))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| DriverError::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| DriverError::io("renaming", &tmp, e))
}
