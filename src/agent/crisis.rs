//! The crisis protocol: a detector for suicide, self-harm, hopelessness and desperation
//! signals in what a user says, and the fixed texts that answer them.
//!
//! None of this depends on the model. The loop runs [`CrisisDetector::assess`] on every
//! user message. When it finds a crisis, the reply starts with [`CRISIS_TEXT`] whatever the
//! agent does ([`crisis_reply`]) and later replies in that session keep the 988 line
//! ([`keep_lifeline`]). When the message only asks about the hotlines themselves ("is 988
//! open at night?"), the reply starts with [`RESOURCES_TEXT`] instead ([`resources_reply`]).
//!
//! Detection has two stages, both offline and deterministic. The first is a small scored
//! rule engine over normalised tokens, explainable rule by rule:
//! 1. the text is split into words (lowercase, apostrophes straightened, contractions
//!    expanded with or without the apostrophe, punctuation as clause breaks);
//! 2. each word is looked up in the vocabulary of the rule files: exactly, then with
//!    repeated letters squeezed ("diieee" → "die"), then within one edit for words of five
//!    letters or more that keep their first letter ("suicde" → "suicide"); slang words
//!    expand to their meaning ("kms" → "kill myself");
//! 3. idioms ("this traffic is killing me") mask the words they cover;
//! 4. patterns over words and word classes (`SELF ~2 WANT to DIE`) fire rules with a
//!    category and a weight; a negation just before a match or inside a gap blocks it;
//! 5. adjustments add or subtract (fiction, game, technical or topic context subtracts; a
//!    plan or a time marker adds) and the message is a crisis when the best rule plus the
//!    adjustments reaches 1.0.
//!
//! The second ([`crisis_model`](super::crisis_model)) is a logistic-regression classifier
//! over the same normalised words, their pairs, their letter pieces and the rules' matches,
//! trained on the labelled files in `fixtures/crisis/eval/`: it catches wordings no rule
//! was written for. A message is a crisis when the rules say so, or when the classifier's
//! probability reaches its threshold (chosen by cross-validation) — a stricter one
//! ([`GUARDED_MIN`]) when the rules saw a safe context (game, fiction, technical talk,
//! news, a past third party) or a question about the hotlines. The classifier overrules
//! the rules only when it is all but sure a message is not a crisis (its probability
//! under the model's `veto`, at most 5 %, chosen with the threshold by the crisis lines
//! caught out of fold): "i nearly killed myself laughing", "enable kms for the intel
//! graphics".
//!
//! The rules live in `fixtures/crisis/*.txt` (format at the top of `lexicon.txt`), are
//! compiled into the binary, and `agent.crisis_file` can extend them at start-up. A message
//! costs one pass to normalise plus, per word, a look at the few patterns that can start at
//! that word.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::crisis_model::{vetoable, Evidence, Model, GUARDED_MIN, SHORT_GUARDED_WORDS};

/// FNV-1a: short words hash several times faster than with the default SipHash, and the
/// keys are our own rule words, so flooding resistance buys nothing here.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type WordMap<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

/// The shipped rule files, in load order; the format is documented in `lexicon.txt`.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        "fixtures/crisis/lexicon.txt",
        include_str!("../../fixtures/crisis/lexicon.txt"),
    ),
    (
        "fixtures/crisis/rules.txt",
        include_str!("../../fixtures/crisis/rules.txt"),
    ),
];

/// A message is a crisis when its best rule plus its adjustments reach this score.
pub const THRESHOLD: f32 = 1.0;

/// What kind of crisis a message signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Suicide,
    SelfHarm,
    Hopelessness,
    Desperation,
}

impl Category {
    /// Every category, most urgent first.
    pub const ALL: [Category; 4] = [
        Category::Suicide,
        Category::SelfHarm,
        Category::Hopelessness,
        Category::Desperation,
    ];

    /// The name used in the rule files, in logs and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Suicide => "suicide",
            Category::SelfHarm => "self_harm",
            Category::Hopelessness => "hopelessness",
            Category::Desperation => "desperation",
        }
    }

    fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A crisis detection: the category of the best rule and the names of every rule and
/// adjustment that fired (never the message itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub category: Category,
    pub features: Vec<String>,
    /// The best rule's score with its adjustments (0 when no rule matched).
    pub score: f32,
    /// Which stage fired.
    pub stage: Stage,
}

/// Which stage of the detector found a crisis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The rules reached their threshold; the classifier did not (or there is none).
    Rules,
    /// The classifier alone.
    Model,
    /// Both.
    Both,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Rules, Stage::Model, Stage::Both];

    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Rules => "rules",
            Stage::Model => "model",
            Stage::Both => "both",
        }
    }
}

/// What a message calls for.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The full protocol ([`crisis_reply`]).
    Crisis(Signal),
    /// A question about the hotlines: the numbers only ([`resources_reply`]); carries the
    /// names of the `resources` patterns that matched.
    Resources(Vec<String>),
    /// An ordinary message.
    Nothing,
}

/// A token that is no vocabulary word.
const UNKNOWN: u32 = u32::MAX - 1;
/// A clause break (sentence punctuation, comma, new line).
const BREAK: u32 = u32::MAX;

/// Words shorter than this are never typo-corrected.
const TYPO_MIN_CHARS: usize = 5;
/// How many tokens apart an adjustment may be from a rule and still change its score.
const ADJUST_REACH: usize = 15;
/// Words shorter than this are not checked for two swapped letters.
const TYPO_SWAP_MIN_CHARS: usize = 4;
/// How far back from a match a negation blocks it.
const NEG_LOOKBACK: usize = 3;
/// Most classes the rule files may define (the class set of a word is a `u128`).
const MAX_CLASSES: usize = 128;

/// A pattern that matched, and the tokens it covers.
#[derive(Debug, Clone, Copy)]
struct Hit {
    pattern: u32,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    id: u32,
    classes: u128,
    masked: bool,
    neg: bool,
    /// The word as typed: a byte range of [`Analysis::raw`].
    raw: (u32, u32),
}

impl Tok {
    fn is_word(&self) -> bool {
        self.id != BREAK && !self.masked
    }
}

/// One position of a compiled pattern.
#[derive(Debug, Clone)]
enum Elem {
    /// One word: one of `words`, or any word in one of `classes`; may be skipped.
    Alt {
        words: Vec<u32>,
        classes: u128,
        optional: bool,
        /// `.` among the alternatives: a clause break or the end of the message.
        or_end: bool,
    },
    /// `a_b|c_d`: one of several word sequences (each word a literal or a class).
    Phrases {
        options: Vec<Vec<(u32, u128)>>,
        optional: bool,
        or_end: bool,
    },
    /// `*`: any one word.
    Any,
    /// `~N`: 0 to N words, none of them a negation.
    Gap(u8),
}

impl Elem {
    fn accepts(&self, t: &Tok) -> bool {
        match self {
            Elem::Alt { words, classes, .. } => {
                t.is_word() && (t.classes & classes != 0 || words.contains(&t.id))
            }
            Elem::Phrases { options, .. } => options.iter().any(|o| one_accepts(o[0], t)),
            Elem::Any => t.is_word(),
            Elem::Gap(_) => false,
        }
    }
}

/// Whether one word of a phrase option (a literal id, or classes) accepts `t`.
fn one_accepts((id, classes): (u32, u128), t: &Tok) -> bool {
    t.is_word() && (t.classes & classes != 0 || (classes == 0 && t.id == id))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Rule { category: Category, weight: f32 },
    Adjust(f32),
    Resources,
    Idiom,
}

#[derive(Debug, Clone)]
struct Pattern {
    kind: Kind,
    name: String,
    elems: Vec<Elem>,
    /// One entry per element every match must use: what can fill it. A message without
    /// the words for one of them cannot match (checked before matching).
    needs: Vec<Need>,
    /// The shortest list of literal words one of which every match must use (no class
    /// can stand in), if the pattern has one: a message without any of them is not
    /// looked at for this pattern at all (see [`CrisisDetector::hits`]).
    gate: Option<Vec<u32>>,
}

/// What a mandatory pattern element needs in a message (see [`Present::allows`]).
#[derive(Debug, Clone)]
enum Need {
    /// One of these words, or a word of one of these classes. The words as a sparse
    /// bitset over word ids (a 64-id block and its bits), so a long alternative is a few
    /// AND operations with [`Present`]'s bitset, not a search per word.
    Any(Vec<(u32, u64)>, u128),
    /// Every word of at least one of these sequences (each word a literal id, or classes):
    /// `for_my_boat|for_the_tent` needs "for", "my" and "boat", or "for", "the" and "tent",
    /// not just a "for".
    AllOfOne(Vec<Vec<(u32, u128)>>),
}

impl Pattern {
    fn new(kind: Kind, name: String, elems: Vec<Elem>) -> Pattern {
        let mut needs = Vec::new();
        let mut gates: Vec<Vec<u32>> = Vec::new();
        for e in &elems {
            match e {
                Elem::Alt {
                    words,
                    classes,
                    optional: false,
                    or_end: false,
                } => {
                    if *classes == 0 && !words.is_empty() {
                        gates.push(words.clone());
                    }
                    needs.push(Need::Any(blocks(words), *classes))
                }
                Elem::Phrases {
                    options,
                    optional: false,
                    or_end: false,
                } => {
                    // Every option needs each of its literal words (or a word of its
                    // class): one of them per option, as a bitset, rules out a long list
                    // of phrases in a few AND operations, before the check of every word
                    // of every phrase. The one with the highest id: words are numbered
                    // in file order and the lexicon's common words come first, so it is
                    // most often the option's rarest word.
                    let (mut keys, mut key_classes) = (Vec::new(), 0u128);
                    for o in options {
                        match o.iter().filter(|(_, cs)| *cs == 0).max_by_key(|(w, _)| *w) {
                            Some(&(w, _)) => keys.push(w),
                            None => key_classes |= o.iter().fold(0, |acc, (_, cs)| acc | cs),
                        }
                    }
                    if key_classes == 0 && !keys.is_empty() {
                        gates.push(keys.clone());
                    }
                    if options.len() > 1 {
                        needs.push(Need::Any(blocks(&keys), key_classes));
                    }
                    needs.push(Need::AllOfOne(options.clone()));
                }
                _ => {}
            }
        }
        // Most messages lack a pattern's rarest word: check the cheapest, most selective
        // needs first (a class is in most messages; a few literal words are in few).
        needs.sort_by_key(Need::cost);
        let gate = gates.into_iter().min_by_key(Vec::len);
        Pattern {
            kind,
            name,
            elems,
            needs,
            gate,
        }
    }
}

impl Need {
    /// An estimate of how long the check takes and how likely it is to pass: the order
    /// in which [`Present::allows`] checks a pattern's needs.
    fn cost(&self) -> usize {
        match self {
            Need::Any(blocks, 0) => blocks.len(),
            Need::Any(blocks, _) => 64 + blocks.len(),
            Need::AllOfOne(options) => options.iter().map(Vec::len).sum(),
        }
    }
}

/// `words` as a sparse bitset: (id / 64, the bits of the ids in that block), by block.
fn blocks(words: &[u32]) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for &w in words {
        let (block, bit) = (w / 64, 1u64 << (w % 64));
        match out.iter_mut().find(|(b, _)| *b == block) {
            Some((_, bits)) => *bits |= bit,
            None => out.push((block, bit)),
        }
    }
    out.sort_unstable();
    out
}

/// Which vocabulary words and classes occur in a message.
struct Present {
    words: Vec<u64>,
    classes: u128,
}

impl Present {
    fn new(toks: &[Tok], vocab_len: usize) -> Present {
        let mut words = vec![0u64; vocab_len / 64 + 1];
        let mut classes = 0;
        for t in toks.iter().filter(|t| t.is_word() && t.id != UNKNOWN) {
            if let Some(w) = words.get_mut(t.id as usize / 64) {
                *w |= 1 << (t.id % 64);
            }
            classes |= t.classes;
        }
        Present { words, classes }
    }

    fn has(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Whether every element `pat` must use has its words in the message (masked words
    /// are not in it, and no pattern matches them either).
    fn allows(&self, pat: &Pattern) -> bool {
        let one = |&(w, cs): &(u32, u128)| {
            if cs != 0 {
                cs & self.classes != 0
            } else {
                self.has(w)
            }
        };
        pat.needs.iter().all(|need| match need {
            Need::Any(blocks, cs) => {
                cs & self.classes != 0
                    || blocks
                        .iter()
                        .any(|&(b, bits)| self.words.get(b as usize).is_some_and(|w| w & bits != 0))
            }
            Need::AllOfOne(options) => options.iter().any(|o| o.iter().all(one)),
        })
    }
}

/// What a vocabulary key stands for.
#[derive(Debug, Clone)]
enum Lex {
    Word(u32),
    /// A slang word and the words it means.
    Slang(Vec<u32>),
}

/// Rule files compiled for matching. Build once (at start-up) and share: `assess` takes
/// `&self` and allocates only the message's token list.
#[derive(Debug, Clone)]
pub struct CrisisDetector {
    vocab: WordMap<Lex>,
    /// Vocabulary keys with runs of a letter squeezed to one.
    squeezed: WordMap<Lex>,
    /// Vocabulary keys of `TYPO_MIN_CHARS` or more, each with one letter deleted.
    deletions: WordMap<Lex>,
    /// Word id → classes it belongs to.
    classes_of: Vec<u128>,
    /// Classes the engine itself uses (zero if a file does not define them).
    neg: u128,
    neg_cancel: u128,
    neg_stop: u128,
    patterns: Vec<Pattern>,
    /// Word id → patterns (idioms only / everything else) whose first element accepts it.
    idiom_index: Vec<Vec<u32>>,
    main_index: Vec<Vec<u32>>,
    /// Per word id, the patterns (not idioms) that word opens (its `gate`); and per
    /// pattern, 2 ("impossible") when it has a gate, 0 ("not checked yet") when not: the
    /// state [`CrisisDetector::hits`] starts from.
    gate_index: Vec<Vec<u32>>,
    gated: Vec<u8>,
    /// Word id → the word.
    words: Vec<String>,
    /// The second stage; `None` for the rules alone.
    model: Option<Arc<Model>>,
}

/// One message as the rule engine saw it.
struct Analysis {
    toks: Vec<Tok>,
    /// The words as typed (runs of three or more of a letter squeezed), end to end.
    raw: String,
    /// The idioms that matched.
    idioms: Vec<u32>,
    hits: Vec<Hit>,
    /// Whether a rule matched but a negation blocked it ("i would never kill myself").
    negated: bool,
}

/// One parsed line of a rule file, before classes are known.
struct Line<'a> {
    origin: String,
    directive: Directive<'a>,
}

enum Directive<'a> {
    Class(&'a str, Vec<String>),
    Slang(String, Vec<String>),
    Pattern(Kind, String, &'a str),
}

impl CrisisDetector {
    /// The rule files and the model shipped in `fixtures/crisis/`, embedded with
    /// `include_str!`.
    pub fn builtin() -> CrisisDetector {
        CrisisDetector::rules_only().with_model(Model::builtin())
    }

    /// The shipped rules without the model (what the model is trained over).
    pub fn rules_only() -> CrisisDetector {
        // The files are part of the source tree and `builtin_files_parse` checks them, so
        // a failure here is a build defect, not bad input.
        CrisisDetector::from_files(BUILTIN_FILES).expect("fixtures/crisis rules are valid (tested)")
    }

    /// The shipped rules extended by one more file in the same format (`agent.crisis_file`),
    /// with the shipped model.
    pub fn with_extra(name: &str, text: &str) -> Result<CrisisDetector, String> {
        let mut files = BUILTIN_FILES.to_vec();
        files.push((name, text));
        Ok(CrisisDetector::from_files(&files)?.with_model(Model::builtin()))
    }

    /// This detector with `model` as its second stage.
    pub fn with_model(mut self, model: Model) -> CrisisDetector {
        self.model = Some(Arc::new(model));
        self
    }

    /// Compiles `(name, text)` rule files, in order. Errors name the file and the 1-based
    /// line.
    pub fn from_files(files: &[(&str, &str)]) -> Result<CrisisDetector, String> {
        let mut lines = Vec::new();
        for (file, text) in files {
            for (no, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let origin = format!("{file} line {}", no + 1);
                let directive = parse_line(line).map_err(|e| format!("{origin}: {e}"))?;
                lines.push(Line { origin, directive });
            }
        }
        let mut b = Builder::default();
        // Slang, then classes, then patterns, so a pattern may use a class defined further
        // down or in a later file.
        for l in &lines {
            if let Directive::Slang(key, meaning) = &l.directive {
                let ids = meaning
                    .iter()
                    .map(|w| b.word(w))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("{}: {e}", l.origin))?;
                b.vocab.insert(key.clone(), Lex::Slang(ids));
            }
        }
        for l in &lines {
            if let Directive::Class(name, words) = &l.directive {
                let bit = b
                    .class_bit(name)
                    .map_err(|e| format!("{}: {e}", l.origin))?;
                for w in words {
                    let id = b.word(w).map_err(|e| format!("{}: {e}", l.origin))?;
                    b.classes_of[id as usize] |= bit;
                }
            }
        }
        let mut patterns = Vec::new();
        for l in &lines {
            if let Directive::Pattern(kind, name, text) = &l.directive {
                let elems = b.compile(text).map_err(|e| format!("{}: {e}", l.origin))?;
                patterns.push(Pattern::new(*kind, name.clone(), elems));
            }
        }
        Ok(b.finish(patterns))
    }

    /// Whether `text` signals a crisis; see [`CrisisDetector::assess`].
    pub fn detect(&self, text: &str) -> Option<Signal> {
        match self.assess(text) {
            Outcome::Crisis(s) => Some(s),
            _ => None,
        }
    }

    /// What `text` calls for: the protocol, the hotline numbers, or nothing.
    pub fn assess(&self, text: &str) -> Outcome {
        let a = self.analyse(text);
        let rules = self.score(&a.hits);
        let Some(model) = &self.model else {
            return rules;
        };
        let ev = self.evidence(&a);
        let guarded = self.guarded(&a, &rules, &ev);
        let p = model.probability(&ev);
        let veto = if vetoable(&ev) { model.veto() } else { 0.0 };
        match CrisisDetector::combine(rules, guarded, p, model.threshold(), veto) {
            Outcome::Crisis(mut s) if s.stage == Stage::Model => {
                // What the rules saw (below their threshold) still explains the log line.
                let mut features: Vec<String> = a
                    .hits
                    .iter()
                    .filter(|h| !matches!(self.patterns[h.pattern as usize].kind, Kind::Resources))
                    .map(|h| self.feature(h.pattern))
                    .collect();
                features.append(&mut s.features);
                s.features = features;
                if let Some((score, category, _)) = self.best_rule(&a.hits) {
                    s.category = category;
                    s.score = score;
                }
                Outcome::Crisis(s)
            }
            other => other,
        }
    }

    /// The rules' outcome combined with the classifier's probability `p` against its
    /// threshold `t` (at least [`GUARDED_MIN`] when `guarded`). A crisis found by the
    /// model alone is `Suicide`, the most urgent category, until `assess` fills in the
    /// rules' best category. A crisis found by the rules stands unless `p` is below
    /// `veto` (the model all but sure it is not one: "i nearly killed myself laughing").
    pub(crate) fn combine(rules: Outcome, guarded: bool, p: f32, t: f32, veto: f32) -> Outcome {
        let t = if guarded { t.max(GUARDED_MIN) } else { t };
        let model = p >= t;
        match rules {
            Outcome::Crisis(_) if p < veto => Outcome::Nothing,
            Outcome::Crisis(mut s) => {
                s.stage = if model { Stage::Both } else { Stage::Rules };
                s.features.push(format!("model:{p:.2}"));
                Outcome::Crisis(s)
            }
            _ if model => Outcome::Crisis(Signal {
                category: Category::Suicide,
                features: vec![format!("model:{p:.2}")],
                score: 0.0,
                stage: Stage::Model,
            }),
            other => other,
        }
    }

    /// Whether the message is short ([`SHORT_GUARDED_WORDS`]) or the rules saw a context
    /// that is usually safe (a negative adjustment), a figure of speech (an idiom: "i cut
    /// myself shaving"), a negated signal, or a question about the hotlines: the model then
    /// needs [`GUARDED_MIN`].
    fn guarded(&self, a: &Analysis, rules: &Outcome, ev: &Evidence<'_>) -> bool {
        ev.word_count() <= SHORT_GUARDED_WORDS
            || a.negated
            || !a.idioms.is_empty()
            || matches!(rules, Outcome::Resources(_))
            || a.hits.iter().any(
                |h| matches!(self.patterns[h.pattern as usize].kind, Kind::Adjust(w) if w < 0.0),
            )
    }

    /// The classifier's probability for a message (0 without a model).
    #[cfg(test)]
    pub(crate) fn model_probability(&self, ev: &Evidence<'_>) -> f32 {
        self.model.as_ref().map_or(0.0, |m| m.probability(ev))
    }

    /// Calls `f` with what the normaliser and the rules saw in `text`, the rules' outcome,
    /// and whether the model needs [`GUARDED_MIN`] (for training and evaluation).
    pub(crate) fn with_evidence<R>(
        &self,
        text: &str,
        f: impl FnOnce(&Evidence<'_>, (Outcome, bool)) -> R,
    ) -> R {
        let a = self.analyse(text);
        let rules = self.score(&a.hits);
        let ev = self.evidence(&a);
        let guarded = self.guarded(&a, &rules, &ev);
        f(&ev, (rules, guarded))
    }

    fn evidence<'a>(&'a self, a: &'a Analysis) -> Evidence<'a> {
        let words = a
            .toks
            .iter()
            .map(|t| {
                if t.id == BREAK {
                    return None;
                }
                let raw = &a.raw[t.raw.0 as usize..t.raw.1 as usize];
                let word = match self.words.get(t.id as usize) {
                    Some(w) => w.as_str(),
                    None => raw,
                };
                Some((word, raw))
            })
            .collect();
        let mut matches: Vec<(&'static str, &str)> = a
            .hits
            .iter()
            .map(|h| {
                let pat = &self.patterns[h.pattern as usize];
                let prefix = match pat.kind {
                    Kind::Rule { .. } => "r:",
                    Kind::Adjust(_) => "a:",
                    Kind::Resources => "q:",
                    Kind::Idiom => "i:",
                };
                (prefix, pat.name.as_str())
            })
            .collect();
        matches.extend(
            a.idioms
                .iter()
                .map(|&p| ("i:", self.patterns[p as usize].name.as_str())),
        );
        if a.negated {
            matches.push(("s:", "negated"));
        }
        Evidence {
            words,
            matches,
            best: self.best_rule(&a.hits).map(|(s, _, _)| s),
        }
    }

    /// Every rule, adjustment and resources pattern that matched `text`, by name, with
    /// the best crisis score and, with a model, its probability (for `crisis-eval`'s
    /// report of misses and false alarms).
    pub fn explain(&self, text: &str) -> (f32, Vec<String>) {
        let a = self.analyse(text);
        let best = self.best_rule(&a.hits).map_or(0.0, |(score, _, _)| score);
        let mut names: Vec<String> = a.hits.iter().map(|h| self.feature(h.pattern)).collect();
        if let Some(m) = &self.model {
            names.push(format!("model:{:.2}", m.probability(&self.evidence(&a))));
        }
        (best, names)
    }

    /// The tokens of `text`, the idioms that mask some of them, and the patterns that
    /// match.
    fn analyse(&self, text: &str) -> Analysis {
        let (mut toks, raw) = self.tokens(text);
        let idioms = self.mask_idioms(&mut toks);
        let (hits, negated) = self.hits(&toks);
        Analysis {
            toks,
            raw,
            idioms,
            hits,
            negated,
        }
    }

    /// Every pattern (not idioms) that matches `toks`, at its first match that is not
    /// negated, and whether some rule matched only where a negation blocked it.
    fn hits(&self, toks: &[Tok]) -> (Vec<Hit>, bool) {
        let present = Present::new(toks, self.classes_of.len());
        // Per pattern: 0 = not checked yet, 1 = possible, 2 = impossible or already hit.
        // A pattern with a gate is impossible until one of its gate words is seen: most
        // patterns that open on a common word ("i", "the", "not") never get checked.
        let mut state = self.gated.clone();
        for t in toks.iter().filter(|t| t.is_word() && t.id != UNKNOWN) {
            if let Some(opened) = self.gate_index.get(t.id as usize) {
                for &p in opened {
                    state[p as usize] = 0;
                }
            }
        }
        let mut hits: Vec<Hit> = Vec::new();
        let mut negated = false;
        for at in 0..toks.len() {
            let Some(candidates) = self.main_index.get(toks[at].id as usize) else {
                continue;
            };
            for &p in candidates {
                let pat = &self.patterns[p as usize];
                match state[p as usize] {
                    0 if present.allows(pat) => state[p as usize] = 1,
                    0 => {
                        state[p as usize] = 2;
                        continue;
                    }
                    1 => {}
                    _ => continue,
                }
                let Some(end) = match_at(&pat.elems, toks, at) else {
                    continue;
                };
                if matches!(pat.kind, Kind::Rule { .. }) && self.negated_before(toks, at) {
                    negated = true;
                    continue;
                }
                state[p as usize] = 2;
                hits.push(Hit {
                    pattern: p,
                    start: at,
                    end,
                });
            }
        }
        let negated = negated && !hits.iter().any(|h| self.is_rule(h));
        (hits, negated)
    }

    fn is_rule(&self, h: &Hit) -> bool {
        matches!(self.patterns[h.pattern as usize].kind, Kind::Rule { .. })
    }

    /// The best-scoring rule: its score (weight plus the adjustments within reach), its
    /// category, and the index in `hits` of the rule.
    fn best_rule(&self, hits: &[Hit]) -> Option<(f32, Category, usize)> {
        let mut best: Option<(f32, Category, usize)> = None;
        for (i, h) in hits.iter().enumerate() {
            let Kind::Rule { category, weight } = self.patterns[h.pattern as usize].kind else {
                continue;
            };
            let adjust: f32 = hits
                .iter()
                .filter(|a| a.start < h.end + ADJUST_REACH && h.start < a.end + ADJUST_REACH)
                .filter_map(|a| match self.patterns[a.pattern as usize].kind {
                    Kind::Adjust(w) => Some(w),
                    _ => None,
                })
                .sum();
            let score = weight + adjust;
            let better = match best {
                None => true,
                Some((s, c, _)) => score > s || (score == s && category < c),
            };
            if better {
                best = Some((score, category, i));
            }
        }
        best
    }

    /// How a pattern is reported: its name, with `+`/`-` for an adjustment.
    fn feature(&self, p: u32) -> String {
        let pat = &self.patterns[p as usize];
        match pat.kind {
            Kind::Adjust(w) if w < 0.0 => format!("-{}", pat.name),
            Kind::Adjust(_) => format!("+{}", pat.name),
            Kind::Resources => format!("resources:{}", pat.name),
            Kind::Rule { .. } | Kind::Idiom => pat.name.clone(),
        }
    }

    fn score(&self, hits: &[Hit]) -> Outcome {
        if let Some((score, category, _)) = self.best_rule(hits) {
            if score >= THRESHOLD {
                // Every rule and adjustment that matched, so a log line explains itself.
                let features = hits
                    .iter()
                    .filter(|h| !matches!(self.patterns[h.pattern as usize].kind, Kind::Resources))
                    .map(|h| self.feature(h.pattern))
                    .collect();
                return Outcome::Crisis(Signal {
                    category,
                    features,
                    score,
                    stage: Stage::Rules,
                });
            }
        }
        let resources: Vec<String> = hits
            .iter()
            .filter(|h| matches!(self.patterns[h.pattern as usize].kind, Kind::Resources))
            .map(|h| self.patterns[h.pattern as usize].name.clone())
            .collect();
        if resources.is_empty() {
            Outcome::Nothing
        } else {
            Outcome::Resources(resources)
        }
    }

    /// The normalised tokens of `text`, looked up in the vocabulary, and the words as
    /// typed that [`Tok::raw`] points into.
    fn tokens(&self, text: &str) -> (Vec<Tok>, String) {
        let mut toks: Vec<Tok> = Vec::with_capacity(text.len() / 4 + 1);
        let mut raw = String::with_capacity(text.len());
        for_each_word(text, |w| {
            let start = raw.len() as u32;
            squeeze_runs(w, &mut raw);
            let span = (start, raw.len() as u32);
            let mut push = |id: u32, classes: u128| {
                toks.push(Tok {
                    id,
                    classes,
                    masked: false,
                    neg: false,
                    raw: span,
                })
            };
            if w == "." {
                push(BREAK, 0);
                return;
            }
            match self.lookup(w) {
                Some(Lex::Word(id)) => push(*id, self.classes_of[*id as usize]),
                Some(Lex::Slang(ids)) => {
                    for &id in ids {
                        push(id, self.classes_of[id as usize]);
                    }
                }
                None => push(UNKNOWN, 0),
            }
        });
        // A negation counts unless the next word cancels it ("can't stop thinking").
        for i in 0..toks.len() {
            let cancelled = toks
                .get(i + 1)
                .is_some_and(|n| n.classes & self.neg_cancel != 0);
            toks[i].neg = toks[i].classes & self.neg != 0 && !cancelled;
        }
        (toks, raw)
    }

    fn lookup(&self, w: &str) -> Option<&Lex> {
        if let Some(l) = self.vocab.get(w) {
            return Some(l);
        }
        let bytes = w.as_bytes();
        if bytes.windows(2).any(|p| p[0] == p[1]) {
            if let Some(l) = self.squeezed.get(&squeeze(w)) {
                return Some(l);
            }
        } else if let Some(l) = self.squeezed.get(w) {
            return Some(l);
        }
        // Typos are looked for in plain ASCII words only (byte edits stay on char
        // boundaries), and only where a vocabulary word of a fitting length exists.
        if !bytes.iter().all(u8::is_ascii_lowercase) || bytes.len() < TYPO_SWAP_MIN_CHARS {
            return None;
        }
        let mut buf = w.as_bytes().to_vec();
        // Two neighbouring letters swapped, after the first ("wnat" → "want").
        for i in 1..bytes.len() - 1 {
            if bytes[i] == bytes[i + 1] {
                continue;
            }
            buf.swap(i, i + 1);
            // Only ASCII letters were swapped: still UTF-8.
            if let Some(l) = std::str::from_utf8(&buf)
                .ok()
                .and_then(|k| self.vocab.get(k))
            {
                return Some(l);
            }
            buf.swap(i, i + 1);
        }
        if bytes.len() < TYPO_MIN_CHARS {
            return None;
        }
        // One letter missing, one extra, or one changed (not the first).
        if let Some(l) = self.deletions.get(w) {
            return Some(l);
        }
        for i in 1..bytes.len() {
            buf.clear();
            buf.extend_from_slice(&bytes[..i]);
            buf.extend_from_slice(&bytes[i + 1..]);
            let Ok(key) = std::str::from_utf8(&buf) else {
                continue;
            };
            // A final s or d is an inflection, not a typo: "jumps" is not "jump".
            let inflection = i + 1 == bytes.len() && matches!(bytes[i], b's' | b'd');
            let hit = if inflection {
                self.deletions.get(key)
            } else {
                self.vocab.get(key).or_else(|| self.deletions.get(key))
            };
            if let Some(l) = hit {
                return Some(l);
            }
        }
        None
    }

    /// Masks every word covered by an idiom, and returns the idioms that matched. Idioms
    /// match on the unmasked words, so overlapping idioms all apply.
    fn mask_idioms(&self, toks: &mut [Tok]) -> Vec<u32> {
        let mut spans = Vec::new();
        let mut idioms = Vec::new();
        for at in 0..toks.len() {
            let Some(candidates) = self.idiom_index.get(toks[at].id as usize) else {
                continue;
            };
            for &p in candidates {
                if let Some(end) = match_at(&self.patterns[p as usize].elems, toks, at) {
                    spans.push(at..end);
                    if !idioms.contains(&p) {
                        idioms.push(p);
                    }
                }
            }
        }
        for span in spans {
            for t in &mut toks[span] {
                t.masked = true;
            }
        }
        idioms
    }

    /// A negation among the few words before `at`, looking back no further than a clause
    /// break, a self-reference or a conjunction (`NEG_STOP`).
    fn negated_before(&self, toks: &[Tok], at: usize) -> bool {
        for t in toks[..at].iter().rev().take(NEG_LOOKBACK) {
            if t.id == BREAK || t.classes & self.neg_stop != 0 {
                return false;
            }
            if t.neg {
                return true;
            }
        }
        false
    }
}

/// Where a match of `elems` starting at `at` ends, if it matches.
fn match_at(elems: &[Elem], toks: &[Tok], at: usize) -> Option<usize> {
    let Some((first, rest)) = elems.split_first() else {
        return Some(at);
    };
    match first {
        Elem::Gap(n) => {
            let mut pos = at;
            for _ in 0..=*n {
                if let Some(end) = match_at(rest, toks, pos) {
                    return Some(end);
                }
                match toks.get(pos) {
                    Some(t) if t.is_word() && !t.neg => pos += 1,
                    _ => return None,
                }
            }
            None
        }
        Elem::Alt {
            optional, or_end, ..
        } => {
            if toks.get(at).is_some_and(|t| first.accepts(t)) {
                if let Some(end) = match_at(rest, toks, at + 1) {
                    return Some(end);
                }
            }
            if *or_end {
                if let Some(end) = match_end(rest, toks, at) {
                    return Some(end);
                }
            }
            if *optional {
                match_at(rest, toks, at)
            } else {
                None
            }
        }
        Elem::Phrases {
            options,
            optional,
            or_end,
        } => {
            for o in options {
                let fits = toks
                    .get(at..at + o.len())
                    .is_some_and(|ts| o.iter().zip(ts).all(|(w, t)| one_accepts(*w, t)));
                if fits {
                    if let Some(end) = match_at(rest, toks, at + o.len()) {
                        return Some(end);
                    }
                }
            }
            if *or_end {
                if let Some(end) = match_end(rest, toks, at) {
                    return Some(end);
                }
            }
            if *optional {
                match_at(rest, toks, at)
            } else {
                None
            }
        }
        Elem::Any => match toks.get(at) {
            Some(t) if t.is_word() => match_at(rest, toks, at + 1),
            _ => None,
        },
    }
}

/// The `.` alternative: at a clause break (consumed) or at the end of the message.
fn match_end(rest: &[Elem], toks: &[Tok], at: usize) -> Option<usize> {
    match toks.get(at) {
        None => match_at(rest, toks, at),
        Some(t) if t.id == BREAK => match_at(rest, toks, at + 1),
        Some(_) => None,
    }
}

/// Appends `w` with runs of three or more of one character squeezed to one ("sooo" →
/// "so", "good" stays): the word as typed, for the model's letter pieces.
fn squeeze_runs(w: &str, out: &mut String) {
    // Nearly every word is ASCII without a run of three: copied whole, the same result.
    let b = w.as_bytes();
    if w.is_ascii() && !b.windows(3).any(|t| t[0] == t[1] && t[1] == t[2]) {
        out.push_str(w);
        return;
    }
    let mut chars = w.chars().peekable();
    while let Some(c) = chars.next() {
        let mut run = 1;
        while chars.peek() == Some(&c) {
            chars.next();
            run += 1;
        }
        for _ in 0..if run >= 3 { 1 } else { run } {
            out.push(c);
        }
    }
}

/// Runs of the same letter squeezed to one ("sooo" → "so").
fn squeeze(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut last = None;
    for c in w.chars() {
        if Some(c) != last {
            out.push(c);
        }
        last = Some(c);
    }
    out
}

/// Parses one non-comment line of a rule file.
fn parse_line(line: &str) -> Result<Directive<'_>, String> {
    let (head, body) = line
        .split_once(':')
        .ok_or_else(|| format!("expected `<directive> ...: <words>`, got {line:?}"))?;
    let body = body.trim();
    let head: Vec<&str> = head.split_whitespace().collect();
    if body.is_empty() {
        return Err(format!("nothing after the `:` in {line:?}"));
    }
    let words = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| {
            if w != "." {
                out.push(w.to_string())
            }
        });
        out
    };
    match head.as_slice() {
        ["class", name] => {
            if !is_class_name(name) {
                return Err(format!(
                    "class name {name:?} must be upper case letters, digits and `_`"
                ));
            }
            let ws: Vec<String> = body.split_whitespace().flat_map(&words).collect();
            if ws.is_empty() {
                return Err(format!("class {name} lists no words"));
            }
            Ok(Directive::Class(name, ws))
        }
        ["slang", key] => {
            let k = words(key);
            if k.len() != 1 {
                return Err(format!("slang word {key:?} must be one word"));
            }
            let meaning = words(body);
            if meaning.is_empty() {
                return Err(format!("slang {key:?} has no meaning"));
            }
            Ok(Directive::Slang(k[0].clone(), meaning))
        }
        ["rule", category, weight, name] => {
            let category = Category::parse(category).ok_or_else(|| {
                format!(
                    "unknown category {category:?} (expected suicide, self_harm, \
                     hopelessness or desperation)"
                )
            })?;
            let weight = parse_weight(weight)?;
            Ok(Directive::Pattern(
                Kind::Rule { category, weight },
                name.to_string(),
                body,
            ))
        }
        ["adjust", weight, name] => Ok(Directive::Pattern(
            Kind::Adjust(parse_weight(weight)?),
            name.to_string(),
            body,
        )),
        ["resources", name] => Ok(Directive::Pattern(Kind::Resources, name.to_string(), body)),
        ["idiom", name] => Ok(Directive::Pattern(Kind::Idiom, name.to_string(), body)),
        _ => Err(format!(
            "unknown directive {:?}: expected `class NAME`, `slang WORD`, \
             `rule CATEGORY WEIGHT NAME`, `adjust WEIGHT NAME`, `resources NAME` or \
             `idiom NAME` before the `:`",
            head.join(" ")
        )),
    }
}

fn parse_weight(w: &str) -> Result<f32, String> {
    w.parse::<f32>()
        .ok()
        .filter(|w| w.is_finite() && w.abs() <= 10.0)
        .ok_or_else(|| format!("weight {w:?} is not a number between -10 and 10"))
}

fn is_class_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Default)]
struct Builder {
    vocab: WordMap<Lex>,
    words: Vec<String>,
    classes_of: Vec<u128>,
    class_bits: HashMap<String, u128>,
}

impl Builder {
    /// The id of a pattern or class word (interned on first use).
    fn word(&mut self, w: &str) -> Result<u32, String> {
        match self.vocab.get(w) {
            Some(Lex::Word(id)) => return Ok(*id),
            Some(Lex::Slang(_)) => {
                return Err(format!(
                    "{w:?} is a slang word (messages read it as its meaning); write the meaning"
                ))
            }
            None => {}
        }
        Ok(self.intern(w))
    }

    fn intern(&mut self, w: &str) -> u32 {
        let id = self.words.len() as u32;
        self.words.push(w.to_string());
        self.classes_of.push(0);
        self.vocab.insert(w.to_string(), Lex::Word(id));
        id
    }

    fn class_bit(&mut self, name: &str) -> Result<u128, String> {
        if let Some(bit) = self.class_bits.get(name) {
            return Ok(*bit);
        }
        let n = self.class_bits.len();
        if n >= MAX_CLASSES {
            return Err(format!("more than {MAX_CLASSES} classes"));
        }
        let bit = 1u128 << n;
        self.class_bits.insert(name.to_string(), bit);
        Ok(bit)
    }

    /// Compiles a pattern: words, CLASSES, `a|B` alternatives, `x?` optional, `*`, `~N`.
    fn compile(&mut self, text: &str) -> Result<Vec<Elem>, String> {
        let mut elems = Vec::new();
        for raw in text.split_whitespace() {
            if raw == "*" {
                elems.push(Elem::Any);
                continue;
            }
            if let Some(n) = raw.strip_prefix('~') {
                let n: u8 = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| format!("gap {raw:?} must be ~1 to ~9"))?;
                elems.push(Elem::Gap(n));
                continue;
            }
            let (body, optional) = match raw.strip_suffix('?') {
                Some(b) => (b, true),
                None => (raw, false),
            };
            let mut alts: Vec<&str> = body.split('|').collect();
            let or_end = alts.contains(&".");
            alts.retain(|a| *a != ".");
            if alts.is_empty() {
                // `.` alone: a clause break or the end of the message.
                elems.push(Elem::Alt {
                    words: Vec::new(),
                    classes: 0,
                    optional,
                    or_end,
                });
                continue;
            }
            // `a_b`, or a word that reads as several ("gonna" is "going to", "kms" is
            // "kill myself"): sequences.
            if alts
                .iter()
                .any(|a| !is_class_name(a) && (a.contains('_') || self.literal(a).len() != 1))
            {
                elems.push(self.phrases(&alts, optional, or_end, text)?);
                continue;
            }
            let mut words = Vec::new();
            let mut classes = 0u128;
            for alt in &alts {
                if is_class_name(alt) {
                    classes |= self
                        .class_bits
                        .get(*alt)
                        .copied()
                        .ok_or_else(|| format!("unknown class {alt:?} in {text:?}"))?;
                } else {
                    // Exactly one word: checked above.
                    for w in self.literal(alt) {
                        words.push(self.word(&w)?);
                    }
                }
            }
            if !words.is_empty() || classes != 0 {
                elems.push(Elem::Alt {
                    words,
                    classes,
                    optional,
                    or_end,
                });
            }
        }
        match elems.first() {
            None => Err(format!("pattern {text:?} has no words")),
            Some(Elem::Alt {
                optional: false, ..
            })
            | Some(Elem::Phrases {
                optional: false, ..
            }) => Ok(elems),
            Some(_) => Err(format!(
                "pattern {text:?} must start with a word or a class (not `*`, `~N` or an \
                 optional element)"
            )),
        }
    }

    /// The words a pattern literal stands for: normalised like chat text, slang read as
    /// its meaning.
    fn literal(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| match self.vocab.get(w) {
            Some(Lex::Slang(ids)) => {
                out.extend(ids.iter().map(|&id| self.words[id as usize].clone()))
            }
            _ if w != "." => out.push(w.to_string()),
            _ => {}
        });
        out
    }

    /// An element with at least one `a_b` alternative: every alternative becomes a word
    /// sequence (a one-word alternative is a sequence of one).
    fn phrases(
        &mut self,
        alts: &[&str],
        optional: bool,
        or_end: bool,
        text: &str,
    ) -> Result<Elem, String> {
        let mut options = Vec::new();
        for alt in alts {
            let mut seq = Vec::new();
            let parts: Vec<&str> = if is_class_name(alt) {
                vec![alt]
            } else {
                alt.split('_').collect()
            };
            for part in parts {
                if is_class_name(part) {
                    let bit = self
                        .class_bits
                        .get(part)
                        .copied()
                        .ok_or_else(|| format!("unknown class {part:?} in {text:?}"))?;
                    seq.push((0, bit));
                    continue;
                }
                let ws = self.literal(part);
                if ws.is_empty() {
                    return Err(format!("{alt:?} in {text:?} has an empty part"));
                }
                for w in ws {
                    seq.push((self.word(&w)?, 0));
                }
            }
            options.push(seq);
        }
        Ok(Elem::Phrases {
            options,
            optional,
            or_end,
        })
    }

    fn finish(self, patterns: Vec<Pattern>) -> CrisisDetector {
        let n = self.words.len();
        let mut idiom_index = vec![Vec::new(); n];
        let mut main_index = vec![Vec::new(); n];
        let mut gate_index = vec![Vec::new(); n];
        let mut gated = vec![0u8; patterns.len()];
        for (p, pat) in patterns.iter().enumerate() {
            if let (Some(gate), false) = (&pat.gate, pat.kind == Kind::Idiom) {
                gated[p] = 2;
                for &w in gate {
                    if let Some(opened) = gate_index.get_mut(w as usize) {
                        opened.push(p as u32);
                    }
                }
            }
            let index = if pat.kind == Kind::Idiom {
                &mut idiom_index
            } else {
                &mut main_index
            };
            for (id, (starts, &classes)) in index.iter_mut().zip(&self.classes_of).enumerate() {
                let t = Tok {
                    id: id as u32,
                    classes,
                    masked: false,
                    neg: false,
                    raw: (0, 0),
                };
                if pat.elems[0].accepts(&t) {
                    starts.push(p as u32);
                }
            }
        }
        let mut squeezed = WordMap::default();
        let mut deletions = WordMap::default();
        // Sorted so that a collision resolves the same way on every start.
        let mut keys: Vec<(&String, &Lex)> = self.vocab.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, lex) in keys {
            squeezed.entry(squeeze(key)).or_insert_with(|| lex.clone());
            if key.chars().count() >= TYPO_MIN_CHARS && key.chars().all(char::is_alphabetic) {
                for (i, c) in key.char_indices().skip(1) {
                    let d = format!("{}{}", &key[..i], &key[i + c.len_utf8()..]);
                    if !self.vocab.contains_key(&d) {
                        deletions.entry(d).or_insert_with(|| lex.clone());
                    }
                }
            }
        }
        let bit = |name: &str| self.class_bits.get(name).copied().unwrap_or(0);
        CrisisDetector {
            neg: bit("NEG"),
            neg_cancel: bit("NEG_CANCEL"),
            neg_stop: bit("NEG_STOP"),
            squeezed,
            deletions,
            classes_of: self.classes_of,
            patterns,
            idiom_index,
            main_index,
            gate_index,
            gated,
            vocab: self.vocab,
            words: self.words,
            model: None,
        }
    }
}

/// Calls `emit` with each normalised word of `text`, in order: lowercase, apostrophes
/// straightened, contractions expanded, "my self" joined. Anything that is not a letter,
/// digit or apostrophe separates words; a clause break (`.`, `!`, `?`, `;`, `,`, `:`, a
/// new line, a dash between spaces) is emitted as the word `"."`.
pub(crate) fn for_each_word(text: &str, mut emit: impl FnMut(&str)) {
    // "my self" becomes "myself" ("kill my self"), unless "self" starts a compound ("my
    // self-esteem", "my self harm"): so "my" and "self" are held back until the next word.
    #[derive(Clone, Copy)]
    enum Held {
        Nothing,
        My,
        MySelf { hyphen: bool },
    }
    let mut held = Held::Nothing;
    let mut push = |w: &str, hyphen: bool| {
        match held {
            Held::Nothing => {}
            Held::My if w == "self" => {
                held = Held::MySelf { hyphen };
                return;
            }
            Held::My => emit("my"),
            Held::MySelf { hyphen } if hyphen || SELF_COMPOUNDS.contains(&w) => {
                emit("my");
                emit("self");
            }
            Held::MySelf { .. } => emit("myself"),
        }
        held = Held::Nothing;
        if w == "my" {
            held = Held::My;
        } else if !w.is_empty() {
            emit(w);
        }
    };
    let mut token = String::new();
    for c in text.chars() {
        let c = match c {
            '\u{2019}' | '\u{2018}' | '\u{02bc}' | '\u{00b4}' | '\u{2032}' | '\u{ff07}' | '`' => {
                '\''
            }
            c => c,
        };
        // ASCII (nearly every message) skips the Unicode tables; same result.
        if c == '\'' || c.is_ascii_alphanumeric() {
            token.push(c.to_ascii_lowercase());
            continue;
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            token.extend(c.to_lowercase());
            continue;
        }
        if !token.is_empty() {
            let hyphen = matches!(c, '-' | '\u{2010}' | '\u{2011}');
            expand(&token, &mut |w| push(w, hyphen));
            token.clear();
        }
        if matches!(
            c,
            '.' | '!' | '?' | ';' | ',' | ':' | '\n' | '\u{2014}' | '\u{2013}'
        ) {
            push(".", false);
        }
    }
    if !token.is_empty() {
        expand(&token, &mut |w| push(w, false));
    }
    // Flushes a held "my" or "my self".
    push("", false);
}

/// Words after "self" that make a compound rather than "myself".
const SELF_COMPOUNDS: &[&str] = &[
    "harm",
    "harming",
    "harmed",
    "injury",
    "injuring",
    "esteem",
    "worth",
    "confidence",
    "care",
    "image",
    "hatred",
    "hate",
    "loathing",
    "doubt",
    "control",
    "respect",
];

/// Words whose `'s` means "is" rather than a possessive.
const S_IS: &[&str] = &[
    "it",
    "that",
    "there",
    "here",
    "what",
    "who",
    "where",
    "he",
    "she",
    "life",
    "everything",
    "everyone",
    "everybody",
    "nothing",
    "nobody",
    "someone",
    "somebody",
];

/// Up to 8 bytes of text as one integer (first byte lowest). Words here hold no NUL, so
/// two words of at most 8 bytes have the same key only when they are the same word.
const fn pack(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut key = 0u64;
    let mut i = 0;
    while i < b.len() {
        key |= (b[i] as u64) << (8 * i);
        i += 1;
    }
    key
}

/// `SPELLED`'s words packed (each is at most 8 bytes: checked when this is built).
const SPELLED_KEYS: [u64; SPELLED.len()] = {
    let mut keys = [0u64; SPELLED.len()];
    let mut i = 0;
    while i < SPELLED.len() {
        assert!(SPELLED[i].0.len() <= 8);
        keys[i] = pack(SPELLED[i].0);
        i += 1;
    }
    keys
};

/// Contractions typed without the apostrophe, and a few spellings, to their expansion.
const SPELLED: &[(&str, &[&str])] = &[
    ("dont", &["do", "not"]),
    ("doesnt", &["does", "not"]),
    ("didnt", &["did", "not"]),
    ("cant", &["can", "not"]),
    ("cannot", &["can", "not"]),
    ("wont", &["will", "not"]),
    ("isnt", &["is", "not"]),
    ("arent", &["are", "not"]),
    ("wasnt", &["was", "not"]),
    ("werent", &["were", "not"]),
    ("couldnt", &["could", "not"]),
    ("wouldnt", &["would", "not"]),
    ("shouldnt", &["should", "not"]),
    ("havent", &["have", "not"]),
    ("hasnt", &["has", "not"]),
    ("hadnt", &["had", "not"]),
    ("aint", &["is", "not"]),
    ("im", &["i", "am"]),
    ("ive", &["i", "have"]),
    ("youre", &["you", "are"]),
    ("theyre", &["they", "are"]),
    ("hes", &["he", "is"]),
    ("shes", &["she", "is"]),
    ("theyll", &["they", "will"]),
    ("theyve", &["they", "have"]),
    ("theyd", &["they", "would"]),
    ("youll", &["you", "will"]),
    ("youve", &["you", "have"]),
    ("thats", &["that", "is"]),
    ("whats", &["what", "is"]),
    ("theres", &["there", "is"]),
    ("its", &["it", "is"]),
    ("wanna", &["want", "to"]),
    ("gonna", &["going", "to"]),
    ("gotta", &["got", "to"]),
    ("anymore", &["any", "more"]),
    ("noone", &["no", "one"]),
];

/// Expands one lowercase token (letters, digits, apostrophes) into normalised words.
fn expand(token: &str, out: &mut impl FnMut(&str)) {
    // Nearly every word has no apostrophe, and then nothing to trim or split.
    let quoted = token.as_bytes().contains(&b'\'');
    let token = if quoted {
        token.trim_matches('\'')
    } else {
        token
    };
    if token.is_empty() {
        return;
    }
    if let Some((base, suffix)) = quoted.then(|| token.rsplit_once('\'')).flatten() {
        if !base.is_empty() && !base.contains('\'') {
            let expanded: Option<[&str; 2]> = match suffix {
                "t" => base
                    .strip_suffix('n')
                    .filter(|s| !s.is_empty())
                    .map(|stem| {
                        let stem = match stem {
                            "ca" => "can",
                            "wo" => "will",
                            "sha" => "shall",
                            "ai" => "is",
                            s => s,
                        };
                        [stem, "not"]
                    }),
                "m" => Some([base, "am"]),
                "re" => Some([base, "are"]),
                "ve" => Some([base, "have"]),
                "ll" => Some([base, "will"]),
                "d" => Some([base, "would"]),
                "s" if S_IS.contains(&base) => Some([base, "is"]),
                "s" => Some([base, ""]),
                _ => None,
            };
            if let Some(words) = expanded {
                words
                    .into_iter()
                    .filter(|w| !w.is_empty())
                    .for_each(&mut *out);
                return;
            }
        }
        // Not a contraction we know ("rock'n'roll"): drop the apostrophes.
        out(&token.replace('\'', ""));
        return;
    }
    // Compared as integers (`SPELLED_KEYS`), not as text: one test per entry, no call.
    let found = (token.len() <= 8)
        .then(|| pack(token))
        .and_then(|key| SPELLED_KEYS.iter().position(|&k| k == key));
    match found {
        Some(i) => SPELLED[i].1.iter().for_each(|w| out(w)),
        None => out(token),
    }
}

/// The answer of a crisis classification (`agent.crisis_model_check`): `Some(true)` when
/// its first word is yes, `Some(false)` when it is no, `None` for anything else.
pub fn parse_classification(answer: &str) -> Option<bool> {
    let word: String = answer
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    match word.as_str() {
        "yes" | "y" | "true" => Some(true),
        "no" | "n" | "false" => Some(false),
        _ => None,
    }
}

/// The full protocol text, in order: "Are you safe right now?", the 988 Suicide & Crisis
/// Lifeline (call or text 988), the Crisis Text Line (text HOME to 741741), and the
/// 5-4-3-2-1 grounding exercise.
pub const CRISIS_TEXT: &str = "Are you safe right now?

You don't have to carry this alone. You can call or text 988 to reach the 988 Suicide & Crisis Lifeline (US), any time, day or night.
You can also text HOME to 741741 to reach the Crisis Text Line.
If you are in danger right now, please call your local emergency number.

If it helps, let's slow down together. Name:
5 things you can see,
4 things you can touch,
3 things you can hear,
2 things you can smell,
1 thing you can taste.

I'm here with you.";

/// The one line kept in later replies of a flagged session.
pub const LIFELINE_LINE: &str =
    "You can still call or text 988, the Suicide & Crisis Lifeline, any time.";

/// Reply for a message where the detector fired: [`CRISIS_TEXT`], then, if the agent
/// answered with something other than whitespace, a blank line and its words (trimmed).
pub fn crisis_reply(agent_text: Option<&str>) -> String {
    match agent_text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(words) => format!("{CRISIS_TEXT}\n\n{words}"),
        None => CRISIS_TEXT.to_string(),
    }
}

/// For later replies in a flagged session: the reply unchanged if it already mentions 988
/// (as a number of its own, not inside a longer one), else the reply, a blank line and
/// [`LIFELINE_LINE`]. An empty reply becomes the line alone.
pub fn keep_lifeline(reply: &str) -> String {
    if mentions_988(reply) {
        return reply.to_string();
    }
    let reply = reply.trim_end();
    if reply.is_empty() {
        LIFELINE_LINE.to_string()
    } else {
        format!("{reply}\n\n{LIFELINE_LINE}")
    }
}

fn mentions_988(text: &str) -> bool {
    text.match_indices("988").any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// The answer to a question about the hotlines themselves ("is 988 open at night?", "what
/// number do I text?"): the numbers, without the safety question or the grounding exercise.
pub const RESOURCES_TEXT: &str = "You can call or text 988 to reach the 988 Suicide & Crisis Lifeline (US), any time, day or night; it is free and confidential.
You can also text HOME to 741741 to reach the Crisis Text Line, also free and open all hours.
If someone is in danger right now, call your local emergency number.";

/// Reply for a question about the hotlines: [`RESOURCES_TEXT`], then the agent's words
/// (trimmed) after a blank line, if it said anything.
pub fn resources_reply(agent_text: Option<&str>) -> String {
    match agent_text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(words) => format!("{RESOURCES_TEXT}\n\n{words}"),
        None => RESOURCES_TEXT.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Category::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    fn category(d: &CrisisDetector, text: &str) -> Option<Category> {
        d.detect(text).map(|s| s.category)
    }

    #[test]
    fn builtin_files_parse() {
        let d = CrisisDetector::from_files(BUILTIN_FILES);
        assert!(d.is_ok(), "{:?}", d.err());
    }

    #[test]
    fn normalises_case_apostrophes_contractions_and_breaks() {
        assert_eq!(
            words("I DON’T want—to!!"),
            ["i", "do", "not", "want", ".", "to", ".", "."]
        );
        let cant = ["do", "not", "can", "not", "can", "not", "can", "not"];
        assert_eq!(words("dont  cant cannot can't"), cant);
        let im = ["i", "am", "i", "am", "will", "not", "will", "not"];
        assert_eq!(words("I'm im Won't wont"), im);
        assert_eq!(words("self-harm anymore"), ["self", "harm", "any", "more"]);
        assert_eq!(
            words("kill my self, my cat"),
            ["kill", "myself", ".", "my", "cat"]
        );
        assert_eq!(words("I'd wanna go"), ["i", "would", "want", "to", "go"]);
        // Pronoun contractions typed without the apostrophe ("hes going to end it").
        assert_eq!(
            words("hes shes theyll theyve"),
            ["he", "is", "she", "is", "they", "will", "they", "have"]
        );
        assert!(words("  😂 ").is_empty());
    }

    #[test]
    fn typos_repeats_and_swaps_are_read_as_the_word() {
        let d = CrisisDetector::builtin();
        for text in [
            "i want to kil myself",
            "i wnat to die",
            "i want to diiiiie",
            "I WANT TO DIEEEE",
            "im thinking about sucide",
            "i want to kill myslef",
            "i want to kill myselff",
            "im gonna comit suicide",
        ] {
            assert_eq!(category(&d, text), Some(Suicide), "{text:?}");
        }
        // A real word is not corrected into a crisis word.
        assert_eq!(d.detect("i'm dyeing my hair tomorrow"), None);
        assert_eq!(d.detect("i want to skill myself up before the boss"), None);
    }

    #[test]
    fn slang_expands() {
        let d = CrisisDetector::builtin();
        for text in [
            "kms",
            "gonna kms tonight",
            "KMS KMS",
            "i should kys",
            "thinking about sewerslide",
            "i want to unalive myself",
            "im gonna off myself",
            "thinking of ctb tonight",
            "im so done i wanna end it",
        ] {
            assert_eq!(category(&d, text), Some(Suicide), "{text:?}");
        }
        // kys aimed at someone else is abuse, not a crisis signal of the speaker.
        assert_eq!(d.detect("kys noob"), None);
        assert_eq!(d.detect("the village is 5 kms away"), None);
    }

    #[test]
    fn every_kind_of_signal_fires_with_its_category() {
        let d = CrisisDetector::builtin();
        let table: &[(&str, Category)] = &[
            ("I want to kill myself", Suicide),
            ("i dont want to be here anymore", Suicide),
            ("Everyone would be better off without me.", Suicide),
            ("i've been saving up my pills", Suicide),
            ("how many pills does it take to die", Suicide),
            ("i tried to overdose last time", Suicide),
            ("i wrote letters so they'll understand why", Suicide),
            ("there's no way out except dying", Suicide),
            ("my friend says she wants to die", Suicide),
            ("kms lol", Suicide),
            ("i want to die lol", Suicide),
            ("I cut myself again last night", SelfHarm),
            ("i burn myself on purpose", SelfHarm),
            ("I'm a burden to everyone", Hopelessness),
            ("I can't take it anymore", Desperation),
        ];
        for (text, want) in table {
            assert_eq!(category(&d, text), Some(*want), "{text:?}");
        }
    }

    #[test]
    fn negation_and_distancing_do_not_fire() {
        let d = CrisisDetector::builtin();
        for text in [
            "i would never kill myself",
            "i'm not suicidal, just tired",
            "i don't want to die in this raid",
            "kill the dragon before it reaches the village",
            "my character dies at the end of the quest",
            "let me die so i can respawn at the checkpoint",
            "this traffic is killing me",
            "I'm dying to see it",
            "my grandfather killed himself in 1998",
            "kill the process and restart it",
            "the server died again last night",
            "suicide rates went up in 2020 according to the cdc",
            "i'm writing a school report on suicide prevention",
            "I cut myself shaving",
            "hello everyone, how are you?",
        ] {
            assert_eq!(d.detect(text), None, "{text:?}: {:?}", d.explain(text));
        }
    }

    /// Asserts that `d` flags each of `texts` as a crisis (`crisis`) or not.
    fn assert_crisis(d: &CrisisDetector, texts: &[&str], crisis: bool) {
        for text in texts {
            assert_eq!(
                d.detect(text).is_some(),
                crisis,
                "{text:?}: {:?}",
                d.explain(text)
            );
        }
    }

    #[test]
    fn a_pattern_is_tried_only_when_the_words_of_one_whole_alternative_are_there() {
        assert_eq!(blocks(&[1, 64, 65, 3]), vec![(0, 0b1010), (1, 0b11)]);
        // A long alternative spans several 64-word blocks; a sequence alternative needs
        // all of its words, not just the first.
        let many: Vec<String> = (0..70).map(|i| format!("w{i}")).collect();
        let text = format!(
            "class X: alpha beta\nrule suicide 2 seq: X ~2 for_my_boat|for_the_tent\n\
             rule suicide 2 many: {} ~1 end\n",
            many.join("|")
        );
        let d = CrisisDetector::from_files(&[("t", &text)]).unwrap();
        assert_crisis(
            &d,
            &[
                "alpha x for the tent",
                "beta for my boat",
                "w3 end",
                "w65 end",
            ],
            true,
        );
        assert_crisis(
            &d,
            &[
                "alpha for the boat",
                "alpha for tent the",
                "w65 start",
                "end w3",
            ],
            false,
        );
        // A long list of sequences is ruled out by one word of each first (the one with
        // the highest id), then every word of one of them must be there, in order; an
        // option that is a class is ruled out by its class.
        let phrases: Vec<String> = (0..70).map(|i| format!("p{i}_q{i}")).collect();
        let text = format!(
            "class X: alpha beta\nclass Y: gamma\n\
             rule suicide 2 phr: go_on_quietly|X_again|Y|{} ~1 done\n",
            phrases.join("|")
        );
        let d = CrisisDetector::from_files(&[("t", &text)]).unwrap();
        assert_crisis(
            &d,
            &[
                "go on quietly done",
                "alpha again done",
                "gamma done",
                "p3 q3 done",
                "p65 q65 done",
            ],
            true,
        );
        assert_crisis(
            &d,
            &[
                "go on done",
                "quietly done",
                "again done",
                "beta done",
                "p65 done",
                "q65 done",
                "q3 p3 done",
            ],
            false,
        );
    }

    #[test]
    fn the_rules_distance_a_resolved_past_a_topic_and_everyday_idioms() {
        // The rules alone: the classifier can veto a rule only when it is all but sure.
        let d = CrisisDetector::rules_only();
        let safe = [
            "my sister tried to overdose when she was 16, she's 25 now and in a good place",
            "my ex used to say he wanted to die but that was years ago",
            "my cousin died by suicide back in 2015, we still miss him",
            "my friend said goodbye at the airport",
            "what does kms mean",
            "how do i help a friend who might be suicidal",
            "the form asked whether i have thoughts of suicide, i checked no",
            "i'm freezing to death in this office",
            "this is the hill i will die on",
            "i tried to kill the spider but it escaped",
            "i'm thinking about ending my lease",
            "i hurt myself skateboarding, my knee is bleeding",
            "my friend is on the roof fixing the gutter",
        ];
        assert_crisis(&d, &safe, false);
    }

    #[test]
    fn a_third_party_in_danger_now_fires_and_a_first_person_past_attempt_is_not_distanced() {
        let d = CrisisDetector::rules_only();
        let crisis = [
            "my friend says she wants to kill herself, what do i do",
            "my friend is on the bridge right now and not answering her phone",
            "my girlfriend took like 20 tylenol, what do i do",
            "he's holding a knife to his wrist",
            "i tried to kill myself years ago and the thoughts are back",
            "i tried to hang myself when i was 15, im 19 now and its back",
        ];
        assert_crisis(&d, &crisis, true);
        // The danger marker alone, or a third party with a means and no sign of danger
        // now, is not enough.
        let (score, features) = d.explain("my friend is on the bridge");
        assert!(score < THRESHOLD, "{features:?}");
        assert!(features.contains(&"third_risk".to_string()), "{features:?}");
    }

    #[test]
    fn a_first_person_attempt_told_as_recovered_history_is_distanced_unless_it_is_back() {
        let d = CrisisDetector::rules_only();
        let safe = [
            "i tried to kill myself at 17 and i am in a good place, married with a dog",
            "i survived my attempt and i am so glad i stayed",
            "my attempt at the cake today was a disaster",
        ];
        assert_crisis(&d, &safe, false);
        let crisis = [
            "i tried to kill myself at 17 and the feelings are coming back",
            "i tried to kill myself at 17, i was doing so much better but the thoughts are back",
            "survived my attempt in may and im not ok",
            "the anniversary of my attempt and i am not okay",
        ];
        assert_crisis(&d, &crisis, true);
    }

    #[test]
    fn the_model_adds_a_detection_the_rules_miss_and_says_so() {
        let text = "placed the chair under the beam in the basement";
        assert_eq!(CrisisDetector::rules_only().assess(text), Outcome::Nothing);
        let model = Model::parse("m", "bias\t-3\nthreshold\t0.5\nw:beam\t60\n").unwrap();
        let d = CrisisDetector::rules_only().with_model(model);
        let Outcome::Crisis(s) = d.assess(text) else {
            panic!("{:?}", d.explain(text));
        };
        assert_eq!((s.category, s.stage), (Suicide, Stage::Model));
        let p: Option<f32> = s
            .features
            .last()
            .and_then(|f| f.strip_prefix("model:"))
            .and_then(|p| p.parse().ok());
        assert!(p.is_some_and(|p| p >= 0.5), "{:?}", s.features);
        // Without the word, the model stays below its threshold.
        assert_eq!(
            d.assess("placed the chair in the basement"),
            Outcome::Nothing
        );
    }

    #[test]
    fn the_model_adds_needs_more_in_a_safe_context_and_vetoes_only_when_all_but_sure() {
        let rules = Outcome::Crisis(Signal {
            category: SelfHarm,
            features: vec!["cut_self".into()],
            score: 2.0,
            stage: Stage::Rules,
        });
        let Outcome::Crisis(s) = CrisisDetector::combine(rules.clone(), false, 0.1, 0.5, 0.0)
        else {
            panic!("the rules' detection must stay");
        };
        assert_eq!(
            (s.stage, s.features.clone()),
            (
                Stage::Rules,
                vec!["cut_self".to_string(), "model:0.10".to_string()]
            )
        );
        let Outcome::Crisis(s) = CrisisDetector::combine(rules.clone(), false, 0.7, 0.5, 0.0)
        else {
            panic!("the rules' detection must stay");
        };
        assert_eq!(s.stage, Stage::Both);
        let fires = |o: Outcome, guarded: bool, p: f32| {
            matches!(
                CrisisDetector::combine(o, guarded, p, 0.5, 0.0),
                Outcome::Crisis(_)
            )
        };
        assert!(fires(Outcome::Nothing, false, 0.6));
        assert!(!fires(Outcome::Nothing, false, 0.4));
        // A safe context, a negation or a hotline question: GUARDED_MIN, not the threshold.
        assert!(!fires(Outcome::Nothing, true, 0.85));
        assert!(fires(Outcome::Nothing, true, 0.95));
        let hotline = || Outcome::Resources(vec!["hotline_number".into()]);
        assert_eq!(
            CrisisDetector::combine(hotline(), true, 0.85, 0.5, 0.0),
            hotline()
        );
        assert!(fires(hotline(), true, 0.95));
        // The veto: the rules' detection falls only when the model is all but sure.
        assert_eq!(
            CrisisDetector::combine(rules.clone(), false, 0.01, 0.5, 0.02),
            Outcome::Nothing
        );
        let Outcome::Crisis(s) = CrisisDetector::combine(rules.clone(), false, 0.03, 0.5, 0.02)
        else {
            panic!("above the veto the rules' detection stays");
        };
        assert_eq!(s.stage, Stage::Rules);
        // The veto never removes what the model itself would add.
        assert!(fires(Outcome::Nothing, false, 0.6));
    }

    #[test]
    fn a_negated_signal_guards_the_model() {
        let d = CrisisDetector::rules_only();
        let guarded = |t: &str| d.with_evidence(t, |_, (_, g)| g);
        assert!(guarded("i would never kill myself"));
        assert!(!guarded("i have the rope ready"));
        assert!(guarded("kill the dragon in the game"));
        assert!(guarded("is 988 open at night?"));
    }

    #[test]
    fn an_idiom_does_not_hide_a_real_signal_in_the_same_message() {
        let d = CrisisDetector::builtin();
        let text = "this traffic is killing me and I want to kill myself";
        assert_eq!(category(&d, text), Some(Suicide));
        let text = "the pie here is to die for and honestly i want to die";
        assert_eq!(category(&d, text), Some(Suicide));
    }

    #[test]
    fn hotline_questions_are_resources_not_crisis() {
        let d = CrisisDetector::builtin();
        for text in [
            "is 988 open at night?",
            "what number do I text",
            "what's the suicide hotline number",
        ] {
            assert!(
                matches!(d.assess(text), Outcome::Resources(_)),
                "{text:?}: {:?}",
                d.assess(text)
            );
        }
        // A crisis in the same message wins.
        let text = "what number do i call, i want to kill myself";
        assert!(matches!(d.assess(text), Outcome::Crisis(_)));
    }

    #[test]
    fn the_signal_names_the_rules_not_the_message() {
        let d = CrisisDetector::builtin();
        let s = d.detect("I want to kill myself tonight").unwrap();
        assert_eq!(s.category, Suicide);
        assert!(
            s.features.iter().any(|f| f == "kill_self"),
            "{:?}",
            s.features
        );
        assert!(s.features.iter().any(|f| f == "+soon"), "{:?}", s.features);
        assert!(s.score >= THRESHOLD);
        assert!(!s.features.iter().any(|f| f.contains("tonight")));
    }

    #[test]
    fn a_signal_at_the_end_of_a_long_message_fires() {
        let d = CrisisDetector::builtin();
        let mut text = "the dragon is killing me and we are dying to see it. ".repeat(500);
        assert_eq!(d.detect(&text), None);
        text.push_str("but really I can't do this anymore");
        assert_eq!(category(&d, &text), Some(Desperation));
    }

    #[test]
    fn the_format_classes_gaps_alternatives_and_sequences() {
        let files = [(
            "t.txt",
            "# comment\n\nclass ME: i me\nclass NEG: not never\nslang kmn: kill me now\n\
             rule suicide 2 want: ME ~2 want|wish to die|be_gone\n\
             rule desperation 1 cant: can't take it . \n\
             adjust -1 game: boss\n\
             idiom dying_to: dying to see\n\
             resources line: 988\n\
             rule suicide 2 kmn: kill me now\n",
        )];
        let d = CrisisDetector::from_files(&files).unwrap();
        assert!(d.detect("I really want to die").is_some());
        assert!(d.detect("i wish to be gone").is_some());
        assert!(
            d.detect("i really really really want to die").is_none(),
            "gap of 2"
        );
        assert!(
            d.detect("i do not want to die").is_none(),
            "no negation in a gap"
        );
        assert!(d.detect("cannot take it").is_some(), "`.` matches the end");
        assert!(
            d.detect("cannot take it, really").is_some(),
            "`.` matches a break"
        );
        assert!(d.detect("cannot take it really").is_none());
        assert!(d.detect("cannot take it. the boss").is_none(), "adjustment");
        assert!(d.detect("ugh kmn").is_some(), "slang");
        assert!(matches!(d.assess("is 988 free"), Outcome::Resources(_)));
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let cases = [
            ("class ME: i\nrule suicde 2 x: i die", "line 2", "suicde"),
            ("rule suicide heavy x: i die", "line 1", "weight"),
            ("rule suicide 2 x: NOPE die", "line 1", "NOPE"),
            ("\n\nkill myself", "line 3", "directive"),
            ("rule suicide 2 x: ~2 die", "line 1", "must start"),
            ("rule suicide 2 x: die ~12 now", "line 1", "~1 to ~9"),
            ("class lower: a b", "line 1", "upper case"),
            ("slang kms: !!!", "line 1", "no meaning"),
            ("frobnicate x: y", "line 1", "unknown directive"),
        ];
        for (text, line, word) in cases {
            let err = CrisisDetector::from_files(&[("extra.txt", text)]).unwrap_err();
            assert!(err.contains("extra.txt"), "{err}");
            assert!(err.contains(line), "{text:?}: {err}");
            assert!(err.contains(word), "{text:?}: {err}");
        }
        let err = CrisisDetector::with_extra("mine.txt", "# ok\nrule nope").unwrap_err();
        assert!(err.starts_with("mine.txt line 2:"), "{err}");
    }

    #[test]
    fn an_extra_file_extends_the_builtin_rules() {
        let d = CrisisDetector::with_extra(
            "extra.txt",
            "class DIE: perish\nrule suicide 2 lighthouse: the purple lighthouse hums\n",
        )
        .unwrap();
        assert!(d.detect("the purple lighthouse hums").is_some());
        assert!(
            d.detect("i want to perish").is_some(),
            "a builtin class grew"
        );
        let builtin = CrisisDetector::builtin();
        assert!(builtin.detect("the purple lighthouse hums").is_none());
    }

    #[test]
    fn a_classification_is_read_from_its_first_word() {
        assert_eq!(parse_classification("yes"), Some(true));
        assert_eq!(
            parse_classification("  **Yes.** The user says..."),
            Some(true)
        );
        assert_eq!(parse_classification("NO"), Some(false));
        assert_eq!(parse_classification("no, this is game talk"), Some(false));
        assert_eq!(parse_classification("Maybe"), None);
        assert_eq!(parse_classification(""), None);
        assert_eq!(parse_classification("nothing here"), None);
    }

    #[test]
    fn resources_reply_has_the_numbers_without_the_protocol() {
        let r = resources_reply(None);
        assert!(r.contains("call or text 988") && r.contains("text HOME to 741741"));
        assert!(!r.contains("Are you safe right now?"));
        assert!(!r.contains("5 things you can see"));
        let r = resources_reply(Some(" Happy to help. "));
        assert_eq!(r, format!("{RESOURCES_TEXT}\n\nHappy to help."));
    }

    #[test]
    fn crisis_text_has_every_part_in_order() {
        let t = CRISIS_TEXT;
        assert!(t.starts_with("Are you safe right now?"));
        let safe = t.find("Are you safe right now?").unwrap();
        let lifeline = t.find("988").unwrap();
        let text_line = t.find("741741").unwrap();
        let grounding = t.find("\n5 things you can see").unwrap();
        assert!(safe < lifeline && lifeline < text_line && text_line < grounding);
        assert!(t.contains("call or text 988"));
        assert!(t.contains("Suicide & Crisis Lifeline"));
        assert!(t.contains("text HOME to 741741"));
        assert!(t.contains("Crisis Text Line"));
        for line in [
            "4 things you can touch",
            "3 things you can hear",
            "2 things you can smell",
            "1 thing you can taste",
        ] {
            let at = t.find(line).unwrap_or_else(|| panic!("missing {line:?}"));
            assert!(at > grounding);
        }
    }

    #[test]
    fn crisis_reply_puts_the_protocol_before_the_agent() {
        assert_eq!(crisis_reply(None), CRISIS_TEXT);
        assert_eq!(crisis_reply(Some("  \n")), CRISIS_TEXT);
        let r = crisis_reply(Some("I'm right here. Tell me what happened.\n"));
        assert_eq!(
            r,
            format!("{CRISIS_TEXT}\n\nI'm right here. Tell me what happened.")
        );
        let grounding = r.find("1 thing you can taste").unwrap();
        assert!(r.find("Tell me what happened").unwrap() > grounding);
    }

    #[test]
    fn keep_lifeline_adds_the_line_once() {
        let once = keep_lifeline("The garden is quiet tonight.");
        assert_eq!(
            once,
            format!("The garden is quiet tonight.\n\n{LIFELINE_LINE}")
        );
        assert_eq!(keep_lifeline(&once), once);
        assert_eq!(once.matches("988").count(), 1);
        let has = "Remember you can text 988.";
        assert_eq!(keep_lifeline(has), has);
        assert_eq!(keep_lifeline(""), LIFELINE_LINE);
        assert!(LIFELINE_LINE.contains("988"));
        // 988 inside a longer number is not the Lifeline.
        let year = keep_lifeline("Built in 19880.");
        assert!(year.ends_with(LIFELINE_LINE));
    }
}
