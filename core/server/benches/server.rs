//! Server figures: join and browse requests per second over loopback UDP,
//! join latency percentiles, and memory and sweep time with 100,000 live
//! peers across 1,000 streams.
//!
//! `cargo bench -p p2ner-server --bench server` (release build). Clients and
//! server share the machine, so the throughput is a floor: the clients'
//! own work is on the same cores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2ner_net::{Endpoint, NetConfig};
use p2ner_proto::server::{encode, PluginRef, Request, Signed, SignedOp, StreamId, StreamParams};
use p2ner_proto::Identity;
use p2ner_server::{Server, ServerClient, ServerConfig, Service, Store};

fn params(title: &str) -> StreamParams {
    StreamParams {
        title: title.into(),
        description: "benchmark stream with a description of ordinary length".into(),
        bitrate_kbps: 800,
        chunk_ms: 500,
        buffer_ms: 5000,
        scheduler: PluginRef::new("pull", "0.1.0"),
        overlay: PluginRef::new("mesh", "0.1.0"),
        input: "h264+opus 1280x720@30".into(),
        container: "mpegts".into(),
        silence_ms: 0,
    }
}

fn config() -> ServerConfig {
    let mut cfg = ServerConfig {
        rate_limit: None,
        seed: Some(1),
        ..ServerConfig::default()
    };
    cfg.bounds.streams_per_publisher = 100_000;
    cfg.bounds.peers_per_stream = 1_000_000;
    cfg
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `clients` concurrent loops of `op` for `run_for`; returns
/// (requests answered, errors, sorted latencies).
async fn load<F, Fut>(
    server: SocketAddr,
    clients: usize,
    run_for: Duration,
    op: F,
) -> (u64, u64, Vec<Duration>)
where
    F: Fn(ServerClient, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (ep, events) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
            .await
            .unwrap();
        let client = ServerClient::new(ep, server).with_timeout(Duration::from_secs(2));
        let op = op.clone();
        tasks.spawn(async move {
            let _events = events;
            let end = Instant::now() + run_for;
            let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                if op(client.clone(), c, i).await {
                    ok += 1;
                    lat.push(t.elapsed());
                } else {
                    err += 1;
                }
                i += 1;
            }
            (ok, err, lat)
        });
    }
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (o, e, l) = r.unwrap();
        ok += o;
        err += e;
        lat.extend(l);
    }
    lat.sort();
    (ok, err, lat)
}

fn throughput() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(([127, 0, 0, 1], 0).into(), &dir.path().join("db"), config())
            .await
            .unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.run());

        // 1,000 streams; the first has 200 peers.
        let (ep, _events) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
            .await
            .unwrap();
        let setup = ServerClient::new(ep, addr);
        let alice = Identity::from_secret([1; 32]);
        let mut first = None;
        for i in 0..1000 {
            let id = setup
                .register(&alice, params(&format!("stream number {i}")))
                .await
                .unwrap();
            first.get_or_insert(id);
        }
        let stream: StreamId = first.unwrap();
        setup.publisher_heartbeat(&alice, &stream).await.unwrap();
        for p in 0..200 {
            setup.join(&stream, 1_000_000 + p).await.unwrap();
        }

        let run_for = Duration::from_secs(3);
        for (run, clients) in [1, 8, 32].into_iter().enumerate() {
            let s = stream.clone();
            let (ok, err, lat) = load(addr, clients, run_for, move |c, n, i| {
                let s = s.clone();
                async move {
                    // Each client (each run's clients are new sockets)
                    // refreshes its own 1,000 peer ids.
                    let peer = 1 + (run as u64 * 100 + n as u64) * 1000 + i % 1000;
                    c.join(&s, peer).await.is_ok()
                }
            })
            .await;
            println!(
                "join    {clients:>2} clients: {:>7.0} req/s  p50 {:>6.0} us  p99 {:>6.0} us  errors {err}",
                ok as f64 / run_for.as_secs_f64(),
                percentile(&lat, 0.5).as_secs_f64() * 1e6,
                percentile(&lat, 0.99).as_secs_f64() * 1e6,
            );
        }
        for (clients, filter) in [(8, ""), (32, ""), (32, "number 99")] {
            let (ok, err, lat) = load(addr, clients, run_for, move |c, _, i| async move {
                let offset = if filter.is_empty() { (i % 100) as u32 * 8 } else { 0 };
                c.browse(filter, offset).await.is_ok()
            })
            .await;
            println!(
                "browse  {clients:>2} clients, filter {filter:?}: {:>7.0} req/s  p50 {:>6.0} us  p99 {:>6.0} us  errors {err}",
                ok as f64 / run_for.as_secs_f64(),
                percentile(&lat, 0.5).as_secs_f64() * 1e6,
                percentile(&lat, 0.99).as_secs_f64() * 1e6,
            );
        }
    });
}

/// The service alone (no sockets): its memory for 100,000 peers across 1,000
/// streams, and the cost of the once-a-second sweep over them.
fn memory() {
    let before = rss_kib();
    let now = Instant::now();
    let mut svc = Service::new(Store::in_memory().unwrap(), config(), now).unwrap();
    let alice = Identity::from_secret([2; 32]);
    let mut ids = Vec::new();
    for i in 0..1000u64 {
        let id = StreamId::derive(&alice.public_key(), &format!("s{i}"));
        let req = Request::Signed(Box::new(Signed::new(
            &alice,
            i + 1,
            SignedOp::Register {
                id: id.clone(),
                params: params(&format!("s{i}")),
            },
        )));
        svc.handle(([127, 0, 0, 1], 1).into(), req, now);
        ids.push(id);
    }
    let streams = rss_kib();
    let t = Instant::now();
    for (s, id) in ids.iter().enumerate() {
        for p in 0..100u64 {
            let n = s as u64 * 100 + p;
            let from = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 4000));
            let bytes = encode(&Request::Join {
                stream: id.clone(),
                peer_id: n + 1,
            });
            assert!(svc.handle_payload(from, &bytes, now).is_some());
        }
    }
    let joins = t.elapsed();
    let after = rss_kib();
    let stats = svc.stats(now);
    assert_eq!(stats.live_peers, 100_000);
    let t = Instant::now();
    svc.tick(now + Duration::from_secs(1));
    let sweep = t.elapsed();
    println!(
        "memory: 1,000 streams {:.1} MB, +100,000 live peers {:.1} MB (RSS {:.1} MB in all)",
        (streams - before) as f64 / 1024.0,
        (after - streams) as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    println!(
        "service alone: 100,000 joins in {:.0} ms ({:.0}/s incl. decode+encode); sweep over 100,000 peers {:.2} ms",
        joins.as_secs_f64() * 1e3,
        100_000.0 / joins.as_secs_f64(),
        sweep.as_secs_f64() * 1e3
    );
    // Expire them all: memory is handed back to the allocator's free lists.
    svc.tick(now + Duration::from_secs(3600));
    assert_eq!(svc.stats(now).live_peers, 0);
}

/// What the network layer keeps per client address on the server side:
/// 5,000 client sockets each send one join; the RSS growth is the client
/// endpoints' state towards the server plus the server's state towards each
/// of them, measured against the growth from binding the clients alone.
fn net_state_per_address() {
    const N: usize = 5000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(([127, 0, 0, 1], 0).into(), &dir.path().join("db"), config())
            .await
            .unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.run());
        let (ep, _events) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
            .await
            .unwrap();
        let setup = ServerClient::new(ep, addr);
        let alice = Identity::from_secret([3; 32]);
        let stream = setup.register(&alice, params("net")).await.unwrap();
        let r0 = rss_kib();
        let mut clients = Vec::with_capacity(N);
        for _ in 0..N {
            let (ep, events) = Endpoint::bind(([127, 0, 0, 1], 0).into(), NetConfig::default())
                .await
                .unwrap();
            clients.push((ServerClient::new(ep, addr), events));
        }
        let r1 = rss_kib();
        for (k, chunk) in clients.chunks(250).enumerate() {
            let mut set = tokio::task::JoinSet::new();
            for (j, (c, _)) in chunk.iter().enumerate() {
                let i = k * 250 + j;
                let (c, s) = (c.clone(), stream.clone());
                set.spawn(async move { c.join(&s, 1 + i as u64).await.map(|_| ()) });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().expect("join");
            }
        }
        let r2 = rss_kib();
        println!(
            "net layer: {N} client endpoints {:.1} MB; their first request {:.1} MB, \
             i.e. <= {:.2} KB per address on the server (both sides counted)",
            (r1 - r0) as f64 / 1024.0,
            (r2.saturating_sub(r1)) as f64 / 1024.0,
            (r2.saturating_sub(r1)) as f64 / N as f64,
        );
    });
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs with no
    // arguments and only checks that this builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench -p p2ner-server --bench server`");
        return;
    }
    memory();
    net_state_per_address();
    throughput();
}
