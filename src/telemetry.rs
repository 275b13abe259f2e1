//! The tracing subscriber: human or JSON lines, filtered by `RUST_LOG` or the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        // The MCP SDK logs every session it opens at info, and its transport worker logs every
        // session that fails (a server answering 404 included) at error; the service logs
        // each failure itself, as a warning naming the server.
        .or_else(|_| EnvFilter::try_new(format!("{level},rmcp=warn,rmcp::transport::worker=off")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// An error with its chain of causes on one line, for the log.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
