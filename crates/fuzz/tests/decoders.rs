//! Decoders never panic. For every target of `blixard_fuzz`:
//! - the corpus in `fuzz/corpus/<target>/` is replayed: files named `ok-*` must decode, files
//!   named `bad-*` must be refused, every file must be handled without a panic;
//! - the seeds (valid encodings, made fresh) must decode, the refused cases (attacks and
//!   corruptions, made fresh) must be refused with a message, and both must be in the corpus;
//! - a bounded run of random bytes and of mutated seeds (a fixed number of cases per target,
//!   `PROPTEST_CASES` to change it) must not panic.
//!
//! `BLIXARD_FUZZ_WRITE_CORPUS=1 cargo nextest run -p blixard-fuzz` rewrites the seed files
//! (after a message format changes); other corpus files are kept.

use std::path::{Path, PathBuf};

use blixard_fuzz::{refused, seeds, Target, TARGETS};
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Writes `(target, name, bytes)` into the corpus, or checks that the file is there.
fn in_corpus(cases: &[(&str, String, Vec<u8>)]) {
    let write = std::env::var_os("BLIXARD_FUZZ_WRITE_CORPUS").is_some();
    for (t, name, bytes) in cases {
        let path = corpus_dir().join(t).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        } else {
            assert!(
                path.is_file(),
                "{} is missing: run with BLIXARD_FUZZ_WRITE_CORPUS=1 to write the seeds",
                path.display()
            );
        }
    }
}

#[test]
fn seeds_decode_and_are_in_the_corpus() {
    let seeds = seeds();
    for (name, _) in TARGETS {
        assert!(
            seeds.iter().any(|(t, _, _)| t == name),
            "target {name} has no seed"
        );
    }
    for (t, name, bytes) in &seeds {
        if let Err(e) = target(t)(bytes) {
            panic!("seed {t}/{name} does not decode: {e}");
        }
    }
    in_corpus(&seeds);
}

#[test]
fn attacks_and_corruptions_are_refused_with_a_message() {
    let cases = refused();
    for (t, name, bytes) in &cases {
        match target(t)(bytes) {
            Ok(()) => panic!("{t}/{name} was accepted"),
            Err(e) => assert!(!e.trim().is_empty(), "{t}/{name}: an empty error"),
        }
    }
    in_corpus(&cases);
}

#[test]
fn the_corpus_replays_without_a_panic() {
    let mut n = 0;
    for (name, f) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for (file, bytes) in files {
            let r = f(&bytes);
            if file.starts_with("ok-") {
                assert!(r.is_ok(), "{name}/{file} should decode: {r:?}");
            }
            if file.starts_with("bad-") {
                let e = r.expect_err(&format!("{name}/{file} should be refused"));
                assert!(!e.trim().is_empty(), "{name}/{file}: an empty error");
            }
            n += 1;
        }
    }
    assert!(n >= TARGETS.len());
}

/// One edit of a seed: overwrite, insert, delete a byte, truncate, or splice a chunk of
/// another place of the input (length fields pointing elsewhere, repeated structures).
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
    Interesting(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        2 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
        2 => (any::<usize>(), 0u8..8).prop_map(|(p, k)| Edit::Interesting(p, k)),
    ]
}

fn apply_edits(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len();
        match *e {
            Edit::Set(p, v) if len > 0 => b[p % len] = v,
            Edit::Insert(p, v) => b.insert(p % (len + 1), v),
            Edit::Delete(p) if len > 0 => {
                b.remove(p % len);
            }
            Edit::Truncate(p) => b.truncate(p % (len + 1)),
            Edit::Duplicate(from, to) if len > 0 => {
                let from = from % len;
                let end = (from + 1 + (to % 64)).min(len);
                let piece = b[from..end].to_vec();
                let at = to % (len + 1);
                b.splice(at..at, piece);
            }
            Edit::Interesting(p, k) if len > 0 => {
                // Bytes that mean something to the formats: varint continuation, huge
                // lengths, JSON structure, UTF-8 lead bytes.
                let v = [0x00, 0xff, 0x80, b'"', b'{', b'9', 0xc3, b'\\'][k as usize];
                b[p % len] = v;
            }
            _ => {}
        }
    }
    b
}

fn seeds_of(name: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = corpus(name).into_iter().map(|(_, b)| b).collect();
    v.extend(
        seeds()
            .into_iter()
            .filter(|(t, _, _)| *t == name)
            .map(|(_, _, b)| b),
    );
    v
}

/// Mutated seeds and random bytes for one target; only a panic fails.
fn fuzz(name: &str) {
    let f = target(name);
    let seeds = seeds_of(name);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = prop_oneof![
        3 => (0..seeds.len(), prop::collection::vec(edit(), 1..8))
            .prop_map(move |(i, e)| apply_edits(seeds[i].clone(), &e)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ];
    if let Err(e) = runner.run(&strategy, |input| {
        let _ = f(&input);
        Ok(())
    }) {
        panic!("target {name}: {e}");
    }
}

#[test]
fn fuzz_raft_message() {
    fuzz("raft_message");
}

#[test]
fn fuzz_snapshot_stream() {
    fuzz("snapshot_stream");
}

#[test]
fn fuzz_snapshot_data() {
    fuzz("snapshot_data");
}

#[test]
fn fuzz_state_rows() {
    fuzz("state_rows");
}

#[test]
fn fuzz_log_entry() {
    fuzz("log_entry");
}

#[test]
fn fuzz_client_pb() {
    fuzz("client_pb");
}

#[test]
fn fuzz_join_token() {
    fuzz("join_token");
}

#[test]
fn fuzz_credentials() {
    fuzz("credentials");
}

#[test]
fn fuzz_identity_der() {
    fuzz("identity_der");
}

#[test]
fn fuzz_lease() {
    fuzz("lease");
}

#[test]
fn every_target_has_a_fuzz_test() {
    let src = include_str!("decoders.rs");
    for (name, _) in TARGETS {
        assert!(
            src.contains(&format!("fuzz(\"{name}\")")),
            "target {name} is never fuzzed"
        );
    }
}
