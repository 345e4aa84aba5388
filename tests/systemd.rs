//! The shipped systemd units keep their sandbox: `systemd-analyze security` rates each at an
//! exposure of 4.0 or lower (the scale is 0–10; a unit with no sandbox is 9.6).

use std::process::Command;

fn exposure_ok(unit: &str) -> (bool, String) {
    let path = format!("{}/tuning/{unit}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=40", &path])
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/services.sh install)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_units_are_sandboxed_to_an_exposure_of_four_or_less() {
    for unit in ["ringway.service", "ringway@.service"] {
        let (ok, text) = exposure_ok(unit);
        let overall = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default();
        assert!(ok, "{unit}: {overall}\n{text}");
    }
    // The template names each node after its instance and reads that instance's env file.
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tuning/ringway@.service"
    ))
    .unwrap();
    assert!(template.contains("EnvironmentFile=/etc/ringway/%i.env"));
    assert!(template.contains("Environment=RINGWAY_NODE_ID=%i"));
    assert!(template.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}
