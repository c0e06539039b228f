//! One multiplexed connection to Redis, classic or cluster, for the stores
//! that keep state in Redis (histories, presence): made with a timeout,
//! shared by every request of a batch.

use redis::Value;

use crate::relay::link::REDIS_TIMEOUT;

/// How a store reaches Redis.
#[derive(Clone)]
pub(crate) enum Connector {
    Classic(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
pub(crate) enum Conn {
    Classic(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(crate) async fn invoke(&mut self, invocation: redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Classic(conn) => invocation.query_async(conn).await,
            Conn::Cluster(conn) => invocation.query_async(conn).await,
        }
    }
}

impl Connector {
    pub(crate) async fn connect(&self) -> Result<Conn, String> {
        let connect = async {
            match self {
                Connector::Classic(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(REDIS_TIMEOUT))
                        .set_response_timeout(Some(REDIS_TIMEOUT));
                    redis::aio::ConnectionManager::new_with_config((**client).clone(), config)
                        .await
                        .map(Conn::Classic)
                }
                Connector::Cluster(client) => {
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("connecting timed out".into()),
        }
    }
}

/// A Redis answer as text.
pub(crate) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A Redis answer as a number.
pub(crate) fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}
