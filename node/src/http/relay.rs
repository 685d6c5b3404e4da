//! TTL heartbeats go to the node that runs the check: each active or TTL check runs on one node
//! (rendezvous placement), and a heartbeat may arrive at any node. This is the sending side,
//! shared by the native heartbeat and Consul's `check/pass`; the receiving route is the `rpc`
//! leaf, on the cluster RPC listener.

use std::time::Duration;

use cairn_api::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use super::acl::Caller;
use super::error::Failure;
use super::state::AppState;
use crate::checks::CheckKey;

/// The cluster RPC path a heartbeat is relayed on.
pub(super) const RELAY_PATH: &str = "/raft/heartbeat";
/// How long relaying a heartbeat to the check's owner may take.
const HEARTBEAT_RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// A TTL heartbeat relayed between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HeartbeatRelay {
    service: String,
    instance: String,
    check: String,
    /// The accessor id of the caller's token: the owner checks the caller's right, not the
    /// relaying node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) by: Option<String>,
}

impl HeartbeatRelay {
    fn new(key: CheckKey, by: Option<&str>) -> Self {
        HeartbeatRelay {
            service: key.service,
            instance: key.instance,
            check: key.check,
            by: by.map(str::to_owned),
        }
    }
}

impl From<HeartbeatRelay> for CheckKey {
    fn from(r: HeartbeatRelay) -> Self {
        CheckKey {
            service: r.service,
            instance: r.instance,
            check: r.check,
        }
    }
}

impl AppState {
    /// Hands a TTL heartbeat to the node that runs the check (this one, or another over the
    /// cluster RPC).
    pub(super) async fn relay_heartbeat(
        &self,
        key: CheckKey,
        caller: &Caller,
    ) -> Result<(), Failure> {
        let owner = self
            .cluster
            .owner_of(&key.hash_key())
            .ok_or_else(|| Failure::new(ErrorCode::NoLeader, "no member is up to run checks"))?;
        if owner == self.cluster.id() {
            self.checker.heartbeat(&key);
            return Ok(());
        }
        let relay = HeartbeatRelay::new(key, caller.accessor());
        let res: Result<Result<(), ApiError>, String> = self
            .cluster
            .call_member(owner, RELAY_PATH, &relay, HEARTBEAT_RELAY_TIMEOUT)
            .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure(e)),
            Err(e) => Err(Failure::new(
                ErrorCode::Unavailable,
                format!("cannot reach node {owner}, which runs the check: {e}"),
            )),
        }
    }
}
