//! The fields of `VirtualService` and `DestinationRule` specs that balancer
//! reads. Every other field lands in an `other` map, so that the
//! translation names each one it does not honour instead of dropping it.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

/// Fields present in the object that balancer does not read, by name.
pub type Other = BTreeMap<String, Value>;

/// Parses a spec, naming the path of the first thing that does not fit,
/// e.g. `spec.http[0].route[0].weight: invalid type: string "ten", expected
/// i32`.
pub fn parse<T: DeserializeOwned>(spec: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("spec: {inner}")
        } else {
            format!("spec.{path}: {inner}")
        }
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<Retries>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(flatten)]
    pub other: Other,
}

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex` (RE2, matching
/// the whole value).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
pub struct PortSelector {
    #[serde(default)]
    pub number: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    #[serde(default)]
    pub attempts: Option<i32>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors", default)]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<Value>,
    #[serde(flatten)]
    pub other: Other,
}

/// A Go/protobuf duration as Istio accepts it: `10s`, `1.5s`, `500ms`,
/// `1m30s`, `1h`.
pub fn duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * secs;
        rest = tail;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    #[test]
    fn durations_as_istio_writes_them() {
        assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "ten", "5d", "s"] {
            assert_eq!(duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_malformed_spec_names_the_path_in_one_line() {
        let err = parse::<VirtualServiceSpec>(&json!({
            "hosts": ["greeter"],
            "http": [{ "route": [{ "destination": { "host": "greeter" }, "weight": "ten" }] }]
        }))
        .unwrap_err();
        assert_eq!(
            err,
            "spec.http[0].route[0].weight: invalid type: string \"ten\", expected i32"
        );
        let err = parse::<DestinationRuleSpec>(&json!({ "subsets": [] })).unwrap_err();
        assert_eq!(err, "spec: missing field `host`");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn unread_fields_are_kept_by_name() {
        let vs: VirtualServiceSpec = parse(&json!({
            "hosts": ["greeter"], "tcp": [],
            "http": [{ "fault": { "abort": { "httpStatus": 503 } },
                       "route": [{ "destination": { "host": "greeter" } }] }]
        }))
        .unwrap();
        assert!(vs.other.contains_key("tcp"));
        assert!(vs.http[0].other.contains_key("fault"));
    }
}
