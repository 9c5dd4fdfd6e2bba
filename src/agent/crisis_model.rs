//! The crisis detector's learned second stage: a logistic-regression classifier over the
//! words the rule engine has already normalised (its training, `worldbridge crisis-train`,
//! is in [`super::crisis_train`]).
//!
//! The rules catch the phrases someone wrote a rule for; this stage generalises past them.
//! Its features come from [`CrisisDetector`]'s own normalisation (lower case, apostrophes,
//! contractions, slang read as its meaning, typos corrected to a rule word where one is
//! within reach), so there is one normaliser:
//! - `w:WORD` — each word; `b:WORD WORD` — two neighbouring words in one clause;
//!   `k:WORD WORD` — two words of one clause with one to six words between them;
//! - `c:GRAM` — the 3, 4 and 5 letter pieces of each word as typed (padded with `<` `>`,
//!   runs of three or more of one letter squeezed), so a typo still shares most pieces;
//! - `r:RULE`, `a:ADJUSTMENT`, `q:RESOURCES`, `i:IDIOM` — the rule engine's matches, and
//!   `s:BUCKET` — its best score, bucketed;
//! - `n:WORD` — a word at most three words after a negation in its clause ("i would
//!   never hurt myself"), and `l:BUCKET` — the message's length in words, bucketed (a
//!   one-word "sure" is not scored like a sentence).
//!
//! A message's score is `bias + (sum of its features' weights, each counted as often as it
//! occurs) / sqrt(number of features)`, and its probability the logistic of that. The
//! model can also overrule the rules, but only when it is all but sure: a crisis the rules
//! found stands unless the probability is below the file's `veto` (at most [`MAX_VETO`]),
//! and only in a message of at most [`VETO_MAX_WORDS`] words.
//! The weights live in `fixtures/crisis/model.tsv` (format at its top), are compiled into the
//! binary, and are regenerated from the training files by [`super::crisis_train::train`]: fixed fold assignment,
//! fixed shuffles from a fixed seed, so the same files give the same bytes.

/// The shipped weights, embedded like the rule files.
pub const BUILTIN_MODEL: (&str, &str) = (
    "fixtures/crisis/model.tsv",
    include_str!("../../fixtures/crisis/model.tsv"),
);

/// Word pairs within a clause are features up to this far apart (`b:` neighbours, `k:`
/// with one to six words between). A long reach pairs a verb with what it is about past a
/// phrase ("gave my whole card collection to my cousin", "picked the song for my
/// funeral"); out of fold on the nineteenth round's twenty-eight training files, with
/// [`EPOCHS`](super::crisis_train) passes, a reach of 3 caught 93.7 % of the crisis lines,
/// 5 94.1 %, 8 94.5 %, 12 and 20 no more, at the same false positives.
pub(super) const SKIP_REACH: usize = 8;

/// A message where the rule engine saw context that is usually safe (a negative
/// adjustment: game, fiction, technical, topic, news, history, a past third party), a
/// negated signal ("i would never kill myself") or a hotline question needs at least this
/// probability before the model alone fires.
pub const GUARDED_MIN: f32 = 0.9;

/// A message of at most this many words also needs [`GUARDED_MIN`] before the model alone
/// fires: over one or two words the model's average is one or two weights, and everyday
/// sign-offs and groans ("bye", "please", "never mind", "please stop") carry the words of
/// short crisis lines. Crisis words and slang in a short message are the rules' to catch
/// ("kms", "kill me"). Out of fold on the forty-six training files of the twenty-third round
/// the guard costs 4 crisis lines of 19,725 (and one false alarm more); on a hand-written
/// list of 100 everyday short chat lines (`short_chat_gets_no_protocol` holds them) it
/// takes the false alarms from 12 to 1 ("enough", which the detector of the session before
/// flagged too).
pub const SHORT_GUARDED_WORDS: usize = 2;

/// The largest veto a model file may carry: the model overrules the rules only when it is
/// at least 95 % sure a message is not a crisis.
pub const MAX_VETO: f32 = 0.05;

/// The longest message (in words) the veto applies to: the longest training lines the veto
/// was chosen on (106 words, the long posts of `train67.tsv` and `train69.tsv`); past them
/// nothing shows whether the model's average of many words still speaks for the one
/// sentence a rule caught. It was 40 while the training lines were shorter; with the
/// long posts in training, cross-validation caught 95.33 % of the crisis lines instead of
/// 95.10 % at the same false alarms (1,422 instead of 1,423 of 29,260) and overruled no
/// more of the lines the rules caught (16): the rules' own false alarms on long posts (a
/// novel's plot, a will, a farewell told in passing) were what the veto could not reach.
pub const VETO_MAX_WORDS: usize = 120;

/// Whether the model's veto may apply to the message behind `ev` (at most
/// [`VETO_MAX_WORDS`] words).
pub(crate) fn vetoable(ev: &Evidence<'_>) -> bool {
    ev.word_count() <= VETO_MAX_WORDS
}

/// What the rule engine and the normaliser saw in a message: what feature extraction reads.
pub(crate) struct Evidence<'a> {
    /// Clauses of words: `(word as understood, word as typed)`; `None` is a clause break.
    pub words: Vec<Option<(&'a str, &'a str)>>,
    /// `(prefix, name)` of every rule, adjustment, resources pattern and idiom that matched.
    pub matches: Vec<(&'static str, &'a str)>,
    /// The best rule score, if any rule matched.
    pub best: Option<f32>,
}

impl Evidence<'_> {
    /// How many words the message has (what [`SHORT_GUARDED_WORDS`] and
    /// [`VETO_MAX_WORDS`] count).
    pub(crate) fn word_count(&self) -> usize {
        self.words.iter().flatten().count()
    }
}

/// Receives features as the pieces of their name (joined, they are the name in the file).
pub(crate) trait Sink {
    fn add(&mut self, parts: &[&str]);

    /// The `c:` features of one word as typed; the same as [`char_grams`] sends to `add`.
    fn grams(&mut self, raw: &str) {
        char_grams(raw, self);
    }
}

/// Calls `sink` with every feature of `ev`, in a fixed order.
pub(crate) fn extract(ev: &Evidence<'_>, sink: &mut impl Sink) {
    let mut prev: Option<&str> = None;
    let mut prev_raw: Option<&str> = None;
    let mut clause: Vec<&str> = Vec::new();
    // Words left in the reach of the last negation of this clause.
    let mut negated = 0;
    let mut count = 0usize;
    for w in &ev.words {
        let Some((word, raw)) = *w else {
            clause.clear();
            prev = None;
            prev_raw = None;
            negated = 0;
            continue;
        };
        count += 1;
        sink.add(&["w:", word]);
        if negated > 0 {
            sink.add(&["n:", word]);
            negated -= 1;
        }
        if NEGATIONS.contains(&word) {
            negated = NEG_REACH;
        }
        if let Some(p) = prev {
            sink.add(&["b:", p, " ", word]);
        }
        // Pairs with one to six words between them ("saving up my pills").
        for q in clause.iter().rev().skip(1).take(SKIP_REACH - 1) {
            sink.add(&["k:", q, " ", word]);
        }
        clause.push(word);
        // A slang word read as several words has its letters counted once.
        if prev_raw.is_none_or(|p| !std::ptr::eq(p, raw)) {
            sink.grams(raw);
        }
        prev = Some(word);
        prev_raw = Some(raw);
    }
    for (prefix, name) in &ev.matches {
        sink.add(&[prefix, name]);
    }
    let bucket = match ev.best {
        None => "none",
        Some(s) if s < 0.0 => "neg",
        Some(s) if s < 0.5 => "low",
        Some(s) if s < 1.0 => "mid",
        Some(_) => "fire",
    };
    sink.add(&["s:", bucket]);
    let length = match count {
        0..=1 => "1",
        2 => "2",
        3..=4 => "3-4",
        5..=8 => "5-8",
        9..=16 => "9-16",
        _ => "17+",
    };
    sink.add(&["l:", length]);
}

/// Words that negate what follows them in a clause (after contractions are expanded).
const NEGATIONS: &[&str] = &["not", "never", "no", "nor", "without"];
/// How many words after a negation get an `n:` feature.
const NEG_REACH: usize = 3;

/// The 3-5 letter pieces of `<raw>` (ASCII words only: a piece must stay valid text).
pub(super) fn char_grams(raw: &str, sink: &mut (impl Sink + ?Sized)) {
    if !raw.is_ascii() || raw.is_empty() {
        return;
    }
    let len = raw.len();
    // Positions in the padded word `<raw>`: 0 is `<`, 1..=len the letters, len+1 `>`.
    let m = len + 2;
    for n in 3..=5 {
        if n > m {
            break;
        }
        for s in 0..=m - n {
            let e = s + n;
            let from = s.max(1) - 1;
            let to = (e - 1).min(len);
            let open = if s == 0 { "<" } else { "" };
            let close = if e == m { ">" } else { "" };
            sink.add(&["c:", open, &raw[from..to], close]);
        }
    }
}

pub(super) const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over the concatenated parts: the key of a feature in the weight table.
pub(super) fn hash(parts: &[&str]) -> u64 {
    parts.iter().fold(FNV_START, |h, p| fnv(h, p.as_bytes()))
}

pub(super) fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Longest word whose letter pieces the scorer hashes in place (longer ones take the
/// general path).
pub(super) const GRAM_BUF: usize = 48;

/// The weights, in an open-addressing table keyed by the feature's hash.
#[derive(Debug, Clone)]
pub struct Model {
    /// `(check, weight)`; check 0 marks an empty slot.
    slots: Vec<(u32, f32)>,
    mask: usize,
    bias: f32,
    threshold: f32,
    veto: f32,
    features: usize,
}

/// Sums the weights of a message's features.
pub(super) struct Scorer<'m> {
    pub(super) model: &'m Model,
    pub(super) sum: f32,
    pub(super) n: u32,
}

impl Sink for Scorer<'_> {
    fn add(&mut self, parts: &[&str]) {
        self.n += 1;
        self.sum += self.model.weight(hash(parts));
    }

    /// The pieces of length 3, 4 and 5 starting at one place share their hash prefix, so
    /// each start is hashed once and extended (the same keys as `char_grams`' names).
    fn grams(&mut self, raw: &str) {
        let len = raw.len();
        if !raw.is_ascii() || len == 0 || len + 2 > GRAM_BUF {
            return char_grams(raw, self);
        }
        let mut padded = [0u8; GRAM_BUF];
        padded[0] = b'<';
        padded[1..=len].copy_from_slice(raw.as_bytes());
        padded[len + 1] = b'>';
        let m = len + 2;
        let start = fnv(FNV_START, b"c:");
        for s in 0..m.saturating_sub(2) {
            let mut h = fnv(start, &padded[s..s + 2]);
            for e in s + 3..=(s + 5).min(m) {
                h = fnv(h, &padded[e - 1..e]);
                self.n += 1;
                self.sum += self.model.weight(h);
            }
        }
    }
}

impl Model {
    /// The shipped model.
    pub fn builtin() -> Model {
        // The file is part of the source tree and `the_shipped_model_parses` checks it, so
        // a failure here is a build defect, not bad input.
        Model::parse(BUILTIN_MODEL.0, BUILTIN_MODEL.1).expect("fixtures/crisis/model.tsv is valid")
    }

    /// Reads a model file. Errors name the file and the 1-based line.
    pub fn parse(name: &str, text: &str) -> Result<Model, String> {
        let (mut bias, mut threshold, mut veto) = (None, None, 0.0);
        let mut weights = Vec::new();
        for (no, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = format!("{name} line {}", no + 1);
            let (key, value) = line
                .split_once('\t')
                .ok_or_else(|| format!("{origin}: expected `feature<TAB>weight`, got {line:?}"))?;
            let value: f32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| format!("{origin}: {value:?} is not a number"))?;
            match key {
                "bias" => bias = Some(value),
                "threshold" if (0.0..=1.0).contains(&value) => threshold = Some(value),
                "threshold" => return Err(format!("{origin}: the threshold must be 0 to 1")),
                "veto" if (0.0..=MAX_VETO).contains(&value) => veto = value,
                "veto" => return Err(format!("{origin}: the veto must be 0 to {MAX_VETO}")),
                k if k.len() > 2 && k.as_bytes()[1] == b':' => weights.push((hash(&[k]), value)),
                k => {
                    return Err(format!(
                        "{origin}: {k:?} is not `bias`, `threshold`, `veto` or a feature `x:name`"
                    ))
                }
            }
        }
        let bias = bias.ok_or_else(|| format!("{name}: no `bias` line"))?;
        let threshold = threshold.ok_or_else(|| format!("{name}: no `threshold` line"))?;
        // At most half full: a feature the model lacks (most letter pieces) is known
        // absent after one or two probes, not five.
        let cap = (weights.len() * 2 + 1).next_power_of_two().max(16);
        let mut model = Model {
            slots: vec![(0, 0.0); cap],
            mask: cap - 1,
            bias,
            threshold,
            veto,
            features: weights.len(),
        };
        for (h, w) in weights {
            let check = (h >> 32) as u32 | 1;
            let mut i = h as usize & model.mask;
            loop {
                match model.slots[i] {
                    (0, _) => {
                        model.slots[i] = (check, w);
                        break;
                    }
                    (c, _) if c == check => {
                        return Err(format!("{name}: two features share the key {h:#x}"))
                    }
                    _ => i = (i + 1) & model.mask,
                }
            }
        }
        Ok(model)
    }

    fn weight(&self, h: u64) -> f32 {
        let check = (h >> 32) as u32 | 1;
        let mut i = h as usize & self.mask;
        loop {
            match self.slots[i] {
                (0, _) => return 0.0,
                (c, w) if c == check => return w,
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    /// The probability that the message behind `ev` is a crisis.
    pub(crate) fn probability(&self, ev: &Evidence<'_>) -> f32 {
        let mut s = Scorer {
            model: self,
            sum: 0.0,
            n: 0,
        };
        extract(ev, &mut s);
        let z = self.bias + s.sum / (s.n.max(1) as f32).sqrt();
        1.0 / (1.0 + (-z).exp())
    }

    /// The probability at which the model alone makes a message a crisis (chosen by
    /// cross-validation on the training files).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The probability below which the model overrules the rules: a message the rules
    /// found a crisis is not one when the model is this sure it is not (0: never; chosen
    /// with the threshold by the crisis lines they catch together, cross-validated).
    pub fn veto(&self) -> f32 {
        self.veto
    }

    /// How many features have a weight.
    pub fn len(&self) -> usize {
        self.features
    }

    pub fn is_empty(&self) -> bool {
        self.features == 0
    }
}
