//! A simulated node's software: what turmoil starts on a node's host, and
//! again after every restart — the production node's own assembly
//! (`canopy_node::node::assemble`) with the simulated net in place of libp2p —
//! and the work the harness hands the host: playing a `git push` client
//! against the node's Git remote, issuing invites, joining the cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::cluster::{ClusterNode, ClusterOptions, SyncConfig};
use canopy_node::env::{Clock, Env, Rng};
use canopy_node::git::GitHttp;
use canopy_node::net::NodeId;
use canopy_node::net::identity::NodeKey;
use canopy_node::node::{ClusterSpec, NodeSpec, Started, Transport, assemble};
use canopy_node::runtime::RuntimeConfig;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use crate::disk::SimDisk;
use crate::git_push;
use crate::guest_clock::EPOCH_S;
use crate::net::{NetConfig, PORT, SimNet};
use crate::trace::{Event, NodeIx};
use crate::world::{Job, PushJob, Running, Shared, host_name, lock, node_rng, report_pushes};

/// Cluster-state anti-entropy interval before drift.
const ANTI_ENTROPY: Duration = Duration::from_secs(10);

/// Garbage collection on every simulated node: often, with a short grace
/// period, so that it runs during the workload, under partitions and
/// crashes; `history` is the run's (see `Params::gc_history`).
fn gc_config(history: usize) -> canopy_node::gc::GcConfig {
    canopy_node::gc::GcConfig {
        interval: Duration::from_millis(700),
        grace: Duration::from_secs(5),
        history,
        // Every node of every run shares one compiled-code directory.
        compiled_code: false,
        unload_idle: canopy_node::gc::DEFAULT_UNLOAD_IDLE,
        // A run pushes each project a few times; merging packs would only
        // add wall-clock-dependent work (pack ages are file times).
        git_repack: None,
    }
}

/// The part size of state-sync messages in a run: small, so that a joining
/// node's first messages go in several parts under the run's faults (in
/// production a part is up to 4 MiB).
const SIM_SYNC_PART_BYTES: usize = 16 * 1024;

/// How long a joining node waits for its admission to reach its own state.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// How long a joining node waits for an inviter to hand it a token.
const INVITE_WAIT: Duration = Duration::from_secs(2);

/// Pause between join attempts.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// How long an invite is valid.
const INVITE_TTL: Duration = Duration::from_secs(600);

/// The client's upload rate for a push, in bytes per simulated second.
const PUSH_UPLOAD_BYTES_PER_S: u64 = 10_000_000;

/// The repository every push goes to (`canopy dream`'s remote is the same
/// kind of URL: `<admin>/git/<repo>.git`).
const REPO: &str = "shop.git";

/// The client side of one `git push` on `node`'s host: read the branch's
/// old value from the ref advertisement, upload (taking simulated time),
/// post the pack to the node's Git HTTP handler, read its report.
async fn run_push(world: Shared, node: NodeIx, git: Arc<GitHttp>, job: PushJob) {
    let commit = job.pack.commit.to_string();
    // The operator pushes with the cluster's admin token, as the admin API
    // would have authenticated it.
    let pusher = lock(&world).admin.clone();
    let result = push_exchange(&git, &job, pusher).await;
    let mut w = lock(&world);
    if let Some(started) = w.started.get_mut(&commit) {
        started.in_flight = false;
        started.acknowledged = result.is_ok();
    }
    match result {
        Ok(()) => report_pushes(&mut w),
        Err(reason) => w.record(Event::PushRefused {
            node,
            commit,
            reason,
        }),
    }
}

async fn push_exchange(
    git: &GitHttp,
    job: &PushJob,
    pusher: Option<canopy_node::auth::Token>,
) -> Result<(), String> {
    let base = format!("{}/{REPO}", canopy_node::admin::GIT_MOUNT);
    let advertise = http::Request::get(format!("{base}/info/refs?service=git-receive-pack"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let (status, advertisement) = answer(git.handle(advertise).await).await?;
    if status != http::StatusCode::OK {
        return Err(format!("ref advertisement: {status}"));
    }
    let old = git_push::advertised(&advertisement, job.branch).map_err(|e| format!("{e:#}"))?;
    let body = git_push::request_body(old, &job.pack, job.branch);
    let upload_ms = 5 + body.len() as u64 * 1000 / PUSH_UPLOAD_BYTES_PER_S;
    tokio::time::sleep(Duration::from_millis(upload_ms)).await;
    let mut post = http::Request::post(format!("{base}/git-receive-pack"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-git-receive-pack-request",
        )
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    if let Some(pusher) = pusher {
        post.extensions_mut()
            .insert(canopy_node::git::Pusher(pusher));
    }
    let (status, report) = answer(git.handle(post).await).await?;
    if status != http::StatusCode::OK {
        return Err(format!(
            "receive-pack: {status}: {}",
            String::from_utf8_lossy(&report).trim_end()
        ));
    }
    git_push::acknowledged(&report, job.branch)
}

async fn answer(
    response: http::Response<canopy_node::body::Body>,
) -> Result<(http::StatusCode, Bytes), String> {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// The simulated network as a node's transport: a [`SimNet`] on the
/// node's host, with the run's transport faults.
struct SimTransport {
    ix: NodeIx,
    hosts: std::collections::BTreeMap<NodeId, String>,
    rng: Rng,
    /// Duplicate and corrupt-read rates.
    rates: (f64, f64),
}

impl Transport for SimTransport {
    type Net = SimNet;

    async fn start(
        self,
        key: &NodeKey,
        admitted: tokio::sync::watch::Receiver<BTreeSet<NodeId>>,
    ) -> anyhow::Result<Started<SimNet>> {
        let (net, events) = SimNet::new(
            key.node_id(),
            self.hosts,
            NetConfig::default(),
            Rng::seeded(self.rng.next_u64()),
            admitted,
        );
        net.set_duplicate_rate(self.rates.0);
        net.set_corrupt_rate(self.rates.1);
        tokio::spawn(net.clone().serve());
        Ok(Started {
            net,
            events,
            addresses: vec![format!("{}:{PORT}", host_name(self.ix))],
        })
    }
}

/// One node's software: what `turmoil` starts on its host, and again after
/// every restart — the node's own assembly ([`assemble`], as `canopy node`
/// builds it) on the simulated environment and net.
pub(crate) async fn node_main(world: Shared, ix: NodeIx) -> turmoil::Result {
    let (id, hosts, dir, rng, anti_entropy, rates, boot, unix_s, guest_clock, gc_history) = {
        let mut w = lock(&world);
        let boot = {
            let b = w.boots.entry(ix).or_insert(0);
            *b += 1;
            *b
        };
        let drift = w.drift_permille.get(ix).copied().unwrap_or(1000);
        (
            w.ids[ix],
            w.hosts.clone(),
            w.run_dir.join(host_name(ix)),
            node_rng(w.seed, ix, boot),
            ANTI_ENTROPY * drift as u32 / 1000,
            // Restarted after the heal: no more transport faults.
            if w.healed {
                (0.0, 0.0)
            } else {
                (w.duplicate_rate, w.corrupt_read_rate)
            },
            boot,
            EPOCH_S + w.simulated_now.elapsed_ms() / 1000,
            // Functions run outside simulated time (see `workload::request`)
            // and read the simulation's own reading of it.
            w.simulated_now.guest_clock(),
            w.gc_history,
        )
    };
    let disk = {
        let mut w = lock(&world);
        match w.disks.get(&ix) {
            Some(disk) => disk.clone(),
            None => {
                let disk = Arc::new(SimDisk::new(&dir)?);
                w.disks.insert(ix, disk.clone());
                disk
            }
        }
    };
    let env = Env {
        // Simulated wall-clock time: invite tokens carry an expiry.
        clock: Clock::simulated(unix_s),
        rng: rng.clone(),
        data_dir: dir.clone(),
        disk,
        guest_clock,
    };
    let spec = NodeSpec {
        runtime: RuntimeConfig {
            max_instances: 2,
            max_memory_bytes: 64 << 20,
            // Functions run outside simulated time: a slow tick keeps the
            // runtime from waking every simulated 10 ms.
            epoch_tick: Duration::from_secs(5),
            // One compiled-code directory for every node of every run in this
            // process: each function version is compiled once.
            ..RuntimeConfig::new(compiled_dir())
        },
        // Simulated pushes carry prebuilt components only.
        builds: canopy_node::deploy::build::SandboxMode::Required,
        git: canopy_node::git::GitLimits::default(),
        build_limits: canopy_node::deploy::BuildLimits::default(),
        gc: gc_config(gc_history),
        // The simulator drives the gateway's handler, not its listener.
        gateway: canopy_node::gateway::GatewayConfig::default(),
        cluster: Some(ClusterSpec {
            transport: SimTransport {
                ix,
                hosts,
                rng: rng.clone(),
                rates,
            },
            options: ClusterOptions {
                // Node 0 founds the cluster; every other node joins it.
                found_if_new: ix == 0,
                sync: SyncConfig {
                    anti_entropy_interval: anti_entropy,
                    // Small parts, so that a joining node's first messages
                    // go in several parts under the run's faults.
                    part_bytes: SIM_SYNC_PART_BYTES,
                    ..SyncConfig::default()
                },
                ..ClusterOptions::default()
            },
        }),
    };
    let services = assemble(&env, spec)
        .await
        .map_err(|e| format!("n{ix}: {e:#}"))?;
    if services.key.node_id() != id {
        return Err(format!(
            "n{ix} has key {} but the run expects {id}",
            services.key.node_id()
        )
        .into());
    }
    let Some((cluster, net)) = services.cluster else {
        return Err(format!("n{ix} started without its cluster side").into());
    };
    if cluster.handle().read(|s| s.founder()) == Some(id) && !services.authority.has_live_admin() {
        let (token, _) = services
            .authority
            .issue(
                canopy_node::auth::Principal::Admin,
                "sim operator",
                None,
                canopy_node::auth::Issuer::Node(&id.to_string()),
            )
            .map_err(|e| format!("n{ix}: issuing the first admin token: {e}"))?;
        let caller = services
            .authority
            .verify(&token)
            .map_err(|e| format!("n{ix}: the new admin token: {e}"))?;
        let (project, _) = services
            .authority
            .issue(
                canopy_node::auth::Principal::project("shop").map_err(|e| format!("n{ix}: {e}"))?,
                "sim ci",
                None,
                canopy_node::auth::Issuer::Caller(&caller),
            )
            .map_err(|e| format!("n{ix}: issuing a project token: {e}"))?;
        let mut w = lock(&world);
        w.admin = Some(token);
        w.project_token = Some(project);
    }

    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    {
        let mut w = lock(&world);
        let others: Vec<NodeIx> = w.running.keys().copied().collect();
        for other in others {
            let other_id = w.ids[other];
            w.running[&other].net.peer_up(id);
            net.peer_up(other_id);
        }
        w.running.insert(
            ix,
            Running {
                net,
                cluster: cluster.clone(),
                store: services.store,
                deployer: services.deployer,
                gateway: services.gateway,
                jobs: jobs_tx,
                deploy_events: services.deploy_events,
                authority: services.authority.clone(),
                boot,
            },
        );
        w.record(Event::Boot { node: ix, boot });
    }
    tokio::spawn(serve_jobs(
        world.clone(),
        ix,
        jobs_rx,
        services.git,
        cluster.clone(),
        services.key,
        env.clone(),
    ));
    if !cluster.is_admitted() {
        join(&world, ix, &cluster, &env.rng).await;
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Serve the harness's jobs on the node's host: each push as a task of its
/// own, invites at once.
async fn serve_jobs(
    world: Shared,
    ix: NodeIx,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    git: Arc<GitHttp>,
    cluster: Arc<ClusterNode>,
    key: NodeKey,
    env: Env,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Push(push) => {
                tokio::spawn(run_push(world.clone(), ix, git.clone(), push));
            }
            Job::Forge(forgery) => crate::rogue::forge(&world, ix, &cluster, &forgery),
            Job::Revoke => {
                tokio::spawn(crate::rogue::revoke_on(world.clone(), ix));
            }
            Job::Invite(reply) => {
                let admin = lock(&world).admin.clone();
                let token = match admin {
                    Some(admin) => cluster
                        .invite(&key, &env, INVITE_TTL, &admin)
                        .map_err(|e| format!("{e:#}")),
                    None => Err("the cluster has no admin token yet".to_owned()),
                };
                let _ = reply.send(token);
            }
        }
    }
}

/// Join the cluster as `canopy node` does with `cluster.invite` set: ask an
/// admitted node for an invite and present it (`join/1`); after a failure
/// (a partition, a crashed inviter), again with a fresh invite.
async fn join(world: &Shared, ix: NodeIx, cluster: &ClusterNode, rng: &Rng) {
    loop {
        let asked = {
            let mut w = lock(world);
            let inviters: Vec<NodeIx> = w
                .running
                .iter()
                .filter(|(n, r)| **n != ix && r.cluster.is_admitted())
                .map(|(n, _)| *n)
                .collect();
            if inviters.is_empty() {
                None
            } else {
                let inviter = inviters[(rng.next_u64() % inviters.len() as u64) as usize];
                let (tx, rx) = oneshot::channel();
                let sent = w.running[&inviter].jobs.send(Job::Invite(tx)).is_ok();
                w.record(Event::JoinAttempt { node: ix, inviter });
                sent.then_some(rx)
            }
        };
        let Some(invite) = asked else {
            tokio::time::sleep(JOIN_RETRY).await;
            continue;
        };
        let outcome = match tokio::time::timeout(INVITE_WAIT, invite).await {
            Ok(Ok(Ok(token))) => cluster
                .join(&token, JOIN_WAIT)
                .await
                .map_err(|e| e.to_string()),
            Ok(Ok(Err(e))) => Err(format!("no invite: {e}")),
            Ok(Err(_)) | Err(_) => Err("the inviter did not answer".to_string()),
        };
        match outcome {
            Ok(()) => {
                lock(world).record(Event::Joined { node: ix });
                return;
            }
            Err(reason) => lock(world).record(Event::JoinFailed { node: ix, reason }),
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

/// The compiled-code directory every simulated node shares, kept across
/// processes (`$TMPDIR/canopy-sim-compiled`): each function version is
/// compiled once per machine. Writes into it are atomic, so processes and
/// threads may share it; compiled code that does not fit this wasmtime is
/// compiled again by the runtime.
pub(crate) fn compiled_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join("canopy-sim-compiled")
}
