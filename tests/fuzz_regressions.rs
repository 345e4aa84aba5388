//! Replays every saved fuzz input (seeds and past crashes, `fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/`) through the checks the fuzz targets run, on stable Rust.

use std::path::Path;

use ringway::fuzzing::TARGETS;

#[test]
fn saved_fuzz_inputs_still_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for (name, check) in TARGETS {
        for kind in ["seeds", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.unwrap().path();
                if path.file_name().is_some_and(|n| n == ".gitkeep") {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{} fails its check", path.display());
                ran += 1;
            }
        }
    }
    assert!(ran >= TARGETS.len(), "every target has seeds; ran {ran}");
}
