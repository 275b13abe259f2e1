//! The search language: words (all must match), `"exact phrases"`, `prefix*` and `-excluded`
//! words or phrases. Anything else is read as plain words: operators of the databases'
//! languages (`AND`, `OR`, `NEAR(`, `:`, `^`, parentheses) are words or separators here, and
//! the databases only ever get queries rendered from the parsed terms, each word quoted.

use super::{is_word_char, words};

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;
/// Most words in a query, over all its terms: each one is a lookup in the index.
pub const MAX_QUERY_WORDS: usize = 32;
/// Shortest prefix that `word*` looks for; shorter ones are plain words, since a one-letter
/// prefix stands for a large part of the vocabulary.
pub const MIN_PREFIX_CHARS: usize = 2;

/// A word or a phrase to find (or leave out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The words, in order, as typed: letters, digits and combining marks only.
    pub words: Vec<String>,
    /// The same words without case or accents, to find them in a text.
    pub folded: Vec<String>,
    /// Whether the last word is a prefix.
    pub prefix: bool,
}

/// A parsed query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Terms that a hit contains, every one.
    pub include: Vec<Term>,
    /// Terms that a hit does not contain.
    pub exclude: Vec<Term>,
}

/// Why a query cannot be run; each names `q` for the 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Blank.
    #[error("q: must not be empty")]
    Empty,
    /// Over [`MAX_QUERY_CHARS`].
    #[error("q: must be at most {MAX_QUERY_CHARS} characters")]
    TooLong,
    /// Over [`MAX_QUERY_WORDS`].
    #[error("q: must have at most {MAX_QUERY_WORDS} words")]
    TooManyWords,
    /// Only exclusions: there is nothing to look for.
    #[error("q: needs a word to look for; -word only leaves words out")]
    OnlyExclusions,
}

impl SearchQuery {
    /// Parses what a user typed. Never fails on syntax: a quote that is not closed runs to the
    /// end, and characters that are not letters or digits separate words.
    pub fn parse(input: &str) -> Result<Self, QueryError> {
        if input.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError::TooLong);
        }
        if input.trim().is_empty() {
            return Err(QueryError::Empty);
        }
        let chars: Vec<char> = input.chars().collect();
        let mut query = Self::default();
        let mut at = 0;
        while at < chars.len() {
            if chars[at].is_whitespace() {
                at += 1;
                continue;
            }
            let excluded = chars[at] == '-'
                && chars
                    .get(at + 1)
                    .is_some_and(|c| !c.is_whitespace() && *c != '-');
            if excluded {
                at += 1;
            }
            let (body, quoted_star, next) = if chars[at] == '"' {
                let end = chars[at + 1..]
                    .iter()
                    .position(|c| *c == '"')
                    .map_or(chars.len(), |offset| at + 1 + offset);
                let after = (end + 1).min(chars.len());
                // `"a phrase"*` is `"a phrase*"`.
                let star = chars.get(after) == Some(&'*');
                (&chars[at + 1..end], star, after + usize::from(star))
            } else {
                let end = chars[at..]
                    .iter()
                    .position(|c| c.is_whitespace() || *c == '"')
                    .map_or(chars.len(), |offset| at + offset);
                (&chars[at..end], false, end.max(at + 1))
            };
            let (body, prefix) = split_prefix(body);
            let prefix = prefix || quoted_star;
            at = next;
            if let Some(term) = Term::new(body, prefix) {
                let list = if excluded {
                    &mut query.exclude
                } else {
                    &mut query.include
                };
                if !list.contains(&term) {
                    list.push(term);
                }
            }
        }
        let count: usize = query
            .include
            .iter()
            .chain(&query.exclude)
            .map(|term| term.words.len())
            .sum();
        if count > MAX_QUERY_WORDS {
            return Err(QueryError::TooManyWords);
        }
        if query.include.is_empty() && !query.exclude.is_empty() {
            return Err(QueryError::OnlyExclusions);
        }
        Ok(query)
    }

    /// Whether there is nothing to look for (the query had no letters or digits).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
    }

    /// An FTS5 `MATCH` expression: the terms within `column`, and the `owner` column's token
    /// `owner`. Every word is a quoted string, so nothing a user typed is read as FTS5 syntax.
    pub fn fts5(&self, column: &str, owner: &str) -> String {
        let include: Vec<String> = self.include.iter().map(Term::fts5).collect();
        let mut terms = format!("{column} : ({})", include.join(" AND "));
        if !self.exclude.is_empty() {
            let exclude: Vec<String> = self.exclude.iter().map(Term::fts5).collect();
            terms = format!("{terms} NOT {column} : ({})", exclude.join(" OR "));
        }
        format!("owner : {} AND ({terms})", fts5_string(owner))
    }
}

/// `body` without the stars that end it, and whether they make its last word a prefix: they
/// do right after a letter or digit (`word*`), not after anything else (`word-*`).
fn split_prefix(body: &[char]) -> (&[char], bool) {
    let trimmed = body.len() - body.iter().rev().take_while(|c| c.is_whitespace()).count();
    let body = &body[..trimmed];
    let stars = body.iter().rev().take_while(|c| **c == '*').count();
    let kept = &body[..body.len() - stars];
    let prefix = stars > 0 && kept.last().is_some_and(|c| is_word_char(*c));
    (kept, prefix)
}

impl Term {
    /// The term that the characters `body` spell, if they hold a word.
    fn new(body: &[char], prefix: bool) -> Option<Self> {
        let found = words(body);
        let last = found.last()?;
        let prefix = prefix && last.end - last.start >= MIN_PREFIX_CHARS;
        Some(Self {
            words: found
                .iter()
                .map(|w| body[w.start..w.end].iter().collect())
                .collect(),
            folded: found.into_iter().map(|w| w.folded).collect(),
            prefix,
        })
    }

    /// The term in FTS5's language: a phrase of quoted words, the last one a prefix if so.
    fn fts5(&self) -> String {
        let phrase: Vec<String> = self.words.iter().map(|w| fts5_string(w)).collect();
        let star = if self.prefix { " *" } else { "" };
        format!("({}{star})", phrase.join(" + "))
    }
}

/// An FTS5 string literal. The words never hold a quote; doubling them keeps it so anyway.
fn fts5_string(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(words: &[&str], prefix: bool) -> Term {
        Term {
            words: words.iter().map(|w| (*w).to_owned()).collect(),
            folded: words.iter().map(|w| super::super::fold(w)).collect(),
            prefix,
        }
    }

    #[test]
    fn words_phrases_prefixes_and_exclusions() {
        let query = SearchQuery::parse(r#"Café "exact phrase" pref* -Gone -"old thing""#).unwrap();
        assert_eq!(
            query.include,
            [
                term(&["Café"], false),
                term(&["exact", "phrase"], false),
                term(&["pref"], true)
            ]
        );
        assert_eq!(
            query.exclude,
            [term(&["Gone"], false), term(&["old", "thing"], false)]
        );
        assert_eq!(query.include[0].folded, ["cafe"]);
    }

    #[test]
    fn operators_of_the_databases_are_plain_words() {
        let query = SearchQuery::parse(r#"a AND b OR NEAR(c d) col:e ^f {g}"#).unwrap();
        let words: Vec<&str> = query
            .include
            .iter()
            .flat_map(|t| t.words.iter().map(String::as_str))
            .collect();
        assert_eq!(
            words,
            ["a", "AND", "b", "OR", "NEAR", "c", "d", "col", "e", "f", "g"]
        );
        assert!(query.exclude.is_empty());
    }

    #[test]
    fn unclosed_quotes_stars_and_symbols_never_fail() {
        for input in [
            "\"",
            "*",
            "\"\"",
            "-",
            "--x",
            "'; DROP TABLE messages; --",
            "🎉",
            "\0",
            "a\0b",
            "\"open phrase",
            "x*y",
            "*x",
            "-*",
            "\"a b\"*",
            "((((",
            "NEAR(",
        ] {
            let parsed = SearchQuery::parse(input);
            assert!(
                parsed.is_ok() || parsed == Err(QueryError::OnlyExclusions),
                "{input:?}: {parsed:?}"
            );
        }
        assert!(SearchQuery::parse("*").unwrap().is_empty());
        assert_eq!(
            SearchQuery::parse("\"open phrase").unwrap().include,
            [term(&["open", "phrase"], false)]
        );
        assert_eq!(
            SearchQuery::parse("\"a b\"*").unwrap().include,
            [term(&["a", "b"], false)],
            "a one-letter prefix is a word"
        );
        assert_eq!(
            SearchQuery::parse("\"brown qui* \" \"x yz\"*")
                .unwrap()
                .include,
            [term(&["brown", "qui"], true), term(&["x", "yz"], true)]
        );
        assert_eq!(
            SearchQuery::parse("'; DROP").unwrap().include,
            [term(&["DROP"], false)]
        );
    }

    #[test]
    fn limits_and_empty_queries() {
        assert_eq!(SearchQuery::parse("  "), Err(QueryError::Empty));
        assert_eq!(
            SearchQuery::parse(&"x".repeat(MAX_QUERY_CHARS + 1)),
            Err(QueryError::TooLong)
        );
        let many: Vec<String> = (0..=MAX_QUERY_WORDS).map(|i| format!("w{i}")).collect();
        let many = many.join(" ");
        assert_eq!(SearchQuery::parse(&many), Err(QueryError::TooManyWords));
        assert_eq!(
            SearchQuery::parse("-alone"),
            Err(QueryError::OnlyExclusions)
        );
    }

    #[test]
    fn fts5_quotes_every_word() {
        let query = SearchQuery::parse(r#"Café "exact phrase" pref* -gone"#).unwrap();
        assert_eq!(
            query.fts5("content", "u7"),
            r#"owner : "u7" AND (content : (("Café") AND ("exact" + "phrase") AND ("pref" *)) NOT content : (("gone")))"#
        );
        assert_eq!(fts5_string("a\"b"), r#""a""b""#);
    }
}
