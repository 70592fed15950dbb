//! The commands' standard output. A reader that closes it early (`cairn status | head -1`,
//! `| grep -q leader`) ends the command quietly with status 0, as command-line tools do: the
//! reader has what it wanted. Any other write error is loud (status 1).
use serde::Serialize;
use std::io::Write;

/// Writes `text` to stdout and flushes it; on a closed pipe exits with status 0.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("cairn: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes `value` as pretty JSON and a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text);
    Ok(())
}

/// `println!` onto [`print`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::print(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// The progress bar on screen, if any: log lines are printed above it.
static BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Shows log lines above `bar` while it is on screen (until [`clear_progress_bar`]).
pub fn set_progress_bar(bar: &indicatif::ProgressBar) {
    if !bar.is_hidden() {
        *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    }
}

pub fn clear_progress_bar() {
    BAR.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// The log writer: one log event is buffered and written to stderr in one piece when the
/// writer is dropped — with the progress bar, if one is shown, lifted out of the way meanwhile.
#[derive(Default)]
pub struct LogWriter {
    buf: Vec<u8>,
}

impl LogWriter {
    /// For `tracing_subscriber::fmt().with_writer(LogWriter::make)`.
    pub fn make() -> LogWriter {
        LogWriter::default()
    }
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let write = || {
            // A log line that cannot be written has nowhere else to go.
            let _ = std::io::stderr().lock().write_all(&self.buf);
        };
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
