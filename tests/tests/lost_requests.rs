//! No request is lost to a kept-alive connection the target has already closed.
//!
//! llama-server (cpp-httplib) closes a connection after 5 s idle (`Keep-Alive: timeout=5`). Across a
//! link with latency the proxy learns of that close late: a request sent in that window goes out
//! on a dead connection and is reset. The proxy must never hand out a connection that old, and the
//! retry of a request that could not be sent must open a genuinely new connection.
//!
//! The window is made deterministic by a relay in front of a real llama-server that delivers the
//! server's close [`CLOSE_DELAY`] late (what a link with latency does, widened): whatever the proxy
//! sends on such a connection is lost and the connection is reset, exactly as the closed socket
//! would. The test waits (on the relay's counters, not on a clock) until the server has closed
//! every connection of a burst, then sends requests inside the window.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tightwad_e2e::{env, LlamaServer, RunningProxy, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How late the relay tells the proxy that the server closed a connection.
const CLOSE_DELAY: Duration = Duration::from_secs(4);

#[derive(Default)]
struct Counters {
    /// Connections neither side has closed yet.
    open: AtomicUsize,
    accepted: AtomicUsize,
    /// Requests the proxy sent on a connection the server had already closed (lost, then reset).
    lost: AtomicUsize,
}

struct LateCloseRelay {
    url: String,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LateCloseRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LateCloseRelay {
    async fn start(upstream: SocketAddr) -> LateCloseRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(down, upstream, c.clone()));
            }
        });
        LateCloseRelay {
            url: format!("http://{addr}"),
            counters,
            task,
        }
    }

    /// Wait until every connection so far has been closed by one side or the other.
    async fn wait_all_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.counters.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "{} relayed connections still open after {limit:?}",
                self.counters.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn relay(mut down: TcpStream, upstream: SocketAddr, c: Arc<Counters>) {
    let closed = |c: &Counters| {
        c.open.fetch_sub(1, Ordering::SeqCst);
    };
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        closed(&c);
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = down.read(&mut from_client) => match n {
                Ok(0) | Err(_) => { closed(&c); return; }
                Ok(n) => if up.write_all(&from_client[..n]).await.is_err() { closed(&c); return; },
            },
            n = up.read(&mut from_server) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if down.write_all(&from_server[..n]).await.is_err() { closed(&c); return; },
            },
        }
    }
    // The server closed the connection (its keep-alive ran out). The proxy hears of it only
    // CLOSE_DELAY later; a request it sends meanwhile is lost and the connection reset.
    closed(&c);
    drop(up);
    let late = tokio::time::sleep(CLOSE_DELAY);
    tokio::pin!(late);
    tokio::select! {
        _ = &mut late => {}
        n = down.read(&mut from_client) => {
            if matches!(n, Ok(n) if n > 0) {
                c.lost.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    #[allow(deprecated)] // linger 0: close with a reset, as the server's closed socket answers
    let _ = down.set_linger(Some(Duration::ZERO));
    drop(down);
}

/// llama-server's own 5 s keep-alive: the proxy's pool drops idle connections first (4 s), so no
/// request even meets a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_right_after_the_target_closes_idle_connections_are_all_served() {
    let lost = burst_then_requests_in_the_window().await;
    assert_eq!(
        lost, 0,
        "the pool handed out connections idle past the server's keep-alive"
    );
}

/// A burst, then (once the server has closed every connection) 8 requests one after the other
/// inside the window where the proxy has not heard of the closes. Every one must be served.
/// Returns how many requests went out on a connection the server had closed.
async fn burst_then_requests_in_the_window() -> usize {
    let env = env();
    let target = LlamaServer::start(
        &env,
        &env.model("target.gguf"),
        ServerOptions {
            slots: 4,
            ..ServerOptions::default()
        },
    )
    .await;
    let relay = LateCloseRelay::start(
        format!("127.0.0.1:{}", target.port)
            .parse()
            .expect("target address"),
    )
    .await;
    // Target-only: every request is one forward/stream to the target through the pool.
    let proxy = RunningProxy::start(&relay.url, None, 4).await;
    let body =
        |i: usize| json!({"prompt": format!("Request {i}:"), "max_tokens": 2, "temperature": 0});

    // A burst fills the proxy's pool with connections to the target.
    let bodies: Vec<_> = (0..16).map(body).collect();
    let burst = futures::future::join_all(bodies.iter().map(|b| proxy.post("/v1/completions", b)));
    for (s, v) in burst.await {
        assert_eq!(s, 200, "{v}");
    }
    let pooled = relay.counters.accepted.load(Ordering::SeqCst);
    assert!(pooled >= 2, "the burst used {pooled} connection(s)");
    // The target closes them all after its 5 s keep-alive (or the proxy closed them first).
    relay.wait_all_closed(Duration::from_secs(30)).await;

    // Inside the window where the proxy has not yet heard of the closes: one after the other, so
    // that a retry on the same pool would meet another dead connection.
    let sent = Instant::now();
    for i in 0..8 {
        let (s, v) = proxy.post("/v1/completions", &body(100 + i)).await;
        assert_eq!(
            s,
            200,
            "request {i}, {:?} after the target closed its idle connections, was lost: {v}",
            sent.elapsed()
        );
    }
    assert!(
        sent.elapsed() < CLOSE_DELAY,
        "the requests took {:?}: they left the window the test is about",
        sent.elapsed()
    );
    let lost = relay.counters.lost.load(Ordering::SeqCst);
    eprintln!(
        "burst over {pooled} connections; {lost} request(s) met a connection the target had closed"
    );
    lost
}
