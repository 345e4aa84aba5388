//! `scripts/deb.sh` builds a package that dpkg unpacks into a scratch root (its own dpkg
//! database, no chroot): binaries, units, the service user, tuning, dashboard and alert rules
//! where the package says, the unit pointing at the packaged binary and still sandboxed.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn the_package_installs_into_a_scratch_root_with_a_sandboxed_unit() {
    let work = std::env::temp_dir().join(format!("ringway-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ringway")).parent().unwrap();
    let deb = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deb.sh"))
            .env("BIN_DIR", bin_dir)
            .env("DEB_COMPRESS", "none")
            .env("OUT", work.join("out")),
    );
    let deb = deb.trim().lines().last().unwrap().to_owned();
    let root = work.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-not-root", "--unpack", &deb]));
    for f in [
        "usr/bin/ringway",
        "lib/systemd/system/ringway.service",
        "lib/systemd/system/ringway@.service",
        "usr/lib/sysusers.d/ringway.conf",
        "usr/share/ringway/tuning/sysctl.conf",
        "usr/share/ringway/grafana/ringway.json",
        "usr/share/ringway/prometheus/alerts.yml",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    // A conffile waits as .dpkg-new until the package is configured (which would run postinst).
    let env = root.join("etc/ringway/ringway.env");
    assert!(env.exists() || root.join("etc/ringway/ringway.env.dpkg-new").exists());
    let version = run(Command::new(root.join("usr/bin/ringway")).arg("--version"));
    assert!(
        version.starts_with(concat!("ringway ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ringway.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/ringway serve"), "{unit}");
    let conffiles = std::fs::read_to_string(root.join("var/lib/dpkg/info/ringway.conffiles"));
    assert_eq!(conffiles.unwrap().trim(), "/etc/ringway/ringway.env");
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/ringway.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u ringway ")));
    // The unit as installed, under the installed root.
    let rating = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--threshold=40",
        &format!("--root={}", root.display()),
        "ringway.service",
    ]));
    assert!(rating.contains("Overall exposure level"), "{rating}");
    std::fs::remove_dir_all(&work).unwrap();
}
