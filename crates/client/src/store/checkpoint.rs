//! The background checkpointer of a bulk write ([`LocalStore::bulk`](super::LocalStore::bulk)).
//!
//! In WAL mode a commit appends the pages it changed to the WAL, and a checkpoint copies them
//! into the database file. SQLite's automatic checkpoint runs on the committing connection, right
//! after its commit, so the thread that writes a pull's pages also copied and fsynced the
//! database file every 64 MiB of WAL (9 % of B's samples in a pull of 1,000,000 contacts,
//! BENCHMARKS.md, "B's storage in a 1,000,000-contact pull (issue 18), twelfth session"). During
//! a bulk write the writer's automatic checkpoints are off and this thread, with a connection of
//! its own, runs a `PASSIVE` checkpoint (it never waits for the writer or for readers) each time
//! the WAL has grown by `every` frames since its last one. A checkpoint is maintenance, not
//! durability: every commit is durable in the WAL when it returns.
//!
//! A `PASSIVE` checkpoint does not restart the WAL: only a transaction that begins when every
//! frame is already in the database file writes the WAL from its start again, and a writer that
//! keeps committing while the checkpoint runs can keep the WAL growing. So the WAL is bounded
//! here: a commit that leaves `cap` frames or more waits (in SQLite's WAL hook, after its commit,
//! holding no lock) until this thread has run a `RESTART` checkpoint, which copies everything and
//! waits for readers to leave the WAL, so the next commit writes it from its start again. The WAL
//! then holds at most `cap` frames and one transaction, unless another connection keeps a read
//! transaction open for longer than [`BUSY_TIMEOUT`] (that stops every checkpoint, SQLite's own
//! too): the commit then goes on after that wait, and the next one past the cap asks again.

use std::os::raw::c_int;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::BUSY_TIMEOUT;

/// The type of "no WAL hook" ([`Connection::wal_hook`] with `None`).
pub(super) type NoHook = fn(&mut Wal, c_int) -> rusqlite::Result<()>;

/// When the checkpointer checkpoints, in WAL frames (one page each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Thresholds {
    /// Frames added to the WAL since the last checkpoint after which it runs a `PASSIVE` one.
    pub(super) every: u32,
    /// Frames in the WAL at which a commit waits for a `RESTART` checkpoint.
    pub(super) cap: u32,
}

/// What the writer's WAL hook and the checkpointer's thread tell each other.
#[derive(Debug, Default)]
struct Progress {
    /// Frames in the WAL after the last commit (as SQLite's WAL hook reports them).
    frames: u32,
    /// `frames` when the last checkpoint started (0 once the WAL restarted).
    checked_at: u32,
    /// A commit found the WAL at its cap and waits for a `RESTART` checkpoint.
    restart_wanted: bool,
    /// The checkpoint's guard has dropped: one last `PASSIVE` checkpoint, then the thread ends.
    stop: bool,
    counts: CheckpointCounts,
}

/// What a checkpointer did (for the bulk write's debug log and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CheckpointCounts {
    /// `PASSIVE` checkpoints run.
    pub(super) passive: u64,
    /// `RESTART` checkpoints run (each asked for by a commit at the cap).
    pub(super) restarts: u64,
    /// How long commits waited for them, in all.
    pub(super) waited: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        // Nothing panics while holding it; if something did, the counts are still usable.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The checkpointer's thread; it ends after one last checkpoint when this drops.
#[derive(Debug)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    /// Joined only by tests ([`Checkpointer::finish`]): the guard's drop does not wait.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the thread is never joined outside tests")
    )]
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread, which checkpoints through `connection` (a connection of its own to the
    /// store: a checkpoint reads no page through its cache, so a small one).
    pub(super) fn start(connection: Connection, thresholds: Thresholds) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("kith-checkpoint".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&connection, &shared, thresholds.every)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The WAL hook to install on the writer's connection ([`Connection::wal_hook`]): it tells
    /// the thread how large the WAL is after each commit and waits for a `RESTART` checkpoint
    /// when the WAL has reached `cap` frames.
    pub(super) fn hook(
        &self,
        cap: u32,
    ) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move |_wal, frames| {
            let frames = u32::try_from(frames).unwrap_or(0);
            let mut progress = shared.lock();
            progress.frames = frames;
            if frames >= cap && !progress.stop {
                progress.restart_wanted = true;
                shared.changed.notify_all();
                let asked = progress.counts.restarts;
                let started = Instant::now();
                // The checkpoint's busy handler gives up after `BUSY_TIMEOUT` for the write lock
                // and as long for readers; the thread always counts its attempt.
                let deadline = started + BUSY_TIMEOUT * 2;
                while progress.counts.restarts == asked && !progress.stop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    progress = shared
                        .changed
                        .wait_timeout(progress, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                progress.counts.waited += started.elapsed();
            } else {
                shared.changed.notify_all();
            }
            Ok(())
        }
    }

    /// What the thread has done so far.
    pub(super) fn counts(&self) -> CheckpointCounts {
        self.shared.lock().counts
    }

    /// Stops the thread after its last checkpoint and waits for it (tests: the guard's drop
    /// does not wait).
    #[cfg(test)]
    pub(super) fn finish(mut self) -> CheckpointCounts {
        self.stop();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("the checkpointer's thread does not panic");
        }
        self.counts()
    }

    fn stop(&self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // The thread's last checkpoint is left to run on its own: the WAL is durable, so the
        // caller (e.g. the end of a pull) has nothing to wait for.
        self.stop();
    }
}

/// The checkpointer's loop: a checkpoint of the kind asked for, or `PASSIVE` each time the WAL
/// has grown by `every` frames, until stopped; then one last `PASSIVE` checkpoint.
fn run(connection: &Connection, shared: &Shared, every: u32) {
    loop {
        let restart = {
            let mut progress = shared.lock();
            let restart = loop {
                if progress.frames < progress.checked_at {
                    // The WAL was written from its start again.
                    progress.checked_at = 0;
                }
                if progress.restart_wanted {
                    break true;
                }
                if progress.stop {
                    break false;
                }
                if progress.frames - progress.checked_at >= every {
                    break false;
                }
                progress = shared
                    .changed
                    .wait(progress)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            };
            if progress.stop && !restart {
                break;
            }
            progress.checked_at = progress.frames;
            restart
        };
        checkpoint(connection, if restart { "RESTART" } else { "PASSIVE" });
        let mut progress = shared.lock();
        if restart {
            progress.restart_wanted = false;
            progress.counts.restarts += 1;
            shared.changed.notify_all();
        } else {
            progress.counts.passive += 1;
        }
    }
    checkpoint(connection, "PASSIVE");
    shared.lock().counts.passive += 1;
}

/// Runs one checkpoint. A failure loses nothing (the WAL holds every commit) and the next
/// checkpoint, this thread's or SQLite's own after the bulk write, copies what this one did not.
pub(super) fn checkpoint(connection: &Connection, mode: &str) {
    // Not `pragma_query_value`: it refuses a pragma name with an argument as invalid.
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    if let Err(error) = connection.query_row(&sql, [], |_| Ok(())) {
        tracing::debug!(%error, mode, "a checkpoint failed");
    }
}
