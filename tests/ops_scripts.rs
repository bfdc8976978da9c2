//! The operator scripts in ops/ are part of the product: run their self-tests.

use std::process::Command;

#[test]
fn hook_examples_pass_their_self_test() {
    let out = Command::new("bash")
        .arg("ops/hooks/test.sh")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.ends_with(" 0 failed"), "{last}");
}

#[test]
fn install_script_installs_into_a_prefix() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("tandem-binary");
    std::fs::copy(env!("CARGO_BIN_EXE_tandem"), &bin).unwrap();
    let out = Command::new("bash")
        .arg("ops/install.sh")
        .arg("--prefix")
        .arg(root.path())
        .arg("--binary")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = root.path();
    assert!(p.join("usr/local/bin/tandem").is_file());
    assert!(p.join("etc/systemd/system/tandem.service").is_file());
    assert!(p.join("usr/local/lib/tandem/hooks/vip").is_file());
    // The example config it installs is valid as shipped.
    let check = Command::new(p.join("usr/local/bin/tandem"))
        .args(["config", "check"])
        .arg(p.join("etc/tandem/tandem.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
