//! Many SSE subscribers in the benchmark's process, cheap enough to run 10,000 next to the
//! gateway: each reads raw chunks, splits events at blank lines, counts them and records the
//! latency from each event's `commit_time` to its arrival. No JSON parsing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::latency::{now_micros, rfc3339_micros};

/// What every subscriber reports into.
#[derive(Default)]
pub struct Tally {
    /// Events received by all subscribers.
    pub delivered: AtomicU64,
    /// Subscribers whose stream ended.
    pub closed: AtomicU64,
    /// Which latency list arrivals go to (0: none).
    pub phase: AtomicU8,
    /// Latencies (µs) of deliveries during phase 1 and phase 2.
    pub latencies: [Mutex<Vec<u32>>; 2],
}

impl Tally {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Connects one subscriber (`GET path`), checks the status, and reads in the background.
pub async fn subscribe(addr: SocketAddr, path: &str, tally: Arc<Tally>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut stream = TcpStream::connect(addr).await.context("connect to the gateway")?;
    stream.set_nodelay(true).ok();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 << 10);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the gateway closed the connection before answering");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        bail!("the gateway answered {}", head.lines().next().unwrap_or(""));
    }
    buf.drain(..head_end);
    Ok(tokio::spawn(read_events(stream, buf, tally)))
}

async fn read_events(mut stream: TcpStream, mut buf: Vec<u8>, tally: Arc<Tally>) {
    let mut local: Vec<u32> = Vec::new();
    let mut local_phase = 0u8;
    loop {
        // Chunked transfer encoding: chunk sizes appear between events; they are not events.
        let mut start = 0;
        while let Some(end) = find(&buf[start..], b"\n\n") {
            let block = &buf[start..start + end];
            if let Some(at) = find(block, b"\"commit_time\":\"") {
                let from = at + 15;
                if let Some(text) = block.get(from..from + 27).and_then(|t| std::str::from_utf8(t).ok()) {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    let phase = tally.phase.load(Ordering::Relaxed);
                    if phase != local_phase {
                        flush(&tally, local_phase, &mut local);
                        local_phase = phase;
                    }
                    if phase > 0 {
                        if let Some(commit) = rfc3339_micros(text) {
                            local.push(u32::try_from((now_micros() - commit).max(0)).unwrap_or(u32::MAX));
                        }
                    }
                }
            }
            start += end + 2;
        }
        buf.drain(..start);
        let mut chunk = [0u8; 16 << 10];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if local.len() >= 256 {
            flush(&tally, local_phase, &mut local);
        }
    }
    flush(&tally, local_phase, &mut local);
    tally.closed.fetch_add(1, Ordering::Relaxed);
}

fn flush(tally: &Tally, phase: u8, local: &mut Vec<u32>) {
    if phase > 0 && !local.is_empty() {
        if let Ok(mut list) = tally.latencies[usize::from(phase - 1)].lock() {
            list.append(local);
        }
    }
    local.clear();
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `q` quantile of latencies in µs, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]) / 1000.0
}
