//! Every file in `spec/vectors/` is checked in both directions, and every encoding has a
//! file.

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[test]
fn every_vector_file_checks_both_ways() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("spec/vectors exists") {
        let path = entry.expect("readable dir").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("readable vector file");
        if let Err(e) = arca_spec::check(&name, &text) {
            panic!("{e}");
        }
        seen.push(name);
    }
    seen.sort();
    let mut want: Vec<String> = arca_spec::generate()
        .into_keys()
        .map(String::from)
        .collect();
    want.sort();
    assert_eq!(
        seen, want,
        "spec/vectors/ must hold exactly one file per encoding"
    );
}

#[test]
fn a_changed_byte_in_a_vector_is_caught() {
    // The checker must really compare: corrupt one expected byte and it must fail.
    let text = std::fs::read_to_string(dir().join("trees.json")).expect("trees.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let plain = v["cases"][0]["plain"].as_str().expect("plain").to_string();
    let flipped = format!(
        "{}{}",
        if plain.starts_with('0') { "1" } else { "0" },
        &plain[1..]
    );
    let bad = text.replacen(&plain, &flipped, 1);
    assert!(arca_spec::check("trees.json", &bad).is_err());
}
