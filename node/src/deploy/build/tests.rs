//! Builds: output, failure, timeout, and — where bubblewrap works — what the
//! sandbox keeps out. Sandbox tests skip with a printed reason when it
//! cannot be set up, and fail instead under `CANOPY_REQUIRE_ALL=1`.

use super::*;

/// Builds share one uid and its process limit: a fork bomb in one test would
/// starve the builds of the others, so these tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec<'a>(command: &'a str, checkout: &'a Path, timeout: Duration) -> BuildSpec<'a> {
    BuildSpec {
        command,
        checkout,
        dir: ".",
        timeout,
        env: &[],
    }
}

/// A sandbox that must work, or `None` (the test then skips, unless
/// `CANOPY_REQUIRE_ALL=1`).
async fn required_sandbox(dir: &Path, test: &str) -> Option<Sandbox> {
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let sandbox = Sandbox::new(SandboxMode::Required, dir);
    match sandbox.confinement().await {
        Ok(_) => Some(sandbox),
        Err(reason) => {
            if std::env::var("CANOPY_REQUIRE_ALL").as_deref() == Ok("1") {
                panic!(
                    "{test} needs the build sandbox: {reason} (CANOPY_REQUIRE_ALL=1 forbids skipping)"
                );
            }
            eprintln!("skipped: {test} needs the build sandbox: {reason}");
            None
        }
    }
}

fn checkout(root: &Path) -> std::path::PathBuf {
    let dir = root.join("work").join("checkout");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Processes whose command line contains `marker`, other than this test.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) && entry.file_name() != std::process::id().to_string().as_str()
        {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// Wait (bounded) until no process carries `marker`.
async fn wait_no_process(marker: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes outlived the build: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn success_and_failure_are_reported() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxMode::Preferred, dir.path());
    let src = checkout(dir.path());
    run(
        &sandbox,
        spec("echo hi > out.txt", &src, Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(src.join("out.txt")).unwrap(),
        "hi\n"
    );

    let err = run(
        &sandbox,
        spec("echo oops >&2; exit 3", &src, Duration::from_secs(20)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("oops") && err.contains("exit status: 3"),
        "{err}"
    );
}

#[tokio::test]
async fn timeout_kills_every_process_the_build_started() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxMode::Preferred, dir.path());
    let src = checkout(dir.path());
    // A background child in a new session would escape a process-group kill.
    let command = "setsid sleep 31.5 & sleep 31.5";
    let err = run(&sandbox, spec(command, &src, Duration::from_millis(1500)))
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::TimedOut { .. }), "{err}");
    if matches!(
        sandbox.confinement().await,
        Ok(Confinement::Sandboxed { .. })
    ) {
        wait_no_process("31.5").await;
    }
}

#[tokio::test]
async fn output_is_kept_to_its_bound() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxMode::Preferred, dir.path());
    let src = checkout(dir.path());
    // 4 MiB of output, then a failure: only the tail is kept and shown.
    let command = "head -c 4194304 /dev/zero | tr '\\0' x; echo; echo the-end; exit 1";
    let err = run(&sandbox, spec(command, &src, Duration::from_secs(30)))
        .await
        .unwrap_err();
    let BuildError::Failed { output, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        output.ends_with("the-end"),
        "{}",
        &output[output.len().saturating_sub(200)..]
    );
    assert!(
        output.len() <= 2 * OUTPUT_KEPT_BYTES,
        "{} bytes kept",
        output.len()
    );
}

#[tokio::test]
async fn the_sandbox_hides_the_node_and_its_network() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(sandbox) =
        required_sandbox(dir.path(), "the_sandbox_hides_the_node_and_its_network").await
    else {
        return;
    };
    let busybox = std::process::Command::new("busybox")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !busybox {
        let reason = "the_sandbox_hides_the_node_and_its_network needs busybox (a network client)";
        if std::env::var("CANOPY_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("{reason} (CANOPY_REQUIRE_ALL=1 forbids skipping)");
        }
        eprintln!("skipped: {reason}");
        return;
    }
    let src = checkout(dir.path());
    let secret = dir.path().join("node.key");
    std::fs::write(&secret, "secret-key-material").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: the test sets a variable no other thread reads concurrently
    // with a meaning (it only must not reach the build).
    unsafe { std::env::set_var("CANOPY_LEAK_CHECK", "leaked") };
    let command = format!(
        "cat {secret} 2>&1; \
         echo env=${{CANOPY_LEAK_CHECK:-none}} home=$HOME pwd=$(pwd) uid=$(id -u); \
         busybox wget -q -O- http://127.0.0.1:{port}/ 2>&1; \
         ls /etc/shadow 2>&1 || true; \
         echo ok > built.txt; exit 7",
        secret = secret.display()
    );
    let env = [("MODE".to_owned(), "release".to_owned())];
    let err = run(
        &sandbox,
        BuildSpec {
            env: &env,
            ..spec(&command, &src, Duration::from_secs(30))
        },
    )
    .await
    .unwrap_err();
    let BuildError::Failed { output, .. } = &err else {
        panic!("{err}");
    };
    assert!(!output.contains("secret-key-material"), "{output}");
    assert!(output.contains("No such file"), "{output}");
    assert!(
        output.contains("env=none home=/home/build pwd=/src"),
        "{output}"
    );
    assert!(output.contains("can't connect to remote host"), "{output}");
    if sandbox::is_root() {
        assert!(output.contains(&format!("uid={BUILD_UID}")), "{output}");
    }
    assert!(!output.contains("\n/etc/shadow"), "{output}");
    // The checkout was writable.
    assert_eq!(
        std::fs::read_to_string(src.join("built.txt")).unwrap(),
        "ok\n"
    );
    drop(listener);
}

#[tokio::test]
async fn a_fork_bomb_is_bounded_and_leaves_nothing_behind() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(sandbox) = required_sandbox(
        dir.path(),
        "a_fork_bomb_is_bounded_and_leaves_nothing_behind",
    )
    .await
    else {
        return;
    };
    let src = checkout(dir.path());
    let command = "bomb() { bomb | bomb & }; bomb; sleep 32.5";
    let err = run(&sandbox, spec(command, &src, Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BuildError::TimedOut { .. } | BuildError::Failed { .. }),
        "{err}"
    );
    wait_no_process("32.5").await;
}

#[tokio::test]
async fn a_required_sandbox_that_cannot_be_set_up_refuses_the_build() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let src = checkout(dir.path());
    let sandbox = Sandbox::new(SandboxMode::Required, dir.path());
    sandbox.force_unavailable("bwrap was removed for this test");
    let err = run(
        &sandbox,
        spec(
            "echo should-not-run > ran.txt",
            &src,
            Duration::from_secs(5),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BuildError::NoSandbox { .. }), "{err}");
    assert!(err.to_string().contains("wasm:"), "{err}");
    assert!(!src.join("ran.txt").exists());
}
