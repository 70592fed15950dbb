//! The progress the transfer commands show on stderr: one bar per file for `cairn put`/`get`,
//! one bar for a whole tree with `-r` (bytes, files done, rate, ETA; no per-file bars, so a
//! tree of a million files costs one bar), a spinner while a tree is counted, and
//! [`Progress`], the handle one file's copy reports to — its own bar or the tree's.
//!
//! Every bar is registered with [`crate::out`] while it is shown, so log lines go above it
//! instead of through it. `-q` (or a stderr that is not a terminal) hides them all.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// A bar of `len` (`None`: a spinner) drawn with `template`, shown only once its prefix and
/// message are set (so its first frame is already complete).
fn bar(len: Option<u64>, quiet: bool, template: &str, prefix: String, msg: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix);
    pb.set_message(msg);
    pb.set_draw_target(target(quiet));
    crate::out::set_progress_bar(&pb);
    pb
}

/// The bar of one file of `len` bytes.
pub fn file_bar(len: u64, quiet: bool, what: String) -> ProgressBar {
    bar(
        Some(len),
        quiet,
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        String::new(),
        what,
    )
}

/// The one bar of a tree copy: `bytes` of regular files in all, `files` of them; the message
/// counts the files done ([`files_done`]).
pub fn tree_bar(bytes: u64, files: u64, quiet: bool, what: String) -> ProgressBar {
    bar(
        Some(bytes),
        quiet,
        "{prefix} {msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        what,
        files_done(0, files),
    )
}

/// The message of a tree's bar.
pub fn files_done(done: u64, files: u64) -> String {
    format!("{done}/{files} files")
}

/// The spinner shown while a tree is walked to count it.
pub fn scan_spinner(quiet: bool, what: String) -> ProgressBar {
    bar(
        None,
        quiet,
        "{spinner} {prefix}: counting {msg}",
        what,
        String::new(),
    )
}

/// A line for the user on stderr, above the progress bar if one is shown.
pub fn note(pb: &ProgressBar, cmd: &str, msg: &str) {
    if pb.is_hidden() {
        eprintln!("cairn {cmd}: {msg}");
    } else {
        pb.println(format!("cairn {cmd}: {msg}"));
    }
}

/// Where one file's copy reports the bytes it has done and its notes.
///
/// A file of its own (`cairn put`/`get`) owns its bar: it finishes or abandons it. A file of a
/// tree shares the tree's bar and leaves it alone; its notes name the file, and are dropped
/// with `-q`. Either way the bytes this file added to the bar are counted, so a tree can take
/// them back off its bar when the file fails.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    cmd: &'static str,
    scope: Scope,
    counted: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Scope {
    Own,
    InTree { path: String, quiet: bool },
}

impl Progress {
    /// A file copied by itself, with its own `bar`.
    pub fn own(bar: ProgressBar, cmd: &'static str) -> Progress {
        Progress {
            bar,
            cmd,
            scope: Scope::Own,
            counted: Arc::default(),
        }
    }

    /// File `path` of a tree whose bar is `bar`.
    pub fn in_tree(bar: ProgressBar, cmd: &'static str, path: String, quiet: bool) -> Progress {
        Progress {
            bar,
            cmd,
            scope: Scope::InTree { path, quiet },
            counted: Arc::default(),
        }
    }

    pub fn inc(&self, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
        self.bar.inc(n);
    }

    /// Bytes this file has added to the bar.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    pub fn note(&self, msg: &str) {
        match &self.scope {
            Scope::Own => note(&self.bar, self.cmd, msg),
            Scope::InTree { quiet: true, .. } => {}
            Scope::InTree { path, .. } => note(&self.bar, self.cmd, &format!("{path}: {msg}")),
        }
    }

    /// The copy failed or was interrupted: a file's own bar stays on screen where it stopped.
    pub fn abandon(&self) {
        if let Scope::Own = self.scope {
            self.bar.abandon();
        }
    }

    /// The copy is complete: a file's own bar goes.
    pub fn finish(&self) {
        if let Scope::Own = self.scope {
            self.bar.finish_and_clear();
        }
    }
}
