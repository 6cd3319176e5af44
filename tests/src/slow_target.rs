//! A SIMULATED slow target: a TCP relay in front of a real llama-server that makes each of the
//! server's forward passes cost `per_pass` more, as the proxy sees it.
//!
//! A big model on modest hardware is slow per forward pass, and a pass costs about the same
//! whether it decodes one token or verifies nine (decoding is memory-bound): that is why
//! speculation pays there. The test models on these CPUs decode hundreds of tokens a second, so
//! nothing here is slow enough for speculation to pay. The relay supplies the cost: each piece of
//! an answer that one forward pass produced — one streamed token (an SSE event), one whole
//! non-streamed answer such as a verification of k draft tokens — reaches the proxy `per_pass`
//! after the previous one at the earliest. Response headers alone cost nothing. A read that
//! carries several SSE events (the relay woke late) is charged for each, so a streamed answer
//! costs `per_pass` per token whatever the scheduling. Requests pass unchanged.
//!
//! [`SlowTarget::set_per_pass`] changes the cost for every byte read from then on, on open
//! connections too (a target that got faster or slower: another model loaded, a GPU freed).
//! `tc netem` is not available on these machines; this works in user space, like the
//! benchmarks' `LanRelay`, which models a LAN link (delay, bandwidth), not a server's speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The relay in front of one server; dropping it closes every relayed connection.
pub struct SlowTarget {
    /// The address to use instead of the server's (`http://127.0.0.1:PORT`).
    pub url: String,
    per_pass_us: Arc<AtomicU64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl SlowTarget {
    /// A relay on a free loopback port in front of the server at `server_url`
    /// (`http://host:port`), each forward pass costing `per_pass` more.
    pub async fn start(server_url: &str, per_pass: Duration) -> SlowTarget {
        let backend = server_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("slow-target relay binds a loopback port");
        let addr = listener.local_addr().expect("relay address");
        let per_pass_us = Arc::new(AtomicU64::new(per_pass.as_micros() as u64));
        let accept_task = tokio::spawn(accept_loop(listener, backend, per_pass_us.clone()));
        SlowTarget {
            url: format!("http://{addr}"),
            per_pass_us,
            accept_task,
        }
    }

    /// The cost of each forward pass from now on (`Duration::ZERO`: the server's own speed).
    pub fn set_per_pass(&self, per_pass: Duration) {
        self.per_pass_us
            .store(per_pass.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Drop for SlowTarget {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it ends them all.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, backend: String, per_pass_us: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let (backend, cost) = (backend.clone(), per_pass_us.clone());
                connections.spawn(async move {
                    let _ = relay(client, &backend, cost).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay(client: TcpStream, backend: &str, cost: Arc<AtomicU64>) -> std::io::Result<()> {
    let server = TcpStream::connect(backend).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let requests = async move {
        let copied = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        copied
    };
    let (up, down) = tokio::join!(requests, paced_answers(server_read, client_write, cost));
    up?;
    down
}

/// One read of the server's answer, and when it may reach the proxy; `None` is the server's FIN.
struct Timed {
    deliver_at: Instant,
    bytes: Option<Vec<u8>>,
}

/// Move the server's answer to the proxy, each forward pass's part `cost` after the previous one.
/// The reader reads as soon as the server writes (so each read is one write of the server's) and
/// queues; the writer delivers in order at the computed times.
async fn paced_answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    cost: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Timed>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut free_at = Instant::now();
        loop {
            let n = from.read(&mut buf).await?;
            let per_pass = Duration::from_micros(cost.load(Ordering::SeqCst));
            let bytes = (n > 0).then(|| buf[..n].to_vec());
            let passes = bytes.as_deref().map_or(0, forward_passes);
            free_at = free_at.max(Instant::now()) + per_pass * passes;
            let fin = bytes.is_none();
            if tx
                .send(Timed {
                    deliver_at: free_at,
                    bytes,
                })
                .is_err()
                || fin
            {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let writer = async move {
        while let Some(piece) = rx.recv().await {
            tokio::time::sleep_until(piece.deliver_at).await;
            match piece.bytes {
                Some(bytes) => to.write_all(&bytes).await?,
                None => break,
            }
        }
        to.shutdown().await
    };
    let (read, write) = tokio::join!(reader, writer);
    read?;
    write
}

/// How many forward passes of the server's one read of its answer stands for: none for response
/// headers alone, one per SSE event (one streamed token each), else one (a whole non-streamed
/// answer, or the end of a stream).
fn forward_passes(read: &[u8]) -> u32 {
    if read.starts_with(b"HTTP/") && read.ends_with(b"\r\n\r\n") {
        return 0;
    }
    let events = read.windows(6).filter(|w| *w == b"data: ").count() as u32;
    events.max(1)
}

#[cfg(test)]
mod tests {
    use super::forward_passes;

    #[test]
    fn headers_are_free_and_each_streamed_token_is_one_pass() {
        assert_eq!(
            forward_passes(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"),
            0
        );
        assert_eq!(
            forward_passes(b"1a\r\ndata: {\"content\":\"a\"}\n\n\r\n"),
            1
        );
        assert_eq!(
            forward_passes(b"data: {\"content\":\"a\"}\n\ndata: {\"content\":\"b\"}\n\n"),
            2
        );
        assert_eq!(forward_passes(b"{\"accepted\":[1,2,3]}"), 1);
        assert_eq!(
            forward_passes(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
            1
        );
    }
}
