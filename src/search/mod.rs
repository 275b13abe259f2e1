//! Full-text search, the parts that need no database: the query language users type
//! (`query`), and the snippets with highlight ranges cut from what matched (`snippet`). Both
//! split text into words the way SQLite's `unicode61` tokenizer does (`words`), so a snippet
//! marks the words the index matched.

pub mod query;
pub mod rank;
pub mod snippet;

pub use query::{QueryError, SearchQuery, Term};
pub use rank::relevance;
pub use snippet::{snippet, Snippet};

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Whether `c` belongs to a word: letters, digits and the marks that combine with them. Every
/// other character (spaces, punctuation, symbols, emoji, control characters) separates words.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// A word of a text: its characters `start..end` (indexes of `char`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The word without case or accents, as the index compares it.
    pub(crate) folded: String,
}

/// The words of `chars`, in order.
pub(crate) fn words(chars: &[char]) -> Vec<Word> {
    let mut words = Vec::new();
    let mut start = None;
    for (index, c) in chars.iter().copied().chain([' ']).enumerate() {
        match (start, is_word_char(c)) {
            (None, true) => start = Some(index),
            (Some(from), false) => {
                let text: String = chars[from..index].iter().collect();
                words.push(Word {
                    start: from,
                    end: index,
                    folded: fold(&text),
                });
                start = None;
            }
            _ => {}
        }
    }
    words
}

/// `word` without case or accents: `Café` and `cafe` fold alike (`unicode61 remove_diacritics
/// 2` on SQLite, `unaccent` and `lower` on PostgreSQL).
pub(crate) fn fold(word: &str) -> String {
    // Most words are ASCII, and ranking folds every word of every match.
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    word.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .filter(|c| !is_combining_mark(*c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        words(&chars).into_iter().map(|w| w.folded).collect()
    }

    #[test]
    fn words_split_on_everything_but_letters_and_digits() {
        assert_eq!(
            texts("Café au-lait, NAÏVE x2 🎉日本語\0end"),
            ["cafe", "au", "lait", "naive", "x2", "日本語", "end"]
        );
    }

    #[test]
    fn a_decomposed_accent_stays_in_its_word() {
        assert_eq!(texts("cafe\u{301} bar"), ["cafe", "bar"]);
        let chars: Vec<char> = "cafe\u{301} bar".chars().collect();
        assert_eq!(words(&chars)[0].end, 5);
    }
}
