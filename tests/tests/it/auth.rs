//! Who may push and administer, end to end: real `git`, a real HTTP client,
//! the real `canopy token` commands.

use std::process::Command;
use std::time::Duration;

use canopy_tests::{
    Dream, Project, canopy_bin, client, own_machine, share_machine, testfn, wait_for,
};
use serde_json::Value;

fn project(name: &str, version: &str) -> Project {
    let project = Project::new().unwrap();
    project
        .write(
            "canopy.yaml",
            format!(
                "project: {name}\nfunctions:\n  hello:\n    wasm: functions/testfn.wasm\n    http: {{ path: /api }}\n"
            ),
        )
        .write("functions/testfn.wasm", testfn(version));
    project
}

/// `http://127.0.0.1:P/git/` without the dream's token.
fn bare_base(dream: &Dream) -> String {
    format!("{}/git/", dream.admin)
}

/// Run `canopy ARGS` against `dream` (found through its pointer, no flags).
fn canopy(dream: &Dream, args: &[&str]) -> std::process::Output {
    Command::new(canopy_bin())
        .args(args)
        .env("XDG_STATE_HOME", &dream.data_dir)
        .env_remove("CANOPY_ADMIN")
        .env_remove("CANOPY_TOKEN")
        .output()
        .unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn all_output(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A new project token for `name`, through `canopy token create`.
fn project_token(dream: &Dream, name: &str, label: &str) -> String {
    let output = canopy(
        dream,
        &["token", "create", "--project", name, "--name", label],
    );
    assert!(output.status.success(), "{}", all_output(&output));
    let text = stdout(&output);
    let token = text.trim();
    assert!(
        token.starts_with("canopy_") && !token.contains('\n'),
        "the token alone on stdout: {text}"
    );
    token.to_owned()
}

/// Wait (10 s at most per node) until every node answers `GET /api/status`
/// with `token` by `status`.
async fn every_node_answers(
    nodes: &[canopy_tests::NodeInfo],
    token: &str,
    status: u16,
    what: &str,
) {
    for node in nodes {
        wait_for(
            &format!("{} to {what}", node.admin),
            Duration::from_secs(10),
            || async {
                let response = client()
                    .get(format!("{}/api/status", node.admin))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?;
                (response.status() == status).then_some(())
            },
        )
        .await;
    }
}

fn token_id(token: &str) -> String {
    token["canopy_".len()..]
        .split('_')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_need_a_token_of_the_project() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();

    // No token: git is told 401, nothing is stored.
    let shop = project("shop", "v1");
    shop.commit("v1").unwrap();
    let refused = shop
        .push(&format!("{}shop.git", bare_base(&dream)), "main")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("401")
            || refused.contains("Authentication failed")
            || refused.contains("could not read Username"),
        "{refused}"
    );
    assert!(
        !dream.data_dir.join("node-1/git/shop.git").exists(),
        "a push without a token created the repository"
    );

    // A token of project blog may create blog, and may not push to shop.
    let blog_token = project_token(&dream, "blog", "blog ci");
    let blog = project("blog", "b1");
    let blog_commit = blog.commit("b1").unwrap();
    let base = canopy_tests::with_token(&bare_base(&dream), &blog_token);
    blog.push(&format!("{base}blog.git"), "main").unwrap();
    dream.wait_live("blog", "main", &blog_commit).await;
    let refused = shop
        .push(&format!("{base}shop.git"), "main")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("403"), "{refused}");
    assert!(
        !dream.data_dir.join("node-1/git/shop.git").exists(),
        "a forbidden push created the repository"
    );
    // The refusal names the token (id and label) and what it lacks, with a
    // plain HTTP client as well.
    let response = client()
        .get(format!(
            "{}shop.git/info/refs?service=git-receive-pack",
            bare_base(&dream)
        ))
        .basic_auth("canopy", Some(&blog_token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let message = response.text().await.unwrap();
    assert!(
        message.contains(&token_id(&blog_token))
            && message.contains("blog ci")
            && message.contains("shop"),
        "{message}"
    );

    // canopy.yaml that names another project than the URL: refused, both named.
    let liar = project("shop", "x");
    liar.commit("x").unwrap();
    let refused = liar
        .push(&format!("{base}blog.git"), "main")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("project: shop") && refused.contains("project blog"),
        "{refused}"
    );
    let env = dream.environment("blog", "main").await.unwrap();
    assert_eq!(env["live_commit"], blog_commit, "blog still serves b1");

    // The project token sees its own project only; no token sees nothing.
    let admin_push = project("shop", "s1");
    let shop_commit = admin_push.commit("s1").unwrap();
    admin_push.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &shop_commit).await;
    let status: Value = client()
        .get(format!("{}/api/status", dream.admin))
        .bearer_auth(&blog_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let projects: Vec<&str> = status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["project"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["blog"], "{status}");
    let anonymous = client()
        .get(format!("{}/api/status", dream.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    // Health stays public.
    let health = client()
        .get(format!("{}/api/health", dream.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A project token may not create tokens.
    let escalate = client()
        .post(format!("{}/api/tokens", dream.admin))
        .bearer_auth(&blog_token)
        .json(&serde_json::json!({"principal": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(escalate.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dream_refuses_rebound_hosts_and_the_cli_finds_it() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();

    // A page on evil.example whose name resolves to 127.0.0.1.
    let rebound = client()
        .get(format!("{}/api/status", dream.admin))
        .header("host", "evil.example")
        .bearer_auth(&dream.token)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let message = rebound.text().await.unwrap();
    assert!(message.contains("DNS rebinding"), "{message}");

    // `canopy status` in the dream's shell needs no flags.
    let output = canopy(&dream, &["status"]);
    assert!(output.status.success(), "{}", all_output(&output));
    assert!(stdout(&output).contains("NODES"), "{}", stdout(&output));

    // Create, list, revoke: the revoked token is refused at once.
    let token = project_token(&dream, "shop", "laptop");
    let id = token_id(&token);
    let output = canopy(&dream, &["token", "list"]);
    let list = stdout(&output);
    assert!(
        list.contains(&id) && list.contains("project:shop") && list.contains("laptop"),
        "{list}"
    );
    assert!(!list.contains(&token), "the list shows no secret: {list}");
    let output = canopy(&dream, &["token", "revoke", &id]);
    assert!(output.status.success(), "{}", all_output(&output));
    let refused = client()
        .get(format!("{}/api/status", dream.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("revoked"));

    // `--json` for scripts, with an expiry.
    let output = canopy(
        &dream,
        &[
            "token",
            "create",
            "--cluster-admin",
            "--ttl",
            "30d",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", all_output(&output));
    let issued: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(issued["principal"], "admin");
    assert!(issued["expires_at_unix_s"].as_u64().is_some(), "{issued}");

    // A wrong token on the command line: the error says so.
    let output = Command::new(canopy_bin())
        .args([
            "status",
            "--admin",
            &dream.admin,
            "--token",
            "canopy_0000000000000000_x",
        ])
        .env("XDG_STATE_HOME", &dream.data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        all_output(&output).contains("401"),
        "{}",
        all_output(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_on_every_node_and_invites_are_bounded() {
    let _machine = own_machine().await;
    let dream = Dream::start_nodes(3).unwrap();
    let nodes = dream.nodes();
    let token = project_token(&dream, "shop", "revoke me");
    // Created on node 1 (the dream's admin); every node learns it.
    every_node_answers(&nodes, &token, 200, "accept the new token").await;

    // Revoked through node 3: within 10 s no node accepts it.
    let revoked = client()
        .delete(format!(
            "{}/api/tokens/{}",
            nodes[2].admin,
            token_id(&token)
        ))
        .bearer_auth(&dream.token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    every_node_answers(&nodes, &token, 401, "refuse the revoked token").await;

    // Invites: admin only, and no longer than the maximum (1 h).
    let too_long = client()
        .post(format!("{}/api/cluster/invite?ttl=7200", nodes[0].admin))
        .bearer_auth(&dream.token)
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
    let message = too_long.text().await.unwrap();
    assert!(
        message.contains("3600") && message.contains("max_invite_ttl"),
        "{message}"
    );
    let anonymous = client()
        .post(format!("{}/api/cluster/invite?ttl=60", nodes[0].admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Removing a node: admin only; the founder cannot be removed; a removed
    // node drops out of every other node's status (its connections close).
    let founder = canopy(&dream, &["cluster", "remove", &nodes[0].id]);
    assert!(!founder.status.success());
    assert!(
        all_output(&founder).contains("founded the cluster"),
        "{}",
        all_output(&founder)
    );
    let as_project = client()
        .post(format!("{}/api/cluster/remove", nodes[0].admin))
        .bearer_auth(project_token(&dream, "shop", "not an admin"))
        .json(&serde_json::json!({"node": nodes[2].id}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_project.status(), 403);
    let removed = canopy(&dream, &["cluster", "remove", &nodes[2].id]);
    assert!(removed.status.success(), "{}", all_output(&removed));
    assert!(
        stdout(&removed).contains(&format!("Removed node {}", nodes[2].id)),
        "{}",
        stdout(&removed)
    );
    for node in &nodes[..2] {
        wait_for(
            &format!("{} to drop the removed node", node.admin),
            Duration::from_secs(10),
            || async {
                let status = node.status().await?;
                let ids: Vec<&str> = status["nodes"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n["id"].as_str())
                    .collect();
                (ids.len() == 2 && !ids.contains(&nodes[2].id.as_str())).then_some(())
            },
        )
        .await;
    }
}

/// `project` with `domains: [shop.example.com]`.
fn project_with_domain(name: &str, version: &str) -> Project {
    let project = project(name, version);
    project.write(
        "canopy.yaml",
        format!(
            "project: {name}\ndomains: [shop.example.com]\nfunctions:\n  hello:\n    wasm: functions/testfn.wasm\n    http: {{ path: /api }}\n"
        ),
    );
    project
}

/// GET /api/hello with `Host: shop.example.com`: status and body.
async fn on_the_domain(dream: &Dream) -> (u16, String) {
    let response = client()
        .get(format!("{}/api/hello", dream.http))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_belongs_to_its_first_project_until_an_admin_transfers_it() {
    let _machine = share_machine().await;
    let dream = Dream::start().unwrap();
    let shop = project_with_domain("shop", "shop-v1");
    let first = shop.commit("shop").unwrap();
    shop.push(&dream.remote("shop"), "main").unwrap();
    dream.wait_live("shop", "main", &first).await;
    let (status, body) = on_the_domain(&dream).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("shop-v1"), "{body}");

    // Another project, with a token of its own, lists the same domain.
    let rival_token = project_token(&dream, "rival", "rival-ci");
    let rival = project_with_domain("rival", "rival-v1");
    let refused = rival.commit("rival").unwrap();
    rival
        .push(
            &format!(
                "{}rival.git",
                canopy_tests::with_token(&bare_base(&dream), &rival_token)
            ),
            "main",
        )
        .unwrap();
    let error = dream.wait_failed("rival", "main", &refused).await;
    assert!(
        error.contains("shop.example.com belongs to project `shop`"),
        "{error}"
    );
    assert!(error.contains("canopy domain transfer"), "{error}");
    let (status, body) = on_the_domain(&dream).await;
    assert!(
        status == 200 && body.contains("shop-v1"),
        "the owner keeps serving: {status} {body}"
    );

    // The rival's token may neither see shop's domain nor take it.
    let as_rival = |args: &[&str]| {
        Command::new(canopy_bin())
            .args(args)
            .args(["--admin", &dream.admin, "--token", &rival_token])
            .output()
            .unwrap()
    };
    let listed = as_rival(&["domain", "list", "--json"]);
    assert!(listed.status.success(), "{}", all_output(&listed));
    assert_eq!(stdout(&listed).trim(), "[]");
    let taken = as_rival(&["domain", "transfer", "shop.example.com", "--to", "rival"]);
    assert!(!taken.status.success());
    assert!(all_output(&taken).contains("403"), "{}", all_output(&taken));

    // An admin moves it: shop stops answering for it at once.
    let moved = canopy(
        &dream,
        &["domain", "transfer", "shop.example.com", "--to", "rival"],
    );
    assert!(moved.status.success(), "{}", all_output(&moved));
    assert!(stdout(&moved).contains("now belongs to project rival"));
    let (status, _) = on_the_domain(&dream).await;
    assert_eq!(status, 404, "the old owner no longer serves the domain");
    let listed = canopy(&dream, &["domain", "list"]);
    assert!(
        stdout(&listed).contains("shop.example.com  rival"),
        "{}",
        stdout(&listed)
    );

    // The rival's next push goes live on it.
    rival.write("functions/testfn.wasm", testfn("rival-v2"));
    let second = rival.commit("rival again").unwrap();
    rival
        .push(
            &format!(
                "{}rival.git",
                canopy_tests::with_token(&bare_base(&dream), &rival_token)
            ),
            "main",
        )
        .unwrap();
    dream.wait_live("rival", "main", &second).await;
    let (status, body) = on_the_domain(&dream).await;
    assert!(
        status == 200 && body.contains("rival-v2"),
        "{status} {body}"
    );
}
