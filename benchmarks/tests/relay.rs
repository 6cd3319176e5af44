//! The LAN relay: bytes intact and in order, many connections at once, half-closes, and a delay
//! and bandwidth cap that are never undercut (lower bounds only: speed is measured in benchmarks).
//! All traffic stays on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tightwad_benchmarks::relay::{LanRelay, LinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on loopback: writes back everything it reads, then closes its side after the
/// client's half-close.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

async fn relay(backend: SocketAddr, link: LinkConfig) -> LanRelay {
    LanRelay::start(
        "127.0.0.1:0".parse().expect("addr"),
        backend.to_string(),
        link,
    )
    .await
    .expect("relay starts")
}

/// Send `data`, half-close, read the echo to the end.
async fn round_trip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let conn = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = conn.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read echo");
    writer.await.expect("writer task");
    back
}

#[tokio::test]
async fn bytes_arrive_intact_and_in_order() {
    let relay = relay(
        echo_server().await,
        LinkConfig::with_rtt(Duration::from_millis(1)),
    )
    .await;
    let data = pattern(3 * 1024 * 1024 + 17, 5);
    let back = tokio::time::timeout(
        Duration::from_secs(20),
        round_trip(relay.local_addr(), data.clone()),
    )
    .await
    .expect("echo within 20 s");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echoed bytes differ from the sent ones");
}

#[tokio::test]
async fn many_concurrent_connections_each_get_their_own_bytes() {
    let relay = relay(
        echo_server().await,
        LinkConfig::with_rtt(Duration::from_millis(2)),
    )
    .await;
    let addr = relay.local_addr();
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            tokio::spawn(async move {
                let data = pattern(64 * 1024 + usize::from(i), i);
                (round_trip(addr, data.clone()).await, data)
            })
        })
        .collect();
    for t in tasks {
        let (back, data) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("within 20 s")
            .expect("task");
        assert!(back == data, "a connection got bytes that were not its own");
    }
}

#[tokio::test]
async fn a_half_close_reaches_the_server_and_the_reply_still_comes_back() {
    // The server reads until the client's FIN, then answers and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut conn, _)) = listener.accept().await {
            let mut request = Vec::new();
            conn.read_to_end(&mut request)
                .await
                .expect("server reads to FIN");
            let reply = format!("got {} bytes", request.len());
            conn.write_all(reply.as_bytes()).await.expect("reply");
            conn.shutdown().await.expect("close");
        }
    });
    let relay = relay(backend, LinkConfig::with_rtt(Duration::from_millis(4))).await;
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        round_trip(relay.local_addr(), vec![7u8; 1000]),
    )
    .await
    .expect("reply within 10 s");
    assert_eq!(back, b"got 1000 bytes");
}

#[tokio::test]
async fn the_added_round_trip_is_never_shorter_than_configured() {
    let rtt = Duration::from_millis(20);
    let relay = relay(echo_server().await, LinkConfig::with_rtt(rtt)).await;
    let mut conn = TcpStream::connect(relay.local_addr())
        .await
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 1];
    for i in 0..5u8 {
        let started = Instant::now();
        conn.write_all(&[i]).await.expect("ping");
        conn.read_exact(&mut buf).await.expect("pong");
        assert_eq!(buf[0], i);
        assert!(
            started.elapsed() >= rtt,
            "a ping took {:?}, less than the {rtt:?} of added RTT",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn the_bandwidth_cap_is_respected() {
    // 2 MB/s each way: 400 kB cannot go and come back in less than 0.2 s (+ serialization).
    let link = LinkConfig {
        one_way_delay: Duration::ZERO,
        bandwidth_bytes_per_s: Some(2_000_000),
    };
    let relay = relay(echo_server().await, link).await;
    let data = pattern(400_000, 9);
    let started = Instant::now();
    let back = tokio::time::timeout(
        Duration::from_secs(20),
        round_trip(relay.local_addr(), data.clone()),
    )
    .await
    .expect("within 20 s");
    assert!(back == data);
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "400 kB crossed a 2 MB/s link in {:?}",
        started.elapsed()
    );
}
