//! The session's source of changes ([`Feed`]): an open watch stream, polling (a control
//! plane without one), or neither while it is opened again; with the revision to resume
//! from, the replica the stream came from, and the bounded backoff between attempts.

use std::time::{Duration, Instant};

use quilt_api::types::WatchEvent;
use tracing::{debug, info, warn};

use crate::control::ControlError;

/// An open watch stream.
pub(super) type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchEvent, ControlError>> + Send>>;

/// The watch stream, or none while polling or reopening.
pub(super) type Events = Option<EventStream>;

/// The first wait before opening a watch again after a failure; it doubles up to
/// [`REOPEN_MAX`].
const REOPEN_FIRST: Duration = Duration::from_millis(250);

/// The longest wait between attempts to open the watch.
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// A stream that lasted this long and then broke is opened again at once; one that
/// broke sooner waits the backoff, so a replica that accepts and drops every watch is not
/// asked in a tight loop.
const STREAM_LIVED: Duration = Duration::from_secs(5);

/// The session's source of changes: the watch stream, polling, or neither (to be
/// opened again), with the revision to resume from and the retry backoff.
#[derive(Default)]
pub(super) struct Feed {
    pub(super) events: Events,
    /// The control plane has no watch stream: the node list is polled.
    pub(super) polling: bool,
    /// The last revision seen (an event's, or a list's); none: list first.
    pub(super) since: Option<u64>,
    /// The wait before the next attempt to open the watch after a failure.
    backoff: Duration,
    /// When the open stream was opened.
    opened_at: Option<Instant>,
    /// The replica the open stream came from.
    pub(super) replica: Option<String>,
    /// Attempts to open the watch that failed since it was last open.
    failures: u64,
}

impl Feed {
    /// Neither watching nor polling: the watch is to be opened.
    pub(super) fn closed(&self) -> bool {
        self.events.is_none() && !self.polling
    }

    pub(super) fn opened(&mut self, events: EventStream, since: u64) {
        if self.failures > 0 {
            info!(
                since,
                failures = self.failures,
                "watch stream open again; resuming from the last revision seen"
            );
        } else {
            debug!(since, "watch stream open");
        }
        self.events = Some(events);
        self.polling = false;
        self.failures = 0;
        self.backoff = REOPEN_FIRST;
        self.opened_at = Some(Instant::now());
    }

    /// The stream ended (`error`, or closed by the server): answers the wait before it
    /// is opened again, from the last revision seen.
    pub(super) fn broke(&mut self, error: Option<ControlError>) -> Duration {
        let lived = self.opened_at.take().map(|t| t.elapsed());
        self.events = None;
        self.replica = None;
        match error {
            Some(e) => {
                info!(error = %e, since = ?self.since, "watch stream broke; watching again from the last revision seen")
            }
            None => {
                info!(since = ?self.since, "watch stream ended; watching again from the last revision seen")
            }
        }
        if lived.is_some_and(|l| l >= STREAM_LIVED) {
            Duration::ZERO
        } else {
            self.next_backoff()
        }
    }

    /// An attempt to `what` failed: said at warn the first time, then at debug; answers
    /// the wait before the next.
    pub(super) fn failed(&mut self, what: &str, e: &ControlError) -> Duration {
        self.failures += 1;
        let wait = self.next_backoff();
        if self.failures == 1 {
            warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot {what}; nothing on the node changes meanwhile, retrying");
        } else {
            debug!(error = %e, failures = self.failures, retry_in_ms = wait.as_millis() as u64, "cannot {what} yet");
        }
        wait
    }

    /// A full list succeeded at `revision`: the watch is opened again from it.
    pub(super) fn restart_from(&mut self, revision: u64) {
        self.restart();
        self.polling = false;
        self.since = Some(revision);
    }

    /// Closes the open stream, to be opened again (from `since`) at once.
    pub(super) fn restart(&mut self) {
        self.events = None;
        self.opened_at = None;
        self.replica = None;
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff.max(REOPEN_FIRST);
        self.backoff = (wait * 2).min(REOPEN_MAX);
        wait
    }
}
