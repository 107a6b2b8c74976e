//! Connections to the quota store: one multiplexed connection to a standalone Redis, or the
//! Cluster client's connection when several nodes are given.
//!
//! Owns: turning [`StoreSettings`] into a client (URL checks, the password, timeouts) and
//! connecting it. Must be connected from the store's own runtime: redis-rs spawns a
//! connection's driver task on the runtime current at connect time, and that driver must
//! not depend on one of Pingora's runtimes being polled.
//!
//! Never logs or returns a URL: it may hold the password.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisResult};

use super::StoreSettings;

/// A live connection, cheap to clone (both kinds are handles onto one driver task).
#[derive(Clone)]
pub enum Conn {
    /// A standalone Redis.
    Single(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Sends `cmd` and parses the answer. Deadlines are the caller's.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A configured client that can (re)connect (boxed: made once, and the two differ in size).
pub enum Target {
    /// One URL.
    Single(Box<Client>),
    /// Several Cluster nodes.
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Why one URL is unusable, without echoing it (it may carry a password).
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("redis") | Some("rediss")) {
        return Err("must start with redis:// or rediss://".into());
    }
    // redis-rs parses `#insecure` but, built without `tls-rustls-insecure`, refuses it at
    // every connect: the pod would sit in fallback with only a debug line saying why.
    if url.contains('#') {
        return Err("#insecure is not supported: trust the server's CA (SSL_CERT_FILE)".into());
    }
    url.into_connection_info()
        .map(|_| ())
        .map_err(|_| "is not a valid Redis URL (redis://[:password@]host[:port][/db])".into())
}

impl Target {
    /// The client for `settings`; `Err` names what is wrong (never the URL itself).
    pub fn new(settings: &StoreSettings, connect_timeout: Duration) -> Result<Target, String> {
        for (i, url) in settings.urls.iter().enumerate() {
            check_url(url).map_err(|e| format!("quota store URL #{}: {e}", i + 1))?;
        }
        match settings.urls.as_slice() {
            [] => Err("quota store: no URL".into()),
            [url] => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| e.to_string())?;
                if let Some(pw) = &settings.password {
                    let redis = info.redis_settings().clone().set_password(pw);
                    info = info.set_redis_settings(redis);
                }
                Client::open(info)
                    .map(|c| Target::Single(Box::new(c)))
                    .map_err(|e| format!("quota store: {}", e.kind_str()))
            }
            urls => {
                let mut b = ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(connect_timeout);
                if let Some(pw) = &settings.password {
                    b = b.password(pw);
                }
                b.build()
                    .map(|c| Target::Cluster(Box::new(c)))
                    .map_err(|e| format!("quota store: {}", e.kind_str()))
            }
        }
    }

    /// Connects within `connect_timeout`. Must run on the store's runtime (see the module
    /// notes).
    pub async fn connect(&self, connect_timeout: Duration) -> RedisResult<Conn> {
        let attempt = async {
            match self {
                Target::Single(c) => {
                    // Deadlines are enforced around each call by the store (its own timer),
                    // so the connection itself waits as long as it is asked to.
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect_timeout))
                        .set_response_timeout(None);
                    c.get_multiplexed_async_connection_with_config(&cfg)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
            }
        };
        match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }
}

/// A short, secret-free description of an error, for logs.
trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    fn kind_str(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("rediss://:pw@redis.infra:6380/0").is_ok());
        let e = check_url("http://user:hunter2@host").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(check_url("redis://:hunter2@host:notaport")
            .unwrap_err()
            .contains("not a valid"));
        let e = check_url("rediss://:hunter2@host:6380/#insecure").unwrap_err();
        assert!(e.contains("SSL_CERT_FILE") && !e.contains("hunter2"), "{e}");
    }
}
