//! `p2ner server` and `p2ner streams` end to end: the real binary as a
//! process, real clients (p2ner-server's client over p2ner-net) on real UDP
//! on 127.0.0.1, `kill -9` for real.
//!
//! Timing-dependent checks (TTLs) poll with a deadline rather than sleeping
//! a fixed time, so they neither flake on a slow machine nor pass vacuously.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2ner_proto::server::{
    self as proto, ErrorCode, Liveness, PluginRef, Request, Response, Signed, SignedOp, StreamId,
    StreamParams,
};
use p2ner_proto::Identity;
use p2ner_server as srv;
use p2ner_tests::{p2ner, run};
use serde_json::Value;
use srv::client::blocking::Client;

/// A `p2ner server` process, killed (SIGKILL) when dropped.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl ServerProc {
    fn start(home: &Path, db: &Path, extra: &[&str]) -> Self {
        let mut cmd = p2ner(home);
        cmd.args(["server", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn p2ner server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        ServerProc { child, addr }
    }

    /// `kill -9`.
    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn params(title: &str) -> StreamParams {
    let mut scheduler = PluginRef::new("pull", "0.1.0");
    scheduler.params.insert("window".into(), "16".into());
    StreamParams {
        title: title.into(),
        description: format!("{title}, live"),
        bitrate_kbps: 800,
        chunk_ms: 500,
        buffer_ms: 5000,
        scheduler,
        overlay: PluginRef::new("mesh", "0.1.0"),
        input: "h264+opus 640x360@25".into(),
        container: "mpegts".into(),
        silence_ms: 0,
    }
}

fn client(server: SocketAddr) -> Client {
    // On 127.0.0.1 rather than 0.0.0.0: the address the server sees is then
    // the client's own local address.
    Client::connect_from("127.0.0.1:0".parse().unwrap(), server)
        .expect("client endpoint")
        .with_timeout(Duration::from_secs(3))
}

/// An address where nothing listens.
fn dead_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
}

/// `p2ner streams --json` against `servers`: (exit ok, parsed array, stderr).
fn streams_json(home: &Path, servers: &[SocketAddr], filter: &str) -> (bool, Vec<Value>, String) {
    let mut cmd = p2ner(home);
    cmd.args(["streams", "--json", "--timeout", "1", "--filter", filter]);
    for s in servers {
        cmd.arg("--server").arg(s.to_string());
    }
    let (ok, out, err) = run(&mut cmd);
    let array = if ok {
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("bad json ({e}): {out}"))
            .as_array()
            .expect("an array")
            .clone()
    } else {
        Vec::new()
    };
    (ok, array, err)
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}");
}

fn refused(r: Result<impl std::fmt::Debug, srv::ClientError>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a refusal, got {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn register_browse_two_servers_one_down_join_heartbeat_expiry_offline() {
    let home = Home::new();
    let ttl = [
        "--peer-ttl",
        "1.5",
        "--publisher-ttl",
        "1.5",
        "--stream-expiry",
        "4",
    ];
    let a = ServerProc::start(home.path(), &home.db("a.db"), &ttl);
    let b = ServerProc::start(home.path(), &home.db("b.db"), &[]);
    let dead = dead_addr();

    // The publisher's key is created on first use, in its config folder.
    let key_path = home.path().join("p2ner/identity.key");
    let alice = Identity::load_or_create(&key_path).expect("identity");
    assert_eq!(
        Identity::load_or_create(&key_path).unwrap().public_key(),
        alice.public_key()
    );
    let publisher = client(a.addr);
    let cats = publisher
        .register(&alice, params("Cats"))
        .expect("register");
    assert_eq!(cats, StreamId::derive(&alice.public_key(), "Cats"));
    publisher.publisher_heartbeat(&alice, &cats).unwrap();
    let on_b = client(b.addr)
        .register(&alice, params("Dogs on B"))
        .expect("register on b");

    // Join: parameters, the publisher flagged, then the other peers.
    let p1 = client(a.addr);
    let id1 = p1.endpoint().peer_id();
    let j1 = p1.join(&cats, id1).expect("join");
    assert_eq!(j1.info.params, params("Cats"));
    assert_eq!(j1.info.publisher, alice.public_key());
    assert_eq!(j1.info.liveness, Liveness::Online);
    assert_eq!(j1.peers.len(), 1);
    assert!(j1.peers[0].publisher);
    assert_eq!(j1.peers[0].addr, publisher.local_addr());
    let p2 = client(a.addr);
    let id2 = p2.endpoint().peer_id();
    let j2 = p2.join(&cats, id2).expect("join");
    assert_eq!(j2.peers.len(), 2);
    let listed = j2.peers.iter().find(|p| p.peer_id == id1).expect("peer 1");
    assert_eq!(listed.addr, p1.local_addr());
    assert!(!listed.publisher);

    // Browse two servers and a dead one at once.
    let (ok, all, stderr) = streams_json(home.path(), &[a.addr, b.addr, dead], "");
    assert!(ok, "{stderr}");
    assert_eq!(all.len(), 2, "{all:?}");
    let cat = all.iter().find(|s| s["id"] == cats.as_str()).expect("cats");
    assert_eq!(cat["server"], a.addr.to_string());
    assert_eq!(cat["title"], "Cats");
    assert_eq!(cat["publisher"], alice.public_key().to_hex());
    assert_eq!(cat["scheduler"], "pull");
    assert_eq!(cat["overlay"], "mesh");
    assert_eq!(cat["bitrate_kbps"], 800);
    assert_eq!(cat["peers"], 2);
    assert_eq!(cat["online"], true);
    let dog = all.iter().find(|s| s["id"] == on_b.as_str()).expect("dogs");
    assert_eq!(dog["server"], b.addr.to_string());
    assert_eq!(dog["online"], false);
    assert!(
        stderr.contains(&dead.to_string()) && stderr.contains("did not answer"),
        "{stderr}"
    );
    // The filter, and the human table.
    let (_, dogs, _) = streams_json(home.path(), &[a.addr, b.addr], "DOGS");
    assert_eq!(dogs.len(), 1);
    let (ok, table, _) = run(p2ner(home.path())
        .args(["streams", "--server"])
        .arg(a.addr.to_string()));
    assert!(
        ok && table.contains("Cats") && table.contains("online"),
        "{table}"
    );

    // Peer 2 and the publisher heartbeat; peer 1 goes quiet and drops out.
    eventually(Duration::from_secs(10), "peer 1 expires", || {
        p2.peer_heartbeat(&cats, id2).unwrap();
        publisher.publisher_heartbeat(&alice, &cats).unwrap();
        p2.info(&cats).unwrap().peers == 1
    });
    let p3 = client(a.addr);
    let sample = p3.join(&cats, p3.endpoint().peer_id()).unwrap().peers;
    assert!(sample.iter().any(|p| p.peer_id == id2));
    assert!(!sample.iter().any(|p| p.peer_id == id1));

    // The publisher goes quiet: offline (still listed), then expired.
    eventually(Duration::from_secs(10), "stream offline", || {
        let (_, s, _) = streams_json(home.path(), &[a.addr], "cats");
        s.len() == 1 && s[0]["online"] == false
    });
    let offline = p1.info(&cats).unwrap();
    assert_eq!(offline.liveness, Liveness::Offline);
    assert_eq!(offline.publisher_addr, Some(publisher.local_addr()));
    eventually(Duration::from_secs(15), "stream expired", || {
        streams_json(home.path(), &[a.addr], "cats").1.is_empty()
    });
    assert_eq!(refused(p1.join(&cats, id1)), ErrorCode::NotFound);

    // Nobody answering at all is an error naming the servers.
    let (ok, _, stderr) = streams_json(home.path(), &[dead], "");
    assert!(!ok);
    assert!(stderr.contains("no server answered"), "{stderr}");
    let (ok, _, stderr) = run(p2ner(home.path()).args(["streams", "--server", "not an address"]));
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn kill9_and_restart_keeps_the_catalogue() {
    let home = Home::new();
    let db = home.db("catalogue.db");
    let alice = Identity::from_secret([11; 32]);
    let bob = Identity::from_secret([12; 32]);
    let server = ServerProc::start(home.path(), &db, &[]);
    let c = client(server.addr);
    let one = c.register(&alice, params("one")).unwrap();
    let two = c.register(&alice, params("two")).unwrap();
    let three = c
        .register_as(&bob, "bobs-stream".into(), params("three"))
        .unwrap();
    c.update(&alice, &two, params("two, updated")).unwrap();
    c.remove(&alice, &one).unwrap();
    c.publisher_heartbeat(&bob, &three).unwrap();
    // A message captured before the crash, replayed after it.
    let captured = proto::encode(&Request::Signed(Box::new(Signed::new(
        &bob,
        srv::client::next_counter(),
        SignedOp::Heartbeat { id: three.clone() },
    ))));
    let answer = c.request_raw(captured.clone()).unwrap();
    assert_eq!(proto::decode::<Response>(&answer), Ok(Response::Ok));
    c.join(&three, c.endpoint().peer_id()).unwrap();
    server.kill9();

    let server = ServerProc::start(home.path(), &db, &[]);
    let (ok, all, stderr) = streams_json(home.path(), &[server.addr], "");
    assert!(ok, "{stderr}");
    let mut titles: Vec<_> = all.iter().map(|s| s["title"].as_str().unwrap()).collect();
    titles.sort();
    assert_eq!(titles, ["three", "two, updated"]);
    // Soft state is gone (offline, no peers) until heartbeats rebuild it.
    assert!(all.iter().all(|s| s["online"] == false && s["peers"] == 0));
    let c = client(server.addr);
    let info = c.info(&two).unwrap();
    assert_eq!(info.params, params("two, updated"));
    assert_eq!(info.publisher, alice.public_key());
    assert_eq!(refused(c.info(&one)), ErrorCode::NotFound);
    // Replay protection survived too.
    let answer = c.request_raw(captured).unwrap();
    assert!(
        matches!(
            proto::decode::<Response>(&answer),
            Ok(Response::Error {
                code: ErrorCode::Replay,
                ..
            })
        ),
        "{answer:?}"
    );
    // Heartbeats rebuild the rest.
    c.publisher_heartbeat(&bob, &three).unwrap();
    c.peer_heartbeat(&three, c.endpoint().peer_id()).unwrap();
    let info = c.info(&three).unwrap();
    assert_eq!(info.liveness, Liveness::Online);
    assert_eq!(info.peers, 1);
    // And ownership: Bob's id is still his.
    assert_eq!(
        refused(c.register_as(&alice, "bobs-stream".into(), params("mine now"))),
        ErrorCode::NotOwner
    );
}

#[test]
fn forged_and_replayed_changes_are_rejected_and_change_nothing() {
    let home = Home::new();
    let server = ServerProc::start(home.path(), &home.db("db"), &[]);
    let alice = Identity::from_secret([21; 32]);
    let mallory = Identity::from_secret([22; 32]);
    let c = client(server.addr);
    let id = c.register(&alice, params("alice's")).unwrap();
    let update = proto::encode(&Request::Signed(Box::new(Signed::new(
        &alice,
        srv::client::next_counter(),
        SignedOp::Update {
            id: id.clone(),
            params: params("alice's, v2"),
        },
    ))));
    let answer = c.request_raw(update.clone()).unwrap();
    assert_eq!(proto::decode::<Response>(&answer), Ok(Response::Ok));
    let before = c.info(&id).unwrap();
    assert_eq!(before.params.title, "alice's, v2");

    let m = client(server.addr);
    // Mallory with her own key: not the owner.
    assert_eq!(
        refused(m.update(&mallory, &id, params("pwned"))),
        ErrorCode::NotOwner
    );
    assert_eq!(refused(m.remove(&mallory, &id)), ErrorCode::NotOwner);
    assert_eq!(
        refused(m.register_as(&mallory, id.clone(), params("pwned"))),
        ErrorCode::NotOwner
    );
    assert_eq!(
        refused(m.publisher_heartbeat(&mallory, &id)),
        ErrorCode::NotOwner
    );
    // Mallory signing with her key but naming Alice's.
    let mut forged = Signed::new(
        &mallory,
        srv::client::next_counter(),
        SignedOp::Remove { id: id.clone() },
    );
    forged.key = alice.public_key();
    let answer = m
        .request_raw(proto::encode(&Request::Signed(Box::new(forged))))
        .unwrap();
    let code = |bytes: &[u8]| match proto::decode::<Response>(bytes) {
        Ok(Response::Error { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(code(&answer), ErrorCode::BadSignature);
    // Alice's genuine update, replayed by Mallory from another socket.
    assert_eq!(code(&m.request_raw(update).unwrap()), ErrorCode::Replay);
    // Alice's genuine removal with a tampered stream id.
    let mut bent = Signed::new(
        &alice,
        srv::client::next_counter(),
        SignedOp::Remove { id: id.clone() },
    );
    bent.op = SignedOp::Remove {
        id: "another".into(),
    };
    let answer = m
        .request_raw(proto::encode(&Request::Signed(Box::new(bent))))
        .unwrap();
    assert_eq!(code(&answer), ErrorCode::BadSignature);

    assert_eq!(c.info(&id).unwrap(), before);
    let (_, all, _) = streams_json(home.path(), &[server.addr], "");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["title"], "alice's, v2");
    let stats = c.stats().unwrap();
    assert_eq!(stats.forged, 7, "{stats:?}");
    // The owner still can.
    c.remove(&alice, &id).unwrap();
    assert_eq!(refused(c.info(&id)), ErrorCode::NotFound);
}

#[test]
fn twenty_thousand_random_datagrams_are_dropped_and_counted() {
    let home = Home::new();
    let server = ServerProc::start(home.path(), &home.db("db"), &[]);
    let alice = Identity::from_secret([31; 32]);
    let c = client(server.addr);
    let id = c.register(&alice, params("steady")).unwrap();

    // Raw garbage from 127.0.0.2 (another source as far as rate limits go),
    // and well-framed p2ner-net messages with garbage inside from 127.0.0.3.
    let flood = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    flood.set_nonblocking(true).unwrap();
    let framed = Client::connect_from("127.0.0.3:0".parse().unwrap(), server.addr).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const N: usize = 20_000;
    const FRAMED: usize = 300;
    let started = Instant::now();
    for i in 0..N {
        let len = (rand() % 1400) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        // A full kernel buffer on our side just means: try again.
        for _ in 0..1000 {
            match flood.send_to(&bytes, server.addr) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                r => {
                    r.expect("send");
                    break;
                }
            }
        }
        if i < FRAMED {
            let mut garbage: Vec<u8> = (0..(rand() % 200)).map(|_| rand() as u8).collect();
            if let Some(b) = garbage.first_mut() {
                *b = proto::PROTO_VERSION;
            }
            framed.send_raw(garbage).expect("acknowledged");
        }
        // The server keeps answering while it is flooded.
        if i % 2000 == 0 {
            c.join(&id, c.endpoint().peer_id())
                .expect("answers during the flood");
            c.browse("", 0).expect("answers during the flood");
        }
        // Pace a little so that the kernel does not drop them before the
        // server sees them (what is tested is the server, not the socket).
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stats = loop {
        let s = c.stats().expect("stats");
        if s.net_malformed + s.malformed >= (N + FRAMED) as u64 * 95 / 100
            || started.elapsed() > Duration::from_secs(30)
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stats.net_malformed >= N as u64 * 95 / 100, "{stats:?}");
    assert!(stats.net_malformed <= N as u64, "{stats:?}");
    assert!(stats.malformed >= FRAMED as u64 * 9 / 10, "{stats:?}");
    assert_eq!(stats.streams, 1);
    // Garbage is never answered.
    let mut buf = [0u8; 2048];
    let mut answers = 0;
    while flood.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    assert_eq!(answers, 0);
    // And the server still answers normally.
    let me = c.endpoint().peer_id();
    assert_eq!(c.join(&id, me).unwrap().info.params, params("steady"));
}

#[test]
fn rate_limited_source_is_dropped_others_are_served() {
    let home = Home::new();
    let server = ServerProc::start(
        home.path(),
        &home.db("db"),
        &["--rate", "1", "--burst", "20"],
    );
    let noisy = Client::connect_from("127.0.0.4:0".parse().unwrap(), server.addr)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let mut answered = 0;
    for _ in 0..60 {
        if noisy.browse("", 0).is_ok() {
            answered += 1;
        }
    }
    // 20 from the burst, then about one per second (each refused request
    // waits out its 200 ms timeout).
    assert!((20..45).contains(&answered), "{answered} answered");
    let quiet = client(server.addr);
    let stats = quiet.stats().expect("another source is served");
    assert!(stats.rate_limited >= 15, "{stats:?}");
}

/// The command line's one-line errors.
#[test]
fn server_user_errors_are_one_line() {
    let home = Home::new();
    let mut cmd = Command::new(p2ner_tests::p2ner_bin());
    cmd.env("HOME", home.path())
        .args(["server", "--listen", "bogus", "--db"])
        .arg(home.db("x.db"));
    let (ok, _, stderr) = run(&mut cmd);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bogus"), "{stderr}");
    let taken = ServerProc::start(home.path(), &home.db("a.db"), &[]);
    let (ok, _, stderr) = run(p2ner(home.path())
        .args(["server", "--listen", &taken.addr.to_string(), "--db"])
        .arg(home.db("b.db")));
    assert!(!ok);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}
