//! Server-sent events split out of a reply's body as its bytes arrive.
//!
//! Each byte is scanned once, when it arrives: only the unfinished line is kept between
//! reads, and it is never searched again. An event (every line since the last blank one)
//! larger than the bound fails the body at once, so a line that never ends costs neither
//! memory nor CPU beyond the bound. Of the SSE fields only `data` matters to a chat
//! completion; the others and comments are skipped (but count toward the bound).

use std::collections::VecDeque;

/// Why the body is not an event stream the service will read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SseError {
    /// One event grew past the bound.
    TooLarge,
    /// A line is not UTF-8.
    NotUtf8,
}

/// Splits bytes into the `data` of complete events.
#[derive(Debug)]
pub(super) struct SseDecoder {
    /// Largest event, in bytes, line ends included.
    max_event_bytes: usize,
    /// Bytes of the event so far, the unfinished line included.
    event_bytes: usize,
    /// The unfinished line.
    line: Vec<u8>,
    /// The event's `data` lines, each followed by a line feed.
    data: String,
    /// The event has a `data` field (perhaps empty).
    has_data: bool,
    /// The last line ended with a carriage return: a line feed next ends nothing more.
    after_cr: bool,
    /// No line has ended yet (a byte order mark may open the body).
    first_line: bool,
    /// Data of the events completed and not yet taken.
    events: VecDeque<String>,
}

impl SseDecoder {
    /// A decoder refusing events of more than `max_event_bytes`.
    pub(super) fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes,
            event_bytes: 0,
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            after_cr: false,
            first_line: true,
            events: VecDeque::new(),
        }
    }

    /// The data of the next complete event, oldest first.
    pub(super) fn next_event(&mut self) -> Option<String> {
        self.events.pop_front()
    }

    /// Reads the next bytes of the body. After an error the decoder must not be fed again.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            let end = bytes.iter().position(|&b| b == b'\n' || b == b'\r');
            let taken = end.map_or(bytes.len(), |end| end + 1);
            self.event_bytes += taken;
            if self.event_bytes > self.max_event_bytes {
                return Err(SseError::TooLarge);
            }
            match end {
                Some(end) => {
                    self.line.extend_from_slice(&bytes[..end]);
                    self.after_cr = bytes[end] == b'\r';
                    self.end_line()?;
                }
                None => self.line.extend_from_slice(bytes),
            }
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    /// Interprets the finished line: a blank line completes the event.
    fn end_line(&mut self) -> Result<(), SseError> {
        let mut line = std::str::from_utf8(&self.line).map_err(|_| SseError::NotUtf8)?;
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.event_bytes = 0;
            if std::mem::take(&mut self.has_data) {
                let mut data = std::mem::take(&mut self.data);
                data.pop();
                self.events.push_back(data);
            }
        } else {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            if field == "data" {
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                self.data.push('\n');
                self.has_data = true;
            }
        }
        self.line.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events of `chunks` fed one after another.
    fn events(max: usize, chunks: &[&[u8]]) -> Result<Vec<String>, SseError> {
        let mut decoder = SseDecoder::new(max);
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk)?;
            events.extend(std::iter::from_fn(|| decoder.next_event()));
        }
        Ok(events)
    }

    #[test]
    fn events_are_split_on_blank_lines_whatever_the_chunks() {
        let body = b"data: one\n\n: a comment\nevent: x\nid: 7\ndata:two\ndata:  three\n\n";
        let expected = vec!["one".to_owned(), "two\n three".to_owned()];
        assert_eq!(events(1024, &[body]).unwrap(), expected);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(events(1024, &bytes).unwrap(), expected);
    }

    #[test]
    fn every_line_end_is_understood() {
        let body: &[&[u8]] = &[b"\xef\xbb\xbfdata: a\r", b"\n\r\ndata: b\r\rdata: c\n\n"];
        assert_eq!(events(1024, body).unwrap(), vec!["a", "b", "c"]);
    }

    #[test]
    fn an_unfinished_event_is_not_handed_out() {
        assert_eq!(
            events(1024, &[b"data: [DONE]\n"]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(events(1024, &[b"data:\n\n"]).unwrap(), vec![""]);
        assert_eq!(
            events(1024, &[b"event: x\n\n"]).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_event_past_the_bound_fails_even_without_a_line_end() {
        // `data: ` and 10 bytes and the two line ends: 18 bytes.
        let event = b"data: 0123456789\n\n";
        assert_eq!(events(18, &[event, event]).unwrap().len(), 2);
        assert_eq!(events(17, &[event]), Err(SseError::TooLarge));
        // Many short lines of one event count together.
        assert_eq!(
            events(17, &[b"data: 01234\n", b"data: 56789\n"]),
            Err(SseError::TooLarge)
        );
        let endless = [b"data: ".as_slice()]
            .into_iter()
            .chain(std::iter::repeat_n(b"x".as_slice(), 100));
        assert_eq!(
            events(64, &endless.collect::<Vec<_>>()),
            Err(SseError::TooLarge)
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_refused() {
        assert_eq!(events(1024, &[b"data: \xff\n\n"]), Err(SseError::NotUtf8));
        // A character split between reads is whole once its line ends.
        assert_eq!(
            events(1024, &[b"data: \xc3", b"\xa9\n\n"]).unwrap(),
            vec!["\u{e9}"]
        );
    }
}
