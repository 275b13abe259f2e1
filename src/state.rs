//! The shared state every handler receives: cheap to clone, built once at start.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::analytics::Analytics;
use crate::chat::hub::Hub;
use crate::chat::llm::LlmProvider;
use crate::config::Settings;
use crate::db::health::HealthProbe;
use crate::db::Store;
use crate::ids::IdCodec;
use crate::jwt::JwtKeys;
use crate::limits::Counters;
use crate::mcp::McpTools;
use crate::user_cache::UserCache;

/// Everything handlers share, behind one `Arc`: a request clones the state several times,
/// and one reference count is cheaper than one per part.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Wraps the services.
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The parts of the state.
pub struct Services {
    /// Settings read at start.
    pub settings: Arc<Settings>,
    /// The data layer.
    pub store: Arc<dyn Store>,
    /// JWT verification and minting.
    pub jwt: Arc<JwtKeys>,
    /// Public ID encoders.
    pub ids: Arc<IdCodec>,
    /// The LLM that writes replies.
    pub llm: Arc<dyn LlmProvider>,
    /// Live chat: connections, reply events, generations, resumable replies.
    pub hub: Hub,
    /// Message rate limits and token budgets: local, or in the hub's Redis.
    pub limits: Arc<dyn Counters>,
    /// The MCP client that lists and calls users' tools.
    pub mcp: McpTools,
    /// Analytics events, delivered in the background.
    pub analytics: Analytics,
    /// Recently seen users, so authentication costs no query.
    pub users: Arc<UserCache>,
    /// Shares one database ping among concurrent health checks.
    pub health: Arc<HealthProbe>,
    /// Cancelled when the service starts shutting down.
    pub shutdown: CancellationToken,
}
