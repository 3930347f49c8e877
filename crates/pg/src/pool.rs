//! A pool of SQL connections for the worker stages (rule queries, SQL actions, run records).

pub use deadpool_postgres::{GenericClient, Object as Pooled, Pool};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};

use crate::connect::{sql_config, sql_tls};
use crate::{ConnectConfig, PgError};

/// A pool of at most `size` connections, opened on first use; `role` names them in
/// `pg_stat_activity`.
pub fn pool(settings: &ConnectConfig, role: &str, size: usize) -> Result<Pool, PgError> {
    let config = sql_config(settings, role);
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match sql_tls(settings)? {
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        Some(tls) => Manager::from_config(config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::new("cannot connect to PostgreSQL", e),
            other => PgError::Pool(other.to_string()),
        }
    }
}
