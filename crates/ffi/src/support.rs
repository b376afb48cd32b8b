//! What the exported API runs on: the tokio runtime its async functions are driven by, and
//! the error text the CLI prints.

use std::future::Future;
use std::sync::OnceLock;

/// The runtime every async function and watcher of the bindings runs on. The client's
/// connections (quinn) need a tokio reactor; the app's executor (Swift's, a Kotlin coroutine
/// dispatcher, Python's asyncio loop) only awaits the [`tokio::task::JoinHandle`], which works
/// on any executor.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kith-ffi")
            .enable_all()
            .build()
            // Without a runtime nothing can work; this fails only when the process can start
            // no thread at all.
            .expect("cannot start the kith-ffi tokio runtime")
    })
}

/// Runs `future` on the bindings' runtime and waits for it from whatever executor awaits this.
/// A panic in it (a bug) is reported as `internal` rather than unwinding across the FFI.
pub(crate) async fn run<T, E>(
    future: impl Future<Output = Result<T, E>> + Send + 'static,
    internal: impl FnOnce(String) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    match runtime().spawn(future).await {
        Ok(result) => result,
        Err(e) => Err(internal(format!("the operation stopped unexpectedly: {e}"))),
    }
}

/// Starts `future` on the bindings' runtime without waiting for it (a watcher).
pub(crate) fn spawn(
    future: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    runtime().spawn(future)
}

/// The error and its causes on one line, without repeating a cause that an outer message
/// already quotes: the text `kith` prints after `error: `.
pub(crate) fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let part = current.to_string();
        if !part.is_empty() && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}
