//! What the registry's in-memory view costs per instance, and how long loading it back takes.
//!
//!     cb run --release -p cairn-registry --example footprint -- apply|load [instances] [services]
//!
//! `apply` registers `instances` (default 100,000) in `services` (default a tenth of that) the
//! way `bench/scale.py` does (an address, a port, one tag, one meta key), in commands of 64
//! registrations as group commit makes them, and reports how much the process's RSS grew per
//! instance. `load` does what a restart does without RocksDB: every instance record decoded and
//! put into its service, the view built; timed, with the RSS it added. Run either under
//! `heaptrack` for the heap by allocation site: the view is still live at exit.

use std::sync::Arc;
use std::time::Instant;

use cairn_registry::model::{validate_registration, Instance};
use cairn_registry::{Command, Dirty, Op, Registry, RegistryData, ServiceEntry};

/// The node's allocator (see `node/src/main.rs`), so the figures are the node's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn report(what: &str, rss_before: i64, n: usize) {
    println!(
        "{what}: RSS grew by {:.0} B/instance",
        (rss_bytes() - rss_before) as f64 / n as f64
    );
}

/// The registration of instance `i` of `services`, as bench/scale.py sends it.
fn registration(i: usize, services: usize) -> (String, cairn_registry::model::InstanceSpec) {
    let body = serde_json::json!({
        "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        "port": 8080,
        "tags": ["v1"],
        "meta": {"version": "1.4.2"},
    });
    let body = serde_json::from_value(body).expect("the body is a registration");
    let spec = validate_registration(&format!("i{i}"), &body).expect("the body is valid");
    (format!("s{}", i % services), spec)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let services: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or((n / 10).max(1));
    match mode.as_str() {
        "apply" => apply(n, services),
        "load" => load(n, services),
        _ => eprintln!("usage: footprint apply|load [instances] [services]"),
    }
}

/// Registers every instance through apply, in commands of 64 as group commit makes them.
fn apply(n: usize, services: usize) {
    let start = rss_bytes();
    let registry = Registry::default();
    let mut index = 0;
    let mut ops = Vec::new();
    for i in 0..n {
        let (service, instance) = registration(i, services);
        ops.push(Op::Register {
            service,
            instance,
            health: None,
        });
        if ops.len() == 64 || i + 1 == n {
            index += 1;
            let cmd = Command::new(1_700_000_000_000, std::mem::take(&mut ops));
            registry.apply(index, &cmd, &mut Dirty::default());
        }
    }
    report(
        &format!("{n} instances in {services} services, applied"),
        start,
        n,
    );
    // Kept to the end, so a heap profiler (`heaptrack`) counts the view as live at exit.
    std::mem::forget(registry);
}

/// What a restart does without RocksDB: one JSON record per instance (the store's
/// `i\0<service>\0<id>`) decoded and put into its service, then the view built.
fn load(n: usize, services: usize) {
    let records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let (service, spec) = registration(i, services);
            let inst = Instance {
                spec,
                checks: Vec::new(),
                custom_health: None,
                maintenance: None,
                create_index: 1,
                modify_index: 1,
            };
            let json = serde_json::to_vec(&inst).expect("an instance serializes");
            (service, json)
        })
        .collect();
    let before = rss_bytes();
    let started = Instant::now();
    let mut entries: std::collections::BTreeMap<String, ServiceEntry> = Default::default();
    for (name, json) in &records {
        let inst: Instance = serde_json::from_slice(json).expect("a record parses");
        entries
            .entry(name.clone())
            .or_insert_with(|| ServiceEntry::new(name, 1))
            .put(Arc::new(inst));
    }
    let parsed = started.elapsed();
    let data = RegistryData {
        list_index: 1,
        services: entries.into_values().map(Arc::new).collect(),
        ..RegistryData::default()
    };
    let loaded = Registry::from_data(data, 1);
    println!(
        "{n} records parsed and put in {:.2} s, view built in {:.2} s",
        parsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    report("view after the load", before, n);
    std::mem::forget(loaded);
}
