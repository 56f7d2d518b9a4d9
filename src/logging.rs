//! How hub and agent write their logs: to stderr, filtered by `RUST_LOG`
//! (default `info`), as text lines or JSON objects (`--log-format`); and,
//! when built with the `otlp` feature and given an endpoint, their spans
//! exported to an OpenTelemetry collector over OTLP/gRPC.

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `--log-format` of hub and agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (cluster, request_id).
    Json,
}

/// Span export flags of hub and agent; empty unless built with `otlp`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ExportArgs {
    /// Export spans over OTLP/gRPC to this collector (e.g.
    /// `http://localhost:4317`). Default: none, nothing is exported.
    #[cfg(feature = "otlp")]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// The span exporter could not be set up (a malformed endpoint).
#[derive(Debug, thiserror::Error)]
#[error("OTLP export to {endpoint:?}: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

/// What [`init`] set up; [`Logging::shutdown`] flushes exported spans.
#[must_use = "call shutdown() before exiting, or spans still queued for export are lost"]
pub struct Logging {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Logging {
    /// Sends the spans still queued to the collector and stops the
    /// exporter; blocks up to the exporter's timeout, so async callers run
    /// it on a blocking thread. Nothing to do without an exporter.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans to the OTLP collector failed");
        }
    }
}

/// Installs the process-wide subscriber; call once, first thing in `main`
/// (inside the tokio runtime: the exporter's gRPC channel runs on it).
/// `service` is the exported `service.name`.
pub fn init(format: LogFormat, export: &ExportArgs, service: &'static str) -> Result<Logging, ExportError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => logs
            .fmt_fields(plain_fields())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => {
            logs.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed()
        }
    };
    let subscriber = tracing_subscriber::registry().with(logs).with(filter);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match export.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())
        {
            Some(endpoint) => {
                let (layer, provider) = otlp::layer(endpoint, service)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        subscriber.with(layer).init();
        Ok(Logging { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (export, service);
        subscriber.init();
        Ok(Logging {})
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
    use tracing_opentelemetry::OpenTelemetryLayer;

    use super::ExportError;

    /// A layer turning spans into OpenTelemetry spans, batched (the SDK's
    /// `OTEL_BSP_*` variables tune the batches) and sent to `endpoint`.
    pub(super) fn layer<S>(
        endpoint: &str,
        service: &'static str,
    ) -> Result<(OpenTelemetryLayer<S, SdkTracer>, SdkTracerProvider), ExportError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint);
        if endpoint.starts_with("https:") {
            // The system's CAs, like any gRPC client; tonic trusts none by default.
            exporter = exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter
            .build()
            .map_err(|e| ExportError { endpoint: endpoint.to_owned(), reason: e.to_string() })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer(service);
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
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
