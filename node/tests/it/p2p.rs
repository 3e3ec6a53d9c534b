//! The libp2p network on real sockets (127.0.0.1, mdns off): joining through a
//! bootstrap address, requests, publish/subscribe, the cluster secret,
//! admission by node key, probation and join requests, and invite tokens.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use canopy_node::env::Rng;
use canopy_node::net::admission::{ClusterId, InviteError, InviteToken};
use canopy_node::net::identity::NodeKey;
use canopy_node::net::p2p::{MAX_JOIN_REQUESTS_PER_CONNECTION, Multiaddr, P2pConfig, P2pNet};
use canopy_node::net::{JOIN_PROTOCOL, MAX_PAYLOAD_BYTES, Net, NetError, NetEvent, NodeId};
use tokio::sync::{mpsc, watch};

/// Long enough for a loaded 2-core machine; every wait ends as soon as its
/// condition holds.
const DEADLINE: Duration = Duration::from_secs(30);

struct Node {
    key: NodeKey,
    net: P2pNet,
    events: mpsc::Receiver<NetEvent>,
    admitted: watch::Sender<BTreeSet<NodeId>>,
}

impl Node {
    fn id(&self) -> NodeId {
        self.key.node_id()
    }

    fn addr(&self) -> Multiaddr {
        self.net.listen_addrs()[0].clone()
    }
}

fn key(seed: u64) -> NodeKey {
    NodeKey::generate(&Rng::seeded(seed))
}

fn ids(keys: &[&NodeKey]) -> BTreeSet<NodeId> {
    keys.iter().map(|k| k.node_id()).collect()
}

fn config(secret: Option<[u8; 32]>, bootstrap: Vec<Multiaddr>) -> P2pConfig {
    P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        mdns: false,
        cluster_secret: secret,
        quic: false,
        request_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(5),
        redial_interval: Duration::from_millis(200),
        ..P2pConfig::default()
    }
}

async fn start(key: NodeKey, config: P2pConfig, admitted: BTreeSet<NodeId>) -> Node {
    let (tx, rx) = watch::channel(admitted);
    let (net, events) = P2pNet::start(&key, config, rx).await.unwrap();
    Node {
        key,
        net,
        events,
        admitted: tx,
    }
}

/// Read events until `pick` returns something, or fail at the deadline.
async fn wait_for<T>(
    node: &mut Node,
    what: &str,
    mut pick: impl FnMut(NetEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match node.events.recv().await {
                Some(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                None => panic!("event stream ended while waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

async fn wait_peer_up(node: &mut Node, peer: NodeId) {
    let me = node.id();
    wait_for(node, &format!("PeerUp({peer}) on {me}"), |e| match e {
        NetEvent::PeerUp(p) if p == peer => Some(()),
        _ => None,
    })
    .await
}

/// Events already delivered, without waiting.
fn drain(node: &mut Node) -> Vec<NetEvent> {
    let mut out = Vec::new();
    while let Ok(event) = node.events.try_recv() {
        out.push(event);
    }
    out
}

fn saw_peer_up(events: &[NetEvent], peer: NodeId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, NetEvent::PeerUp(p) if *p == peer))
}

/// Answer every request on `node` with `protocol:payload` (or an error for
/// protocol `fail/1`), from a task of its own.
fn serve_echo(node: Node) -> tokio::task::JoinHandle<()> {
    let mut events = node.events;
    tokio::spawn(async move {
        let _keep = (node.net, node.admitted);
        while let Some(event) = events.recv().await {
            if let NetEvent::Request {
                protocol,
                payload,
                reply,
                ..
            } = event
            {
                if protocol == "fail/1" {
                    reply.err("no such thing");
                } else {
                    let mut out = format!("{protocol}:").into_bytes();
                    out.extend_from_slice(&payload);
                    reply.ok(Bytes::from(out));
                }
            }
        }
    })
}

const SECRET: [u8; 32] = [7u8; 32];

#[tokio::test]
async fn two_nodes_connect_and_answer_requests() {
    let (ka, kb) = (key(1), key(2));
    let all = ids(&[&ka, &kb]);
    let mut a = start(ka, config(Some(SECRET), vec![]), all.clone()).await;
    let mut b = start(kb, config(Some(SECRET), vec![a.addr()]), all).await;
    let (a_id, b_id) = (a.id(), b.id());

    wait_peer_up(&mut a, b_id).await;
    wait_peer_up(&mut b, a_id).await;
    assert_eq!(a.net.peers(), vec![b_id]);
    assert_eq!(b.net.peers(), vec![a_id]);

    let b_net = b.net.clone();
    let _server = serve_echo(a);

    let answer = b_net
        .request(a_id, "echo/1", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"echo/1:hi");

    // A payload right at the limit goes through.
    let big = Bytes::from(vec![1u8; MAX_PAYLOAD_BYTES - 16]);
    let answer = b_net.request(a_id, "big/1", big.clone()).await.unwrap();
    assert_eq!(answer.len(), "big/1:".len() + big.len());

    // One byte over is refused before anything is sent.
    let too_big = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]);
    match b_net.request(a_id, "echo/1", too_big).await {
        Err(NetError::TooLarge { size_bytes }) => assert_eq!(size_bytes, MAX_PAYLOAD_BYTES + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        b_net.publish("t", Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1])),
        Err(NetError::TooLarge { .. })
    ));

    // The responder's error reaches the requester.
    match b_net.request(a_id, "fail/1", Bytes::new()).await {
        Err(NetError::Refused { peer, reason }) => {
            assert_eq!(peer, a_id);
            assert_eq!(reason, "no such thing");
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    // A peer we are not connected to.
    let stranger = key(99).node_id();
    assert!(matches!(
        b_net.request(stranger, "echo/1", Bytes::new()).await,
        Err(NetError::NotConnected(p)) if p == stranger
    ));
}

#[tokio::test]
async fn three_nodes_find_each_other_and_gossip() {
    let (ka, kb, kc) = (key(11), key(12), key(13));
    let all = ids(&[&ka, &kb, &kc]);
    let mut a = start(ka, config(Some(SECRET), vec![]), all.clone()).await;
    let mut b = start(kb, config(Some(SECRET), vec![a.addr()]), all.clone()).await;
    let (a_id, b_id) = (a.id(), b.id());
    wait_peer_up(&mut a, b_id).await;
    wait_peer_up(&mut b, a_id).await;

    // C knows only A; kad introduces it to B.
    let mut c = start(kc, config(Some(SECRET), vec![a.addr()]), all).await;
    let c_id = c.id();
    wait_peer_up(&mut c, a_id).await;
    wait_peer_up(&mut c, b_id).await;
    wait_peer_up(&mut b, c_id).await;
    wait_peer_up(&mut a, c_id).await;

    for node in [&a, &b, &c] {
        node.net.subscribe("news").unwrap();
    }
    // Publish until both subscribers have one (subscriptions take a round
    // trip to spread); each wait ends as soon as the message is there.
    let publisher = a.net.clone();
    let ticker = tokio::spawn(async move {
        for i in 0u32.. {
            publisher
                .publish("news", Bytes::from(format!("hello {i}")))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    for node in [&mut b, &mut c] {
        let (from, topic, payload) = wait_for(node, "a message on news", |e| match e {
            NetEvent::Message {
                from,
                topic,
                payload,
            } => Some((from, topic, payload)),
            _ => None,
        })
        .await;
        assert_eq!(from, a_id);
        assert_eq!(topic, "news");
        assert!(payload.starts_with(b"hello "));
    }
    ticker.abort();

    // The publisher does not hear itself.
    assert!(
        !drain(&mut a)
            .iter()
            .any(|e| matches!(e, NetEvent::Message { .. }))
    );
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_cannot_connect() {
    let (ka, kb, kc) = (key(21), key(22), key(23));
    let all = ids(&[&ka, &kb, &kc]);
    let mut a = start(ka, config(Some(SECRET), vec![]), all.clone()).await;
    let b = start(kb, config(Some([8u8; 32]), vec![]), all.clone()).await;
    let c = start(kc, config(None, vec![]), all).await;

    for stranger in [&b, &c] {
        let err = stranger
            .net
            .dial(a.addr())
            .await
            .expect_err("a dial without the cluster secret must fail");
        assert!(matches!(err, NetError::Dial { .. }), "{err}");
        assert!(stranger.net.peers().is_empty());
    }
    let seen = drain(&mut a);
    assert!(!saw_peer_up(&seen, b.id()), "{seen:?}");
    assert!(!saw_peer_up(&seen, c.id()), "{seen:?}");
    assert!(a.net.peers().is_empty());
}

/// A answers every join request with `welcome:<payload>`, on a task of its own
/// that also records every other event it sees.
fn serve_joins(node: Node) -> (tokio::task::JoinHandle<Node>, watch::Sender<bool>) {
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut node = node;
        loop {
            tokio::select! {
                _ = stop.changed() => return node,
                event = node.events.recv() => match event {
                    Some(NetEvent::Request { protocol, payload, reply, .. }) => {
                        assert_eq!(protocol, JOIN_PROTOCOL, "only join requests may reach A");
                        let mut out = b"welcome:".to_vec();
                        out.extend_from_slice(&payload);
                        reply.ok(Bytes::from(out));
                    }
                    Some(NetEvent::PeerUp(p)) => panic!("PeerUp({p}) for a peer on probation"),
                    Some(NetEvent::Message { from, .. }) => panic!("a message from {from} on probation"),
                    Some(_) => {}
                    None => return node,
                },
            }
        }
    });
    (task, stop_tx)
}

/// Publish on `news` from `publisher` until `to` has one of its messages
/// (subscriptions take a round trip to spread).
async fn gossip_reaches(publisher: P2pNet, to: &mut Node) {
    let from_id = publisher.local_id();
    let ticker = tokio::spawn(async move {
        for i in 0u32.. {
            publisher
                .publish("news", Bytes::from(format!("hello {i}")))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let got = wait_for(to, "a message on news", |e| match e {
        NetEvent::Message { from, .. } => Some(from),
        _ => None,
    })
    .await;
    ticker.abort();
    assert_eq!(got, from_id);
}

fn expect_refused(result: Result<Bytes, NetError>, peer: NodeId, needle: &str) {
    match result {
        Err(NetError::Refused { peer: p, reason }) => {
            assert_eq!(p, peer);
            assert!(reason.contains(needle), "{reason}");
        }
        other => panic!("expected Refused containing `{needle}`, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_not_admitted_may_only_join_until_admitted() {
    let (ka, kb) = (key(31), key(32));
    // A admits only itself; B (the joiner) admits its inviter A.
    let a = start(ka.clone(), config(Some(SECRET), vec![]), ids(&[&ka])).await;
    let mut b = start(kb.clone(), config(Some(SECRET), vec![]), ids(&[&ka, &kb])).await;
    let (a_id, b_id) = (a.id(), b.id());
    let a_addr = a.addr();
    // Both subscribe while B is on probation: gossip must flow once B is in,
    // and not before.
    a.net.subscribe("news").unwrap();
    b.net.subscribe("news").unwrap();
    let (a_task, stop_a) = serve_joins(a);

    // B reaches A: A is admitted on B's side, so B's dial resolves.
    assert_eq!(b.net.dial(a_addr).await.unwrap(), a_id);
    wait_peer_up(&mut b, a_id).await;
    b.net.publish("news", Bytes::from_static(b"early")).unwrap();

    // The join request gets through and is answered.
    let answer = b
        .net
        .request(a_id, JOIN_PROTOCOL, Bytes::from_static(b"token"))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"welcome:token");
    // Anything else is refused, with a reason that says why.
    expect_refused(
        b.net.request(a_id, "echo/1", Bytes::new()).await,
        a_id,
        "not admitted",
    );

    stop_a.send_replace(true);
    let mut a = a_task.await.unwrap();
    // No PeerUp on A (the server task would have panicked), not in peers(),
    // and A cannot send B requests.
    assert!(a.net.peers().is_empty());
    assert!(matches!(
        a.net.request(b_id, "echo/1", Bytes::new()).await,
        Err(NetError::NotConnected(_))
    ));
    // A does not dial a peer it has not admitted: its dial fails clearly.
    let err = a
        .net
        .dial(b.addr())
        .await
        .expect_err("B is not admitted by A");
    match &err {
        NetError::Dial { reason, .. } => assert!(reason.contains("admitted set"), "{err}"),
        other => panic!("expected Dial, got {other:?}"),
    }

    // Admit B: it is promoted on the same connection.
    a.admitted.send_replace(ids(&[&ka, &kb]));
    wait_peer_up(&mut a, b_id).await;
    assert_eq!(a.net.peers(), vec![b_id]);
    assert_eq!(b.net.peers(), vec![a_id]);
    let seen = drain(&mut b);
    assert!(
        !seen.iter().any(|e| matches!(e, NetEvent::PeerDown(_))),
        "promotion must not reconnect: {seen:?}"
    );

    // Gossip both ways.
    gossip_reaches(a.net.clone(), &mut b).await;
    gossip_reaches(b.net.clone(), &mut a).await;

    // Ordinary requests now work.
    let b_net = b.net.clone();
    let _server = serve_echo(a);
    let answer = b_net
        .request(a_id, "echo/1", Bytes::from_static(b"in"))
        .await
        .unwrap();
    assert_eq!(&answer[..], b"echo/1:in");
}

#[tokio::test]
async fn a_node_on_probation_is_disconnected_when_its_probation_ends() {
    let (ka, kb) = (key(33), key(34));
    let a_config = P2pConfig {
        probation: Duration::from_millis(500),
        ..config(Some(SECRET), vec![])
    };
    let a = start(ka.clone(), a_config, ids(&[&ka])).await;
    let mut b = start(kb.clone(), config(Some(SECRET), vec![]), ids(&[&ka, &kb])).await;
    let a_id = a.id();
    let a_addr = a.addr();
    let (a_task, stop_a) = serve_joins(a);

    assert_eq!(b.net.dial(a_addr).await.unwrap(), a_id);
    wait_peer_up(&mut b, a_id).await;
    let me = b.id();
    wait_for(&mut b, &format!("PeerDown({a_id}) on {me}"), |e| match e {
        NetEvent::PeerDown(p) if p == a_id => Some(()),
        _ => None,
    })
    .await;
    assert!(b.net.peers().is_empty());
    assert!(matches!(
        b.net.request(a_id, JOIN_PROTOCOL, Bytes::new()).await,
        Err(NetError::NotConnected(_))
    ));
    stop_a.send_replace(true);
    let a = a_task.await.unwrap();
    assert!(a.net.peers().is_empty());
}

#[tokio::test]
async fn join_requests_are_limited_per_connection() {
    let (ka, kb) = (key(35), key(36));
    let a = start(ka.clone(), config(Some(SECRET), vec![]), ids(&[&ka])).await;
    let b = start(kb.clone(), config(Some(SECRET), vec![]), ids(&[&ka, &kb])).await;
    let a_id = a.id();
    let a_addr = a.addr();
    let (a_task, stop_a) = serve_joins(a);

    assert_eq!(b.net.dial(a_addr).await.unwrap(), a_id);
    for i in 0..MAX_JOIN_REQUESTS_PER_CONNECTION {
        let answer = b
            .net
            .request(a_id, JOIN_PROTOCOL, Bytes::from(i.to_string()))
            .await
            .unwrap();
        assert_eq!(answer, Bytes::from(format!("welcome:{i}")));
    }
    expect_refused(
        b.net.request(a_id, JOIN_PROTOCOL, Bytes::new()).await,
        a_id,
        "too many join requests",
    );
    stop_a.send_replace(true);
    a_task.await.unwrap();
}

#[tokio::test]
async fn removing_a_peer_from_the_admitted_set_disconnects_it() {
    let (ka, kb) = (key(41), key(42));
    let all = ids(&[&ka, &kb]);
    let mut a = start(ka.clone(), config(None, vec![]), all.clone()).await;
    let mut b = start(kb, config(None, vec![a.addr()]), all).await;
    let (a_id, b_id) = (a.id(), b.id());
    wait_peer_up(&mut a, b_id).await;
    wait_peer_up(&mut b, a_id).await;

    a.admitted.send_replace(ids(&[&ka]));
    let me = a.id();
    wait_for(&mut a, &format!("PeerDown({b_id}) on {me}"), |e| match e {
        NetEvent::PeerDown(p) if p == b_id => Some(()),
        _ => None,
    })
    .await;
    assert!(a.net.peers().is_empty());
}

#[tokio::test]
async fn quic_nodes_connect_by_admission() {
    let (ka, kb) = (key(51), key(52));
    let all = ids(&[&ka, &kb]);
    let quic = |bootstrap| P2pConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        quic: true,
        ..config(None, bootstrap)
    };
    let mut a = start(ka, quic(vec![]), all.clone()).await;
    let mut b = start(kb, quic(vec![a.addr()]), all).await;
    let (a_id, b_id) = (a.id(), b.id());
    wait_peer_up(&mut a, b_id).await;
    wait_peer_up(&mut b, a_id).await;
}

#[tokio::test]
async fn quic_addresses_need_quic_on() {
    let err = P2pNet::start(
        &key(61),
        P2pConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            ..config(None, vec![])
        },
        watch::channel(BTreeSet::new()).1,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("QUIC is off"), "{err}");
}

#[test]
fn invite_tokens() {
    let rng = Rng::seeded(5);
    let inviter = key(71);
    let cluster = ClusterId::generate(&rng);
    let trusted = ids(&[&inviter]);
    let now_unix_s = 1_800_000_000;

    let token = InviteToken::issue(&inviter, cluster, now_unix_s + 3600, &rng);
    let parsed: InviteToken = token.encode().parse().unwrap();
    assert_eq!(parsed.verify(now_unix_s, cluster, &trusted), Ok(()));

    // Forged: one character of the signature changed.
    let text = token.encode();
    let mut forged = text.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged: InviteToken = String::from_utf8(forged).unwrap().parse().unwrap();
    assert!(matches!(
        forged.verify(now_unix_s, cluster, &trusted),
        Err(InviteError::Forged { .. })
    ));

    assert!(matches!(
        parsed.verify(now_unix_s + 3600, cluster, &trusted),
        Err(InviteError::Expired { .. })
    ));
    assert!(matches!(
        parsed.verify(now_unix_s, ClusterId::generate(&rng), &trusted),
        Err(InviteError::WrongCluster { .. })
    ));
    assert!(matches!(
        parsed.verify(now_unix_s, cluster, &ids(&[&key(72)])),
        Err(InviteError::UnknownInviter { .. })
    ));
}
