//! The fields a `filter` may select on each Consul list endpoint: those of the selector tables in
//! Consul's API documentation ("Filtering" under each endpoint), and those Cairn's items show
//! beyond them (`CreateIndex`, `ModifyIndex`, a check's `Type` and `Definition`). A selector that
//! names none of them is a 400, as Consul answers; a map's keys (`Meta.anything`) are free.
//! Connect and proxy settings, which Cairn never fills, accept any path below them.

use super::filter::Field::{self, Leaf, MapOf, Open, Struct};

/// A map of strings (`Meta`, a node's `TaggedAddresses`).
const STRINGS: Field = MapOf(&Leaf);

const WEIGHTS: Field = Struct(&[("Passing", Leaf), ("Warning", Leaf)]);

/// A node: `/v1/catalog/nodes` items, `Node` of `/v1/health/service/{s}` items.
pub const NODE: Field = Struct(&[
    ("ID", Leaf),
    ("Node", Leaf),
    ("Address", Leaf),
    ("Datacenter", Leaf),
    ("TaggedAddresses", STRINGS),
    ("Meta", STRINGS),
    ("CreateIndex", Leaf),
    ("ModifyIndex", Leaf),
]);

/// A service instance as an agent holds it: `/v1/agent/services` and the catalog's node views,
/// `Service` of `/v1/health/service/{s}` items.
pub const SERVICE: Field = Struct(&[
    ("ID", Leaf),
    ("Service", Leaf),
    ("Kind", Leaf),
    ("Tags", Leaf),
    ("Meta", STRINGS),
    ("Port", Leaf),
    ("Address", Leaf),
    ("TaggedAddresses", Open),
    ("Weights", WEIGHTS),
    ("EnableTagOverride", Leaf),
    ("Proxy", Open),
    ("Connect", Open),
    ("Datacenter", Leaf),
    ("CreateIndex", Leaf),
    ("ModifyIndex", Leaf),
]);

/// A check: `/v1/health/checks/{s}`, `/v1/health/state/{state}`, `/v1/health/node/{node}`,
/// `/v1/agent/checks`, `Checks` of `/v1/health/service/{s}` items.
pub const CHECK: Field = Struct(&[
    ("Node", Leaf),
    ("CheckID", Leaf),
    ("Name", Leaf),
    ("Status", Leaf),
    ("Notes", Leaf),
    ("Output", Leaf),
    ("ServiceID", Leaf),
    ("ServiceName", Leaf),
    ("ServiceTags", Leaf),
    ("Type", Leaf),
    ("Definition", Open),
    ("CreateIndex", Leaf),
    ("ModifyIndex", Leaf),
]);

/// A catalog entry: `/v1/catalog/service/{s}` items, and what `/v1/catalog/services` filters.
pub const CATALOG_ENTRY: Field = Struct(&[
    ("ID", Leaf),
    ("Node", Leaf),
    ("Address", Leaf),
    ("Datacenter", Leaf),
    ("TaggedAddresses", STRINGS),
    ("NodeMeta", STRINGS),
    ("ServiceKind", Leaf),
    ("ServiceID", Leaf),
    ("ServiceName", Leaf),
    ("ServiceTags", Leaf),
    ("ServiceAddress", Leaf),
    ("ServiceTaggedAddresses", Open),
    ("ServiceWeights", WEIGHTS),
    ("ServiceMeta", STRINGS),
    ("ServicePort", Leaf),
    ("ServiceEnableTagOverride", Leaf),
    ("ServiceProxy", Open),
    ("ServiceConnect", Open),
    ("CreateIndex", Leaf),
    ("ModifyIndex", Leaf),
]);

/// A `/v1/health/service/{s}` item.
pub const HEALTH_ENTRY: Field = Struct(&[("Node", NODE), ("Service", SERVICE), ("Checks", CHECK)]);
