//! Idle memory: many MQTT 5 sessions opened (CONNECT/CONNACK, keep-alive 300 s) and left idle;
//! the growth of each process's resident memory divided by the sessions opened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::load::Client;
use crate::procs::{Role, Watched};

/// Connections being opened at once (more would overflow listen backlogs and cost SYN retries).
const OPENING_AT_ONCE: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening stops after this long, keeping what was opened.
const OPEN_LIMIT: Duration = Duration::from_secs(180);
/// Keep-alive asked for: long enough that no PINGREQ is due while the case runs.
const KEEP_ALIVE_SECS: u16 = 300;
/// Pause after the last CONNACK before reading memory, so lazy allocations have happened.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    /// The first failure, when some connection could not be opened.
    pub first_error: Option<String>,
    /// Sessions opened per second (CONNECT → CONNACK, `OPENING_AT_ONCE` at a time).
    pub opened_per_sec: f64,
    pub rss_before_kib: BTreeMap<Role, u64>,
    pub rss_after_kib: BTreeMap<Role, u64>,
    /// (after − before) / opened, by process.
    pub kib_per_connection: BTreeMap<Role, f64>,
}

/// Opens `count` idle sessions, reads memory, and returns with the sessions still open (the
/// caller closes them by dropping them once it no longer needs the server).
pub async fn run(
    addr: SocketAddr,
    watched: &Watched,
    count: usize,
    tag: &str,
) -> anyhow::Result<(Idle, Vec<TcpStream>)> {
    let rss_before_kib = watched.rss_kib();
    let started = Instant::now();
    let deadline = started + OPEN_LIMIT;
    let mut opening = futures::stream::iter(0..count)
        .map(|i| {
            let client_id = format!("{tag}-{i}");
            async move {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Client::connect(addr, &client_id, KEEP_ALIVE_SECS),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no CONNACK within {CONNECT_TIMEOUT:?}"))?
            }
        })
        .buffer_unordered(OPENING_AT_ONCE);

    let mut streams = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    while let Ok(Some(opened)) = tokio::time::timeout_at(deadline.into(), opening.next()).await {
        match opened {
            Ok(client) => streams.push(client.into_stream()),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    drop(opening);
    let opened_per_sec = streams.len() as f64 / started.elapsed().as_secs_f64();

    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = watched.rss_kib();
    let kib_per_connection = rss_after_kib
        .iter()
        .filter_map(|(role, after)| {
            let before = rss_before_kib.get(role)?;
            let grown = after.saturating_sub(*before) as f64;
            Some((*role, grown / streams.len().max(1) as f64))
        })
        .collect();
    let idle = Idle {
        requested: count,
        opened: streams.len(),
        failed,
        first_error,
        opened_per_sec,
        rss_before_kib,
        rss_after_kib,
        kib_per_connection,
    };
    Ok((idle, streams))
}
