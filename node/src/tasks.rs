//! The node's tasks: each runs under a child of the node's cancellation token and in the node's
//! task tracker, so shutdown stops every one with one `cancel`, waits for them within a bound,
//! and names the ones that did not finish; a task that panics is logged by name when it
//! panics and reported again at shutdown, never silently lost.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// A scope of tasks: a cancellation token (a child of the scope that made it) and the tracker
/// and ledger every scope of one node shares. Cloning it gives the same scope.
#[derive(Clone)]
pub(crate) struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    ledger: Arc<Ledger>,
}

/// What shutdown learns from [`Tasks::stop`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// Tasks still running when the wait ended, by name, with how many of each.
    pub unfinished: Vec<(&'static str, usize)>,
    /// Tasks that panicked while the node ran, by name, with how many of each.
    pub panicked: Vec<(&'static str, usize)>,
}

/// Which tasks are running and which panicked, by name. Bounded by the names the node uses
/// (a handful of string literals), not by the number of tasks.
#[derive(Default)]
struct Ledger {
    running: Mutex<BTreeMap<&'static str, usize>>,
    panicked: Mutex<BTreeMap<&'static str, usize>>,
}

impl Ledger {
    fn enter(self: &Arc<Self>, name: &'static str) -> Running {
        *self
            .running
            .lock()
            .expect("task ledger")
            .entry(name)
            .or_default() += 1;
        Running {
            ledger: self.clone(),
            name,
        }
    }

    fn panicked(&self, name: &'static str, payload: &(dyn Any + Send)) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        error!(task = name, "task panicked: {message}");
        *self
            .panicked
            .lock()
            .expect("task ledger")
            .entry(name)
            .or_default() += 1;
    }

    fn list(map: &Mutex<BTreeMap<&'static str, usize>>) -> Vec<(&'static str, usize)> {
        map.lock()
            .expect("task ledger")
            .iter()
            .map(|(name, n)| (*name, *n))
            .collect()
    }
}

/// A task's entry in the ledger's running count, left when the task's future is dropped.
struct Running {
    ledger: Arc<Ledger>,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.ledger.running.lock().expect("task ledger");
        if let Some(n) = running.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                running.remove(self.name);
            }
        }
    }
}

impl Tasks {
    /// A node's root scope: nothing cancelled, nothing running.
    pub(crate) fn new() -> Tasks {
        Tasks {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            ledger: Arc::default(),
        }
    }

    /// A scope under this one: cancelled with it, or on its own when its task ends.
    fn child(&self) -> Tasks {
        Tasks {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
            ledger: self.ledger.clone(),
        }
    }

    /// Whether this scope was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Runs `task` as a tracked task named `name` in a child scope of this one: it is dropped
    /// at its next await once that scope is cancelled, and a panic is logged with its name.
    /// The handle yields its output, or `None` when it was cancelled or panicked.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_scoped(name, |_| task)
    }

    /// [`Tasks::spawn`], with `task` made from the task's own scope: what it spawns there is
    /// cancelled when the task ends, however it ends, so no child outlives its parent.
    pub(crate) fn spawn_scoped<F>(
        &self,
        name: &'static str,
        task: impl FnOnce(Tasks) -> F,
    ) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let scope = self.child();
        let running = self.ledger.enter(name);
        let future = task(scope.clone());
        self.tracker.spawn(async move {
            // Dropped in reverse order once the future is gone: the children are cancelled,
            // then the task leaves the ledger.
            let _running = running;
            let _children = scope.token.clone().drop_guard();
            match CatchUnwind::new(scope.token.run_until_cancelled(future)).await {
                Ok(output) => output,
                Err(payload) => {
                    scope.ledger.panicked(name, &*payload);
                    None
                }
            }
        })
    }

    /// Runs `work` on a blocking thread as a tracked task named `name`. A blocking task cannot
    /// be cancelled: `work` must end by itself once asked to (shutdown waits for it).
    pub(crate) fn spawn_blocking<T: Send + 'static>(
        &self,
        name: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        let running = self.ledger.enter(name);
        let ledger = self.ledger.clone();
        self.tracker.spawn_blocking(move || {
            let _running = running;
            match std::panic::catch_unwind(AssertUnwindSafe(work)) {
                Ok(output) => Some(output),
                Err(payload) => {
                    ledger.panicked(name, &*payload);
                    None
                }
            }
        })
    }

    /// Cancels every task, then waits up to `wait` for all of them to end (tasks spawned after
    /// the cancel start cancelled). Says which did not end and which panicked.
    pub(crate) async fn stop(&self, wait: Duration) -> Stopped {
        self.token.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout(wait, self.tracker.wait())
            .await
            .is_ok();
        Stopped {
            unfinished: if ended {
                Vec::new()
            } else {
                Ledger::list(&self.ledger.running)
            },
            panicked: Ledger::list(&self.ledger.panicked),
        }
    }
}

/// A future whose panic is caught and returned, so the task it runs can say which task
/// panicked. Boxed, so it needs no pin projection.
struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchUnwind<F> {
    fn new(inner: F) -> CatchUnwind<F> {
        CatchUnwind {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // A future that panicked is never polled again: this one is ready with the panic.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Names and counts, as a warning lists them: `quic connection ×2, driver`.
pub(crate) fn describe(tasks: &[(&'static str, usize)]) -> String {
    tasks
        .iter()
        .map(|(name, n)| match n {
            1 => (*name).to_owned(),
            n => format!("{name} ×{n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sleeps until `deadline`, or forever for `None`, so a `select!` branch on a state machine's
/// `poll_timeout` waits only when it has one (the driver, transfer, cleanup and reaper tasks).
pub(crate) async fn sleep_until(deadline: Option<impl Into<tokio::time::Instant>>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn stop_cancels_every_task_and_its_children_and_waits_for_them() {
        let tasks = Tasks::new();
        let (dropped_tx, mut dropped) = tokio::sync::mpsc::channel::<&str>(8);
        let guard = |name: &'static str| DropSignal(Some((name, dropped_tx.clone())));
        let (parent, child) = (guard("parent"), guard("child"));
        tasks.spawn_scoped("parent", move |scope| {
            scope.spawn("child", async move {
                let _child = child;
                std::future::pending::<()>().await
            });
            async move {
                let _parent = parent;
                std::future::pending::<()>().await
            }
        });
        drop(dropped_tx);
        let stopped = tasks.stop(WAIT).await;
        assert_eq!(stopped, Stopped::default());
        // Both futures were dropped before `stop` returned.
        let mut seen = vec![dropped.try_recv().unwrap(), dropped.try_recv().unwrap()];
        seen.sort();
        assert_eq!(seen, ["child", "parent"]);
    }

    #[tokio::test]
    async fn a_child_ends_with_its_parent() {
        let tasks = Tasks::new();
        let (scope_tx, scope_rx) = tokio::sync::oneshot::channel();
        let parent = tasks.spawn_scoped("parent", move |scope| {
            let child = scope.spawn("child", std::future::pending::<()>());
            let _ = scope_tx.send(child);
            async {}
        });
        parent.await.unwrap();
        let child = scope_rx.await.unwrap();
        // The parent returned: its scope was cancelled, and the child with it.
        assert_eq!(
            tokio::time::timeout(WAIT, child).await.unwrap().unwrap(),
            None
        );
        assert!(!tasks.is_cancelled());
    }

    #[tokio::test]
    async fn a_panic_is_reported_by_name() {
        let tasks = Tasks::new();
        let handle = tasks.spawn("doomed", async {
            panic!("on purpose");
        });
        assert_eq!(handle.await.unwrap(), None);
        let blocking = tasks.spawn_blocking("doomed blocking", || panic!("on purpose too"));
        assert_eq!(blocking.await.unwrap(), None::<()>);
        let stopped = tasks.stop(WAIT).await;
        assert_eq!(stopped.panicked, [("doomed", 1), ("doomed blocking", 1)]);
        assert!(stopped.unfinished.is_empty());
    }

    #[tokio::test]
    async fn a_task_that_does_not_end_is_named() {
        let tasks = Tasks::new();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        // A blocking task cannot be cancelled: it holds shutdown until it returns.
        tasks.spawn_blocking("stuck scan", move || hold.recv().ok());
        tasks.spawn("quic connection", std::future::pending::<()>());
        let stopped = tasks.stop(Duration::from_millis(50)).await;
        assert_eq!(stopped.unfinished, [("stuck scan", 1)]);
        assert_eq!(
            describe(&[("stuck scan", 1), ("quic connection", 2)]),
            "stuck scan, quic connection ×2"
        );
        release.send(()).unwrap();
        assert_eq!(tasks.stop(WAIT).await, Stopped::default());
    }

    #[tokio::test]
    async fn a_task_spawned_after_stop_starts_cancelled() {
        let tasks = Tasks::new();
        tasks.stop(WAIT).await;
        let late = tasks.spawn("late", std::future::pending::<()>());
        assert_eq!(
            tokio::time::timeout(WAIT, late).await.unwrap().unwrap(),
            None
        );
    }

    /// Sends its name when dropped.
    struct DropSignal(Option<(&'static str, tokio::sync::mpsc::Sender<&'static str>)>);

    impl Drop for DropSignal {
        fn drop(&mut self) {
            if let Some((name, tx)) = self.0.take() {
                tx.try_send(name).unwrap();
            }
        }
    }
}
