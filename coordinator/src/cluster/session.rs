//! Connections from the coordinator to its agents, with enrollment on first contact.
//!
//! A host with a pinned fingerprint is connected to with that pin only. A host without one can
//! be enrolled while a join token is pending: the coordinator accepts the agent's certificate
//! provisionally, and pins it only if the agent's Hello carries a valid proof for a pending
//! token (see `tightwad_protocol::token`); otherwise it closes the connection with a reason the
//! agent logs.

use crate::cluster::config::{FleetConfig, HostEntry};
use anyhow::Context;
use tightwad_protocol::client::{close_code, Client, ClientEndpoint};
use tightwad_protocol::identity::NodeIdentity;
use tightwad_protocol::messages::{Hello, NodeRole};
use tightwad_protocol::token::PendingTokens;
use tightwad_protocol::trust::{PeerRole, ServerExpectation, TrustStore};

pub struct Fleet {
    pub config: FleetConfig,
    pub identity: NodeIdentity,
    pub trust: std::sync::Arc<TrustStore>,
    pub pending: PendingTokens,
    endpoint: ClientEndpoint,
}

impl Fleet {
    pub fn open(config: FleetConfig) -> anyhow::Result<Self> {
        let state_dir = config.state_dir();
        let identity = NodeIdentity::load_or_create(&state_dir, "tightwad-coordinator")
            .with_context(|| {
                format!(
                    "loading the coordinator identity in {}",
                    state_dir.display()
                )
            })?;
        let trust = TrustStore::load(&state_dir).context("loading pinned agents")?;
        let pending = PendingTokens::new(&state_dir);
        let endpoint = ClientEndpoint::new(
            identity.clone(),
            Hello::ours(NodeRole::Coordinator, "coordinator", Vec::new()),
        )?;
        Ok(Fleet {
            config,
            identity,
            trust,
            pending,
            endpoint,
        })
    }

    /// Connects to `host`, enrolling it when a join token is pending and it proves one.
    pub async fn connect(&self, host: &HostEntry) -> anyhow::Result<Client> {
        if let Some(pinned) = self.trust.by_name(&host.name, PeerRole::Agent) {
            return self
                .endpoint
                .connect(&host.address, ServerExpectation::Pinned(pinned.fingerprint))
                .await
                .with_context(|| format!("{} ({})", host.name, host.address));
        }
        anyhow::ensure!(
            self.pending.any()?,
            "{} ({}) is not enrolled and no join token is pending: run `tightwad token` and start its agent with `--join <token>`",
            host.name,
            host.address
        );
        let client = self
            .endpoint
            .connect(&host.address, ServerExpectation::Enrollment)
            .await
            .with_context(|| format!("{} ({})", host.name, host.address))?;
        let agent = client.peer_fingerprint();
        let proof = client.peer_hello().and_then(|h| h.join_proof.clone());
        let valid = match &proof {
            Some(proof) => self
                .pending
                .redeem(&agent, &self.identity.fingerprint(), proof)?,
            None => false,
        };
        if !valid {
            let reason = if proof.is_some() {
                "join proof does not match any pending token of this coordinator (wrong or expired token)"
            } else {
                "this agent holds no join token from this coordinator"
            };
            client.close(close_code::ENROLLMENT_REFUSED, reason);
            client.closed().await;
            anyhow::bail!(
                "{} ({}): enrollment refused: {reason}",
                host.name,
                host.address
            );
        }
        self.trust.pin(&host.name, agent, PeerRole::Agent)?;
        client.confirm_enrollment().await?;
        eprintln!(
            "enrolled {} ({}), fingerprint {}",
            host.name, host.address, agent
        );
        Ok(client)
    }
}
