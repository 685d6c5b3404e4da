//! The events of a watch stream (`GET /v1/services/{service}/watch`): a `state` event with the
//! whole service, then a `change` event per change, each with its index as the event id.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::Event;
use cairn_api::ServiceInstances;
use cairn_registry::acl::Access;
use cairn_registry::{Registry, ServiceEntry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::acl::Caller;
use crate::http::blocking::WaitSlot;
use crate::http::state::AppState;

/// What a watch stream still has to send, and where it is.
struct Watcher {
    registry: Arc<Registry>,
    name: String,
    /// The index of the last event sent; `None` before the first.
    last: Option<u64>,
    rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
    /// Changes of tokens and policies: the stream's token is checked again after each, and a
    /// revoked right ends the stream with an `error` event.
    acl_rx: watch::Receiver<u64>,
    state: AppState,
    secret: Option<String>,
    /// Set once the last event (an `error`) is queued.
    ended: bool,
    pending: VecDeque<Event>,
    /// A stream is a waiting request: it holds one of its client's slots while it lasts.
    _slot: WaitSlot,
}

fn event(kind: &str, name: &str, index: u64, entry: Option<&ServiceEntry>) -> Event {
    let body = ServiceInstances {
        name: name.to_owned(),
        index,
        instances: entry.map_or_else(Vec::new, |e| {
            e.instances.values().map(|i| i.to_info()).collect()
        }),
    };
    let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    Event::default()
        .event(kind)
        .id(index.to_string())
        .data(data)
}

impl Watcher {
    /// Whether the stream's token still may read the service; queues the `error` event that
    /// ends the stream when it may not.
    fn still_allowed(&mut self) -> bool {
        let allowed = Caller::resolve(&self.state, self.secret.as_deref())
            .and_then(|c| c.service(&self.name, Access::Read));
        match allowed {
            Ok(()) => true,
            Err(f) => {
                let data = serde_json::to_string(&f.0).unwrap_or_else(|_| "{}".into());
                self.pending
                    .push_back(Event::default().event("error").data(data));
                self.ended = true;
                false
            }
        }
    }

    /// Queues what happened since `last`: each change from history, or the whole state.
    fn catch_up(&mut self) {
        let current = self.registry.service_index(&self.name);
        match self.last {
            Some(last) if current == last => {}
            Some(last) => match self.registry.watches().since(&self.name, last) {
                Some(versions) if !versions.is_empty() => {
                    for v in versions {
                        self.pending.push_back(event(
                            "change",
                            &self.name,
                            v.index,
                            v.entry.as_deref(),
                        ));
                        self.last = Some(v.index);
                    }
                }
                // The view moved before its history was recorded: the next wake-up has it.
                Some(_) => {}
                None => self.send_state(current),
            },
            None => self.send_state(current),
        }
    }

    fn send_state(&mut self, current: u64) {
        let entry = self.registry.service(&self.name);
        self.pending
            .push_back(event("state", &self.name, current, entry.as_deref()));
        self.last = Some(current);
    }
}

/// The events of one watch stream, resuming after `resume` when given; it ends when the agent
/// shuts down.
pub(super) fn service_events(
    state: AppState,
    registry: Arc<Registry>,
    name: String,
    resume: Option<u64>,
    rx: watch::Receiver<u64>,
    secret: Option<String>,
    slot: WaitSlot,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let mut acl_rx = registry.subscribe_acl();
    acl_rx.borrow_and_update();
    let w = Watcher {
        shutdown: state.shutdown.clone(),
        registry,
        name,
        last: resume,
        rx,
        acl_rx,
        state,
        secret,
        ended: false,
        pending: VecDeque::new(),
        _slot: slot,
    };
    futures::stream::unfold(w, |mut w| async move {
        loop {
            if let Some(ev) = w.pending.pop_front() {
                return Some((Ok(ev), w));
            }
            if w.ended {
                return None;
            }
            if w.acl_rx.has_changed().unwrap_or(false) {
                w.acl_rx.borrow_and_update();
                if !w.still_allowed() {
                    continue;
                }
            }
            w.rx.borrow_and_update();
            w.catch_up();
            if !w.pending.is_empty() {
                continue;
            }
            tokio::select! {
                r = w.rx.changed() => {
                    if r.is_err() {
                        return None;
                    }
                }
                r = w.acl_rx.changed() => {
                    if r.is_err() {
                        return None;
                    }
                    w.acl_rx.borrow_and_update();
                    w.still_allowed();
                }
                _ = w.shutdown.cancelled() => return None,
            }
        }
    })
}
