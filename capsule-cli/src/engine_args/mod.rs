//! Per-engine flags of `capsule pg|redis|es`: connection settings (which
//! turn `--create`/`--restore` from queued requests into runs now) and
//! restore options. One module per engine.

mod es;
mod pg;
mod redis;

pub use es::EsEngineArgs;
pub use pg::PgEngineArgs;
pub use redis::RedisEngineArgs;
