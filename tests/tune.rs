//! `scripts/tune.sh` against a fake `/proc/sys` tree: minimums, exact values, values scaled
//! to the host's RAM, and `--apply` writing (and persisting) only what had to change.

use std::path::Path;
use std::process::Command;

fn write(root: &Path, key: &str, value: &str) {
    let path = root.join(key.replace('.', "/"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{value}\n")).unwrap();
}

fn read(root: &Path, key: &str) -> String {
    std::fs::read_to_string(root.join(key.replace('.', "/")))
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs the script in `mode` on the tree; (success, stdout + stderr).
fn tune(root: &Path, mode: &str) -> (bool, String) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tune.sh"))
        .arg(mode)
        .env("PROC_SYS", root.join("sys"))
        .env("MEMINFO", root.join("meminfo"))
        .env("SYSCTL_D", root.join("sysctl.d"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn state(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row for {key}:\n{text}"));
    line.split_whitespace().last().unwrap().to_owned()
}

#[test]
fn tune_checks_minimums_exact_values_and_ram_and_applies_only_the_difference() {
    let root = std::env::temp_dir().join(format!("ringway-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let sys = root.join("sys");
    // A 2 GiB host: 524,288 pages of 4 KiB.
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("meminfo"), "MemTotal:        2097152 kB\n").unwrap();
    let wanted = [
        ("fs.file-max", "4194304"), // above the minimum: left alone
        ("fs.nr_open", "1048576"),  // below it
        ("fs.epoll.max_user_watches", "2097152"),
        ("net.core.somaxconn", "65535"),
        ("net.ipv4.tcp_max_syn_backlog", "65535"),
        ("net.core.netdev_max_backlog", "16384"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
        ("net.ipv4.ip_local_reserved_ports", ""),
        ("net.ipv4.tcp_tw_reuse", "2"), // not a minimum: 2 is not "more" than 1
        ("net.ipv4.tcp_fin_timeout", "60"), // nor is 60 more than 15
        ("net.ipv4.tcp_mem", "65536 87381 131072"),
        ("net.ipv4.tcp_rmem", "4096 8192 4194304"),
        ("net.ipv4.tcp_wmem", "4096 8192 4194304"),
    ];
    for (k, v) in wanted {
        write(&sys, k, v);
    }
    let (ok, text) = tune(&root, "--check");
    assert!(!ok, "{text}");
    for (key, want) in [
        ("fs.file-max", "ok"),
        ("fs.nr_open", "CHANGE"),
        ("net.core.somaxconn", "ok"),
        ("net.ipv4.ip_local_reserved_ports", "CHANGE"),
        ("net.ipv4.tcp_tw_reuse", "CHANGE"),
        ("net.ipv4.tcp_fin_timeout", "CHANGE"),
        // 1/8, 1/6, 1/4 of 524,288 pages.
        ("net.ipv4.tcp_mem", "ok"),
        ("net.netfilter.nf_conntrack_max", "(skipped)"),
    ] {
        assert_eq!(state(&text, key), want, "{key}:\n{text}");
    }
    assert!(text.contains("4 kernel settings differ"), "{text}");

    let (_, text) = tune(&root, "--apply");
    assert_eq!(read(&sys, "fs.nr_open"), "2097152");
    assert_eq!(read(&sys, "net.ipv4.tcp_fin_timeout"), "15");
    assert_eq!(read(&sys, "net.ipv4.tcp_tw_reuse"), "1");
    assert_eq!(read(&sys, "net.ipv4.ip_local_reserved_ports"), "8080,9090");
    assert_eq!(
        read(&sys, "fs.file-max"),
        "4194304",
        "a larger value is kept"
    );
    let persisted = std::fs::read_to_string(root.join("sysctl.d/90-ringway.conf")).unwrap();
    let lines: Vec<&str> = persisted.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 4, "only what had to change:\n{persisted}");
    assert!(!persisted.contains("fs.file-max"));
    // The check after applying finds the kernel settings right (this shell's limits may not be).
    assert!(
        text.contains("0 kernel settings differ") || !text.contains("differ"),
        "{text}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
