//! The operator's toolkit against real processes: leadership handed over on SIGTERM
//! ([`handover`]), the leader's view of replication ([`views`]) and lost-quorum recovery
//! ([`recover`]). [`load`] is the steady write load they run under.

mod handover;
mod load;
mod recover;
mod views;
