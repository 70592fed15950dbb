//! What `cairn put -r` and `cairn get -r` share: the walk's entries, where the tree lands
//! (`cp -r` rules), which directory each entry goes into, and the run that copies a tree —
//! a bounded set of file copies, one progress bar, and the summary with every failure.
//!
//! **Two walks.** A tree is walked twice: first to count it (files and bytes, so the bar knows
//! its total and the ETA means something), then to copy it. Neither walk holds the tree: each
//! produces entries into a queue of [`WALK_QUEUE`], in pre-order (a directory before its
//! contents), and the copy takes the next entry only when fewer than `--jobs` files are in
//! flight. Memory is bounded by the queue, the jobs and the chunk budget, not by the tree. If
//! the tree changes between the walks, the totals are off by that much; what is copied is what
//! the second walk sees.
//!
//! **Directories and links** are made by the run itself, in walk order, so a directory exists
//! before anything inside it is copied. **Regular files** are spawned as tasks
//! ([`TreeRun::spawn_file`]), at most `--jobs` at once; each is resumable on its own. **Special
//! files** (FIFOs, sockets, devices) are skipped with a warning and counted.
//!
//! **Errors** never end the run early: a failed entry is reported above the bar at once, with
//! its path and reason, counted, and listed again at the end; the exit status is 1. A directory
//! that cannot be made takes its contents with it: they are counted as failed (not listed one
//! by one). Interruption (SIGINT/SIGTERM) stops taking entries, lets the files in flight record
//! what they have stored, and ends with status 130.
use super::progress::{files_done, note, scan_spinner, tree_bar, Progress};
use super::Interrupted;
use crate::status::human;
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// One name of a path, as bytes.
pub type Name = Vec<u8>;

/// Entries a walk may queue ahead of the copy.
pub const WALK_QUEUE: usize = 256;

/// Failures and skipped paths listed in the summary; the counts cover all of them.
pub const MAX_LISTED: usize = 100;

/// What a walk found at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
    },
    /// A symbolic link: recreated as a link, never followed.
    Symlink,
    /// Not copied: what it is (`"FIFO"`, `"socket"`, …), for the warning.
    Special(&'static str),
}

/// One entry of a walk.
#[derive(Debug)]
pub struct Entry<S> {
    /// The names from the tree's root down to the entry; empty for the root itself.
    pub rel: Vec<Name>,
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Where it came from: what the copy needs to read it.
    pub src: S,
}

/// A place a walk could not read (a directory it may not list, say).
#[derive(Debug)]
pub struct WalkError {
    pub path: String,
    pub error: String,
}

pub type Walked<S> = Result<Entry<S>, WalkError>;

/// The kind of a special file (not a regular file, directory or symlink), for its warning.
pub fn special_name(kind: cairn_common::Kind) -> &'static str {
    use cairn_common::Kind;
    match kind {
        Kind::Fifo => "FIFO",
        Kind::Socket => "socket",
        Kind::CharDevice => "character device",
        Kind::BlockDevice => "block device",
        Kind::Regular | Kind::Directory | Kind::Symlink => "file",
    }
}

// ---------------------------------------------------------------------------------------------
// Where the tree lands
// ---------------------------------------------------------------------------------------------

/// What is at the destination named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestKind {
    Missing,
    Dir,
    /// A file, symlink, or anything else that is not a directory.
    Other,
}

/// The destination named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub kind: DestKind,
    /// Written with a trailing `/`: only a directory may match (or, for a directory source, a
    /// directory still to be made).
    pub names_dir: bool,
    /// `-T`: the destination is the tree's root itself, never a directory to copy into (so the
    /// same command lands in the same place on every run).
    pub is_root: bool,
}

/// Where the tree's root lands, relative to the destination `<dest>` named on the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// At `<dest>` itself: made (or, for a file, overwritten; with `-T`, an existing directory
    /// is filled).
    At,
    /// At `<dest>/<name>`: `<dest>` is a directory.
    Inside(Name),
    /// Into `<dest>` itself, which exists: the source is a root with no name (`/`).
    Merge,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("exists and is not a directory: cannot copy a directory over it")]
    DirOverNonDir,
    #[error("is a directory: cannot copy a file over it (-T)")]
    FileOverDir,
    #[error("not a directory")]
    NotADirectory,
}

/// Where the source lands, as `cp -r` decides: into an existing directory under the source's
/// own `name`; otherwise at the destination itself. With `-T` (`dest.is_root`), always at the
/// destination itself, as `cp -rT` does.
pub fn place(src_is_dir: bool, name: Option<Name>, dest: Dest) -> Result<Placement, PlaceError> {
    match dest.kind {
        DestKind::Dir if dest.is_root && src_is_dir => Ok(Placement::At),
        DestKind::Dir if dest.is_root => Err(PlaceError::FileOverDir),
        DestKind::Dir => Ok(name.map_or(Placement::Merge, Placement::Inside)),
        DestKind::Other if src_is_dir => Err(PlaceError::DirOverNonDir),
        DestKind::Missing | DestKind::Other if dest.names_dir && !src_is_dir => {
            Err(PlaceError::NotADirectory)
        }
        DestKind::Missing | DestKind::Other => Ok(Placement::At),
    }
}

/// What to tell the user about running the copy again, when the first run made `<dest>`
/// itself: a rerun of the same command without `-T` would find it and copy into
/// `<dest>/<name>` instead (the `cp -r` rule), so resuming needs `-T`.
pub fn rerun_hint(
    src_is_dir: bool,
    dest: Dest,
    placement: &Placement,
    shown: &str,
) -> Option<String> {
    (src_is_dir && dest.kind == DestKind::Missing && !dest.is_root && *placement == Placement::At)
        .then(|| {
            format!(
                "this run made {shown}; to resume into it (or copy into it again) add -T: \
                 without it, a rerun finds {shown} and copies into a new directory below it"
            )
        })
}

/// The destination directories of the walk's current path: element `d` is where the directory
/// at depth `d` was made, `None` if it could not be (so nothing below it is copied). A
/// pre-order walk visits every directory before its contents, so the parent of an entry at
/// depth `d` is always element `d - 1`.
#[derive(Debug)]
pub struct DirStack<D> {
    dirs: Vec<Option<D>>,
}

impl<D> Default for DirStack<D> {
    fn default() -> Self {
        DirStack { dirs: Vec::new() }
    }
}

impl<D> DirStack<D> {
    /// Where an entry at `depth` (1 or more) goes: its parent's destination, or `None` when
    /// the parent or a directory above it was not made.
    pub fn parent(&mut self, depth: usize) -> Option<&D> {
        let up = depth.checked_sub(1)?;
        self.dirs.truncate(depth);
        self.dirs.get(up)?.as_ref()
    }

    /// The directory at `depth` was made at `dir` (or could not be: `None`).
    pub fn entered(&mut self, depth: usize, dir: Option<D>) {
        self.dirs.truncate(depth);
        // Only a walk that skipped a level leaves a gap; nothing is copied below one.
        self.dirs.resize_with(depth, || None);
        self.dirs.push(dir);
    }
}

/// A path below a root, for messages: `root` then each name, `/`-separated.
pub fn join_display(root: &str, rel: &[Name]) -> String {
    let mut s = root.trim_end_matches('/').to_owned();
    for n in rel {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(n));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

/// What the first walk counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub specials: u64,
}

impl Totals {
    pub fn add(&mut self, kind: &EntryKind) {
        match kind {
            EntryKind::Dir => self.dirs += 1,
            EntryKind::File { size } => {
                self.files += 1;
                self.bytes += size;
            }
            EntryKind::Symlink => self.symlinks += 1,
            EntryKind::Special(_) => self.specials += 1,
        }
    }
}

/// Counts what `walk` yields, with a spinner; `None` when `stop` fired first.
pub async fn count<S>(
    walk: &mut mpsc::Receiver<Walked<S>>,
    stop: &CancellationToken,
    quiet: bool,
    what: String,
) -> Option<Totals> {
    let spinner = scan_spinner(quiet, what);
    let mut t = Totals::default();
    let mut seen = 0u64;
    let counted = loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break None,
            next = walk.recv() => match next {
                None => break Some(t),
                // Read errors are reported by the copy's walk.
                Some(Err(_)) => {}
                Some(Ok(e)) => {
                    t.add(&e.kind);
                    seen += 1;
                    if seen.is_multiple_of(512) {
                        spinner.set_message(format!(
                            "{} files, {}",
                            t.files,
                            human(t.bytes)
                        ));
                    }
                }
            }
        }
    };
    spinner.finish_and_clear();
    crate::out::clear_progress_bar();
    counted
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

/// An entry that was not copied, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// What a tree copy did: printed as one line, or as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct TreeSummary {
    /// `put` or `get`.
    pub command: &'static str,
    pub source: String,
    /// Where the tree's root landed.
    pub destination: String,
    /// Regular files that are now at the destination (copied, or already there).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of `files`: already complete at the destination, nothing copied.
    pub unchanged: u64,
    /// Bytes that travelled: sent to chunk servers (put) or fetched from them (get).
    pub transferred: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Special files (FIFOs, sockets, devices) not copied.
    pub skipped: u64,
    /// Entries not copied because of an error (including those below a failed directory).
    pub failed: u64,
    pub interrupted: bool,
    pub seconds: f64,
    /// The first [`MAX_LISTED`] failures.
    pub failures: Vec<Failure>,
    /// The first [`MAX_LISTED`] skipped special files.
    pub skipped_paths: Vec<String>,
    /// How to run the copy again when a rerun of the same command would land elsewhere
    /// ([`rerun_hint`]); shown after an interruption or a failure.
    #[serde(skip)]
    pub rerun_hint: Option<String>,
}

impl TreeSummary {
    fn new(command: &'static str, source: String, destination: String) -> TreeSummary {
        TreeSummary {
            command,
            source,
            destination,
            files: 0,
            bytes: 0,
            unchanged: 0,
            transferred: 0,
            dirs: 0,
            symlinks: 0,
            skipped: 0,
            failed: 0,
            interrupted: false,
            seconds: 0.0,
            failures: Vec::new(),
            skipped_paths: Vec::new(),
            rerun_hint: None,
        }
    }

    /// Counts a failure of `path`, and lists it if fewer than [`MAX_LISTED`] are.
    pub fn add_failure(&mut self, path: &str, error: &str) {
        self.failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push(Failure {
                path: path.to_owned(),
                error: error.to_owned(),
            });
        }
    }

    /// 130 when interrupted, 1 when anything failed, else 0 (skipped special files were
    /// warned about and are counted, but copying the rest is what was asked).
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }

    pub fn line(&self) -> String {
        let moved = if self.command == "put" {
            "sent"
        } else {
            "fetched"
        };
        let secs = self.seconds.max(1e-3);
        format!(
            "{} -r {} -> {}: {} files ({}) in {:.1} s ({}/s); {} unchanged, {} {}; {} \
             directories, {} symlinks; {} skipped, {} failed{}",
            self.command,
            self.source,
            self.destination,
            self.files,
            human(self.bytes),
            self.seconds,
            human((self.bytes as f64 / secs) as u64),
            self.unchanged,
            moved,
            human(self.transferred),
            self.dirs,
            self.symlinks,
            self.skipped,
            self.failed,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }

    /// What stderr gets at the end: the failures again (each was reported when it happened),
    /// and how to resume after an interruption.
    pub fn closing_lines(&self) -> Vec<String> {
        let cmd = self.command;
        let mut out = Vec::new();
        if self.failed > 0 {
            out.push(format!(
                "cairn {cmd}: {} entries were not copied:",
                self.failed
            ));
            for f in &self.failures {
                out.push(format!("  {}: {}", f.path, f.error));
            }
            let unlisted = self.failed.saturating_sub(self.failures.len() as u64);
            if unlisted > 0 {
                out.push(format!(
                    "  … and {unlisted} more (below failed directories, or past the first \
                     {MAX_LISTED})"
                ));
            }
        }
        if self.interrupted {
            out.push(format!(
                "cairn {cmd}: interrupted; run the same command again to resume (complete \
                 files are skipped, the others resume where they stopped)"
            ));
        }
        if self.interrupted || self.failed > 0 {
            if let Some(h) = &self.rerun_hint {
                out.push(format!("cairn {cmd}: note: {h}"));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// What a file copy of a tree reports when it is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileDone {
    /// The destination already held the file; nothing was copied.
    pub unchanged: bool,
    /// Bytes that travelled.
    pub transferred: u64,
}

/// A file in flight: what the run needs to account for it when its task ends.
struct InFlight {
    path: String,
    size: u64,
    progress: Progress,
}

/// One tree copy in progress: the bar, the file tasks in flight, the summary so far.
pub struct TreeRun {
    cmd: &'static str,
    quiet: bool,
    bar: ProgressBar,
    files_total: u64,
    files_done: u64,
    max_jobs: usize,
    jobs: JoinSet<anyhow::Result<FileDone>>,
    in_flight: HashMap<Id, InFlight>,
    stop: CancellationToken,
    summary: TreeSummary,
    t0: Instant,
}

impl TreeRun {
    /// A run of `cmd` copying `source` to `destination` (for the summary), whose first walk
    /// counted `totals`; at most `jobs` files at once.
    pub fn new(
        cmd: &'static str,
        source: String,
        destination: String,
        totals: &Totals,
        jobs: usize,
        quiet: bool,
        stop: CancellationToken,
    ) -> TreeRun {
        let bar = tree_bar(
            totals.bytes,
            totals.files,
            quiet,
            format!("{cmd} {destination}"),
        );
        TreeRun {
            cmd,
            quiet,
            bar,
            files_total: totals.files,
            files_done: 0,
            max_jobs: jobs.max(1),
            jobs: JoinSet::new(),
            in_flight: HashMap::new(),
            stop,
            summary: TreeSummary::new(cmd, source, destination),
            t0: Instant::now(),
        }
    }

    fn show_files(&self) {
        self.bar
            .set_message(files_done(self.files_done, self.files_total));
    }

    /// The next entry to copy, once fewer than `jobs` files are in flight; `None` when the
    /// walk is done or the run was stopped. Finished files and read errors of the walk are
    /// accounted for meanwhile.
    pub async fn next<S>(&mut self, walk: &mut mpsc::Receiver<Walked<S>>) -> Option<Entry<S>> {
        enum Step<S> {
            Stop,
            Joined(Option<Result<(Id, anyhow::Result<FileDone>), tokio::task::JoinError>>),
            Walked(Option<Walked<S>>),
        }
        loop {
            let room = self.jobs.len() < self.max_jobs;
            let step = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Step::Stop,
                j = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => Step::Joined(j),
                w = walk.recv(), if room => Step::Walked(w),
            };
            match step {
                Step::Stop => {
                    self.summary.interrupted = true;
                    return None;
                }
                Step::Joined(j) => self.joined(j),
                Step::Walked(None) => return None,
                Step::Walked(Some(Err(e))) => self.fail(&e.path, &e.error, 0),
                Step::Walked(Some(Ok(e))) => return Some(e),
            }
        }
    }

    /// Copies file `path` of `size` bytes in a task of its own: `copy` gets the file's
    /// [`Progress`] on the tree's bar. Interrupted copies end with an [`Interrupted`] error.
    pub fn spawn_file<F, Fut>(&mut self, path: String, size: u64, copy: F)
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = anyhow::Result<FileDone>> + Send + 'static,
    {
        let progress = Progress::in_tree(self.bar.clone(), self.cmd, path.clone(), self.quiet);
        let task = self.jobs.spawn(copy(progress.clone()));
        self.in_flight.insert(
            task.id(),
            InFlight {
                path,
                size,
                progress,
            },
        );
    }

    fn joined(
        &mut self,
        j: Option<Result<(Id, anyhow::Result<FileDone>), tokio::task::JoinError>>,
    ) {
        let (id, result) = match j {
            None => return,
            Some(Ok((id, r))) => (id, r),
            Some(Err(e)) => (e.id(), Err(anyhow::anyhow!("the copy's task failed: {e}"))),
        };
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        match result {
            Ok(done) => {
                // Whatever the copy did not count (an unchanged file: all of it) is done too.
                self.bar.inc(f.size.saturating_sub(f.progress.counted()));
                self.files_done += 1;
                self.show_files();
                self.summary.files += 1;
                self.summary.bytes += f.size;
                self.summary.transferred += done.transferred;
                if done.unchanged {
                    self.summary.unchanged += 1;
                    tracing::info!(path = %f.path, "{}: unchanged", self.cmd);
                } else {
                    tracing::info!(path = %f.path, bytes = f.size, "{}: copied", self.cmd);
                }
            }
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
                self.summary.interrupted = true;
            }
            Err(e) => {
                self.bar.dec(f.progress.counted());
                self.fail(&f.path, &format!("{e:#}"), f.size);
            }
        }
    }

    /// Entry `path` (`size` bytes of regular file) was not copied because of `error`.
    pub fn fail(&mut self, path: &str, error: &str, size: u64) {
        self.bar.dec_length(size);
        note(&self.bar, self.cmd, &format!("{path}: {error}"));
        self.summary.add_failure(path, error);
    }

    /// `entry` lies below a directory that could not be made: not copied, counted as failed
    /// (the directory's failure said so).
    pub fn below_failed<S>(&mut self, entry: &Entry<S>) {
        if let EntryKind::File { size } = entry.kind {
            self.bar.dec_length(size);
        }
        self.summary.failed += 1;
    }

    /// Special file `path` was skipped.
    pub fn skip(&mut self, path: &str, what: &str) {
        if !self.quiet {
            note(
                &self.bar,
                self.cmd,
                &format!(
                    "skipping {path}: a {what} (only regular files, directories and symlinks \
                     are copied)"
                ),
            );
        }
        self.summary.skipped += 1;
        if self.summary.skipped_paths.len() < MAX_LISTED {
            self.summary.skipped_paths.push(path.to_owned());
        }
    }

    /// See [`TreeSummary::rerun_hint`].
    pub fn set_rerun_hint(&mut self, hint: Option<String>) {
        self.summary.rerun_hint = hint;
    }

    pub fn dir_done(&mut self) {
        self.summary.dirs += 1;
    }

    pub fn symlink_done(&mut self) {
        self.summary.symlinks += 1;
    }

    /// Waits for the files in flight (after a stop they record what they stored and end
    /// quickly) and returns the summary.
    pub async fn finish(mut self) -> TreeSummary {
        while let Some(j) = self.jobs.join_next_with_id().await {
            self.joined(Some(j));
        }
        if self.stop.is_cancelled() {
            self.summary.interrupted = true;
        }
        self.bar.finish_and_clear();
        crate::out::clear_progress_bar();
        self.summary.seconds = (self.t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        self.summary
    }
}

/// Runs `work` until it ends; the first time `stop` completes meanwhile, cancels `token` (which
/// `work` watches to wind down) and goes on waiting for `work`.
pub async fn with_stop<T>(
    stop: impl Future<Output = ()>,
    token: &CancellationToken,
    work: impl Future<Output = T>,
) -> T {
    let mut stop = std::pin::pin!(stop);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = &mut stop, if !token.is_cancelled() => token.cancel(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        s.as_bytes().to_vec()
    }

    #[test]
    fn the_tree_lands_as_cp_r_puts_it() {
        use DestKind::*;
        let d = |kind, names_dir| Dest {
            kind,
            names_dir,
            is_root: false,
        };
        // An existing directory: the tree goes inside, under its own name.
        assert_eq!(
            place(true, Some(n("src")), d(Dir, false)),
            Ok(Placement::Inside(n("src")))
        );
        assert_eq!(
            place(false, Some(n("f")), d(Dir, true)),
            Ok(Placement::Inside(n("f")))
        );
        // The root of a file system has no name: its contents go into the directory.
        assert_eq!(place(true, None, d(Dir, false)), Ok(Placement::Merge));
        // Nothing there: the destination is made (with or without a trailing slash).
        assert_eq!(
            place(true, Some(n("src")), d(Missing, false)),
            Ok(Placement::At)
        );
        assert_eq!(
            place(true, Some(n("src")), d(Missing, true)),
            Ok(Placement::At)
        );
        assert_eq!(
            place(false, Some(n("f")), d(Missing, false)),
            Ok(Placement::At)
        );
        // A file is overwritten by a file, never by a directory.
        assert_eq!(
            place(false, Some(n("f")), d(Other, false)),
            Ok(Placement::At)
        );
        assert_eq!(
            place(true, Some(n("src")), d(Other, false)),
            Err(PlaceError::DirOverNonDir)
        );
        // `dest/` names a directory: a file source needs one to exist.
        assert_eq!(
            place(false, Some(n("f")), d(Missing, true)),
            Err(PlaceError::NotADirectory)
        );
        assert_eq!(
            place(false, Some(n("f")), d(Other, true)),
            Err(PlaceError::NotADirectory)
        );
    }

    #[test]
    fn with_t_the_destination_is_the_root_on_every_run() {
        use DestKind::*;
        let t = |kind| Dest {
            kind,
            names_dir: false,
            is_root: true,
        };
        // First run: made; second run: the same directory, filled again.
        assert_eq!(place(true, Some(n("src")), t(Missing)), Ok(Placement::At));
        assert_eq!(place(true, Some(n("src")), t(Dir)), Ok(Placement::At));
        assert_eq!(place(true, None, t(Dir)), Ok(Placement::At));
        assert_eq!(
            place(false, Some(n("f")), t(Dir)),
            Err(PlaceError::FileOverDir)
        );
        assert_eq!(
            place(true, Some(n("src")), t(Other)),
            Err(PlaceError::DirOverNonDir)
        );
        assert_eq!(place(false, Some(n("f")), t(Other)), Ok(Placement::At));
    }

    #[test]
    fn a_run_that_made_its_destination_says_how_to_resume() {
        let missing = Dest {
            kind: DestKind::Missing,
            names_dir: false,
            is_root: false,
        };
        let hint = rerun_hint(true, missing, &Placement::At, "/new").unwrap();
        assert!(hint.contains("-T") && hint.contains("/new"), "{hint}");
        assert_eq!(rerun_hint(false, missing, &Placement::At, "/f"), None);
        let with_t = Dest {
            is_root: true,
            ..missing
        };
        assert_eq!(rerun_hint(true, with_t, &Placement::At, "/new"), None);
        let dir = Dest {
            kind: DestKind::Dir,
            ..missing
        };
        assert_eq!(
            rerun_hint(true, dir, &Placement::Inside(n("src")), "/d/src"),
            None,
            "copying into an existing directory lands in the same place every run"
        );
    }

    /// A pre-order walk of
    /// ```text
    /// root/ a/ a/x a/b/ a/b/y c/ c/z d
    /// ```
    /// where `c` could not be made: every entry finds its parent's destination, and nothing
    /// below `c` finds one.
    #[test]
    fn each_entry_goes_into_its_parents_destination() {
        let mut s: DirStack<String> = DirStack::default();
        s.entered(0, Some("/dst".into()));
        assert_eq!(s.parent(1).cloned(), Some("/dst".into()));
        s.entered(1, Some("/dst/a".into()));
        assert_eq!(s.parent(2).cloned(), Some("/dst/a".into()));
        s.entered(2, Some("/dst/a/b".into()));
        assert_eq!(s.parent(3).cloned(), Some("/dst/a/b".into()));
        // Back up to depth 1: c, which fails.
        assert_eq!(s.parent(1).cloned(), Some("/dst".into()));
        s.entered(1, None);
        assert_eq!(s.parent(2), None, "nothing below a failed directory");
        s.entered(2, None);
        assert_eq!(s.parent(3), None);
        assert_eq!(
            s.parent(1).cloned(),
            Some("/dst".into()),
            "a sibling of the failed directory is copied"
        );
        assert_eq!(s.parent(0), None, "the root has no parent");
        // A walk that skips a level copies nothing below the gap.
        let mut g: DirStack<u32> = DirStack::default();
        g.entered(0, Some(1));
        g.entered(2, Some(3));
        assert_eq!(g.parent(3), Some(&3));
        assert_eq!(g.parent(2), None);
    }

    #[test]
    fn paths_below_a_root_are_joined_for_messages() {
        assert_eq!(join_display("/dst/src", &[n("a"), n("b")]), "/dst/src/a/b");
        assert_eq!(join_display("/", &[n("a")]), "/a");
        assert_eq!(join_display("/", &[]), "/");
        assert_eq!(join_display("./src/", &[n("x")]), "./src/x");
        assert_eq!(join_display("./src", &[]), "./src");
    }

    #[test]
    fn the_first_walk_counts_files_bytes_and_the_rest() {
        let mut t = Totals::default();
        for k in [
            EntryKind::Dir,
            EntryKind::File { size: 10 },
            EntryKind::File { size: 0 },
            EntryKind::Symlink,
            EntryKind::Special("FIFO"),
            EntryKind::Dir,
        ] {
            t.add(&k);
        }
        assert_eq!(
            t,
            Totals {
                files: 2,
                bytes: 10,
                dirs: 2,
                symlinks: 1,
                specials: 1
            }
        );
    }

    #[test]
    fn the_exit_status_says_failed_or_interrupted() {
        let mut s = TreeSummary::new("put", "a".into(), "/b".into());
        s.skipped = 3;
        assert_eq!(
            s.exit_code(),
            0,
            "skipped special files do not fail the copy"
        );
        s.failed = 1;
        s.failures.push(Failure {
            path: "a/x".into(),
            error: "boom".into(),
        });
        assert_eq!(s.exit_code(), 1);
        let lines = s.closing_lines();
        assert!(lines.iter().any(|l| l.contains("a/x: boom")), "{lines:?}");
        s.interrupted = true;
        assert_eq!(s.exit_code(), 130);
        let json = serde_json::to_value(&s).unwrap();
        for key in ["files", "bytes", "skipped", "failed", "seconds"] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
    }
}
