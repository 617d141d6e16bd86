//! The SDK's one error type.
//!
//! Each variant's documentation says what happened to the client's state,
//! as the rest of Muster does.

use std::fmt;

use muster_core::InvalidInput;

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is invalid: caught by the client before anything was
    /// sent, or refused by the server with 400. Nothing changed anywhere.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The offending field, e.g. `port` or `server`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// No server answered: each one failed with a connection error, a
    /// timeout, or a 5xx / 429 answer (starting, overloaded, shutting down).
    /// The request may or may not have been applied by a server that timed
    /// out; every request of the SDK is safe to repeat.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// The server knows no such instance or service (404). Nothing changed.
    #[error("not found: {message}")]
    NotFound {
        /// The server's explanation.
        message: String,
    },
    /// The server wants a token, or a different one (401). Nothing changed.
    #[error("unauthorized: {message}; give the client the right token (builder `token`, CLI `--token-file`)")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// The server refused the request for another reason (409 conflict or
    /// limit, 413 body too large, ...). Nothing changed.
    #[error("refused by {server} ({status} {code}): {message}")]
    Refused {
        /// The server that refused.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The error code, e.g. `limit_exceeded`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// A server's answer could not be understood (a different program on that
    /// port, or an incompatible version). Nothing in the client changed.
    #[error("unexpected answer from {server}: {message}; is it a Muster node? Check the server address")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// The service has no instance to choose: none is enabled, healthy (or
    /// protected by the threshold) and of positive weight.
    #[error("no serving instance of {service}")]
    NoInstance {
        /// The service, `namespace/group/service`.
        service: String,
    },
    /// `max_watches` watches run already and every one is held by a
    /// subscription: drop one, [`Client::unwatch`](super::Client::unwatch)
    /// one, or raise `ClientBuilder::max_watches`.
    #[error(
        "too many watches: {limit} services are watched and each has a subscription; drop one or raise max_watches"
    )]
    TooManyWatches {
        /// The client's `max_watches`.
        limit: usize,
    },
    /// No server answered, and the snapshot on disk that would have answered
    /// instead is corrupt (reported once in the log, too).
    #[error("{unavailable}; the snapshot {} is corrupt ({message}): delete it", path.display())]
    CorruptSnapshot {
        /// The snapshot file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
        /// Why no server answered.
        unavailable: Unavailable,
    },
    /// The SDK could not start (or lost) its own background runtime, which
    /// runs every request, heartbeat and watch. Nothing was started.
    #[error("the Muster SDK's background runtime is not available: {reason}")]
    NoRuntime {
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether no server could be reached (a reason to retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::CorruptSnapshot { .. })
    }

    /// Whether the server said the instance or service does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidInput { field: field.into(), message: message.into() }
    }
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Error {
        Error::InvalidInput { field: e.field.as_str().to_owned(), message: e.message }
    }
}

/// Every server failed; one [`Attempt`] per server tried, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unavailable {
    /// The servers tried and why each failed.
    pub attempts: Vec<Attempt>,
}

/// One failed try of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The server, `host:port`.
    pub server: String,
    /// Why it failed: a connection error, a timeout, or the server's 5xx answer.
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no Muster server reachable (")?;
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", a.server, a.reason)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use muster_core::Field;

    use super::*;

    #[test]
    fn unavailable_names_every_server_tried() {
        let e = Error::Unavailable(Unavailable {
            attempts: vec![
                Attempt { server: "a:1".into(), reason: "connection refused".into() },
                Attempt { server: "b:2".into(), reason: "timed out after 5s".into() },
            ],
        });
        assert_eq!(
            e.to_string(),
            "no Muster server reachable (a:1: connection refused; b:2: timed out after 5s)"
        );
        assert!(e.is_unavailable());
    }

    #[test]
    fn core_validation_errors_keep_their_field() {
        let e: Error = InvalidInput::new(Field::Port, "must be 1 to 65535, got 0").into();
        assert_eq!(e, Error::invalid("port", "must be 1 to 65535, got 0"));
        assert_eq!(e.to_string(), "invalid port: must be 1 to 65535, got 0");
    }
}
