//! A pool of SQL connections for the worker stages (rule queries, SQL actions, run records).

pub use deadpool_postgres::Pool;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use pgevents_replication::{sql_config, sql_tls, ConnectConfig, SqlConnectError};

use crate::RulesError;

/// A pool of at most `size` connections, opened on first use; `role` names them in
/// `pg_stat_activity`.
pub fn connection_pool(settings: &ConnectConfig, role: &str, size: usize) -> Result<Pool, RulesError> {
    let config = sql_config(settings, role);
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match sql_tls(settings).map_err(SqlConnectError::Tls)? {
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        Some(tls) => Manager::from_config(config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| RulesError::Pool(e.to_string()))
}
