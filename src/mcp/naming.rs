//! The names the model calls tools by: `[a-zA-Z0-9_-]{1,64}`, unique within one turn.

use std::collections::{HashMap, HashSet};

/// The longest name a model function may have.
const MAX_NAME: usize = 64;

/// Model names for tools given as (server name, tool name) pairs, in order: the tool's own
/// name, or `<server name>__<tool>` where two tools share a name, made safe and unique.
pub(crate) fn assign(tools: &[(&str, &str)]) -> Vec<String> {
    let own: Vec<String> = tools.iter().map(|(_, tool)| sanitise(tool)).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &own {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let mut used = HashSet::new();
    tools
        .iter()
        .zip(&own)
        .map(|((server, tool), own)| {
            let base = if counts[own.as_str()] > 1 {
                sanitise(&format!("{server}__{tool}"))
            } else {
                own.clone()
            };
            unique(base, &mut used)
        })
        .collect()
}

/// The name with every other character replaced by `_`, at most 64 characters, never empty.
fn sanitise(raw: &str) -> String {
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        "tool".to_owned()
    } else {
        name
    }
}

/// The name, or the name with `_2`, `_3`, ... when it is taken.
fn unique(base: String, used: &mut HashSet<String>) -> String {
    if used.insert(base.clone()) {
        return base;
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            // Sanitised names are ASCII, so a byte index is a character index.
            let mut name = base[..base.len().min(MAX_NAME - suffix.len())].to_owned();
            name.push_str(&suffix);
            name
        })
        .find(|name| used.insert(name.clone()))
        .expect("some numbered name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_are_kept_when_they_do_not_clash() {
        assert_eq!(
            assign(&[("time", "get_time"), ("weather", "forecast")]),
            ["get_time", "forecast"]
        );
    }

    #[test]
    fn clashing_names_take_the_server_name() {
        assert_eq!(
            assign(&[
                ("Time server", "get_time"),
                ("other.time", "get_time"),
                ("x", "solo")
            ]),
            ["Time_server__get_time", "other_time__get_time", "solo"]
        );
    }

    #[test]
    fn names_are_safe_short_and_unique() {
        let long = "a".repeat(100);
        let names = assign(&[
            ("s", "tool.with spaces"),
            ("s", ""),
            (&long, &long),
            (&long, &long),
        ]);
        assert_eq!(names[0], "tool_with_spaces");
        assert_eq!(names[1], "tool");
        assert_eq!(names[2], "a".repeat(64));
        assert_eq!(names[3], format!("{}_2", "a".repeat(62)));
        for name in &names {
            assert!(name.len() <= 64);
            assert!(name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }
    }
}
