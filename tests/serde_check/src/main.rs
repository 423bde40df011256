//! Reads NDJSON on stdin and parses every line with the real serde into the two Rust structs
//! noetl producers use; prints one JSON line per input line:
//! {"line": N, "seed": null | "error", "crate": null | "error"}.
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::io::BufRead;

/// `shared/seed/events.rs`: string ids, no optional fields.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct SeedEvent {
    execution_id: String,
    event_type: String,
    step: String,
    status: String,
    created_at: DateTime<Utc>,
    context: serde_json::Value,
}

/// The later `noetl-events` crate: i64 ids, optional event_id / worker_id / meta, `payload` as an
/// alias of `context`.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct CrateEvent {
    execution_id: i64,
    #[serde(default)]
    event_id: Option<i64>,
    event_type: String,
    step: String,
    status: String,
    created_at: DateTime<Utc>,
    #[serde(alias = "payload")]
    context: serde_json::Value,
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

fn outcome<T: for<'de> Deserialize<'de>>(line: &str) -> serde_json::Value {
    match serde_json::from_str::<T>(line) {
        Ok(_) => serde_json::Value::Null,
        Err(e) => serde_json::Value::String(e.to_string()),
    }
}

fn main() {
    let stdin = std::io::stdin();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.expect("stdin is UTF-8 text");
        if line.trim().is_empty() {
            continue;
        }
        let report = serde_json::json!({
            "line": n + 1,
            "seed": outcome::<SeedEvent>(&line),
            "crate": outcome::<CrateEvent>(&line),
        });
        println!("{}", report);
    }
}
