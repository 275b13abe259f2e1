//! Snippets: about [`SNIPPET_CHARS`] characters of a hit's text around its best match, as
//! plain text, with the ranges of the matched words. The ranges count UTF-16 code units, the
//! unit of JavaScript's string indexes (`snippet.slice(start, end)`): the same as characters
//! except for those outside the Basic Multilingual Plane, such as emoji, which count two.

use serde::Serialize;
use utoipa::ToSchema;

use super::{words, SearchQuery, Word};

/// Characters of text in a snippet, besides the ellipses that mark a cut.
pub const SNIPPET_CHARS: usize = 160;
/// Characters kept before the first match, so it is read in context.
const LEAD_CHARS: usize = 30;
/// How far a cut moves to fall between words rather than inside one.
const SNAP_CHARS: usize = 15;
/// Marks where a snippet cuts its text.
const ELLIPSIS: char = '…';

/// A part of a text with the matched words marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// Plain text (runs of white space made one space), with `…` where it was cut.
    pub text: String,
    /// Where the matched words are in `text`.
    pub highlights: Vec<Highlight>,
}

/// A range of a snippet, in UTF-16 code units: `start` included, `end` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Highlight {
    /// First code unit.
    pub start: usize,
    /// Code unit after the last one.
    pub end: usize,
}

/// A match of one of the query's terms: characters `start..end` of the text, and which term.
#[derive(Debug, Clone, Copy)]
struct Match {
    start: usize,
    end: usize,
    term: usize,
}

/// The snippet of `text` for `query`: the whole text when it is short, otherwise the
/// [`SNIPPET_CHARS`] around the place with the most distinct terms (then the most matches).
pub fn snippet(text: &str, query: &SearchQuery) -> Snippet {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = collapsed.chars().collect();
    let matches = find(&words(&chars), query);
    let (start, end) = window(&chars, &matches);
    let mut out = String::new();
    let mut offsets = Vec::with_capacity(end - start + 1);
    let mut units = 0;
    if start > 0 {
        out.push(ELLIPSIS);
        units += ELLIPSIS.len_utf16();
    }
    for c in &chars[start..end] {
        offsets.push(units);
        out.push(*c);
        units += c.len_utf16();
    }
    offsets.push(units);
    if end < chars.len() {
        out.push(ELLIPSIS);
    }
    let highlights = matches
        .iter()
        .filter(|m| m.start >= start && m.end <= end)
        .map(|m| Highlight {
            start: offsets[m.start - start],
            end: offsets[m.end - start],
        })
        .collect();
    Snippet {
        text: out,
        highlights,
    }
}

/// Where the terms of `query` are among `words`, in order and without overlaps.
pub(super) fn find_terms(words: &[Word], query: &SearchQuery) -> Vec<(usize, usize, usize)> {
    find(words, query)
        .into_iter()
        .map(|m| (m.start, m.end, m.term))
        .collect()
}

/// Where the terms of `query` are among `words`, in order and without overlaps.
fn find(words: &[Word], query: &SearchQuery) -> Vec<Match> {
    let mut matches = Vec::new();
    let mut at = 0;
    while at < words.len() {
        let found = query.include.iter().enumerate().find_map(|(index, term)| {
            let count = term.folded.len();
            let candidates = words.get(at..at + count)?;
            let fits = candidates.iter().zip(&term.folded).enumerate().all(
                |(position, (word, wanted))| {
                    if term.prefix && position + 1 == count {
                        word.folded.starts_with(wanted.as_str())
                    } else {
                        word.folded == *wanted
                    }
                },
            );
            fits.then_some((index, count))
        });
        match found {
            Some((term, count)) => {
                matches.push(Match {
                    start: words[at].start,
                    end: words[at + count - 1].end,
                    term,
                });
                at += count;
            }
            None => at += 1,
        }
    }
    matches
}

/// The characters `start..end` of `chars` that the snippet shows.
fn window(chars: &[char], matches: &[Match]) -> (usize, usize) {
    let length = chars.len();
    if length <= SNIPPET_CHARS {
        return (0, length);
    }
    // The match that starts the window with the most distinct terms, then the most matches.
    let best = (0..matches.len())
        .max_by_key(|&first| {
            let within: Vec<&Match> = matches[first..]
                .iter()
                .take_while(|m| m.end <= matches[first].start + SNIPPET_CHARS - LEAD_CHARS)
                .collect();
            let mut terms: Vec<usize> = within.iter().map(|m| m.term).collect();
            terms.sort_unstable();
            terms.dedup();
            // `max_by_key` keeps the last of equals; the negated index prefers the first.
            (terms.len(), within.len(), usize::MAX - first)
        })
        .map(|index| matches[index]);
    let Some(anchor) = best else {
        return (0, snap_end(chars, SNIPPET_CHARS, 0));
    };
    let start = anchor
        .start
        .saturating_sub(LEAD_CHARS)
        .min(length - SNIPPET_CHARS);
    // Start after a space, if one is near and the match stays in.
    let start = if start == 0 {
        0
    } else {
        (start..(start + SNAP_CHARS).min(anchor.start))
            .find(|&i| chars[i - 1] == ' ')
            .unwrap_or(start)
    };
    let end = (start + SNIPPET_CHARS).min(length);
    (start, snap_end(chars, end, anchor.end))
}

/// `end` moved back to just before a space, if one is near and after `keep`.
fn snap_end(chars: &[char], end: usize, keep: usize) -> usize {
    if end >= chars.len() {
        return chars.len();
    }
    let floor = end.saturating_sub(SNAP_CHARS).max(keep);
    (floor..=end)
        .rev()
        .find(|&i| chars.get(i) == Some(&' '))
        .unwrap_or(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(snippet: &Snippet) -> Vec<String> {
        let units: Vec<u16> = snippet.text.encode_utf16().collect();
        snippet
            .highlights
            .iter()
            .map(|h| String::from_utf16(&units[h.start..h.end]).unwrap())
            .collect()
    }

    fn query(text: &str) -> SearchQuery {
        SearchQuery::parse(text).unwrap()
    }

    #[test]
    fn a_short_text_is_whole_with_its_words_marked() {
        let snippet = snippet("Un  Café,\nau lait; CAFE noir", &query("cafe"));
        assert_eq!(snippet.text, "Un Café, au lait; CAFE noir");
        assert_eq!(marked(&snippet), ["Café", "CAFE"]);
        assert_eq!(snippet.highlights[0], Highlight { start: 3, end: 7 });
    }

    #[test]
    fn ranges_count_utf16_units_after_emoji() {
        let snippet = snippet("🎉🎉 party time", &query("party"));
        assert_eq!(snippet.highlights, [Highlight { start: 5, end: 10 }]);
        assert_eq!(marked(&snippet), ["party"]);
    }

    #[test]
    fn phrases_and_prefixes_mark_what_matched() {
        let snippet = snippet(
            "the quick brown fox, quick fox, brownish",
            &query("\"quick brown\" brown* -fox"),
        );
        assert_eq!(marked(&snippet), ["quick brown", "brownish"]);
    }

    #[test]
    fn a_long_text_is_cut_around_the_best_place() {
        let filler = "lorem ipsum dolor sit amet ".repeat(20);
        let text = format!("{filler}needle here and haystack {filler}needle alone {filler}");
        let snippet = snippet(&text, &query("needle haystack"));
        assert!(snippet.text.starts_with('…') && snippet.text.ends_with('…'));
        assert!(snippet.text.chars().count() <= SNIPPET_CHARS + 2);
        assert_eq!(marked(&snippet), ["needle", "haystack"]);
        assert!(!snippet.text.starts_with("… ") && !snippet.text.ends_with(" …"));
    }

    #[test]
    fn a_match_at_the_end_keeps_a_full_window() {
        let text = format!("{} last", "word ".repeat(100));
        let snippet = snippet(&text, &query("last"));
        assert!(snippet.text.ends_with("last"));
        assert!(snippet.text.chars().count() > SNIPPET_CHARS - SNAP_CHARS);
        assert_eq!(marked(&snippet), ["last"]);
    }

    #[test]
    fn no_match_shows_the_start() {
        let text = "word ".repeat(100);
        let snippet = snippet(&text, &query("absent"));
        assert!(snippet.text.starts_with("word") && snippet.text.ends_with('…'));
        assert!(snippet.highlights.is_empty());
    }
}
