//! The run's bad actors: a rogue admitted node that forges cluster records,
//! and the operator revoking a token while the network is in pieces.
//!
//! Owns: what the rogue writes (through [`ClusterState::forge`], signed
//! with its own key and past every local check, as a compromised node
//! would), the revocation, and the checks the harness makes of every
//! node's view at each sample. The invariants that judge the resulting
//! events are in [`crate::invariants`] (`no-forged-record`,
//! `revocation-sticks`).
//!
//! [`ClusterState::forge`]: canopy_node::cluster::ClusterState::forge

use std::collections::{BTreeMap, BTreeSet};

use canopy_node::auth::{Principal, Token, TokenId, TokenRecord, Unauthenticated, push_statement};
use canopy_node::cluster::{ClusterNode, ClusterState, hex, node_hex};
use canopy_node::env::Rng;
use canopy_node::net::NodeId;
use canopy_node::store::cid_of;
use serde_json::json;

use crate::faults::uniform;
use crate::trace::{Event, NodeIx};
use crate::workload;
use crate::world::{Job, Shared, lock};

/// The address the rogue writes into another node's member record.
const FORGED_ADDRESS: &str = "forged:1";
/// Commits of forged deployments start with this.
const FORGED_COMMIT: &str = "forged-";

/// What the rogue forged: what an honest node's view must never hold.
#[derive(Clone, Debug)]
pub(crate) struct Forged {
    pub(crate) rogue: NodeIx,
    victim: NodeId,
    token: TokenId,
    stranger: NodeId,
}

/// What a rogue node writes: drawn by the harness (from the run's RNG),
/// written on the rogue's host.
#[derive(Debug)]
pub(crate) struct Forgery {
    me: NodeId,
    victim: NodeId,
    fake: Token,
    stranger: NodeId,
}

/// Turn a random admitted node (not the founder) rogue: it will write its
/// forgeries (another node's member record, an admin token no admin asked
/// for, deployments nobody pushed, as itself and as another node, the
/// admission of a stranger with an invite no admin warranted, and a
/// tombstone over the project token's revocation). `None`: no node can
/// turn rogue yet.
pub(crate) fn go_rogue(world: &Shared, rng: &Rng, running: &[NodeIx]) -> Option<Forged> {
    let mut w = lock(world);
    let candidates: Vec<NodeIx> = running
        .iter()
        .copied()
        .filter(|n| *n != 0 && w.running.get(n).is_some_and(|r| r.cluster.is_admitted()))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let rogue = candidates[uniform(rng, 0, candidates.len() as u64 - 1) as usize];
    let forgery = Forgery {
        me: w.ids[rogue],
        victim: w.ids[0],
        fake: Token::generate(rng),
        stranger: canopy_node::net::identity::NodeKey::generate(rng).node_id(),
    };
    let forged = Forged {
        rogue,
        victim: forgery.victim,
        token: forgery.fake.id(),
        stranger: forgery.stranger,
    };
    w.running[&rogue].jobs.send(Job::Forge(forgery)).ok()?;
    w.record(Event::Fault {
        what: format!("rogue n{rogue} forges records"),
    });
    Some(forged)
}

/// On the rogue's host: write `forgery` into its cluster state.
pub(crate) fn forge(world: &Shared, ix: NodeIx, cluster: &ClusterNode, forgery: &Forgery) {
    let project = lock(world).project_token.as_ref().map(Token::id);
    let env = workload::env_key("main");
    let written = cluster.handle().update(|s| {
        forge_all(
            s,
            forgery.me,
            forgery.victim,
            &forgery.fake,
            forgery.stranger,
            project,
            &env,
        )
    });
    if let Err(e) = written {
        lock(world).record(Event::Panic {
            message: format!("the rogue n{ix} could not write: {e}"),
        });
    }
}

fn forge_all(
    s: &mut ClusterState,
    me: NodeId,
    victim: NodeId,
    fake: &Token,
    stranger: NodeId,
    project: Option<TokenId>,
    env: &canopy_node::deploy::EnvKey,
) -> Result<(), canopy_node::cluster::ClusterError> {
    // Another node's member record.
    s.forge(
        &format!("member/{}", node_hex(&victim)),
        json!({"addresses": [FORGED_ADDRESS], "role": "full", "joined_by": null}).to_string(),
        None,
    )?;
    // An admin token, warranted by itself.
    let record = TokenRecord {
        id: fake.id(),
        principal: Principal::Admin,
        label: "forged".into(),
        secret_sha256: fake.secret_hash(),
        created_at_unix_s: 0,
        expires_at_unix_s: None,
        created_by: "rogue".into(),
        warrant_key: Some(hex(&fake.warrant_key().node_id().0)),
    };
    let key = format!("token/{}", fake.id());
    let body = serde_json::to_string(&record).expect("a token record serialises");
    let warrant = fake.warrant(&canopy_node::cluster::record_message(&key, &body));
    s.forge(&key, body, Some(&warrant))?;
    // Deployments nobody pushed: as itself (warranted by the fake token),
    // and as the victim.
    for (n, by) in [(1u64, me), (2, victim)] {
        let commit = format!("{FORGED_COMMIT}{n}");
        let seq = 1_000_000 + n;
        let warrant = fake.warrant(&push_statement(
            &env.project,
            &env.branch,
            Some(&commit),
            &by,
        ));
        let body = json!({
            "commit": commit,
            "manifest_cid": cid_of(commit.as_bytes()).to_string(),
            "artifacts": [],
            "pushed_at_seq": seq,
            "pushed_by": node_hex(&by),
            "warrant": warrant,
        });
        s.forge(
            &format!(
                "deploy/{}/{}/{seq:020}/{}",
                env.project,
                env.branch,
                node_hex(&by)
            ),
            body.to_string(),
            None,
        )?;
    }
    // A stranger admitted with an invite the fake token "warranted".
    let nonce = hex(&[0xee; 16]);
    let key = format!("issued/{nonce}");
    let body = json!({"expires_at_unix_s": u64::MAX}).to_string();
    let warrant = fake.warrant(&canopy_node::cluster::record_message(&key, &body));
    s.forge(&key, body, Some(&warrant))?;
    s.forge(
        &format!("admitted/{}", node_hex(&stranger)),
        json!({"admitted_by": node_hex(&me), "invite": nonce}).to_string(),
        None,
    )?;
    // A tombstone over the project token's revocation (if any yet).
    if let Some(project) = project {
        s.forge(&format!("revoked/{project}"), String::new(), None)?;
    }
    Ok(())
}

/// What of `forged` each honest running node's view holds: one
/// [`Event::ForgedAccepted`] per node and kind, the first time it is seen.
pub(crate) fn check_forged(
    world: &Shared,
    forged: &Forged,
    reported: &mut BTreeSet<(NodeIx, &'static str)>,
) {
    let mut w = lock(world);
    let mut events = Vec::new();
    for (ix, r) in &w.running {
        if *ix == forged.rogue {
            continue;
        }
        let found: Vec<&'static str> = r.cluster.handle().read(|s| {
            let mut found = Vec::new();
            if s.members()
                .get(&forged.victim)
                .is_some_and(|m| m.addresses.iter().any(|a| a == FORGED_ADDRESS))
            {
                found.push("another node's member record");
            }
            if s.token(&forged.token).is_some() {
                found.push("an admin token no admin made");
            }
            if s.deployments()
                .values()
                .any(|d| d.commit.starts_with(FORGED_COMMIT))
            {
                found.push("a deployment nobody pushed");
            }
            if s.is_admitted(&forged.stranger) {
                found.push("an admission no admin invited");
            }
            found
        });
        for what in found {
            if reported.insert((*ix, what)) {
                events.push(Event::ForgedAccepted {
                    node: *ix,
                    what: what.to_owned(),
                });
            }
        }
    }
    for e in events {
        w.record(e);
    }
}

/// Have a random running node revoke the project token, as the operator
/// would with `canopy token revoke`. `false`: no node runs.
pub(crate) fn revoke(world: &Shared, rng: &Rng, running: &[NodeIx]) -> bool {
    let w = lock(world);
    let node = running[uniform(rng, 0, running.len() as u64 - 1) as usize];
    w.running
        .get(&node)
        .is_some_and(|r| r.jobs.send(Job::Revoke).is_ok())
}

/// On node `ix`'s host (its clock is the simulated one): revoke the project
/// token with the admin token, trying again each second until this node
/// has both tokens' records.
pub(crate) async fn revoke_on(world: Shared, ix: NodeIx) {
    loop {
        {
            let mut w = lock(&world);
            let authority = w.running.get(&ix).map(|r| r.authority.clone());
            let (Some(admin), Some(project), Some(authority)) =
                (w.admin.clone(), w.project_token.clone(), authority)
            else {
                return;
            };
            if let Ok(caller) = authority.verify(&admin)
                && authority.revoke(&project.id(), &caller).is_ok()
            {
                w.token_revoked = true;
                w.record(Event::Fault {
                    what: format!("revoke the project token via n{ix}"),
                });
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Ask every running node whether it takes the project token: record the
/// first refusal as revoked in each boot, and a node taking it again in
/// that boot. `refused`: node → the boot it first refused it in.
pub(crate) fn check_token(world: &Shared, refused: &mut BTreeMap<NodeIx, u64>) {
    let mut w = lock(world);
    let Some(project) = w.project_token.clone() else {
        return;
    };
    let mut events = Vec::new();
    for (ix, r) in &w.running {
        let answer = r.authority.verify(&project);
        let refused_in = refused.get(ix).copied();
        match answer {
            Err(Unauthenticated::Revoked(_)) if refused_in != Some(r.boot) => {
                refused.insert(*ix, r.boot);
                events.push(Event::TokenRefused { node: *ix });
            }
            Ok(_) if refused_in == Some(r.boot) => {
                events.push(Event::TokenAcceptedAgain { node: *ix });
            }
            _ => {}
        }
    }
    for e in events {
        w.record(e);
    }
}

/// At the end: once revoked, every running node must refuse the token.
pub(crate) fn check_token_refused_everywhere(world: &Shared) {
    let mut w = lock(world);
    let Some(project) = w.project_token.clone().filter(|_| w.token_revoked) else {
        return;
    };
    let still: Vec<NodeIx> = w
        .running
        .iter()
        .filter(|(_, r)| r.authority.verify(&project).is_ok())
        .map(|(ix, _)| *ix)
        .collect();
    for node in still {
        w.record(Event::TokenStillAccepted { node });
    }
}
