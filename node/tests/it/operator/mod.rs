//! The operator's toolkit against real processes: leadership handed over on SIGTERM
//! ([`handover`]), a new leader soon after a kill -9 of the old one ([`failover`]), the leader's
//! view of replication ([`views`]) and lost-quorum recovery ([`recover`]). [`load`] is the
//! steady write load they run under.

mod failover;
mod handover;
mod load;
mod recover;
mod views;
