//! The server and its client over real UDP on loopback, in one process (the
//! end-to-end tests with the `p2ner` binary are in tests/tests/server.rs).

use std::net::SocketAddr;
use std::time::Duration;

use p2ner_net::{Endpoint, NetConfig};
use p2ner_proto::server::{ErrorCode, Liveness, PluginRef, StreamParams};
use p2ner_proto::Identity;
use p2ner_server::{browse_many, Server, ServerClient, ServerConfig};

fn params(title: &str) -> StreamParams {
    StreamParams {
        title: title.into(),
        description: "loopback".into(),
        bitrate_kbps: 600,
        chunk_ms: 500,
        buffer_ms: 4000,
        scheduler: PluginRef::new("pull", "0.1.0"),
        overlay: PluginRef::new("mesh", "0.1.0"),
        input: "synthetic".into(),
        container: "raw".into(),
        silence_ms: 0,
    }
}

async fn client(server: SocketAddr) -> (ServerClient, u64) {
    let (ep, _events) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
        .await
        .unwrap();
    let id = ep.peer_id();
    (
        ServerClient::new(ep, server).with_timeout(Duration::from_secs(2)),
        id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_join_browse_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(
        ([127, 0, 0, 1], 0).into(),
        &dir.path().join("db"),
        ServerConfig::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run());

    let (publisher, _) = client(addr).await;
    let alice = Identity::from_secret([1; 32]);
    let id = publisher.register(&alice, params("hello")).await.unwrap();
    publisher.publisher_heartbeat(&alice, &id).await.unwrap();

    let (viewer, viewer_id) = client(addr).await;
    // A stranger learns nothing about the swarm: no peer list before joining,
    // and no joining under an id that is not its key's.
    let err = viewer.peers(&id, viewer_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    let err = viewer.join(&id, 42).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    let joined = viewer.join(&id, viewer_id).await.unwrap();
    assert_eq!(joined.info.params, params("hello"));
    assert_eq!(joined.info.liveness, Liveness::Online);
    assert_eq!(joined.peers.len(), 1);
    assert!(joined.peers[0].publisher);

    let (second, second_id) = client(addr).await;
    let joined = second.join(&id, second_id).await.unwrap();
    assert_eq!(joined.peers.len(), 2);
    assert!(joined.peers.iter().any(|p| p.peer_id == viewer_id));
    // A member may list; under another member's id it may not.
    assert_eq!(second.peers(&id, second_id).await.unwrap().len(), 2);
    let err = second.peers(&id, viewer_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));

    let mallory = Identity::from_secret([2; 32]);
    let err = second.remove(&mallory, &id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotOwner));

    let (ep, _e) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
        .await
        .unwrap();
    // A closed port: nothing listens there.
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let (found, failed) = browse_many(&ep, &[addr, dead], "HELL", Duration::from_secs(1)).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, addr);
    assert_eq!(found[0].1.peers, 2);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, dead);
    let stats = viewer.stats().await.unwrap();
    assert_eq!(stats.streams, 1);
    assert_eq!(stats.live_peers, 2);
}
