//! How hub and agent write their logs: to stderr, filtered by `RUST_LOG`
//! (default `info`), as text lines or JSON objects (`--log-format`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;

/// `--log-format` of hub and agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (cluster, request_id).
    Json,
}

/// Installs the process-wide subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .fmt_fields(plain_fields())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => {
            logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
}

/// Span and event fields as `name=value`, like tracing-subscriber's default
/// but without its per-field styling calls: every request opens a span with
/// several fields, and the default formatter spent ~6k instructions per
/// request on them (docs/benchmarks.md, "Data-plane efficiency").
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        name => write!(w, "{name}={value:?}"),
    })
    .delimited(" ")
}
