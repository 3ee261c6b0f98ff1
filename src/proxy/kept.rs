//! What a client connection keeps while it is open (its place under the listener's
//! `max_connections`), within reach of the request that takes the connection over: a
//! WebSocket relayed in a task of its own carries it along, so the connection still counts.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;

pub type Kept = Box<dyn Any + Send>;

tokio::task_local! {
    static KEPT: RefCell<Option<Kept>>;
}

/// Serves a connection with `kept` held until `serve` ends, unless a request takes it.
pub async fn keeping<F: Future>(kept: Option<Kept>, serve: F) -> F::Output {
    KEPT.scope(RefCell::new(kept), serve).await
}

/// Takes what the current connection keeps, to hold it beyond the connection's task.
pub fn take() -> Option<Kept> {
    KEPT.try_with(|k| k.borrow_mut().take()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_takes_what_its_connection_keeps_once() {
        let taken = keeping(Some(Box::new(7u32)), async { (take(), take().is_none()) }).await;
        assert_eq!(
            taken.0.and_then(|k| k.downcast::<u32>().ok()).map(|k| *k),
            Some(7)
        );
        assert!(taken.1);
        assert!(take().is_none(), "nothing outside a connection");
    }
}
