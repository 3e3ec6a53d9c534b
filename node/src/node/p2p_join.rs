//! The production cluster side's network: libp2p as a [`Transport`], and
//! what a `canopy node` does once its cluster side runs — redial the members
//! its saved state knows, and join through the invite in its config.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::cluster::ClusterNode;
use crate::env::{Clock, Env};
use crate::net::Net as _;
use crate::net::NodeId;
use crate::net::admission::InviteToken;
use crate::net::identity::NodeKey;
use crate::net::p2p::{Multiaddr, P2pConfig, P2pNet};

use super::ClusterSetup;
use super::assemble::{Started, Transport};

/// How long a joining node waits for the inviter to admit it and for the
/// admission to reach its own state.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// libp2p (TCP with the cluster secret, QUIC, mDNS) as a node's transport.
pub struct P2pTransport(pub P2pConfig);

impl P2pTransport {
    /// The transport a `cluster:` section asks for, on the node's clock.
    pub fn of(setup: &ClusterSetup, clock: &Clock) -> Self {
        Self(P2pConfig {
            clock: clock.clone(),
            listen: setup.listen.clone(),
            bootstrap: setup.peers.clone(),
            mdns: setup.mdns,
            cluster_secret: setup.secret,
            quic: setup.quic,
            peer_limits: setup.peer_limits,
            ..P2pConfig::default()
        })
    }
}

impl Transport for P2pTransport {
    type Net = P2pNet;

    async fn start(
        self,
        key: &NodeKey,
        admitted: watch::Receiver<BTreeSet<NodeId>>,
    ) -> anyhow::Result<Started<P2pNet>> {
        let (net, events) = P2pNet::start(key, self.0, admitted)
            .await
            .context("cannot start the peer-to-peer network")?;
        let addresses = net.listen_addrs().iter().map(|a| a.to_string()).collect();
        Ok(Started {
            net,
            events,
            addresses,
        })
    }
}

/// Once the cluster side runs: dial the members the saved state records
/// (a restart after a join), then join through `setup.invite` unless the
/// node is a member already.
pub(super) async fn connect(
    env: &Env,
    key: &NodeKey,
    setup: &ClusterSetup,
    cluster: &ClusterNode,
    net: &P2pNet,
) -> anyhow::Result<()> {
    let known: Vec<Multiaddr> = cluster.handle().read(|s| {
        s.members()
            .into_iter()
            .filter(|(id, m)| *id != key.node_id() && m.admitted)
            .flat_map(|(_, m)| m.addresses)
            .filter_map(|a| a.parse().ok())
            .collect()
    });
    for addr in known {
        let net = net.clone();
        tokio::spawn(async move {
            let _ = net.dial(addr).await;
        });
    }
    // Once a member, the invite in the config has done its job.
    if let Some(token) = &setup.invite
        && !cluster.is_admitted()
    {
        // Forged or expired tokens fail here, before any network traffic.
        token.verify(
            env.clock.unix_now_s(),
            token.cluster_id,
            &BTreeSet::from([token.inviter]),
        )?;
        join(net, cluster, token, &setup.peers, setup.mdns).await?;
    }
    Ok(())
}

async fn join(
    net: &P2pNet,
    cluster: &ClusterNode,
    token: &InviteToken,
    peers: &[Multiaddr],
    mdns: bool,
) -> anyhow::Result<()> {
    if peers.is_empty() {
        anyhow::ensure!(
            mdns,
            "cluster.invite is set but cluster.peers is empty and mdns is off: add the inviting node's address (printed by `canopy cluster invite`)"
        );
        // The inviter is in this node's admitted set, so mDNS dials it.
        let found = tokio::time::timeout(JOIN_WAIT, async {
            while !net.peers().contains(&token.inviter) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        anyhow::ensure!(
            found.is_ok(),
            "the node that issued the invite ({}) was not found on the local network by mDNS within {} s; add its address to cluster.peers",
            token.inviter,
            JOIN_WAIT.as_secs()
        );
        cluster.join(token, JOIN_WAIT).await?;
        return Ok(());
    }
    let mut reached = None;
    let mut errors = Vec::new();
    for addr in peers {
        match net.dial(addr.clone()).await {
            Ok(peer) if peer == token.inviter => {
                reached = Some(peer);
                break;
            }
            Ok(peer) => errors.push(format!(
                "{addr} is node {peer}, not the inviter {}",
                token.inviter
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    anyhow::ensure!(
        reached.is_some(),
        "cannot reach the node that issued the invite ({}):\n  {}\n  help: check cluster.peers (one of the addresses `canopy cluster invite` printed) and that cluster.secret_file holds the cluster's secret",
        token.inviter,
        errors.join("\n  ")
    );
    cluster.join(token, JOIN_WAIT).await?;
    Ok(())
}
