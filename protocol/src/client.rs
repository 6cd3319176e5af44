//! The client side: the coordinator's CLI connecting to agents, and an agent pushing a model file
//! to another agent. Connecting includes the TLS handshake (pinned both ways) and the Hello.

use crate::frame::{read_frame, write_frame};
use crate::identity::NodeIdentity;
use crate::messages::*;
use crate::tls::{client_config, SERVER_NAME};
use crate::trust::{PinnedServerVerifier, ServerExpectation};
use crate::{Fingerprint, ProtocolError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a connection attempt (resolve + handshake + Hello) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One QUIC endpoint that can open connections to many peers.
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    identity: NodeIdentity,
    hello: Hello,
}

impl ClientEndpoint {
    pub fn new(identity: NodeIdentity, hello: Hello) -> Result<Self, ProtocolError> {
        let bind: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ProtocolError::io("udp socket", e))?;
        Ok(ClientEndpoint {
            endpoint,
            identity,
            hello,
        })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Connects to `address` (`host:port`, port defaults to [`crate::DEFAULT_AGENT_PORT`]) and
    /// exchanges Hello. Refuses a server that does not meet `expectation`.
    #[tracing::instrument(skip(self), fields(peer = %address))]
    pub async fn connect(
        &self,
        address: &str,
        expectation: ServerExpectation,
    ) -> Result<Client, ProtocolError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(address, expectation))
            .await
            .map_err(|_| ProtocolError::Connect {
                address: address.to_string(),
                reason: format!(
                    "no answer within {}s (host down, wrong address or firewall)",
                    CONNECT_TIMEOUT.as_secs()
                ),
            })?
    }

    async fn connect_inner(
        &self,
        address: &str,
        expectation: ServerExpectation,
    ) -> Result<Client, ProtocolError> {
        let socket_addr = resolve(address).await?;
        let verifier = PinnedServerVerifier::new(expectation);
        let config = client_config(&self.identity, verifier.clone())?;
        let connecting = self
            .endpoint
            .connect_with(config, socket_addr, SERVER_NAME)
            .map_err(|e| ProtocolError::Connect {
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        let mismatch = |seen: Option<Fingerprint>| match (expectation, seen) {
            (ServerExpectation::Pinned(pinned), Some(got)) if pinned != got => {
                Some(ProtocolError::FingerprintChanged { pinned, got })
            }
            _ => None,
        };
        let connection = match connecting.await {
            Ok(connection) => connection,
            Err(e) => {
                return Err(mismatch(verifier.seen())
                    .unwrap_or_else(|| describe_connection_error(address, e)))
            }
        };
        let peer_fingerprint = verifier.seen().ok_or_else(|| ProtocolError::Connect {
            address: address.to_string(),
            reason: "handshake finished without a server certificate".into(),
        })?;
        let client = Client {
            connection,
            address: address.to_string(),
            peer_fingerprint,
            peer_hello: None,
        };
        client.hello(&self.hello).await
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, ProtocolError> {
    let with_port = if address.parse::<SocketAddr>().is_ok()
        || address
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        address.to_string()
    } else {
        format!("{address}:{}", crate::DEFAULT_AGENT_PORT)
    };
    let mut addrs =
        tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| ProtocolError::Connect {
                address: address.to_string(),
                reason: format!("cannot resolve: {e}"),
            })?;
    addrs
        .find(|a| a.is_ipv4())
        .ok_or_else(|| ProtocolError::Connect {
            address: address.to_string(),
            reason: "no IPv4 address".into(),
        })
}

/// Turns quinn's connection errors into messages that say whose fault it was.
pub fn describe_connection_error(address: &str, error: quinn::ConnectionError) -> ProtocolError {
    match &error {
        quinn::ConnectionError::ConnectionClosed(close) if is_crypto_error(close) => ProtocolError::EnrollmentRefused(format!(
            "{address} refused our certificate during the TLS handshake ({close}): this node is not pinned there; enroll the agent with a join token (`tightwad token`), or its trust list was reset"
        )),
        quinn::ConnectionError::TransportError(t) if is_crypto_code(u64::from(t.code)) => ProtocolError::EnrollmentRefused(format!(
            "TLS handshake with {address} failed: {t}"
        )),
        quinn::ConnectionError::ApplicationClosed(close) => ProtocolError::EnrollmentRefused(format!(
            "{address} closed the connection: {}",
            String::from_utf8_lossy(&close.reason)
        )),
        quinn::ConnectionError::TimedOut => ProtocolError::PeerSilent {
            address: address.to_string(),
            idle_secs: crate::tls::IDLE_TIMEOUT.as_secs(),
        },
        _ => ProtocolError::Connection(error),
    }
}

fn is_crypto_error(close: &quinn::ConnectionClose) -> bool {
    is_crypto_code(u64::from(close.error_code))
}

fn is_crypto_code(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

/// Application close codes.
pub mod close_code {
    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// The peer's Hello was incompatible.
    pub const INCOMPATIBLE: u32 = 1;
    /// Enrollment refused (bad join proof, unknown agent).
    pub const ENROLLMENT_REFUSED: u32 = 2;
    /// The peer broke the protocol (Hello missing, ...).
    pub const PROTOCOL_VIOLATION: u32 = 3;
}

/// A connection to one peer, after Hello.
pub struct Client {
    connection: quinn::Connection,
    address: String,
    peer_fingerprint: Fingerprint,
    peer_hello: Option<HelloReply>,
}

impl Client {
    async fn hello(mut self, ours: &Hello) -> Result<Self, ProtocolError> {
        let reply = self.call(&Request::Hello(ours.clone())).await;
        let reply = match reply {
            Ok(Reply::Hello(reply)) => reply,
            Ok(other) => {
                return Err(ProtocolError::UnexpectedReply {
                    expected: "hello",
                    got: other.kind().into(),
                })
            }
            Err(ProtocolError::Remote(message)) => {
                self.connection
                    .close(close_code::INCOMPATIBLE.into(), b"hello refused");
                return Err(ProtocolError::Remote(message));
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = ours.negotiate(&reply.hello) {
            tracing::warn!(peer = %self.address, error = %e, "peer speaks an incompatible protocol");
            self.connection
                .close(close_code::INCOMPATIBLE.into(), e.to_string().as_bytes());
            return Err(e);
        }
        self.peer_hello = Some(reply);
        Ok(self)
    }

    pub fn peer_fingerprint(&self) -> Fingerprint {
        self.peer_fingerprint
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The peer's Hello (always present once connected).
    pub fn peer_hello(&self) -> Option<&HelloReply> {
        self.peer_hello.as_ref()
    }

    /// Closes the connection, telling the peer why.
    pub fn close(&self, code: u32, reason: &str) {
        self.connection.close(code.into(), reason.as_bytes());
    }

    /// Waits until the peer has acknowledged the close (so the reason reaches it).
    pub async fn closed(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connection.closed()).await;
    }

    /// Opens a stream for `request` without finishing our side (streams, uploads).
    pub async fn open(&self, request: &Request) -> Result<FramedStream, ProtocolError> {
        let mut stream = self.open_stream().await?;
        stream.send(request).await.map_err(|e| self.explain(e))?;
        Ok(stream)
    }

    /// A stream error on a connection the peer closed says only "connection lost"; the close
    /// reason (certificate refused, enrollment refused, ...) is what the user needs.
    pub fn explain(&self, error: ProtocolError) -> ProtocolError {
        match error {
            ProtocolError::Read(_)
            | ProtocolError::Write(_)
            | ProtocolError::Closed(_)
            | ProtocolError::UnexpectedEnd => match self.connection.close_reason() {
                Some(reason) => describe_connection_error(&self.address, reason),
                None => error,
            },
            other => other,
        }
    }

    /// Opens a bare stream (diagnostics and tests send raw bytes on it).
    pub async fn open_stream(&self) -> Result<FramedStream, ProtocolError> {
        let (send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| describe_connection_error(&self.address, e))?;
        Ok(FramedStream { send, recv })
    }

    /// One request, one reply. A `Reply::Error` becomes `ProtocolError::Remote`.
    pub async fn call(&self, request: &Request) -> Result<Reply, ProtocolError> {
        let mut stream = self.open(request).await?;
        stream.finish().map_err(|e| self.explain(e))?;
        match stream.recv::<Reply>().await {
            Ok(Some(Reply::Error(e))) => Err(ProtocolError::Remote(e.to_string())),
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(self.explain(ProtocolError::UnexpectedEnd)),
            Err(e) => Err(self.explain(e)),
        }
    }

    pub async fn confirm_enrollment(&self) -> Result<(), ProtocolError> {
        expect_ok(self.call(&Request::ConfirmEnrollment).await?)
    }

    pub async fn status(&self) -> Result<AgentStatus, ProtocolError> {
        match self.call(&Request::Status).await? {
            Reply::Status(status) => Ok(*status),
            other => Err(unexpected("status", &other)),
        }
    }

    pub async fn inventory(&self) -> Result<Inventory, ProtocolError> {
        match self.call(&Request::Inventory).await? {
            Reply::Inventory(inventory) => Ok(*inventory),
            other => Err(unexpected("inventory", &other)),
        }
    }

    pub async fn start_process(
        &self,
        name: &str,
        args: Option<Vec<String>>,
    ) -> Result<ProcessStatus, ProtocolError> {
        let request = Request::StartProcess {
            name: name.to_string(),
            args,
        };
        expect_process(self.call(&request).await?)
    }

    pub async fn stop_process(&self, name: &str) -> Result<ProcessStatus, ProtocolError> {
        expect_process(
            self.call(&Request::StopProcess {
                name: name.to_string(),
            })
            .await?,
        )
    }

    pub async fn restart_process(&self, name: &str) -> Result<ProcessStatus, ProtocolError> {
        expect_process(
            self.call(&Request::RestartProcess {
                name: name.to_string(),
            })
            .await?,
        )
    }

    /// The last `tail` log lines of a process, then new lines while `follow` (read with
    /// [`FramedStream::recv`] until `None`).
    pub async fn logs(
        &self,
        name: &str,
        tail: u32,
        follow: bool,
    ) -> Result<FramedStream, ProtocolError> {
        let mut stream = self
            .open(&Request::Logs {
                name: name.to_string(),
                tail,
                follow,
            })
            .await?;
        stream.finish()?;
        Ok(stream)
    }

    pub async fn list_models(&self) -> Result<Vec<ModelFile>, ProtocolError> {
        match self.call(&Request::ListModels).await? {
            Reply::Models(models) => Ok(models),
            other => Err(unexpected("models", &other)),
        }
    }

    /// A dry run of starting `name` (with `args` instead of its configured ones, if given).
    pub async fn check_process(
        &self,
        name: &str,
        args: Option<Vec<String>>,
    ) -> Result<ProcessCheck, ProtocolError> {
        let request = Request::CheckProcess {
            name: name.to_string(),
            args,
        };
        match self.call(&request).await? {
            Reply::ProcessCheck(check) => Ok(*check),
            other => Err(unexpected("process_check", &other)),
        }
    }

    /// The devices the agent's llama-server sees with `rpc_servers` attached.
    pub async fn list_devices(
        &self,
        rpc_servers: Vec<String>,
    ) -> Result<Vec<Device>, ProtocolError> {
        match self.call(&Request::ListDevices { rpc_servers }).await? {
            Reply::Devices(devices) => Ok(devices),
            other => Err(unexpected("devices", &other)),
        }
    }

    pub async fn process_memory(&self, name: &str) -> Result<ProcessMemory, ProtocolError> {
        match self
            .call(&Request::ProcessMemory {
                name: name.to_string(),
            })
            .await?
        {
            Reply::ProcessMemory(memory) => Ok(*memory),
            other => Err(unexpected("process_memory", &other)),
        }
    }

    pub async fn find_model(&self, file_name: &str) -> Result<Vec<ModelFile>, ProtocolError> {
        match self
            .call(&Request::FindModel {
                file_name: file_name.to_string(),
            })
            .await?
        {
            Reply::Models(models) => Ok(models),
            other => Err(unexpected("models", &other)),
        }
    }

    pub async fn introduce_peer(
        &self,
        name: &str,
        fingerprint: Fingerprint,
    ) -> Result<(), ProtocolError> {
        expect_ok(
            self.call(&Request::IntroducePeer {
                name: name.to_string(),
                fingerprint,
            })
            .await?,
        )
    }

    /// Asks this agent to push `file_name` to `to`; read `Progress` frames and a final
    /// `TransferDone` (or `Error`) from the returned stream.
    pub async fn send_model(
        &self,
        file_name: &str,
        to: PeerAddress,
        max_bytes_per_second: Option<u64>,
    ) -> Result<FramedStream, ProtocolError> {
        let mut stream = self
            .open(&Request::SendModel {
                file_name: file_name.to_string(),
                to,
                max_bytes_per_second,
            })
            .await?;
        stream.finish()?;
        Ok(stream)
    }
}

fn expect_ok(reply: Reply) -> Result<(), ProtocolError> {
    match reply {
        Reply::Ok => Ok(()),
        other => Err(unexpected("ok", &other)),
    }
}

fn expect_process(reply: Reply) -> Result<ProcessStatus, ProtocolError> {
    match reply {
        Reply::Process(status) => Ok(status),
        other => Err(unexpected("process", &other)),
    }
}

fn unexpected(expected: &'static str, got: &Reply) -> ProtocolError {
    ProtocolError::UnexpectedReply {
        expected,
        got: got.kind().into(),
    }
}

/// One bidirectional stream carrying frames both ways (used by both sides).
pub struct FramedStream {
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
}

impl FramedStream {
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ProtocolError> {
        write_frame(&mut self.send, message).await
    }

    /// Writes bytes as they are, framing or not (diagnostics and protocol tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame, `None` when the peer finished its side.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        read_frame(&mut self.recv).await
    }

    /// Reads the next reply, turning `Reply::Error` into `ProtocolError::Remote`.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        match self.recv::<Reply>().await? {
            Some(Reply::Error(e)) => Err(ProtocolError::Remote(e.to_string())),
            other => Ok(other),
        }
    }

    /// Ends our side of the stream (the peer reads `None` after the last frame).
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        match self.send.finish() {
            Ok(()) => Ok(()),
            Err(e) => Err(ProtocolError::Closed(e)),
        }
    }

    /// Waits until the peer has received everything we sent (before dropping the stream).
    pub async fn stopped(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send.stopped()).await;
    }

    /// Abandons the stream in both directions (after a protocol error).
    pub fn reset(&mut self, code: u32) {
        let _ = self.send.reset(code.into());
        let _ = self.recv.stop(code.into());
    }
}
