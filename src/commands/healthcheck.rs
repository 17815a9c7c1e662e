//! `pgveil healthcheck`: for container HEALTHCHECKs in images without curl.
//! GETs `/healthz` (or `/readyz`) from the metrics endpoint; exit 0 on 200.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// Probes `address` (`host:port`).
pub fn healthcheck(address: &str, ready: bool) -> anyhow::Result<()> {
    let path = if ready { "/readyz" } else { "/healthz" };
    let timeout = Duration::from_secs(3);
    let target = address
        .to_socket_addrs()
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or("");
    if status == "200" {
        println!("{path}: {body}");
        Ok(())
    } else {
        bail!("{path} answered {status}: {body}")
    }
}
