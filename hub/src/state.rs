//! State shared by the hub's services.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use ferry::identity::IdentityPolicy;

use crate::audit::AuditLog;
use crate::config::Limits;
use crate::metrics::HubMetrics;
use crate::pki::Ca;
use crate::registry::Registry;
use crate::store::Store;

/// Everything the tunnel, gateway and management services share.
pub struct HubState {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Live sessions and parked streams.
    pub registry: Registry,
    /// The hub CA.
    pub ca: Ca,
    /// Base URL agents and kubectl use.
    pub advertise_url: String,
    /// Named limits.
    pub limits: Limits,
    /// The agent image `agent.yaml` runs.
    pub agent_image: String,
    /// How caller identities are mapped for child clusters.
    pub identity_policy: IdentityPolicy,
    /// Owner of every task the hub spawns.
    pub tasks: TaskTracker,
    /// Cancelled when the hub shuts down.
    pub shutdown: CancellationToken,
    /// Prometheus metrics.
    pub metrics: Arc<HubMetrics>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Whether the main listener is accepting connections (for `/readyz`).
    pub serving: std::sync::atomic::AtomicBool,
}
