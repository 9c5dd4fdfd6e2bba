//! Streamed replies: a reply cut into parts at sentence ends, the protocol text as part 0
//! when the crisis protocol fired, and one `thinking` signal when no part came in time.
//!
//! Socket-free: [`Chunker`] cuts text, [`Stream`] keeps one call's parts in order and the
//! concatenation the session stores. The hub queues each [`Part`] in `App::parts` for the
//! door of the [`crate::app::calls::ReplyTo`] that waits; each door renders it its way.

use std::time::Instant;

/// Characters that end a sentence; a cut falls on the whitespace after one of them.
const SENTENCE_ENDS: [char; 4] = ['.', '!', '?', '…'];
/// Closing marks that may stand between a sentence end and the whitespace after it.
const CLOSERS: [char; 8] = ['"', '\'', '”', '’', ')', ']', '»', '*'];

/// What a streamed call sends before its final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The next piece of the reply; `crisis` is true for the protocol text (index 0).
    Text {
        index: u32,
        text: String,
        crisis: bool,
    },
    /// Nothing was ready after `agent.thinking_after_ms`: sent once, before any part.
    Thinking,
}

/// Cuts a growing text into parts at sentence ends.
///
/// A cut falls just before the whitespace that follows `.`, `!`, `?` or `…` (closing
/// quotes and brackets may stand between), and before every newline; a part is at least
/// `min_chars` characters, so short sentences travel together. What follows a cut (its
/// whitespace included) begins the next part, so the parts concatenate to the text; the
/// reply's trailing whitespace is dropped when it ends.
#[derive(Debug, Clone)]
pub struct Chunker {
    buf: String,
    /// Bytes of `buf` already looked at for a cut, and the characters in them.
    scanned: usize,
    scanned_chars: usize,
    min_chars: usize,
}

impl Chunker {
    pub fn new(min_chars: usize) -> Chunker {
        Chunker {
            buf: String::new(),
            scanned: 0,
            scanned_chars: 0,
            min_chars: min_chars.max(1),
        }
    }

    /// Add text; the parts it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut() {
            let rest = self.buf.split_off(cut);
            out.push(std::mem::replace(&mut self.buf, rest));
            (self.scanned, self.scanned_chars) = (0, 0);
        }
        out
    }

    /// The reply ended: what is left, without trailing whitespace (`None` if nothing is).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        (self.scanned, self.scanned_chars) = (0, 0);
        let rest = rest.trim_end();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// The first byte offset past `scanned` where a part of at least `min_chars` ends.
    fn next_cut(&mut self) -> Option<usize> {
        let new = self.buf[self.scanned..].char_indices();
        for (n, (at, c)) in new.enumerate() {
            let (i, chars) = (self.scanned + at, self.scanned_chars + n);
            if c.is_whitespace() && chars >= self.min_chars {
                let head = &self.buf[..i];
                let ends_sentence = head
                    .trim_end_matches(CLOSERS)
                    .ends_with(SENTENCE_ENDS.as_slice());
                if (c == '\n' || ends_sentence) && !head.trim().is_empty() {
                    return Some(i);
                }
            }
        }
        self.scanned_chars += self.buf[self.scanned..].chars().count();
        self.scanned = self.buf.len();
        None
    }
}

/// One streamed call's state: the parts sent so far and what the session will store.
#[derive(Debug, Clone)]
pub struct Stream {
    chunker: Chunker,
    next_index: u32,
    /// The concatenation of every part sent: the reply the session stores.
    pub text: String,
    /// The protocol text (or the hotline numbers) went first as part 0.
    pub lead: bool,
    /// The crisis protocol's own text was sent (as part 0, or later if it fired late).
    pub crisis_sent: bool,
    /// The model's first words have been seen (those after a lead get a blank line).
    model_began: bool,
    /// When `thinking` is due if no part has gone by then; `None` once moot.
    thinking_at: Option<Instant>,
    /// When the first part went out (for the time-to-first-part metric).
    pub first_part: Option<Instant>,
    /// The model streamed chunks of its own (its final text then only confirms them).
    pub upstream: bool,
    /// When the whole reply is due (`agent.timeout_s` after the submit); set at the
    /// first chunk, whose gap timer then moves the call's deadline.
    pub whole_by: Option<Instant>,
}

impl Stream {
    pub fn new(min_chars: usize, thinking_at: Instant) -> Stream {
        Stream {
            chunker: Chunker::new(min_chars),
            next_index: 0,
            text: String::new(),
            lead: false,
            crisis_sent: false,
            model_began: false,
            thinking_at: Some(thinking_at),
            first_part: None,
            upstream: false,
            whole_by: None,
        }
    }

    /// Whether any part has gone out.
    pub fn started(&self) -> bool {
        self.next_index > 0
    }

    fn part(&mut self, text: String, crisis: bool, now: Instant) -> Part {
        self.text.push_str(&text);
        self.thinking_at = None;
        self.first_part.get_or_insert(now);
        let index = self.next_index;
        self.next_index += 1;
        Part::Text {
            index,
            text,
            crisis,
        }
    }

    /// The protocol text (`crisis`) or the hotline numbers, before the model's words.
    pub fn lead(&mut self, text: &str, crisis: bool, now: Instant) -> Part {
        self.lead = true;
        self.crisis_sent |= crisis;
        self.part(text.to_string(), crisis, now)
    }

    /// The crisis protocol fired after parts went out: its text follows them.
    pub fn late_crisis(&mut self, text: &str, now: Instant) -> Vec<Part> {
        let mut out = self.flush(now);
        self.crisis_sent = true;
        let sep = if self.text.is_empty() { "" } else { "\n\n" };
        out.push(self.part(format!("{sep}{text}"), true, now));
        out
    }

    /// Some of the model's words: the parts they completed. The model's leading
    /// whitespace is dropped; after a lead, its words begin with a blank line.
    pub fn model(&mut self, chunk: &str, now: Instant) -> Vec<Part> {
        let chunk = if self.model_began {
            chunk
        } else {
            let t = chunk.trim_start();
            if t.is_empty() {
                return Vec::new();
            }
            self.model_began = true;
            if !self.text.is_empty() {
                let mut out = self.chunker.push("\n\n");
                out.extend(self.chunker.push(t));
                return self.parts(out, now);
            }
            t
        };
        let cut = self.chunker.push(chunk);
        self.parts(cut, now)
    }

    fn parts(&mut self, texts: Vec<String>, now: Instant) -> Vec<Part> {
        texts
            .into_iter()
            .map(|t| self.part(t, false, now))
            .collect()
    }

    /// The model is done (or failed): what its words left unsent.
    pub fn flush(&mut self, now: Instant) -> Vec<Part> {
        let rest = self.chunker.finish();
        self.parts(rest.into_iter().collect(), now)
    }

    /// One more part after the model's (the 988 line of a flagged session).
    pub fn tail(&mut self, text: String, now: Instant) -> Vec<Part> {
        if text.is_empty() {
            return Vec::new();
        }
        vec![self.part(text, false, now)]
    }

    /// A part the node that owns the user's session sent for this call (cluster mode):
    /// passed on unless this node already sent that index itself (its own lead, part 0,
    /// which the owner sends too).
    pub fn relayed(
        &mut self,
        index: u32,
        text: String,
        crisis: bool,
        now: Instant,
    ) -> Option<Part> {
        if index < self.next_index {
            return None;
        }
        self.crisis_sent |= crisis;
        self.model_began = true;
        self.next_index = index;
        Some(self.part(text, crisis, now))
    }

    /// Whether `thinking` is due now (at most once, and never after a part).
    pub fn thinking_due(&mut self, now: Instant) -> bool {
        match self.thinking_at {
            Some(t) if t <= now => {
                self.thinking_at = None;
                true
            }
            _ => false,
        }
    }

    /// When `thinking` will be due, for the loop's poll timeout.
    pub fn thinking_deadline(&self) -> Option<Instant> {
        self.thinking_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cut(min: usize, pieces: &[&str]) -> Vec<String> {
        let mut c = Chunker::new(min);
        let mut out: Vec<String> = pieces.iter().flat_map(|p| c.push(p)).collect();
        out.extend(c.finish());
        out
    }

    #[test]
    fn the_chunker_cuts_at_sentence_ends_and_newlines() {
        // (min chars, input pieces, expected parts)
        let table: &[(usize, &[&str], &[&str])] = &[
            (
                1,
                &["One. Two! Three? Four… Five"],
                &["One.", " Two!", " Three?", " Four…", " Five"],
            ),
            (1, &["a\nb\n\nc"], &["a", "\nb", "\n\nc"]),
            // The whitespace after the sentence end decides; "3.5" and "e.g.x" are not ends.
            (1, &["Pi is 3.14 ok. Next"], &["Pi is 3.14 ok.", " Next"]),
            // Closing quotes stay with their sentence.
            (
                1,
                &["He said \"go.\" Then left."],
                &["He said \"go.\"", " Then left."],
            ),
            // Short sentences travel together up to the minimum.
            (
                10,
                &["Hi. Yes. Indeed it is. Ok"],
                &["Hi. Yes. Indeed it is.", " Ok"],
            ),
            // A reply shorter than the minimum is one part.
            (60, &["Short. Reply."], &["Short. Reply."]),
            // Token by token, the same cuts; a cut waits for the whitespace after the end.
            (
                1,
                &["Hel", "lo.", " Wor", "ld!", "  "],
                &["Hello.", " World!"],
            ),
            // Trailing whitespace is dropped at the end; nothing but whitespace is no part.
            (1, &["Done.\n\n"], &["Done."]),
            (1, &["   "], &[]),
            (1, &[""], &[]),
        ];
        for (min, pieces, want) in table {
            let got = cut(*min, pieces);
            assert_eq!(got, *want, "min {min}, pieces {pieces:?}");
            let joined: String = pieces.concat();
            assert_eq!(got.concat(), joined.trim_end(), "the parts concatenate");
        }
    }

    #[test]
    fn parts_are_at_least_min_chars_unless_the_reply_ends() {
        let text = "I hear you. That sounds hard. Tell me more about the garden? \
                    The roses bloomed early this year! And the fountain sings.\nGoodbye.";
        for min in [1, 10, 30, 60, 200] {
            let parts = cut(min, &[text]);
            let (last, rest) = parts.split_last().expect("parts");
            for p in rest {
                assert!(p.chars().count() >= min, "{p:?} shorter than {min}");
            }
            assert!(!last.is_empty());
            assert_eq!(parts.concat(), text);
        }
    }

    fn texts(parts: &[Part]) -> Vec<(u32, String, bool)> {
        parts
            .iter()
            .filter_map(|p| match p {
                Part::Text {
                    index,
                    text,
                    crisis,
                } => Some((*index, text.clone(), *crisis)),
                Part::Thinking => None,
            })
            .collect()
    }

    #[test]
    fn a_lead_is_part_0_and_the_model_follows_after_a_blank_line() {
        let now = Instant::now();
        let mut s = Stream::new(1, now + Duration::from_secs(2));
        let mut parts = vec![s.lead("PROTOCOL", true, now)];
        parts.extend(s.model("  \n Still here. With", now));
        parts.extend(s.model(" you.", now));
        parts.extend(s.flush(now));
        assert_eq!(
            texts(&parts),
            vec![
                (0, "PROTOCOL".into(), true),
                (1, "\n\nStill here.".into(), false),
                (2, " With you.".into(), false)
            ]
        );
        assert_eq!(s.text, "PROTOCOL\n\nStill here. With you.");
    }

    #[test]
    fn thinking_is_due_once_and_never_after_a_part() {
        let now = Instant::now();
        let later = now + Duration::from_millis(10);
        let mut s = Stream::new(1, later);
        assert!(!s.thinking_due(now));
        assert_eq!(s.thinking_deadline(), Some(later));
        assert!(s.thinking_due(later));
        assert!(!s.thinking_due(later), "once");
        let mut t = Stream::new(1, later);
        let _ = t.model("Hello. ", now);
        assert!(!t.thinking_due(later), "a part went first");
        assert_eq!(t.thinking_deadline(), None);
    }

    #[test]
    fn a_late_crisis_follows_the_parts_sent() {
        let now = Instant::now();
        let mut s = Stream::new(1, now);
        let mut parts = s.model("Fine. And", now);
        parts.extend(s.late_crisis("PROTOCOL", now));
        assert_eq!(
            texts(&parts),
            vec![
                (0, "Fine.".into(), false),
                (1, " And".into(), false),
                (2, "\n\nPROTOCOL".into(), true)
            ]
        );
        assert_eq!(s.text, "Fine. And\n\nPROTOCOL");
    }
}
