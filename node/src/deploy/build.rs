//! Running a function's `build.command` in the checked-out tree.
//!
//! The command runs under `sh -c` in its own process group, so a timeout
//! kills the whole tree it started (cargo, rustc, ...), not just the shell.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How much of a failed build's output an error keeps (the tail).
const OUTPUT_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("could not start `sh -c {command:?}` in {dir}: {source}")]
    Spawn {
        command: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("build command `{command}` exited with {status}; last output:\n{output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(
        "build command `{command}` did not finish within {timeout_s}s and was killed; raise functions.NAME.build.timeout or speed the build up"
    )]
    TimedOut { command: String, timeout_s: u64 },
}

/// Run `command` in `dir`, killing it (and its children) after `timeout`.
pub async fn run(command: &str, dir: &Path, timeout: Duration) -> Result<(), BuildError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BuildError::Spawn {
            command: command.to_owned(),
            dir: dir.display().to_string(),
            source,
        })?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (r1, r2, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        let _ = (r1, r2);
        out.extend_from_slice(&err);
        (status, out)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), output)) => Err(BuildError::Failed {
            command: command.to_owned(),
            status,
            output: tail(&String::from_utf8_lossy(&output), OUTPUT_TAIL_LINES),
        }),
        Ok((Err(source), _)) => Err(BuildError::Spawn {
            command: command.to_owned(),
            dir: dir.display().to_string(),
            source,
        }),
        Err(_elapsed) => {
            if let Some(pid) = pid {
                kill_process_group(pid);
            }
            Err(BuildError::TimedOut {
                command: command.to_owned(),
                timeout_s: timeout.as_secs(),
            })
        }
    }
}

fn kill_process_group(pid: u32) {
    // The child leads its own group (process_group(0)), so -pid names it.
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is touched.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_and_failure_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        run("echo hi > out.txt", dir.path(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "hi\n"
        );

        let err = run("echo oops >&2; exit 3", dir.path(), Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("oops") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            "sleep 30 & sleep 30",
            dir.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BuildError::TimedOut { .. }), "{err}");
    }
}
