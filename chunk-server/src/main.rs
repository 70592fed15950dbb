//! `cairn-chunk`: the chunk server binary. See the library crate for the parts.
use anyhow::Context;
use cairn_chunk_server::Config;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::from_args().unwrap_or_else(|e| e.exit());
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let server = cairn_chunk_server::start(config).await?;
    cairn_common::systemd::notify_ready();
    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
        cairn_common::systemd::notify_stopping();
    };
    server.run_until(stop).await
}
