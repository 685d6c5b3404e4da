//! Cairn's DNS interface: `<service>.service.cairn.` SRV, A and AAAA answers built from a node's
//! registry view.
//!
//! Not built yet: the agent does not listen for DNS until this crate lands (see the DNS issue).
