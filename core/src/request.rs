//! Client operations: what a transport hands the core and what it gets back.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Field, InvalidInput};
use crate::model::{InstanceKey, ServiceKey};
use crate::view::{NamespaceSummary, QueryAnswer, Selector, ServiceFilter, ServicePage, ServiceSummary};

/// Register an instance, or update it if it exists.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterRequest {
    /// Which instance.
    pub key: InstanceKey,
    /// Weight, 0 to 10000; default 1.
    pub weight: Option<f64>,
    /// Takes traffic; default true.
    pub enabled: Option<bool>,
    /// Initial health; default true. An ephemeral instance takes its health
    /// from heartbeats, so `Some(false)` for one is refused (as an update of
    /// its health is) unless `health_reported`.
    pub healthy: Option<bool>,
    /// Lives by heartbeats; default true.
    pub ephemeral: Option<bool>,
    /// Metadata; per-instance heartbeat timings may be set here (see
    /// [`crate::lease`]).
    pub metadata: BTreeMap<String, String>,
    /// The client states the instance's health itself besides its beats (a
    /// Consul TTL check's status, Nacos's `healthy` parameter), so `healthy`
    /// is taken as given for an ephemeral instance too; default false.
    pub health_reported: bool,
}

impl RegisterRequest {
    /// A registration of `key` with every default.
    pub fn new(key: InstanceKey) -> RegisterRequest {
        RegisterRequest {
            key,
            weight: None,
            enabled: None,
            healthy: None,
            ephemeral: None,
            metadata: BTreeMap::new(),
            health_reported: false,
        }
    }

    /// Refuses what no registration may ask, whatever the instance's state:
    /// `healthy: false` for an ephemeral instance whose health only its
    /// heartbeats tell. Changes nothing.
    pub(crate) fn check_health(&self) -> Result<(), InvalidInput> {
        let ephemeral = self.ephemeral.unwrap_or(true);
        if ephemeral && self.healthy == Some(false) && !self.health_reported {
            return Err(InvalidInput::new(Field::Healthy, EPHEMERAL_HEALTH));
        }
        Ok(())
    }
}

/// Why the health of an ephemeral instance cannot be set by a request.
pub(crate) const EPHEMERAL_HEALTH: &str =
    "ephemeral instances take their health from heartbeats; only persistent ones accept it";

/// Change some fields of an instance.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct UpdateRequest {
    /// New weight.
    pub weight: Option<f64>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New health, for persistent instances only.
    pub healthy: Option<bool>,
    /// New metadata, replacing the old.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Create or update a service's settings.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServiceUpdate {
    /// New protect threshold, 0 to 1.
    pub protect_threshold: Option<f64>,
    /// New metadata, replacing the old.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Every client operation, for drivers that pass requests as values.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Request {
    /// See [`crate::Node::register`].
    Register(RegisterRequest),
    /// See [`crate::Node::deregister`].
    Deregister(InstanceKey),
    /// See [`crate::Node::update_instance`].
    Update(InstanceKey, UpdateRequest),
    /// See [`crate::Node::heartbeat`].
    Heartbeat(InstanceKey),
    /// See [`crate::Node::heartbeat_batch`].
    HeartbeatBatch(Vec<InstanceKey>),
    /// See [`crate::Node::query`].
    Query(ServiceKey, Selector),
    /// See [`crate::Node::list_services`].
    ListServices(ServiceFilter),
    /// See [`crate::Node::service`].
    GetService(ServiceKey),
    /// See [`crate::Node::create_service`].
    CreateService(ServiceKey, ServiceUpdate),
    /// See [`crate::Node::update_service`].
    UpdateService(ServiceKey, ServiceUpdate),
    /// See [`crate::Node::put_service`].
    PutService(ServiceKey, ServiceUpdate),
    /// See [`crate::Node::delete_service`].
    DeleteService(ServiceKey),
    /// See [`crate::Node::namespaces`].
    Namespaces,
    /// A client write carrying the client's ordering token: the node's clock
    /// observes `after` (see [`crate::Node::observe_client`]) before running
    /// `request`; answered by [`Reply::Ordered`].
    Ordered {
        /// The highest version counter the client has seen, 0 for none.
        after: u64,
        /// The write.
        request: Box<Request>,
    },
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The instance registered.
    pub key: InstanceKey,
    /// How often the client should heartbeat.
    pub heartbeat_interval: Duration,
    /// Whether the instance is new (false: an existing one was updated).
    pub created: bool,
}

impl Registered {
    /// The id shown to clients: `ip#port#cluster`.
    pub fn instance_id(&self) -> String {
        self.key.instance_id()
    }
}

/// The answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeatReply {
    /// The instance is known; beat again after `heartbeat_interval`.
    Ok {
        /// How often the client should heartbeat.
        heartbeat_interval: Duration,
    },
    /// The instance is not registered here (expired, or the node restarted):
    /// the client should register again at once.
    Unknown,
}

/// The answer to a [`Request`], variant by variant.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Reply {
    /// To [`Request::Register`].
    Registered(Registered),
    /// To [`Request::Deregister`], [`Request::Update`] and [`Request::DeleteService`].
    Done,
    /// To [`Request::Heartbeat`].
    Beat(BeatReply),
    /// To [`Request::HeartbeatBatch`], in the order of the keys.
    Beats(Vec<BeatReply>),
    /// To [`Request::Query`].
    Answer(QueryAnswer),
    /// To [`Request::ListServices`].
    Services(ServicePage),
    /// To [`Request::GetService`], [`Request::CreateService`], [`Request::UpdateService`] and
    /// [`Request::PutService`].
    Service(ServiceSummary),
    /// To [`Request::Namespaces`].
    Namespaces(Vec<NamespaceSummary>),
    /// To [`Request::Ordered`]: the inner request's reply, and the token the
    /// client keeps for its next write (this node's clock after the write, at
    /// least the write's version counter).
    Ordered {
        /// The client's new token.
        counter: u64,
        /// The reply to the inner request.
        reply: Box<Reply>,
    },
}
