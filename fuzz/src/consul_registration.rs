//! A Consul registration body (`PUT /v1/agent/service/register`): reading it never panics, and
//! what the route would propose holds the same promises as a native registration
//! ([`accepted`]).

use cairn_node::http::{registration_from_consul, ConsulRegistration};
use cairn_registry::model::{validate_registration, validate_service_name};

use super::registration::accepted;

pub fn check(data: &[u8]) {
    // As the route's body extractor reads it.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(ConsulRegistration { name, id, body }) = registration_from_consul(&value) else {
        return;
    };
    let Ok(service) = validate_service_name(&name) else {
        return;
    };
    if let Ok(instance) = validate_registration(&id, &body) {
        accepted(&service, instance);
    }
}
