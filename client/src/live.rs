//! Living with a registry: watching a service, staying registered, and picking an instance.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use parking_lot::RwLock;
use rand::Rng;
use tokio::task::JoinHandle;

use crate::client::{CallKind, Client, ClientError, ReadOptions};
use crate::{
    parse_duration, CheckKind, HealthStatus, InstanceInfo, InstanceRegistration, ServiceInstances,
};

/// How long one blocking read of a watch waits before asking again.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// Pause after a failed read before a watch tries again (the client already tried every node).
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// What a watch hands out.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only passing instances.
    pub passing_only: bool,
    /// Only instances with this tag.
    pub tag: Option<String>,
}

/// The instance sets of `service`, as a stream: the current set first, then one set per change.
/// Blocking reads under the hood; it moves to another node when one fails, and never yields an
/// older set after a newer one.
pub fn watch(
    client: Client,
    service: String,
    opts: WatchOptions,
) -> impl Stream<Item = Result<ServiceInstances, ClientError>> {
    struct State {
        client: Client,
        service: String,
        opts: WatchOptions,
        query_index: Option<u64>,
        yielded: Option<u64>,
    }
    let state = State {
        client,
        service,
        opts,
        query_index: None,
        yielded: None,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            let read = ReadOptions {
                index: st.query_index,
                wait: st.query_index.map(|_| WATCH_WAIT),
                passing_only: st.opts.passing_only,
                tag: st.opts.tag.clone(),
                ..ReadOptions::default()
            };
            match st.client.service(&st.service, &read).await {
                Ok(r) => {
                    st.query_index = Some(r.index);
                    if st.yielded.is_none_or(|y| r.index > y) {
                        st.yielded = Some(r.index);
                        return Some((Ok(r.value), st));
                    }
                }
                Err(e) if e.is_retryable_for(CallKind::Read) => {
                    tokio::time::sleep(WATCH_RETRY).await
                }
                Err(e) => return Some((Err(e), st)),
            }
        }
    })
}

/// An instance kept registered: its TTL checks heartbeated in the background; deregistered by
/// [`Registration::deregister`], or on drop (best effort, when a Tokio runtime is running).
pub struct Registration {
    client: Client,
    service: String,
    id: String,
    heartbeats: Option<JoinHandle<()>>,
    deregistered: bool,
}

impl Registration {
    /// Registers the instance and, when it has TTL checks, starts heartbeating at a third of
    /// the shortest TTL.
    pub async fn start(
        client: Client,
        service: &str,
        id: &str,
        registration: InstanceRegistration,
    ) -> Result<Registration, ClientError> {
        client.register(service, id, &registration).await?;
        let shortest_ttl = registration
            .checks
            .iter()
            .filter(|c| c.kind == CheckKind::Ttl)
            .filter_map(|c| c.ttl.as_deref().and_then(|t| parse_duration(t).ok()))
            .min();
        let heartbeats = shortest_ttl.map(|ttl| {
            let every = (ttl / 3).max(Duration::from_millis(100));
            let (client, service, id) = (client.clone(), service.to_owned(), id.to_owned());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A heartbeat is a write, so the client does not send it again when its
                    // answer is lost (`OutcomeUnknown`: a time-out, a broken connection,
                    // `unavailable`). This loop sends the next one on its next tick, and that is
                    // safe although the lost one may have arrived: a heartbeat only restarts the
                    // TTL from the moment it arrives (and marks the check passing if it is not),
                    // so an extra one does nothing a timely one would not. The client starts that
                    // next call on another node than the one that failed to answer; at a third
                    // of the TTL apart, one lost heartbeat does not let the check expire.
                    if let Err(e) = client.heartbeat(&service, &id).await {
                        tracing::warn!(%service, %id, "heartbeat failed: {e}");
                    }
                }
            })
        });
        Ok(Registration {
            client,
            service: service.to_owned(),
            id: id.to_owned(),
            heartbeats,
            deregistered: false,
        })
    }

    /// Stops heartbeating and deregisters the instance.
    pub async fn deregister(mut self) -> Result<(), ClientError> {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
        self.deregistered = true;
        self.client
            .deregister(&self.service, &self.id)
            .await
            .map(|_| ())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeats.take() {
            h.abort();
        }
        if self.deregistered {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (client, service, id) = (
                self.client.clone(),
                std::mem::take(&mut self.service),
                std::mem::take(&mut self.id),
            );
            rt.spawn(async move {
                if let Err(e) = client.deregister(&service, &id).await {
                    tracing::warn!(%service, %id, "deregistration on drop failed: {e}");
                }
            });
        }
    }
}

/// Client-side load balancing over a watched service's passing instances.
pub struct Balancer {
    instances: Arc<RwLock<Option<Vec<InstanceInfo>>>>,
    ready: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Starts watching `service` (passing instances only).
    pub fn start(client: Client, service: &str) -> Balancer {
        use futures::StreamExt;
        let instances = Arc::new(RwLock::new(None));
        let ready = Arc::new(tokio::sync::Notify::new());
        let (set, notify) = (instances.clone(), ready.clone());
        let stream = watch(
            client,
            service.to_owned(),
            WatchOptions {
                passing_only: true,
                tag: None,
            },
        );
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(s) => {
                        let passing: Vec<InstanceInfo> = s
                            .instances
                            .into_iter()
                            .filter(|i| i.health == HealthStatus::Passing)
                            .collect();
                        *set.write() = Some(passing);
                        notify.notify_waiters();
                    }
                    Err(e) => {
                        tracing::warn!("balancer watch: {e}");
                        tokio::time::sleep(WATCH_RETRY).await;
                    }
                }
            }
        });
        Balancer {
            instances,
            ready,
            task,
        }
    }

    /// Waits (up to `timeout`) for the first instance set; answers whether it came.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.ready.notified();
                if self.instances.read().is_some() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The passing instances as last seen.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.instances.read().clone().unwrap_or_default()
    }

    /// A passing instance drawn at random, in proportion to its weight.
    pub fn pick(&self) -> Option<InstanceInfo> {
        let set = self.instances.read();
        let set = set.as_ref()?;
        let total: u64 = set.iter().map(|i| u64::from(i.weight.max(1))).sum();
        if total == 0 {
            return None;
        }
        let mut x = rand::thread_rng().gen_range(0..total);
        for i in set {
            let w = u64::from(i.weight.max(1));
            if x < w {
                return Some(i.clone());
            }
            x -= w;
        }
        set.last().cloned()
    }

    /// Power of two choices: two instances at random, the one `load` says is less busy.
    pub fn pick_two(&self, load: impl Fn(&InstanceInfo) -> u64) -> Option<InstanceInfo> {
        let set = self.instances.read();
        let set = set.as_ref()?;
        match set.len() {
            0 => None,
            1 => Some(set[0].clone()),
            n => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let (x, y) = (&set[a], &set[b]);
                Some(if load(y) < load(x) {
                    y.clone()
                } else {
                    x.clone()
                })
            }
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `reqwest` resolver that answers `<service>.service.<domain>` from the registry's live view
/// (passing instances with IP addresses, weighted random order, each with its own port) and
/// every other name from the system resolver. `http://web.service.cairn/` then reaches a
/// healthy `web` instance.
pub struct Resolver {
    client: Client,
    suffix: String,
    balancers: parking_lot::Mutex<HashMap<String, Arc<Balancer>>>,
}

/// How long a first lookup of a service waits for its instance set.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolver {
    /// A resolver for names under `service.<domain>` (`domain` is usually `cairn`).
    pub fn new(client: Client, domain: &str) -> Arc<Resolver> {
        Arc::new(Resolver {
            client,
            suffix: format!(".service.{}", domain.trim_matches('.')),
            balancers: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn balancer(&self, service: &str) -> Arc<Balancer> {
        self.balancers
            .lock()
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(Balancer::start(self.client.clone(), service)))
            .clone()
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let service = host.strip_suffix(&self.suffix).map(str::to_owned);
        let balancer = service.as_deref().map(|s| self.balancer(s));
        Box::pin(async move {
            let Some(balancer) = balancer else {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            };
            balancer.ready(RESOLVE_TIMEOUT).await;
            // Weighted order: repeated draws, duplicates dropped.
            let mut addrs: Vec<SocketAddr> = Vec::new();
            let all = balancer.instances();
            for _ in 0..all.len() * 2 {
                if let Some(i) = balancer.pick() {
                    if let Ok(ip) = i.address.parse::<IpAddr>() {
                        let a = SocketAddr::new(ip, i.port);
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                }
            }
            for i in &all {
                if let Ok(ip) = i.address.parse::<IpAddr>() {
                    let a = SocketAddr::new(ip, i.port);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if addrs.is_empty() {
                return Err(format!("{host}: no healthy instance").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
