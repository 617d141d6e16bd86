//! Typed errors, one enum per API surface.
//!
//! Each variant's documentation says what happened to the node's state.

use std::fmt;

use thiserror::Error;

/// The input field an [`InvalidInput`] is about, named as in the HTTP API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `namespace`
    Namespace,
    /// `group`
    Group,
    /// `service`
    Service,
    /// `cluster`
    Cluster,
    /// `ip`
    Ip,
    /// `port`
    Port,
    /// `weight`
    Weight,
    /// `healthy`
    Healthy,
    /// `metadata`
    Metadata,
    /// `protect_threshold`
    ProtectThreshold,
    /// `page`
    Page,
    /// `page_size`
    PageSize,
    /// `search`
    Search,
    /// `clusters`
    Clusters,
    /// `beats`
    Beats,
    /// `node`: a cluster node id.
    Node,
    /// `after`: a client's ordering token (the highest version counter it
    /// has seen, see [`crate::Node::observe_client`]).
    After,
}

impl Field {
    /// The field's name in the HTTP API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Field::Namespace => "namespace",
            Field::Group => "group",
            Field::Service => "service",
            Field::Cluster => "cluster",
            Field::Ip => "ip",
            Field::Port => "port",
            Field::Weight => "weight",
            Field::Healthy => "healthy",
            Field::Metadata => "metadata",
            Field::ProtectThreshold => "protect_threshold",
            Field::Page => "page",
            Field::PageSize => "page_size",
            Field::Search => "search",
            Field::Clusters => "clusters",
            Field::Beats => "beats",
            Field::Node => "node",
            Field::After => "after",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One input field failed validation. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    /// The offending field.
    pub field: Field,
    /// What is wrong and what is accepted, for a human.
    pub message: String,
}

impl InvalidInput {
    /// An error about `field`.
    pub fn new(field: Field, message: impl Into<String>) -> InvalidInput {
        InvalidInput { field, message: message.into() }
    }
}

/// Why a client request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A field is invalid. Nothing was changed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The service does not exist. Nothing was changed.
    #[error("service {0} not found")]
    ServiceNotFound(String),
    /// The instance does not exist. Nothing was changed.
    #[error("instance {0} not found")]
    InstanceNotFound(String),
    /// The service already exists (create). Nothing was changed.
    #[error("service {0} already exists")]
    ServiceExists(String),
    /// The service still has instances (delete). Nothing was changed.
    #[error("service {service} still has {instances} instance(s); deregister them first")]
    ServiceNotEmpty {
        /// The service.
        service: String,
        /// How many live instances it holds.
        instances: usize,
    },
    /// A configured limit would be exceeded. Nothing was changed.
    #[error("{what} limit of {limit} reached; raise it in the configuration or remove entries")]
    LimitExceeded {
        /// The limit's name, as in the configuration.
        what: &'static str,
        /// Its configured value.
        limit: usize,
    },
    /// The node has not loaded the registry from its peers yet and refuses
    /// writes, so that its versions never go backwards. Nothing was changed;
    /// retry on another node or later.
    #[error("node is starting and has not loaded the registry yet; retry on another node")]
    NotReady,
    /// The node could not commit the write to its disk (set by the driver,
    /// never by the core). The write is applied in memory and replicated,
    /// and the node keeps retrying the commit; a client that needs it on
    /// disk retries the request (it is idempotent), here or on another node.
    #[error("the write is in memory but could not be committed to disk: {0}")]
    NotDurable(String),
}

/// Why a peer message was refused. The node's state is unchanged unless the
/// variant says otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes do not decode to a message. Nothing was changed.
    #[error("malformed peer message: {0}")]
    Malformed(String),
    /// The message was encoded by an incompatible protocol version. Nothing was changed.
    #[error("peer speaks protocol version {got}, this node speaks {expected}")]
    ProtocolVersion {
        /// The version in the message.
        got: u16,
        /// The version this node speaks.
        expected: u16,
    },
    /// The frame's checksum does not match its bytes: it was corrupted on
    /// the way (or by the sender's memory). Nothing was changed.
    #[error(
        "peer frame checksum mismatch (stated {stated:#010x}, computed {computed:#010x}): the frame was corrupted"
    )]
    Checksum {
        /// The CRC-32 the frame carries.
        stated: u32,
        /// The CRC-32 of the bytes received.
        computed: u32,
    },
    /// The sender is not a member of this cluster. Nothing was changed.
    #[error("message from unknown node {0}")]
    UnknownPeer(String),
    /// The message exceeds a configured limit. Nothing was changed.
    #[error("peer message exceeds the {what} limit of {limit}")]
    TooLarge {
        /// The limit's name, as in the configuration.
        what: &'static str,
        /// Its configured value.
        limit: usize,
    },
    /// Some records in the message were refused (invalid, too far in the
    /// future, or over a limit); the valid ones were merged.
    #[error("{rejected} record(s) of a peer message were refused: {first}")]
    RecordsRejected {
        /// How many were refused.
        rejected: usize,
        /// Why the first was refused.
        first: RecordRejection,
    },
}

/// The configuration is invalid. No node was built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    /// The configuration key, as in the TOML file.
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl ConfigError {
    /// An error about the configuration key `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError { field, message: message.into() }
    }
}

/// Why one record from a peer (or from the node's own store) was refused.
/// Nothing was changed for it; the other records of its message were
/// merged.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecordRejection {
    /// Its version, or the time of its removal, is further ahead of this
    /// node's wall clock than `max_clock_skew`: one of the two clocks is
    /// wrong.
    #[error(
        "version {version:?} is further ahead of this node's clock than max_clock_skew; check both nodes' clocks"
    )]
    AheadOfClock {
        /// The record's version.
        version: crate::record::Version,
    },
    /// A value in it is invalid (weight, protect threshold, metadata).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Storing it would pass a configured limit of this node.
    #[error("{what} limit of {limit} reached; raise it in the configuration or remove entries")]
    LimitExceeded {
        /// The limit's name, as in the configuration.
        what: &'static str,
        /// Its configured value.
        limit: usize,
    },
}

/// The Storage is full: a new entry would pass `what` (an internal error
/// that becomes [`RequestError::LimitExceeded`] for a client and
/// [`RecordRejection::LimitExceeded`] for a peer's record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Full {
    pub(crate) what: &'static str,
    pub(crate) limit: usize,
}

impl From<Full> for RequestError {
    fn from(f: Full) -> RequestError {
        RequestError::LimitExceeded { what: f.what, limit: f.limit }
    }
}

impl From<Full> for RecordRejection {
    fn from(f: Full) -> RecordRejection {
        RecordRejection::LimitExceeded { what: f.what, limit: f.limit }
    }
}
