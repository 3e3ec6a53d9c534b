//! The swarm's parts: the transport stack and the composed behaviour.

use futures::future;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, connection_limits, gossipsub, identify, kad, mdns, noise, quic,
    request_response, tcp, yamux,
};

use super::P2pConfig;
use super::codec::{FrameCodec, REQUEST_PROTOCOL};
use super::gate::Gated;
use crate::net::{MAX_PAYLOAD_BYTES, NetError};

/// The identify protocol version every Canopy node announces.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/canopy/1";

/// The kademlia protocol name: Canopy's own DHT, never the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/canopy/kad/1");

/// Room for gossipsub's framing around a payload of `MAX_PAYLOAD_BYTES`.
const GOSSIP_OVERHEAD_BYTES: usize = 64 * 1024;

/// Every behaviour the swarm runs. Connection limits come first so a
/// connection over a limit is refused before any other behaviour sees it.
///
/// A peer that is not admitted may hold a connection on probation (see the
/// driver): gossipsub and kad are gated so they run only on connections of
/// admitted peers; identify runs everywhere; request-response runs everywhere
/// and the driver refuses every request from a peer on probation except
/// [`JOIN_PROTOCOL`](crate::net::JOIN_PROTOCOL) ones.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub requests: request_response::Behaviour<FrameCodec>,
    pub gossip: Gated<gossipsub::Behaviour>,
    pub identify: identify::Behaviour,
    pub kad: Gated<kad::Behaviour<kad::store::MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub fn new(keypair: &Keypair, config: &P2pConfig) -> Result<Self, NetError> {
        let peer_id = keypair.public().to_peer_id();

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(config.max_connections_per_peer))
            .with_max_pending_incoming(Some(config.max_pending_connections))
            .with_max_pending_outgoing(Some(config.max_pending_connections));

        let requests = request_response::Behaviour::with_codec(
            FrameCodec,
            [(REQUEST_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.request_timeout),
        );

        let gossip_config = gossipsub::ConfigBuilder::default()
            // Only signed messages from a known author: admission checks the author.
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Messages are forwarded only after the driver accepted them.
            .validate_messages()
            .max_transmit_size(MAX_PAYLOAD_BYTES + GOSSIP_OVERHEAD_BYTES)
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub configuration: {e}")))?;
        let gossip = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;

        let identify = identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL_VERSION.to_owned(),
            keypair.public(),
        ));

        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(KAD_PROTOCOL),
        );
        // Without confirmed external addresses (loopback, private networks)
        // kad would stay a client and never be added to routing tables.
        kad.set_mode(Some(kad::Mode::Server));

        let mdns = if config.mdns {
            let behaviour =
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| {
                    NetError::Setup(format!(
                        "mdns could not start: {e}; turn mdns off or check the network interfaces"
                    ))
                })?;
            Some(behaviour)
        } else {
            None
        };

        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            requests,
            gossip: Gated::new(gossip),
            identify,
            kad: Gated::new(kad),
            mdns: Toggle::from(mdns),
        })
    }
}

/// TCP (wrapped in the secret's cipher when the cluster has one) and, if enabled, QUIC;
/// both authenticated with the node key.
pub fn transport(
    keypair: &Keypair,
    config: &P2pConfig,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, NetError> {
    let noise = noise::Config::new(keypair)
        .map_err(|e| NetError::Setup(format!("noise configuration: {e}")))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    // Nonces for the secret's cipher: libp2p is the production transport
    // (the simulator replaces it), and it draws OS randomness itself anyway.
    let psk = config
        .cluster_secret
        .map(|secret| super::psk::ClusterPsk::new(secret, crate::env::Rng::from_os()));
    // With a secret every TCP stream is wrapped in the secret's cipher before
    // noise runs, so a node without it cannot even start the handshake.
    let tcp = tcp.and_then(move |socket, _| {
        let psk = psk.clone();
        async move {
            match psk {
                Some(psk) => psk.handshake(socket).await.map(future::Either::Left),
                None => Ok(future::Either::Right(socket)),
            }
        }
    });
    let tcp = tcp
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(config.handshake_timeout)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    if !config.quic {
        return Ok(tcp.boxed());
    }
    let mut quic_config = quic::Config::new(keypair);
    quic_config.handshake_timeout = config.handshake_timeout;
    let quic = quic::tokio::Transport::new(quic_config)
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| either.into_inner())
        .boxed())
}
