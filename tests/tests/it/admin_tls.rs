//! An admin port off loopback, end to end: `canopy node` serves the admin
//! API and the Git remote over TLS only, with a certificate for its
//! `admin_names` from the CA `canopy cluster init --ca-dir` made; `curl`-
//! like clients, `canopy --ca` and `git -c http.sslCAInfo` get through with
//! that CA and nothing gets through without it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use canopy_tests::{NodeProcess, Project, canopy_bin, share_machine, testfn, wait_for};
use serde_json::Value;

fn canopy(args: &[&str]) -> Output {
    Command::new(canopy_bin())
        .args(args)
        .env_remove("CANOPY_ADMIN")
        .env_remove("CANOPY_TOKEN")
        .env_remove("CANOPY_CA")
        .env("XDG_STATE_HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn write_config(path: &Path, config: Value) {
    std::fs::write(path, config.to_string()).unwrap();
}

/// A client builder that trusts `ca_pem` alone (`None`: nothing).
fn trusting(ca_pem: Option<&Path>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10));
    match ca_pem {
        Some(path) => {
            let pem = std::fs::read(path).unwrap();
            builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        }
        None => builder,
    }
}

#[tokio::test]
async fn an_admin_port_off_loopback_speaks_tls_only() {
    let _machine = share_machine().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let init = canopy(&["cluster", "init", "--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(init.status.success(), "{}", all_output(&init));
    let ca_pem = ca_dir.join("ca.pem");
    assert!(ca_pem.exists(), "{}", all_output(&init));
    // An existing CA is never overwritten.
    let again = canopy(&["cluster", "init", "--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        all_output(&again).contains("never overwritten"),
        "{}",
        all_output(&again)
    );

    // Off loopback without the names clients use: refused, saying what to add.
    let data = dir.path().join("data");
    let config = dir.path().join("node.yaml");
    write_config(
        &config,
        serde_json::json!({
            "data_dir": data, "http": "127.0.0.1:0", "admin": "0.0.0.0:0", "local_ca": ca_dir,
        }),
    );
    let refused = canopy(&["node", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    let message = all_output(&refused);
    assert!(message.contains("node.yaml"), "{message}");
    assert!(message.contains("admin_names"), "{message}");
    assert!(message.contains("TLS"), "{message}");

    write_config(
        &config,
        serde_json::json!({
            "data_dir": data,
            "http": "127.0.0.1:0",
            "admin": "0.0.0.0:0",
            "admin_names": ["127.0.0.1", "canopy-node.internal"],
            "local_ca": ca_dir,
            "build_sandbox": "preferred",
        }),
    );
    let node = NodeProcess::start(&config, &data).await;
    let advertised = node.fact("admin");
    assert!(advertised.starts_with("https://"), "{}", node.facts);
    let port = advertised.rsplit(':').next().unwrap().to_owned();
    let admin = format!("https://127.0.0.1:{port}");
    let token = node.admin_token();
    let token = token.as_str();

    // With the CA: the admin API answers, and the token still counts.
    let with_ca = trusting(Some(&ca_pem)).build().unwrap();
    let health = with_ca
        .get(format!("{admin}/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let anonymous = with_ca
        .get(format!("{admin}/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Plain HTTP (a token in the clear) gets no HTTP answer at all.
    let plain = canopy_tests::client()
        .get(format!("http://127.0.0.1:{port}/api/health"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http answered: {plain:?}");
    // A client that does not trust the CA refuses the certificate.
    let untrusted = trusting(None)
        .build()
        .unwrap()
        .get(format!("{admin}/api/health"))
        .send()
        .await;
    assert!(untrusted.is_err(), "answered without the CA: {untrusted:?}");
    // The certificate names the configured names, not any name.
    let foreign = trusting(Some(&ca_pem))
        .resolve(
            "elsewhere.internal",
            format!("127.0.0.1:{port}").parse().unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("https://elsewhere.internal:{port}/api/health"))
        .send()
        .await;
    assert!(foreign.is_err(), "a name outside admin_names: {foreign:?}");

    // The CLI: --ca trusts the CA; without it, the error says to pass it.
    let status = canopy(&[
        "status",
        "--admin",
        &admin,
        "--token",
        token,
        "--ca",
        ca_pem.to_str().unwrap(),
    ]);
    assert!(status.status.success(), "{}", all_output(&status));
    let blind = canopy(&["status", "--admin", &admin, "--token", token]);
    assert!(!blind.status.success());
    let message = all_output(&blind);
    assert!(message.contains("--ca"), "{message}");
    let plain_cli = canopy(&[
        "status",
        "--admin",
        &format!("http://127.0.0.1:{port}"),
        "--token",
        token,
    ]);
    assert!(!plain_cli.status.success());

    // git over https with the CA: the push deploys.
    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            "project: shop\nfunctions:\n  api:\n    wasm: functions/testfn.wasm\n    http: { path: /api }\n",
        )
        .write("functions/testfn.wasm", testfn("tls1"));
    let commit = project.commit("over tls").unwrap();
    let remote = format!("https://canopy:{token}@127.0.0.1:{port}/git/shop.git");
    let unverified = project.push(&remote, "main");
    assert!(unverified.is_err(), "git pushed without trusting the CA");
    project
        .git(&[
            "-c",
            &format!("http.sslCAInfo={}", ca_pem.display()),
            "push",
            "--force",
            &remote,
            "HEAD:refs/heads/main",
        ])
        .unwrap();
    wait_for("the push to go live", Duration::from_secs(60), || async {
        let status: Value = with_ca
            .get(format!("{admin}/api/status"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let live = status["deployments"]
            .as_array()?
            .iter()
            .any(|d| d["project"] == "shop" && d["live_commit"] == commit.as_str());
        live.then_some(())
    })
    .await;
    let http = node.fact("http");
    let body = canopy_tests::client()
        .get(format!("{http}/api/hello"))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("tls1"), "{body}");
}
