//! Write `spec/vectors/*.json` from the fixed inputs in `arca-spec`. Run only when the
//! format changes (and say so in the spec's "Version changes"); `--check` instead reports
//! which files the current code would write differently.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let mut differ = 0;
    for (name, text) in arca_spec::generate() {
        let path = dir.join(name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                eprintln!("{name}: would change");
                differ += 1;
            }
        } else if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if differ > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
