//! Printing: JSON documents for scripts (the contract's shapes), aligned tables for people.

use comfy_table::presets::NOTHING;
use comfy_table::Table;
use serde_json::Value;

pub use blixard_api::json::*;

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the first column with a leading space under NOTHING; trim each line.
    t.to_string()
        .lines()
        .map(|l| l.trim().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Replaces control characters (terminal escapes) with U+FFFD before printing to a terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}
