//! The crisis protocol: a detector for suicide, self-harm, hopelessness and desperation
//! signals in what a user says, and the fixed text that answers them.
//!
//! None of this depends on the model. The loop runs [`CrisisDetector::detect`] on every
//! user message; when it fires, the reply starts with [`CRISIS_TEXT`] whatever the agent
//! does ([`crisis_reply`]), and later replies in that session keep the 988 line
//! ([`keep_lifeline`]).
//!
//! Detection is phrase matching over normalised words, not a classifier. The phrase lists
//! live in `fixtures/crisis/` (their format is documented at the top of each file) and are
//! compiled into the binary. Text and phrases go through the same normalisation, so one list
//! entry covers "don't"/"dont"/"do not" and curly or straight apostrophes. Idioms ("this
//! traffic is killing me") are masked out before signals are matched. Words are interned to
//! ids once; a message costs one pass to normalise plus, per word, a look at the few phrases
//! that start with that word.

use std::collections::HashMap;

/// The shipped lists; see the header of each file for the format.
const BUILTIN_SIGNALS: &str = include_str!("../../fixtures/crisis/signals.txt");
const BUILTIN_IDIOMS: &str = include_str!("../../fixtures/crisis/idioms.txt");

/// What kind of crisis a message signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Suicide,
    SelfHarm,
    Hopelessness,
    Desperation,
}

impl Category {
    /// The name used in the fixture files and in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Suicide => "suicide",
            Category::SelfHarm => "self_harm",
            Category::Hopelessness => "hopelessness",
            Category::Desperation => "desperation",
        }
    }

    fn parse(name: &str) -> Option<Category> {
        match name {
            "suicide" => Some(Category::Suicide),
            "self_harm" => Some(Category::SelfHarm),
            "hopelessness" => Some(Category::Hopelessness),
            "desperation" => Some(Category::Desperation),
            _ => None,
        }
    }

    /// Lower is more urgent: when a message matches several phrases, the most urgent wins.
    fn urgency(self) -> u8 {
        match self {
            Category::Suicide => 0,
            Category::SelfHarm => 1,
            Category::Hopelessness => 2,
            Category::Desperation => 3,
        }
    }
}

/// A detection: the category and the list entry that matched, as written in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub category: Category,
    pub phrase: String,
}

/// A message word that is in no phrase: only `*` matches it.
const UNKNOWN: u32 = u32::MAX - 1;
/// A message word covered by an idiom: nothing matches it, not even `*`.
const MASKED: u32 = u32::MAX;

/// One position of a compiled phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Word(u32),
    Any,
}

impl Slot {
    fn matches(self, word: u32) -> bool {
        match self {
            Slot::Word(id) => id == word,
            Slot::Any => word != MASKED,
        }
    }
}

/// Compiled phrases, indexed by their first word so a message word only looks at the
/// phrases that can start there.
#[derive(Debug, Clone, Default)]
struct PhraseSet {
    phrases: Vec<Vec<Slot>>,
    /// Word id → indices into `phrases` of the phrases starting with that word.
    by_first: Vec<Vec<usize>>,
}

impl PhraseSet {
    fn index(&mut self, vocab_len: usize) {
        self.by_first = vec![Vec::new(); vocab_len];
        for (i, phrase) in self.phrases.iter().enumerate() {
            // `compile` rejects empty phrases and a leading `*`.
            if let Some(Slot::Word(first)) = phrase.first() {
                self.by_first[*first as usize].push(i);
            }
        }
    }

    /// Indices and lengths of the phrases that match `words` starting at `at`.
    fn matches_at<'a>(
        &'a self,
        words: &'a [u32],
        at: usize,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        let candidates = words
            .get(at)
            .and_then(|&w| self.by_first.get(w as usize))
            .map_or(&[][..], Vec::as_slice);
        candidates.iter().filter_map(move |&i| {
            let phrase = &self.phrases[i];
            let rest = words.get(at..at + phrase.len())?;
            phrase
                .iter()
                .zip(rest)
                .all(|(slot, &w)| slot.matches(w))
                .then_some((i, phrase.len()))
        })
    }
}

/// Phrase lists compiled for matching. Build once (at start-up) and share: `detect` takes
/// `&self` and allocates only the message's word list.
#[derive(Debug, Clone)]
pub struct CrisisDetector {
    /// Every word that appears in a phrase, interned.
    vocab: HashMap<String, u32>,
    idioms: PhraseSet,
    signals: PhraseSet,
    /// Parallel to `signals.phrases`: category and list entry as written.
    signal_entries: Vec<(Category, String)>,
}

impl CrisisDetector {
    /// The lists shipped in `fixtures/crisis/`, embedded with `include_str!` (the binary is
    /// self-contained).
    pub fn builtin() -> CrisisDetector {
        // The lists are part of the source tree and `builtin_lists_parse` checks them, so a
        // failure here is a build defect, not bad input.
        CrisisDetector::from_lists(BUILTIN_SIGNALS, BUILTIN_IDIOMS)
            .expect("fixtures/crisis lists are valid (tested)")
    }

    /// Parses lists in the fixture file format (for tests and a future config option).
    /// Errors name the list and the 1-based line.
    pub fn from_lists(signals: &str, idioms: &str) -> Result<CrisisDetector, String> {
        let mut vocab = HashMap::new();
        let mut signal_set = PhraseSet::default();
        let mut signal_entries = Vec::new();
        for (line_no, line) in list_lines(signals) {
            let (name, phrase) = line.split_once(':').ok_or_else(|| {
                format!("signals line {line_no}: expected `category: phrase`, got {line:?}")
            })?;
            let name = name.trim();
            let category = Category::parse(name).ok_or_else(|| {
                format!(
                    "signals line {line_no}: unknown category {name:?} \
                     (expected suicide, self_harm, hopelessness or desperation)"
                )
            })?;
            let phrase = phrase.trim();
            let slots =
                compile(phrase, &mut vocab).map_err(|e| format!("signals line {line_no}: {e}"))?;
            signal_set.phrases.push(slots);
            signal_entries.push((category, phrase.to_string()));
        }
        let mut idiom_set = PhraseSet::default();
        for (line_no, line) in list_lines(idioms) {
            let slots =
                compile(line, &mut vocab).map_err(|e| format!("idioms line {line_no}: {e}"))?;
            idiom_set.phrases.push(slots);
        }
        signal_set.index(vocab.len());
        idiom_set.index(vocab.len());
        Ok(CrisisDetector {
            vocab,
            idioms: idiom_set,
            signals: signal_set,
            signal_entries,
        })
    }

    /// The most urgent signal in `text` (earliest on a tie), or `None`.
    pub fn detect(&self, text: &str) -> Option<Signal> {
        let mut words = Vec::new();
        for_each_word(text, false, |w| {
            words.push(self.vocab.get(w).copied().unwrap_or(UNKNOWN))
        });
        self.mask_idioms(&mut words);

        let mut best: Option<(u8, usize)> = None;
        'scan: for at in 0..words.len() {
            for (i, _) in self.signals.matches_at(&words, at) {
                let urgency = self.signal_entries[i].0.urgency();
                if best.is_none_or(|(u, _)| urgency < u) {
                    best = Some((urgency, i));
                    if urgency == 0 {
                        break 'scan;
                    }
                }
            }
        }
        best.map(|(_, i)| {
            let (category, phrase) = &self.signal_entries[i];
            Signal {
                category: *category,
                phrase: phrase.clone(),
            }
        })
    }

    /// Replaces every word covered by an idiom with `MASKED`. Idioms are matched on the
    /// unmasked words, so overlapping idioms all apply.
    fn mask_idioms(&self, words: &mut [u32]) {
        let mut spans = Vec::new();
        for at in 0..words.len() {
            spans.extend(
                self.idioms
                    .matches_at(words, at)
                    .map(|(_, len)| at..at + len),
            );
        }
        for span in spans {
            for w in &mut words[span] {
                *w = MASKED;
            }
        }
    }
}

/// Non-comment, non-blank lines of a list, trimmed, with 1-based line numbers.
fn list_lines(list: &str) -> impl Iterator<Item = (usize, &str)> {
    list.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Normalises a list phrase into slots, interning its words.
fn compile(phrase: &str, vocab: &mut HashMap<String, u32>) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::new();
    for_each_word(phrase, true, |w| {
        slots.push(if w == "*" {
            Slot::Any
        } else {
            let next = vocab.len() as u32;
            Slot::Word(*vocab.entry(w.to_string()).or_insert(next))
        })
    });
    match slots.first() {
        None => Err(format!("phrase {phrase:?} has no words")),
        Some(Slot::Any) => Err(format!("phrase {phrase:?} may not start with `*`")),
        Some(Slot::Word(_)) => Ok(slots),
    }
}

/// Calls `emit` with each normalised word of `text`, in order: lowercase, apostrophes
/// straightened, contractions expanded, "my self" joined. Anything that is not a letter,
/// digit or apostrophe separates words. With `wildcards`, `*` is a word of its own.
fn for_each_word(text: &str, wildcards: bool, mut emit: impl FnMut(&str)) {
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
        if c == '\'' || c.is_alphanumeric() {
            token.extend(c.to_lowercase());
            continue;
        }
        if !token.is_empty() {
            let hyphen = matches!(c, '-' | '\u{2010}' | '\u{2011}');
            expand(&token, &mut |w| push(w, hyphen));
            token.clear();
        }
        if wildcards && c == '*' {
            push("*", false);
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
    let token = token.trim_matches('\'');
    if token.is_empty() {
        return;
    }
    if let Some((base, suffix)) = token.rsplit_once('\'') {
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
    match SPELLED.iter().find(|(spelled, _)| *spelled == token) {
        Some((_, words)) => words.iter().for_each(|w| out(w)),
        None => out(token),
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

#[cfg(test)]
mod tests {
    use super::*;
    use Category::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, false, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn builtin_lists_parse() {
        let d = CrisisDetector::from_lists(BUILTIN_SIGNALS, BUILTIN_IDIOMS);
        assert!(d.is_ok(), "{:?}", d.err());
    }

    #[test]
    fn normalises_case_apostrophes_contractions_and_punctuation() {
        assert_eq!(words("I DON’T want—to!!"), ["i", "do", "not", "want", "to"]);
        let cant = ["do", "not", "can", "not", "can", "not", "can", "not"];
        assert_eq!(words("dont  cant cannot can't"), cant);
        let im = ["i", "am", "i", "am", "will", "not", "will", "not"];
        assert_eq!(words("I'm im Won't wont"), im);
        assert_eq!(
            words("self-harm... anymore"),
            ["self", "harm", "any", "more"]
        );
        assert_eq!(
            words("kill my self, my cat"),
            ["kill", "myself", "my", "cat"]
        );
        assert_eq!(
            words("it's Bob's 'quote' my"),
            ["it", "is", "bob", "quote", "my"]
        );
        assert_eq!(words("I'd wanna go ;)"), ["i", "would", "want", "to", "go"]);
        assert!(words("  ...!? 😂 ").is_empty());
    }

    #[test]
    fn positive_sentences_fire_with_the_right_category() {
        let d = CrisisDetector::builtin();
        let table: &[(&str, Category)] = &[
            ("I want to kill myself", Suicide),
            ("i dont want to be here anymore", Suicide),
            ("I don't want to be here anymore.", Suicide),
            ("Everyone would be better off without me.", Suicide),
            ("I’m thinking about suicide", Suicide),
            ("I've been feeling SUICIDAL lately", Suicide),
            ("I want to end my life.", Suicide),
            ("i just want to die", Suicide),
            ("I'm going to take my own life tonight", Suicide),
            ("I hope I don't wake up tomorrow", Suicide),
            ("sometimes i want to go to sleep and not wake up", Suicide),
            ("I won’t be around much longer", Suicide),
            ("goodbye forever, everyone", Suicide),
            ("I just want it all to end", Suicide),
            ("I wish I could disappear forever", Suicide),
            ("Honestly? I wish I was dead", Suicide),
            ("I don't want to live anymore", Suicide),
            ("dont wanna be alive", Suicide),
            ("life isn't worth living", Suicide),
            ("I keep thinking about killing myself", Suicide),
            ("ugh im gonna kms", Suicide),
            ("they'd all be better off if I was gone", Suicide),
            ("I’m tired of being alive", Suicide),
            ("I wish I'd never been born", Suicide),
            ("I want to kill my self", Suicide),
            ("I want to hurt my self.", SelfHarm),
            ("my self harm is getting worse", SelfHarm),
            ("I want to unalive myself", Suicide),
            ("I don’t want to exist", Suicide),
            ("i can't take it anymore, i want to die", Suicide),
            ("I cut myself again last night", SelfHarm),
            ("I've started self-harming again", SelfHarm),
            ("i want to hurt myself", SelfHarm),
            ("I keep burning myself on purpose", SelfHarm),
            ("been thinking about self harm", SelfHarm),
            ("There's no reason to live.", Hopelessness),
            ("there's no point in living", Hopelessness),
            ("I have nothing to live for", Hopelessness),
            ("I feel so hopeless", Hopelessness),
            ("I can't go on like this", Hopelessness),
            ("i cant go on", Hopelessness),
            ("I give up on everything", Hopelessness),
            ("I'm a burden to everyone", Hopelessness),
            ("Nobody would miss me if I was gone", Hopelessness),
            ("whats the point of living", Hopelessness),
            ("I feel hopeless and I can't take it anymore", Hopelessness),
            ("I can’t take it anymore", Desperation),
            ("I cant do this anymore!!!", Desperation),
            ("I'm at the end of my rope.", Desperation),
            ("There is no way out", Desperation),
            ("I CANNOT TAKE IT ANY LONGER", Desperation),
            ("i have nowhere to turn", Desperation),
            ("I just want the pain to stop", Desperation),
        ];
        assert!(table.len() >= 40);
        for (text, category) in table {
            let got = d.detect(text).map(|s| s.category);
            assert_eq!(got, Some(*category), "{text:?}");
        }
    }

    #[test]
    fn idioms_and_word_boundary_traps_do_not_fire() {
        let d = CrisisDetector::builtin();
        let table: &[&str] = &[
            "this traffic is killing me",
            "I'm dying to see it",
            "I’m dying to know what happens next",
            "this cake is to die for",
            "you killed it out there!",
            "go kill it on stage tonight",
            "I'm dead tired",
            "I could kill for a coffee",
            "Suicide Squad was a fun movie",
            "kill the process and restart",
            "my phone is dying",
            "i'm dead 😂",
            "Die Hard is a Christmas movie",
            "just killing time before the raid",
            "I want to skill myself up before the boss",
            "see you on sunday",
            "I'm on a diet",
            "my feet are killing me",
            "The heat is killing me today",
            "this joke is killing me",
            "I'm killing myself laughing at this",
            "I cut myself shaving this morning",
            "I'm hopeless at chess",
            "charging into that dragon would be suicide",
            "that is a suicide mission",
            "I need to cut myself some slack",
            "there's no way out of the maze, try the east door",
            "I'd die for a pizza right now",
            "I want to die my hair pink",
            "I want to die of embarrassment",
            "I'm burning myself out at work",
            "this is goodbye for now, see you tomorrow",
            "hello everyone, how are you?",
            "the killer studied candied skills",
            "I hurt my self-esteem by reading the comments",
        ];
        assert!(table.len() >= 30);
        for text in table {
            assert_eq!(d.detect(text), None, "{text:?}");
        }
    }

    #[test]
    fn an_idiom_does_not_hide_a_real_signal_in_the_same_message() {
        let d = CrisisDetector::builtin();
        let s = d.detect("this traffic is killing me and I want to kill myself");
        assert_eq!(
            s,
            Some(Signal {
                category: Suicide,
                phrase: "kill myself".to_string()
            })
        );
        let s = d.detect("the pie here is to die for and honestly i want to die");
        assert_eq!(s.map(|s| s.category), Some(Suicide));
        let s = d.detect("I cut myself off from everyone and now I cut myself");
        assert_eq!(s.map(|s| s.category), Some(SelfHarm));
    }

    #[test]
    fn signal_reports_the_list_entry_as_written() {
        let d = CrisisDetector::builtin();
        let s = d.detect("I DONT want to be here any longer");
        assert_eq!(
            s.map(|s| s.phrase),
            Some("don't want to be here any *".to_string())
        );
    }

    #[test]
    fn every_builtin_signal_fires_on_its_own_words() {
        let d = CrisisDetector::builtin();
        for (_, line) in list_lines(BUILTIN_SIGNALS) {
            let (name, phrase) = line.split_once(':').unwrap();
            let text = phrase.replace('*', "longer");
            let got = d.detect(&text);
            assert!(got.is_some(), "{line:?} does not fire on its own words");
            let want = Category::parse(name.trim()).unwrap();
            assert!(
                got.unwrap().category.urgency() <= want.urgency(),
                "{line:?} detected as a less urgent category"
            );
        }
    }

    #[test]
    fn a_signal_at_the_end_of_a_long_message_fires() {
        let d = CrisisDetector::builtin();
        let mut text = "the dragon is killing me and we are dying to see it ".repeat(1000);
        assert_eq!(d.detect(&text), None);
        text.push_str("but really I can't do this anymore");
        assert_eq!(d.detect(&text).map(|s| s.category), Some(Desperation));
    }

    #[test]
    fn from_lists_matches_whole_words_and_one_word_wildcards() {
        let d = CrisisDetector::from_lists(
            "# comment\n\nsuicide: kill myself\ndesperation: can't take it any *\n",
            "killing me\n",
        )
        .unwrap();
        assert!(d.detect("I want to skill myself").is_none());
        assert!(d.detect("kill myselfish").is_none());
        assert!(d.detect("Kill. Myself.").is_some());
        assert!(d.detect("cannot take it any longer").is_some());
        assert!(d.detect("cannot take it").is_none());
        assert!(d.detect("cannot take it any").is_none());
        // A masked word does not satisfy `*` either.
        let d =
            CrisisDetector::from_lists("hopelessness: no * left", "hope is killing me").unwrap();
        assert!(d.detect("no hope left").is_some());
        assert!(d.detect("no hope is killing me left").is_none());
    }

    #[test]
    fn from_lists_names_the_bad_line() {
        let err = CrisisDetector::from_lists("suicide: kill myself\n\nsuicde: end my life", "")
            .unwrap_err();
        assert!(err.contains("signals line 3"), "{err}");
        assert!(err.contains("suicde"), "{err}");

        let err = CrisisDetector::from_lists("# ok\nkill myself", "").unwrap_err();
        assert!(err.contains("signals line 2"), "{err}");

        let err = CrisisDetector::from_lists("suicide: !!!", "").unwrap_err();
        assert!(err.contains("signals line 1"), "{err}");

        let err = CrisisDetector::from_lists("", "dying to\n* killing me").unwrap_err();
        assert!(err.contains("idioms line 2"), "{err}");
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
