//! The `canopy` CLI's contract: `validate` output and exit codes.

use std::process::Command;

use canopy_tests::{Project, canopy_bin, testfn};

#[test]
fn validate_accepts_a_good_project() {
    let project = Project::new().unwrap();
    project
        .write("canopy.yaml", "project: shop\nfunctions:\n  hello:\n    wasm: hello.wasm\n    http: { path: /hello }\n")
        .write("hello.wasm", testfn("ok"));
    let output = Command::new(canopy_bin())
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("project `shop` is valid"), "{stdout}");
}

#[test]
fn validate_names_file_line_and_column() {
    let project = Project::new().unwrap();
    project.write(
        "canopy.yaml",
        "project: shop\nfunctions:\n  hello:\n    wasm: missing.wasm\n    http: { path: /hello }\n",
    );
    let output = Command::new(canopy_bin())
        .arg("validate")
        .arg(project.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("canopy.yaml:4:"), "{stdout}");
    assert!(first.contains("missing.wasm"), "{stdout}");
}
