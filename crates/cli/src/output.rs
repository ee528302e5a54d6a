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

/// A command line clap refused, as the contract wants failures: one line on stderr (clap's
/// message with the accepted values, without the usage block), clap's exit status (2). Help and
/// version requests print as clap prints them.
pub fn usage_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!("error: {}", one_line(&e.render().to_string()));
    std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Clap's rendered error on one line: its message, the accepted values and any tip; not the
/// usage block nor the pointer to `--help`.
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut in_usage = false;
    for line in rendered.lines().map(str::trim) {
        if line.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if line.is_empty() {
            in_usage = false;
            continue;
        }
        if in_usage || line.starts_with("For more information") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    /// The values the CLI accepts are spelled as its JSON prints them (`as_str`).
    #[test]
    fn argument_values_are_the_contracts_spellings() {
        use blixard_core::{Desired, NodeState, RestartPolicy, Strategy, TaskState, VmState};
        use clap::ValueEnum;
        fn check<T: ValueEnum>(as_str: fn(&T) -> &'static str) {
            for v in T::value_variants() {
                let name = v.to_possible_value().map(|p| p.get_name().to_string());
                assert_eq!(name.as_deref(), Some(as_str(v)));
            }
        }
        check::<VmState>(VmState::as_str);
        check::<TaskState>(TaskState::as_str);
        check::<NodeState>(NodeState::as_str);
        check::<Desired>(Desired::as_str);
        check::<RestartPolicy>(RestartPolicy::as_str);
        check::<Strategy>(Strategy::as_str);
    }

    #[test]
    fn clap_errors_fit_one_line() {
        let rendered = "error: invalid value 'sleepy' for '--state <STATE>'\n  [possible values: pending, running]\n\n  tip: a similar value exists: 'pending'\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(rendered),
            "invalid value 'sleepy' for '--state <STATE>' [possible values: pending, running] tip: a similar value exists: 'pending'"
        );
        let rendered = "error: unexpected argument '--x' found\n\nUsage: blixard vm list [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(super::one_line(rendered), "unexpected argument '--x' found");
    }
}
