//! Relevance of a hit, computed by the service from the hit's text rather than by the
//! database. SQLite's `bm25()` first counts, over the whole index, the messages that hold each
//! word (its inverse document frequency): for a word in most messages that is a walk of the
//! word's whole posting list, 35 ms at a million messages, on every search, whoever searches.
//! Here a search costs what the user's own matches cost, and both databases rank alike.

use super::snippet::find_terms;
use super::{words, SearchQuery};

/// BM25's saturation of repeated words.
const K1: f64 = 1.2;
/// BM25's weight of a text's length.
const B: f64 = 0.75;
/// The length, in words, that counts as ordinary for a message.
const AVERAGE_WORDS: f64 = 40.0;

/// BM25 of `text` for the terms of `query`, every term weighed alike (a search needs all of
/// them, so each hit has each one): more occurrences rank higher, with diminishing returns,
/// and a match in a short text above the same match in a long one. 0 when nothing matches.
pub fn relevance(text: &str, query: &SearchQuery) -> f64 {
    let chars: Vec<char> = text.chars().collect();
    let words = words(&chars);
    let matches = find_terms(&words, query);
    let length = words.len() as f64;
    let norm = K1 * (1.0 - B + B * length / AVERAGE_WORDS);
    (0..query.include.len())
        .map(|term| {
            let count = matches.iter().filter(|m| m.2 == term).count() as f64;
            count * (K1 + 1.0) / (count + norm)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(text: &str, q: &str) -> f64 {
        relevance(text, &SearchQuery::parse(q).unwrap())
    }

    #[test]
    fn more_occurrences_and_shorter_texts_rank_higher() {
        let long = format!("apple {}", "filler ".repeat(60));
        assert!(rank("apple apple apple", "apple") > rank("apple pie and cream", "apple"));
        assert!(rank("apple pie", "apple") > rank(&long, "apple"));
        assert!(rank("apple pie", "apple pie") > rank("apple pie", "apple"));
        assert_eq!(rank("pear", "apple"), 0.0);
        assert!(rank("Café", "cafe") > 0.0);
    }
}
