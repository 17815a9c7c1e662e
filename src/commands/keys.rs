//! Placeholder until the crypto core lands: replaced by the real commands.
use pgveil::config::{Config, Storage};

pub fn keygen() -> anyhow::Result<()> {
    anyhow::bail!("keygen: not yet available")
}
pub fn encrypt(_c: &Config, _col: &str, _s: Option<Storage>, _v: &str) -> anyhow::Result<()> {
    anyhow::bail!("encrypt: not yet available")
}
pub fn decrypt(_c: &Config, _col: &str, _s: Option<Storage>, _v: &str) -> anyhow::Result<()> {
    anyhow::bail!("decrypt: not yet available")
}
