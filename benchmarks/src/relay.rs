//! The LAN emulator: a user-space TCP relay that adds a one-way delay and a bandwidth cap.
//!
//! `tc netem` needs privileges these machines do not give, and the benchmarks must show what a
//! LAN round trip costs a draft→verify round. The relay listens on a local port and forwards every
//! connection to a backend. Each direction is its own emulated link: a byte that enters it waits
//! for the link to be free (`bytes / bandwidth` of serialization after the bytes before it) and
//! then for the propagation delay, so a request/response exchange pays `2 × delay` of round-trip
//! time plus the transfer time of its bytes. Byte order is preserved (one FIFO per direction), a
//! half-close (FIN) travels with the same delay after the last byte, and every connection has its
//! own pair of links.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::clock;

/// One direction of an emulated link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Propagation delay of one direction; the round-trip time added is twice this.
    pub one_way_delay: Duration,
    /// Bytes per second in each direction; `None` leaves it to loopback's speed.
    pub bandwidth_bytes_per_s: Option<u64>,
}

impl LinkConfig {
    /// A link that adds `rtt` of round trip and has no bandwidth cap.
    pub fn with_rtt(rtt: Duration) -> Self {
        LinkConfig {
            one_way_delay: rtt / 2,
            bandwidth_bytes_per_s: None,
        }
    }

    /// How long `bytes` occupy the link (zero without a cap).
    fn serialization(&self, bytes: usize) -> Duration {
        match self.bandwidth_bytes_per_s {
            Some(bw) if bw > 0 => Duration::from_secs_f64(bytes as f64 / bw as f64),
            _ => Duration::ZERO,
        }
    }

    /// Read size: about 1 ms of the link's capacity when capped, so pacing stays smooth.
    fn chunk_size(&self) -> usize {
        match self.bandwidth_bytes_per_s {
            Some(bw) => ((bw / 1000) as usize).clamp(512, 16 * 1024),
            None => 16 * 1024,
        }
    }
}

#[derive(Debug, Error)]
pub enum RelayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The link every connection of a relay reads for each chunk, so it can change while
/// connections stay open (a LAN that gets slow, then fast again).
type SharedLink = Arc<RwLock<LinkConfig>>;

fn current(link: &SharedLink) -> LinkConfig {
    *link
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running relay; dropping it stops accepting and closes every relayed connection.
pub struct LanRelay {
    local_addr: SocketAddr,
    backend: String,
    link: SharedLink,
    /// Bytes relayed so far, both directions, every connection: what crossed the emulated LAN.
    relayed: Arc<AtomicU64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl LanRelay {
    /// Listen on `listen` (port 0 picks a free one) and relay each connection to `backend`
    /// (`host:port`, resolved per connection).
    pub async fn start(
        listen: SocketAddr,
        backend: impl Into<String>,
        link: LinkConfig,
    ) -> Result<LanRelay, RelayError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RelayError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: listen,
            source,
        })?;
        let backend = backend.into();
        let link = Arc::new(RwLock::new(link));
        let relayed = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            backend.clone(),
            link.clone(),
            relayed.clone(),
        ));
        Ok(LanRelay {
            local_addr,
            backend,
            link,
            relayed,
            accept_task,
        })
    }

    /// A relay on a free loopback port in front of the server at `backend_url`
    /// (`http://host:port[/...]`); returns the relay and the URL to use instead.
    pub async fn in_front_of(
        backend_url: &str,
        link: LinkConfig,
    ) -> Result<(LanRelay, String), RelayError> {
        let host_port = backend_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let relay = LanRelay::start(SocketAddr::from(([127, 0, 0, 1], 0)), host_port, link).await?;
        let url = format!("http://{}", relay.local_addr());
        Ok((relay, url))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub fn link(&self) -> LinkConfig {
        current(&self.link)
    }

    /// Bytes that have entered the emulated link so far (both directions, every connection): a
    /// test sees whether a request made the two hosts talk at all.
    pub fn bytes_relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Change the link for every byte sent from now on, on open connections too (bytes already
    /// in flight keep their delivery time).
    pub fn set_link(&self, link: LinkConfig) {
        *self
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = link;
    }
}

impl Drop for LanRelay {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it ends them all.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    backend: String,
    link: SharedLink,
    relayed: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let backend = backend.clone();
                    let link = link.clone();
                    let relayed = relayed.clone();
                    connections.spawn(async move {
                        if let Err(e) = relay_connection(client, &backend, &link, &relayed).await {
                            debug!(%peer, %backend, error = %e, "relayed connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %e, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Relay one connection until both directions have closed.
async fn relay_connection(
    client: TcpStream,
    backend: &str,
    link: &SharedLink,
    relayed: &Arc<AtomicU64>,
) -> std::io::Result<(u64, u64)> {
    let server = TcpStream::connect(backend).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up, down) = tokio::join!(
        pump(client_read, server_write, link.clone(), relayed.clone()),
        pump(server_read, client_write, link.clone(), relayed.clone())
    );
    Ok((up?, down?))
}

/// A piece of the byte stream in flight, and when its last byte reaches the far end; `None` is
/// the sender's half-close (FIN), which travels like a byte and cannot overtake the data.
struct InFlight {
    deliver_at: Instant,
    bytes: Option<Bytes>,
}

/// Chunks buffered in one direction before the reader stops reading (the router's queue):
/// beyond it, TCP flow control pushes back on the sender, as a real saturated link would.
const QUEUE_CHUNKS: usize = 64;

/// Move bytes from `from` to `to` through one emulated link; returns the bytes moved.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: SharedLink,
    relayed: Arc<AtomicU64>,
) -> std::io::Result<u64> {
    let (tx, mut rx) = mpsc::channel::<InFlight>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; current(&shared).chunk_size()];
        let mut link_free_at = Instant::now();
        let mut total = 0u64;
        loop {
            // A read error (reset) drops `tx` without a FIN: the writer then closes at once.
            let n = from.read(&mut buf).await?;
            let link = current(&shared);
            let start = link_free_at.max(Instant::now());
            let bytes = if n == 0 {
                None
            } else {
                total += n as u64;
                relayed.fetch_add(n as u64, Ordering::Relaxed);
                link_free_at = start + link.serialization(n);
                Some(Bytes::copy_from_slice(&buf[..n]))
            };
            let fin = bytes.is_none();
            let deliver_at = link_free_at.max(start) + link.one_way_delay;
            if tx.send(InFlight { deliver_at, bytes }).await.is_err() || fin {
                // Done, or the writer is gone (the far end reset): nothing more to deliver.
                return Ok::<u64, std::io::Error>(total);
            }
        }
    };
    let writer = async move {
        while let Some(chunk) = rx.recv().await {
            clock::sleep_until(chunk.deliver_at).await;
            match chunk.bytes {
                Some(bytes) => to.write_all(&bytes).await?,
                None => break,
            }
        }
        to.shutdown().await
    };
    let (read, write) = tokio::join!(reader, writer);
    write?;
    read
}
