//! The Muster service registry as a pure state machine.
//!
//! This crate contains no networking code, reads no clock and draws no
//! ambient randomness: time enters as a [`Timestamp`] argument of every
//! input, randomness as a seed in [`Config`], and everything meant for peers
//! or watchers leaves through `poll_*` methods that the driver drains. The
//! same core runs in production under the HTTP transport (tokio, real
//! clock) and in the simulator (virtual clock, in-memory network).
//!
//! [`Node`] owns the four managers of the design, each a module with the
//! same `handle_*/poll_*` shape, and drains them after every input: the
//! Service Manager (`service_manager`: operations, leases, brake, health,
//! merge), the Storage it writes through (`storage`: slabs, indexes,
//! timers, digest, durable output), the Sync Manager (`sync`: deltas,
//! forwarded beats, anti-entropy, snapshot loading) and the Server Node
//! Manager (`server_nodes`: [`membership`], [`responsibility`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod agreement;
#[doc(hidden)]
pub mod bugs;
pub mod config;
pub mod durable;
pub mod error;
pub mod hash;
pub mod health;
pub mod history;
pub mod lease;
pub mod message;
pub mod model;
mod node;
pub mod ordering;
pub mod record;
pub mod request;
mod server_nodes;
mod service_manager;
mod small;
mod storage;
mod sync;
pub mod time;
pub mod view;

pub use agreement::Stale;
pub use server_nodes::{membership, responsibility};

pub use config::{BrakeConfig, Config, Limits, Timings};
pub use error::{ConfigError, Field, InvalidInput, MessageError, RecordRejection, RequestError};
pub use history::{ChangeCause, ChangeKind, InstanceChange};
pub use membership::{MemberView, PeerState, Transition};
pub use message::{ForwardedBeat, PROTOCOL_VERSION, PeerMessage};
pub use model::{Host, InstanceData, InstanceKey, Metadata, Name, NodeId, ServiceKey, ServiceMeta};
pub use node::{Event, Node, NodeStats, PeerDigest, TimerKind, Transmit};
pub use record::{InstanceState, Record, RemoveCause, ServiceState, Version};
pub use request::{BeatReply, RegisterRequest, Registered, Reply, Request, ServiceUpdate, UpdateRequest};
pub use service_manager::RegistryStats;
pub use storage::digest::{BUCKETS, Digest};
pub use time::Timestamp;
pub use view::{
    Checksum, InstanceView, NamespaceSummary, QueryAnswer, Selector, ServiceFilter, ServicePage,
    ServiceSummary, ServiceView,
};
