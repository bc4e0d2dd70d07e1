//! The reader of `data/membership.toml` on the fuzz target's seeds (fuzz/seeds/membership_state),
//! on stable: each seed reads, and what it reads, written out again, reads back as itself; text
//! that is not a state file is an error naming what is wrong, never a panic.

use cairn_node::membership::parse_state_file;

#[test]
fn the_seeds_read_and_round_trip() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/membership_state");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let canonical =
            parse_state_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(parse_state_file(&canonical), Ok(canonical.clone()));
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} seeds in {}", dir.display());
}

#[test]
fn broken_state_files_are_errors() {
    for (text, expected) in [
        ("generation = -1\n", "generation"),
        ("generation = 1\nmystery = true\n", "mystery"),
        ("generation = \"soon\"\n", "generation"),
        ("seeds = [1, 2]\ngeneration = 1\n", "seeds"),
        ("generation = 1\ngeneration = 2\n", "generation"),
        ("\u{0}", ""),
    ] {
        match parse_state_file(text) {
            Err(reason) => assert!(reason.contains(expected), "{text:?}: {reason}"),
            Ok(state) => panic!("{text:?} read as {state:?}"),
        }
    }
}
