//! The benchmark suites, one module per core operation.

mod digest;
mod handle_timeout;
mod heartbeat;
mod merge;
mod query;
mod register;

pub(crate) use self::digest::bench_digest;
pub(crate) use self::handle_timeout::bench_handle_timeout;
pub(crate) use self::heartbeat::bench_heartbeat;
pub(crate) use self::merge::bench_merge;
pub(crate) use self::query::bench_query;
pub(crate) use self::register::bench_register;
