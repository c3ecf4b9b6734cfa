//! Reading the agent's `/metrics` (Prometheus text) in tests: the values of
//! a metric's samples whose labels include the given ones.

/// The values of `metric`'s samples with (at least) `labels`, in order;
/// histograms and summaries are not read. Panics on text that does not
/// parse: a test fails loudly on it.
pub fn values(text: &str, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("/metrics parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a counter or a gauge"),
        })
        .collect()
}

/// The sum of those values (0 when there is none).
pub fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    values(text, metric, labels).iter().sum()
}

/// The first of those values.
pub fn first(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    values(text, metric, labels).first().copied()
}

/// The value of the one such sample; panics when there are none or several.
pub fn one(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = values(text, metric, labels);
    assert_eq!(found.len(), 1, "{metric}{labels:?} in:\n{text}");
    found[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE calls counter\n\
        calls_total{service=\"a\",code=\"0\"} 3\n\
        calls_total{service=\"a\",code=\"14\"} 2\n\
        calls_total{service=\"b\",code=\"0\"} 7\n\
        # TYPE ready gauge\nready 1\n";

    #[test]
    fn samples_are_picked_by_name_and_labels() {
        assert_eq!(sum(TEXT, "calls_total", &[("service", "a")]), 5.0);
        assert_eq!(sum(TEXT, "calls_total", &[]), 12.0);
        assert_eq!(one(TEXT, "calls_total", &[("service", "b")]), 7.0);
        assert_eq!(first(TEXT, "ready", &[]), Some(1.0));
        assert_eq!(first(TEXT, "missing", &[]), None);
    }
}
