//! Replays a target's committed corpus: every file under `fuzz/corpus/<target>/` through the
//! target's check. Used by the owning crates' `tests/fuzz_corpus.rs` on the stable toolchain.

use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; answers how many ran. A corpus that is
/// missing or empty fails: a replay that replays nothing proves nothing.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
    // Every crate that includes this file sits beside `fuzz/`.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cannot list the corpus {}: {e}", dir.display()));
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    for file in &files {
        let data =
            std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        // Name the input that broke a property before the panic unwinds the test.
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(cause) = outcome {
            eprintln!("corpus input {} failed", file.display());
            std::panic::resume_unwind(cause);
        }
    }
    files.len()
}
