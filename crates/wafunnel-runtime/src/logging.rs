//! Logs: `tracing` events on standard error, filtered by `RUST_LOG`
//! (default `info`). Plain text, with colours only when standard error is a
//! terminal (a log file gets no escape codes), or one JSON object per line
//! when asked (`--log-format json`), for log shippers.
//!
//! Every line, whatever its level and whoever wrote it (a library's
//! included), goes through [`crate::scrub`] on its way out: a secret that
//! an upstream error, a URL or a debug line carries is never written.

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Writes each log line to `W`, scrubbed.
#[derive(Debug, Clone, Copy)]
pub struct Scrubbing<M>(pub M);

/// One line being formatted: written, scrubbed, when it is dropped.
#[derive(Debug)]
pub struct Line<W: Write> {
    text: Vec<u8>,
    out: W,
}

impl<W: Write> Write for Line<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Line<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        // A log line that cannot be written has nowhere else to go.
        let _ = self.out.write_all(crate::scrub::scrub(&text).as_bytes());
        let _ = self.out.flush();
    }
}

impl<'a, M> MakeWriter<'a> for Scrubbing<M>
where
    M: MakeWriter<'a>,
{
    type Writer = Line<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            text: Vec::with_capacity(256),
            out: self.0.make_writer(),
        }
    }
}

/// Installs the process's subscriber. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(Scrubbing(std::io::stderr))
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_level_and_field_is_scrubbed() {
        crate::scrub::register(["logged-secret-4f2a9c"]);
        let captured = Captured::default();
        let out = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Scrubbing(move || out.clone()))
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(url = "http://u:logged-secret-4f2a9c@h/", "connecting");
            tracing::debug!("token logged-secret-4f2a9c");
            tracing::error!(
                error = "Malformed access token logged-secret-4f2a9c",
                "refused"
            );
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains("logged-secret"), "{text}");
        assert_eq!(text.matches("<redacted>").count(), 3, "{text}");
    }
}
