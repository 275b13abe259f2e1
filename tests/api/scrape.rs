//! A `/metrics` scrape read with `prom_text_format_parser`, one sample per series as Prometheus
//! names them (`_bucket`, `_sum` and `_count` for histograms).

use std::collections::BTreeMap;

use prom_text_format_parser::{Type, ValueType};

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with `_bucket`, `_sum` or `_count` for histograms and summaries.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// Reads the Prometheus text exposition format; any malformed line is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        // The crate reads a TYPE line of an unknown type as a plain comment; the format
        // forbids one.
        if let Some(line) = text.lines().find(|line| is_malformed_type_line(line)) {
            return Err(format!("bad TYPE line: {line:?}"));
        }
        let parsed = prom_text_format_parser::Scrape::parse(text).map_err(|e| format!("{e:?}"))?;
        let samples = parsed
            .metrics
            .iter()
            .flat_map(|metric| {
                metric.samples.iter().map(|sample| Sample {
                    name: format!(
                        "{}{}",
                        metric.name,
                        suffix(metric.kind, sample.value.value_type)
                    ),
                    labels: sample
                        .labels
                        .iter()
                        .map(|label| (label.key.clone(), label.value.clone()))
                        .collect(),
                    value: sample.value.value.as_f64(),
                })
            })
            .collect();
        Ok(Self { samples })
    }

    /// Every sample.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Whether any series is named `name`.
    pub fn has_series(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The value of the series `name` with exactly these labels, or 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map_or(0.0, |s| s.value)
    }
}

/// The suffix of a sample's series name, which the crate keeps apart from the metric's name.
fn suffix(kind: Type, value: ValueType) -> &'static str {
    match (kind, value) {
        (Type::Histogram, ValueType::Sample) => "_bucket",
        (_, ValueType::Sum) => "_sum",
        (_, ValueType::Count) => "_count",
        _ => "",
    }
}

fn is_malformed_type_line(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), ["#", "TYPE", ..])
        && !matches!(
            words.as_slice(),
            [
                "#",
                "TYPE",
                _,
                "counter" | "gauge" | "histogram" | "summary" | "untyped"
            ]
        )
}

#[test]
fn the_parser_refuses_malformed_text() {
    assert!(Scrape::parse("# TYPE a counter\na{b=\"c\"} 1\n").is_ok());
    assert!(Scrape::parse("a{b=\"c\\\"d\"} 2 1700000000\n").is_ok());
    for bad in [
        "a{b=c} 1",
        "a 1 2 3",
        "1a 1",
        "a{b=\"c\" 1",
        "a x",
        "# TYPE a thing",
        // A TYPE line must come before the metric's samples.
        "a{b=\"c\"} 1\n# TYPE a counter",
    ] {
        assert!(Scrape::parse(&format!("{bad}\n")).is_err(), "{bad}");
    }
}
