//! The appliance image end to end: `image/build` twice, in two clean
//! directories, gives byte-identical outputs; `image/boot-test` boots the
//! result in qemu with a config disk that puts the admin port off loopback
//! (TLS only, a CA from `canopy cluster init --ca-dir`), pushes a project
//! through the forwarded Git remote over https, gets
//! the function's answer, reboots on the same data disk and powers off
//! cleanly. `image/cluster-test` boots three appliance VMs on a private
//! network: they form a cluster (one founds it, two join with invites from
//! its admin API), a push to one is served by all three, and all three power
//! off cleanly.
//!
//! The tests boot their VMs one test at a time, with the machine to
//! themselves ([`canopy_tests::own_machine_blocking`]), so that two sets of
//! TCG VMs (or a VM and a dream) do not share the cores and stretch each
//! other's times. Building the image (a release build of `canopy` for musl,
//! minutes when cold) takes no lock: it runs beside the other end-to-end
//! tests instead of holding them up.
//!
//! Skipped, with the reason printed, when qemu, the Debian cloud kernel,
//! busybox-static, musl-tools or the Rust musl target are missing — unless
//! `CANOPY_REQUIRE_ALL=1` (CI), where a missing prerequisite fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use canopy_tests::{canopy_bin, own_machine_blocking, workspace_root};

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// What this machine lacks to build and boot the appliance, with the
/// command that installs it.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    for (tool, install) in [
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("musl-gcc", "apt-get install musl-tools"),
        ("mke2fs", "apt-get install e2fsprogs"),
        ("e2fsck", "apt-get install e2fsprogs"),
        ("dumpe2fs", "apt-get install e2fsprogs"),
        ("cpio", "apt-get install cpio"),
        ("zstd", "apt-get install zstd"),
        ("curl", "apt-get install curl"),
        ("git", "apt-get install git"),
    ] {
        if !on_path(tool) {
            missing.push(format!("{tool} ({install})"));
        }
    }
    let kernels = std::fs::read_dir("/boot")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64"))
                .count()
        })
        .unwrap_or(0);
    if kernels == 0 {
        missing.push(
            "the Debian cloud kernel /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)"
                .to_owned(),
        );
    }
    match std::fs::read("/bin/busybox") {
        // A dynamically linked busybox names its loader near the start.
        Ok(bytes) if !bytes.windows(8).take(8192).any(|w| w == b"ld-linux") => {}
        _ => missing.push("a static /bin/busybox (apt-get install busybox-static)".to_owned()),
    }
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if !sysroot.is_some_and(|root| root.join("lib/rustlib").join(MUSL_TARGET).is_dir()) {
        missing.push(format!(
            "the Rust target {MUSL_TARGET} (rustup target add {MUSL_TARGET})"
        ));
    }
    missing
}

/// Run one of the image/ scripts; its output is returned, and shown in full
/// if it fails.
fn run_script(script: &str, arg: &Path) -> String {
    let output = Command::new(workspace_root().join("image").join(script))
        .arg(arg)
        // The host side's canopy (`cluster init --ca-dir` for config disks).
        .env("CANOPY", canopy_bin())
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run image/{script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "image/{script} {} failed ({}):\n{text}",
        arg.display(),
        output.status
    );
    text
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every output listed in SHA256SUMS matches its sum (`sha256sum -c`).
fn verify_sums(dir: &Path) {
    let output = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} does not match its SHA256SUMS:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Whether this machine can build and boot the appliance; if not, says why
/// (or fails under `CANOPY_REQUIRE_ALL=1`).
fn can_run(test: &str) -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("the {test} needs: {}", missing.join("; "));
    canopy_tests::skip(&reason)
}

#[test]
fn image_is_reproducible_and_boots_serves_and_survives_a_reboot() {
    if !can_run("appliance test") {
        return;
    }
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (a, b) = (first.path().join("image"), second.path().join("image"));
    let log = run_script("build", &a);
    println!("{log}");
    run_script("build", &b);

    // Same files, same bytes: equal sum lists, and each directory matches
    // its list.
    let names = file_names(&a);
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "cmdline",
            "data.img",
            "initramfs.img",
            "manifest",
            "vmlinuz"
        ]
    );
    assert_eq!(names, file_names(&b), "the two builds made different files");
    let sums_a = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    let sums_b = std::fs::read_to_string(b.join("SHA256SUMS")).unwrap();
    assert_eq!(sums_a, sums_b, "two builds of one commit differ");
    assert_eq!(sums_a.lines().count(), 5, "{sums_a}");
    verify_sums(&a);
    verify_sums(&b);
    assert!(
        log.contains(sums_a.lines().next().unwrap()),
        "image/build prints the sums"
    );

    let _machine = own_machine_blocking();
    let boot = run_script("boot-test", &a);
    println!("{boot}");
    assert!(boot.contains("boot-test: ok"), "{boot}");
    // The input image is left as built (the boot test works on a copy).
    verify_sums(&a);
}

#[test]
fn three_appliances_form_a_cluster_and_all_serve_a_push() {
    if !can_run("appliance cluster test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    run_script("build", &image);
    let _machine = own_machine_blocking();
    let log = run_script("cluster-test", &image);
    println!("{log}");
    assert!(log.contains("cluster-test: ok"), "{log}");
    // The script fails on any missed step; these lines are its evidence.
    for step in [
        "vm2 joined and healthy after",
        "converged: 3 members on every VM",
        "served after the push: vm1",
        "all three powered off cleanly",
    ] {
        assert!(log.contains(step), "missing {step:?} in:\n{log}");
    }
    assert!(
        log.contains("every VM's status: 3 nodes serve hello@main"),
        "{log}"
    );
    // The input image is left as built (each VM works on copies).
    verify_sums(&image);
}
