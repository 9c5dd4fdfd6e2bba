//! The crisis detector's learned second stage: a logistic-regression classifier over the
//! words the rule engine has already normalised, and its training (`worldbridge
//! crisis-train`).
//!
//! The rules catch the phrases someone wrote a rule for; this stage generalises past them.
//! Its features come from [`CrisisDetector`]'s own normalisation (lower case, apostrophes,
//! contractions, slang read as its meaning, typos corrected to a rule word where one is
//! within reach), so there is one normaliser:
//! - `w:WORD` — each word; `b:WORD WORD` — two neighbouring words in one clause;
//!   `k:WORD WORD` — two words of one clause with one or two words between them;
//! - `c:GRAM` — the 3, 4 and 5 letter pieces of each word as typed (padded with `<` `>`,
//!   runs of three or more of one letter squeezed), so a typo still shares most pieces;
//! - `r:RULE`, `a:ADJUSTMENT`, `q:RESOURCES`, `i:IDIOM` — the rule engine's matches, and
//!   `s:BUCKET` — its best score, bucketed.
//!
//! A message's score is `bias + (sum of its features' weights, each counted as often as it
//! occurs) / sqrt(number of features)`, and its probability the logistic of that. The
//! weights live in `fixtures/crisis/model.tsv` (format at its top), are compiled into the
//! binary, and are regenerated from the training files by [`train`]: fixed fold assignment,
//! fixed shuffles from a fixed seed, so the same files give the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::crisis::{CrisisDetector, Outcome};
use super::crisis_eval::{evaluate_by, load, Case, Label, Report};

/// The shipped weights, embedded like the rule files.
pub const BUILTIN_MODEL: (&str, &str) = (
    "fixtures/crisis/model.tsv",
    include_str!("../../fixtures/crisis/model.tsv"),
);

/// Word pairs within a clause are features up to this far apart (`b:` neighbours, `k:`
/// with one or two words between).
const SKIP_REACH: usize = 3;

/// A message where the rule engine saw context that is usually safe (a negative
/// adjustment: game, fiction, technical, topic, news, history, a past third party), a
/// negated signal ("i would never kill myself") or a hotline question needs at least this
/// probability before the model alone fires.
pub const GUARDED_MIN: f32 = 0.9;

/// What the rule engine and the normaliser saw in a message: what feature extraction reads.
pub(crate) struct Evidence<'a> {
    /// Clauses of words: `(word as understood, word as typed)`; `None` is a clause break.
    pub words: Vec<Option<(&'a str, &'a str)>>,
    /// `(prefix, name)` of every rule, adjustment, resources pattern and idiom that matched.
    pub matches: Vec<(&'static str, &'a str)>,
    /// The best rule score, if any rule matched.
    pub best: Option<f32>,
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
    for w in &ev.words {
        let Some((word, raw)) = *w else {
            clause.clear();
            prev = None;
            prev_raw = None;
            continue;
        };
        sink.add(&["w:", word]);
        if let Some(p) = prev {
            sink.add(&["b:", p, " ", word]);
        }
        // Pairs with one or two words between them ("saving up my pills").
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
}

/// The 3-5 letter pieces of `<raw>` (ASCII words only: a piece must stay valid text).
fn char_grams(raw: &str, sink: &mut (impl Sink + ?Sized)) {
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

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over the concatenated parts: the key of a feature in the weight table.
fn hash(parts: &[&str]) -> u64 {
    parts.iter().fold(FNV_START, |h, p| fnv(h, p.as_bytes()))
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Longest word whose letter pieces the scorer hashes in place (longer ones take the
/// general path).
const GRAM_BUF: usize = 48;

/// The weights, in an open-addressing table keyed by the feature's hash.
#[derive(Debug, Clone)]
pub struct Model {
    /// `(check, weight)`; check 0 marks an empty slot.
    slots: Vec<(u32, f32)>,
    mask: usize,
    bias: f32,
    threshold: f32,
    features: usize,
}

/// Sums the weights of a message's features.
struct Scorer<'m> {
    model: &'m Model,
    sum: f32,
    n: u32,
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
        let (mut bias, mut threshold) = (None, None);
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
                k if k.len() > 2 && k.as_bytes()[1] == b':' => weights.push((hash(&[k]), value)),
                k => {
                    return Err(format!(
                        "{origin}: {k:?} is not `bias`, `threshold` or a feature `x:name`"
                    ))
                }
            }
        }
        let bias = bias.ok_or_else(|| format!("{name}: no `bias` line"))?;
        let threshold = threshold.ok_or_else(|| format!("{name}: no `threshold` line"))?;
        let cap = (weights.len() * 4 / 3 + 1).next_power_of_two().max(16);
        let mut model = Model {
            slots: vec![(0, 0.0); cap],
            mask: cap - 1,
            bias,
            threshold,
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

    /// How many features have a weight.
    pub fn len(&self) -> usize {
        self.features
    }

    pub fn is_empty(&self) -> bool {
        self.features == 0
    }
}

// ---------------------------------------------------------------------------------------
// Training.

/// Folds of the cross-validation that chooses the threshold.
pub const FOLDS: usize = 5;
/// The largest share of ordinary and hotline lines the model may add the protocol to
/// (beyond the rules' own false alarms) in cross-validation.
pub const FP_BUDGET: f64 = 0.01;
/// A feature must occur in at least this many training messages to get a weight.
const MIN_DOCS: usize = 3;
const EPOCHS: usize = 12;
const LEARNING_RATE: f64 = 0.4;
const L2: f64 = 1e-5;
/// Weights smaller than this are left out of the file.
const MIN_WEIGHT: f64 = 0.002;
const SEED: u64 = 0x5eed_c415_15ca_fe11;

/// Collects feature names.
struct Names(Vec<String>);

impl Sink for Names {
    fn add(&mut self, parts: &[&str]) {
        self.0.push(parts.concat());
    }
}

/// The feature names of `text` (in order, with repeats), as training sees them.
pub fn feature_names(rules: &CrisisDetector, text: &str) -> Vec<String> {
    let mut names = Names(Vec::new());
    rules.with_evidence(text, |ev, _| extract(ev, &mut names));
    names.0
}

/// xorshift64*: a fixed, dependency-free generator for shuffles.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// One training message: feature ids with counts, the scale `1/sqrt(n)`, and its label.
struct Example {
    feats: Vec<(u32, f64)>,
    scale: f64,
    crisis: bool,
}

struct Fit {
    w: Vec<f64>,
    bias: f64,
}

impl Fit {
    fn z(&self, ex: &Example) -> f64 {
        self.bias
            + ex.scale
                * ex.feats
                    .iter()
                    .map(|&(f, c)| self.w[f as usize] * c)
                    .sum::<f64>()
    }

    fn p(&self, ex: &Example) -> f64 {
        1.0 / (1.0 + (-self.z(ex)).exp())
    }
}

/// Logistic regression by AdaGrad SGD with L2, classes weighted to count equally, in a
/// shuffled order fixed by `seed`.
fn fit(examples: &[Example], which: &[usize], dims: usize, seed: u64) -> Fit {
    let pos = which.iter().filter(|&&i| examples[i].crisis).count().max(1) as f64;
    let neg = (which.len() as f64 - pos).max(1.0);
    let (wpos, wneg) = (
        which.len() as f64 / (2.0 * pos),
        which.len() as f64 / (2.0 * neg),
    );
    let mut f = Fit {
        w: vec![0.0; dims],
        bias: 0.0,
    };
    let mut g2 = vec![1e-8; dims];
    let mut gb2 = 1e-8;
    let mut order = which.to_vec();
    let mut rng = Rng(seed);
    for _ in 0..EPOCHS {
        rng.shuffle(&mut order);
        for &i in &order {
            let ex = &examples[i];
            let y = if ex.crisis { 1.0 } else { 0.0 };
            let g = (f.p(ex) - y) * if ex.crisis { wpos } else { wneg };
            for &(k, c) in &ex.feats {
                let k = k as usize;
                let gk = g * ex.scale * c + L2 * f.w[k];
                g2[k] += gk * gk;
                f.w[k] -= LEARNING_RATE * gk / g2[k].sqrt();
            }
            gb2 += g * g;
            f.bias -= LEARNING_RATE * g / f64::sqrt(gb2);
        }
    }
    f
}

/// What training produced: the model file's text, the threshold, and the out-of-fold
/// outcome and probability of every training case (for the cross-validated report).
pub struct Trained {
    pub text: String,
    pub threshold: f64,
    pub oof: Vec<(Outcome, f32)>,
    /// The rules' outcome of every case and whether the model needs `GUARDED_MIN` there.
    pub rules: Vec<(Outcome, bool)>,
}

/// Trains the model on `cases` over the rules of `rules` (a detector without a model), and
/// chooses the threshold by `FOLDS`-fold cross-validation on the same cases. `sources`
/// names the files for the header.
pub fn train(rules: &CrisisDetector, cases: &[Case], sources: &[String]) -> Trained {
    let mut docs: BTreeMap<String, usize> = BTreeMap::new();
    let mut named = Vec::with_capacity(cases.len());
    for case in cases {
        let names = feature_names(rules, &case.message);
        let mut uniq: Vec<&String> = names.iter().collect();
        uniq.sort();
        uniq.dedup();
        for n in uniq {
            *docs.entry(n.clone()).or_default() += 1;
        }
        named.push(names);
    }
    let kept: Vec<&String> = docs
        .iter()
        .filter(|(_, &d)| d >= MIN_DOCS)
        .map(|(n, _)| n)
        .collect();
    let ids: BTreeMap<&str, u32> = kept
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let examples: Vec<Example> = named
        .iter()
        .zip(cases)
        .map(|(names, case)| {
            let mut counts: BTreeMap<u32, f64> = BTreeMap::new();
            for n in names {
                if let Some(&id) = ids.get(n.as_str()) {
                    *counts.entry(id).or_default() += 1.0;
                }
            }
            Example {
                feats: counts.into_iter().collect(),
                scale: 1.0 / (names.len().max(1) as f64).sqrt(),
                crisis: case.label == Label::Crisis,
            }
        })
        .collect();
    let dims = kept.len();

    // Out-of-fold probabilities.
    let mut fold_of: Vec<usize> = (0..cases.len()).collect();
    Rng(SEED).shuffle(&mut fold_of);
    let mut fold = vec![0; cases.len()];
    for (rank, &i) in fold_of.iter().enumerate() {
        fold[i] = rank % FOLDS;
    }
    let mut oof_p = vec![0.0f64; cases.len()];
    for k in 0..FOLDS {
        let train_idx: Vec<usize> = (0..cases.len()).filter(|&i| fold[i] != k).collect();
        let f = fit(&examples, &train_idx, dims, SEED ^ (k as u64 + 1));
        for i in (0..cases.len()).filter(|&i| fold[i] == k) {
            oof_p[i] = f.p(&examples[i]);
        }
    }
    let rule_outcomes: Vec<(Outcome, bool)> = cases
        .iter()
        .map(|c| rules.with_evidence(&c.message, |_, o| o))
        .collect();
    let threshold = choose_threshold(cases, &rule_outcomes, &oof_p);
    let oof = rule_outcomes
        .iter()
        .cloned()
        .zip(&oof_p)
        .map(|((outcome, guarded), &p)| {
            let p = p as f32;
            (
                CrisisDetector::combine(outcome, guarded, p, threshold as f32),
                p,
            )
        })
        .collect();

    let f = fit(&examples, &(0..cases.len()).collect::<Vec<_>>(), dims, SEED);
    let text = render(&f, &kept, threshold, cases, sources);
    Trained {
        text,
        threshold,
        oof,
        rules: rule_outcomes,
    }
}

/// The lowest threshold (most recall) on a 0.01 grid at which the model, out of fold,
/// adds false positives (lines the rules left alone) to at most `FP_BUDGET` of the lines
/// that are not crisis.
fn choose_threshold(cases: &[Case], rules: &[(Outcome, bool)], p: &[f64]) -> f64 {
    let negatives = cases
        .iter()
        .filter(|c| c.label != Label::Crisis)
        .count()
        .max(1);
    for step in 5..=99 {
        let t = step as f64 / 100.0;
        let fp = cases
            .iter()
            .zip(rules)
            .zip(p)
            .filter(|((c, (o, guarded)), &p)| {
                c.label != Label::Crisis
                    && !matches!(o, Outcome::Crisis(_))
                    && fires(o, *guarded, p as f32, t as f32)
            })
            .count();
        if fp as f64 / negatives as f64 <= FP_BUDGET {
            return t;
        }
    }
    0.99
}

fn fires(rules: &Outcome, guarded: bool, p: f32, t: f32) -> bool {
    matches!(
        CrisisDetector::combine(rules.clone(), guarded, p, t),
        Outcome::Crisis(_)
    )
}

/// The model file: the documented header, then `bias`, `threshold` and the weights
/// (rounded to 4 places, the ones below `MIN_WEIGHT` left out), sorted by feature.
fn render(
    f: &Fit,
    names: &[&String],
    threshold: f64,
    cases: &[Case],
    sources: &[String],
) -> String {
    let mut o = String::new();
    let crisis = cases.iter().filter(|c| c.label == Label::Crisis).count();
    o.push_str(HEADER);
    let _ = writeln!(
        o,
        "# Trained by `worldbridge crisis-train` on {} ({} lines: {} crisis, {} not);\n\
         # threshold: the lowest at which the model, {FOLDS}-fold cross-validated, adds the\n\
         # protocol to at most {:.0} % of the lines that are not crisis.",
        sources.join(", "),
        cases.len(),
        crisis,
        cases.len() - crisis,
        FP_BUDGET * 100.0
    );
    let _ = writeln!(o, "bias\t{:.4}", f.bias);
    let _ = writeln!(o, "threshold\t{threshold:.2}");
    for (name, w) in names.iter().zip(&f.w) {
        if w.abs() >= MIN_WEIGHT {
            let _ = writeln!(o, "{name}\t{w:.4}");
        }
    }
    o
}

/// Reads training files: the cases, and the files' names (without their directory, so
/// the model's header is the same wherever the source tree is).
pub fn load_training(files: &[PathBuf]) -> Result<(Vec<Case>, Vec<String>), String> {
    let cases = load(files)?;
    let sources = files
        .iter()
        .map(|f| {
            f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
        .collect();
    Ok((cases, sources))
}

/// `crisis-train`'s report: per training file and in all, the rules alone and the rules
/// plus the out-of-fold model (each case scored by a model that never saw it), then the
/// out-of-fold misses and false alarms.
pub fn cross_validated_report(rules: &CrisisDetector, cases: &[Case], t: &Trained) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "threshold {:.2} ({FOLDS}-fold cross-validation, false-positive budget {:.0} %)",
        t.threshold,
        FP_BUDGET * 100.0
    );
    let mut files: Vec<&str> = Vec::new();
    for c in cases {
        let f = file_of(c);
        if !files.contains(&f) {
            files.push(f);
        }
    }
    let explain = |i: usize, text: &str| {
        let (score, mut features) = rules.explain(text);
        features.push(format!("score={score:.2}"));
        features.push(format!("model:{:.2}", t.oof[i].1));
        features
    };
    for f in &files {
        let idx: Vec<usize> = (0..cases.len())
            .filter(|&i| file_of(&cases[i]) == *f)
            .collect();
        let sub: Vec<Case> = idx.iter().map(|&i| cases[i].clone()).collect();
        let alone = evaluate_by(&sub, 1, |_, m| rules.assess(m), |_, _| Vec::new());
        let cv = evaluate_by(&sub, 1, |j, _| t.oof[idx[j]].0.clone(), |_, _| Vec::new());
        let _ = writeln!(
            o,
            "\n== {f}: rules alone recall {:.1}%, false positives {:.1}%",
            100.0 * alone.recall(),
            100.0 * alone.false_positive_rate()
        );
        let _ = write!(
            o,
            "== {f}: rules + model, cross-validated\n{}",
            strip_cost(&cv)
        );
    }
    let _ = writeln!(
        o,
        "\n== the trade-off, out of fold, per file (recall / false positives) at other thresholds:"
    );
    for step in [30, 40, 50, 60, 70, 80, 90, 95] {
        let th = step as f32 / 100.0;
        let mut line = format!("  threshold {th:.2}:");
        for f in &files {
            let (mut tp, mut pos, mut fp, mut neg) = (0, 0, 0, 0);
            for (i, c) in cases.iter().enumerate().filter(|(_, c)| file_of(c) == *f) {
                let fired = fires(&t.rules[i].0, t.rules[i].1, t.oof[i].1, th);
                if c.label == Label::Crisis {
                    pos += 1;
                    tp += usize::from(fired);
                } else {
                    neg += 1;
                    fp += usize::from(fired);
                }
            }
            let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
            let _ = write!(line, "  {f} {:.1}% / {:.1}%", pct(tp, pos), pct(fp, neg));
        }
        let _ = writeln!(o, "{line}");
    }
    let all = evaluate_by(cases, 1, |i, _| t.oof[i].0.clone(), explain);
    let _ = write!(
        o,
        "\n== all files: rules + model, cross-validated\n{}",
        strip_cost(&all)
    );
    let errors = all.render();
    if let Some(at) = errors
        .find("\nMISS")
        .or_else(|| errors.find("\nFALSE ALARM"))
    {
        o.push_str(&errors[at..]);
    }
    o
}

/// The file part of a case's `file:line` origin.
fn file_of(c: &Case) -> &str {
    c.origin
        .rsplit_once(':')
        .map_or(c.origin.as_str(), |(f, _)| f)
}

/// The figures without the cost line (which would time a table lookup, not the detector).
fn strip_cost(r: &Report) -> String {
    r.render_figures()
        .lines()
        .filter(|l| !l.starts_with("cost:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

const HEADER: &str = "\
# worldbridge crisis model: the weights of the learned second stage of the crisis detector
# (src/agent/crisis_model.rs). GENERATED: do not edit by hand; run `worldbridge crisis-train`
# (a test checks this file is exactly what training produces from the shipped files).
#
# Format: lines starting with `#` are comments; every other line is `name<TAB>number`:
#   bias<TAB>B          the intercept
#   threshold<TAB>T     the probability at which the model alone fires (0 to 1)
#   x:feature<TAB>W     a feature's weight, where x is
#     w  a word as the detector understands it (lower case, contractions expanded, slang
#        read as its meaning, a typo corrected to a rule word), e.g. `w:pills`
#     b  two neighbouring words of one clause, space-separated, e.g. `b:not wake`
#     k  two words of one clause with one or two words between, e.g. `k:saving pills`
#     c  a 3-5 letter piece of a word as typed, padded with < and >, e.g. `c:<pil`
#     r  a rule that matched (fixtures/crisis/rules.txt), a  an adjustment,
#     q  a resources pattern, i  an idiom, s  the best rule score (none/neg/low/mid/fire)
#        or `s:negated` (a rule matched where a negation blocked it)
# A message's probability is logistic(bias + sum(weight x occurrences) / sqrt(features)).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        feature_names(&CrisisDetector::rules_only(), text)
    }

    #[test]
    fn the_shipped_model_parses() {
        let m = Model::parse(BUILTIN_MODEL.0, BUILTIN_MODEL.1);
        assert!(m.is_ok(), "{:?}", m.err());
        let m = m.unwrap();
        assert!(m.len() > 1000, "{} features", m.len());
        assert!((0.05..1.0).contains(&m.threshold()));
    }

    #[test]
    fn features_are_words_pairs_letter_pieces_and_rule_matches() {
        let f = names("Im gonna kms");
        for want in [
            "w:i",
            "w:am",
            "b:i am",
            "w:kill",
            "w:myself",
            "b:kill myself",
            "c:<km",
            "c:kms>",
            "c:<kms>",
            "s:fire",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
        // The slang word's letters are counted once, not once per word it stands for.
        assert_eq!(f.iter().filter(|n| *n == "c:<kms>").count(), 1, "{f:?}");
        // A typo reads as the rule word, and keeps most of its letter pieces.
        let typo = names("i want to kil myslef");
        assert!(typo.contains(&"w:myself".to_string()), "{typo:?}");
        // No pair across a clause break.
        let broke = names("tired. pills");
        assert!(!broke.contains(&"b:tired pills".to_string()), "{broke:?}");
        assert!(names("the lag today").contains(&"s:none".to_string()));
    }

    #[test]
    fn the_scorer_hashes_letter_pieces_as_training_names_them() {
        struct Keys(Vec<u64>);
        impl Sink for Keys {
            fn add(&mut self, parts: &[&str]) {
                self.0.push(hash(parts));
            }
        }
        let mut model_text = String::from("bias\t0\nthreshold\t0.5\n");
        for (i, w) in ["ab", "kms", "pills", "unaliving", "a"].iter().enumerate() {
            let mut keys = Keys(Vec::new());
            char_grams(w, &mut keys);
            let mut names = Names(Vec::new());
            char_grams(w, &mut names);
            assert_eq!(keys.0.len(), names.0.len());
            for n in &names.0 {
                model_text.push_str(&format!("{n}\t{}\n", i + 1));
            }
        }
        let m = Model::parse("m", &model_text).unwrap();
        for w in ["ab", "kms", "pills", "unaliving", "a", "qqqq"] {
            let (mut fast, mut slow) = (
                Scorer {
                    model: &m,
                    sum: 0.0,
                    n: 0,
                },
                Scorer {
                    model: &m,
                    sum: 0.0,
                    n: 0,
                },
            );
            fast.grams(w);
            char_grams(w, &mut slow);
            assert_eq!((fast.n, fast.sum), (slow.n, slow.sum), "{w}");
        }
    }

    #[test]
    fn a_bad_model_file_is_an_error_naming_the_line() {
        let ok = "bias\t-1\nthreshold\t0.5\nw:pills\t2.5\n";
        assert!(Model::parse("m.tsv", ok).is_ok());
        let err = Model::parse("m.tsv", "bias\t-1\nthreshold\t0.5\nw:pills 2.5\n").unwrap_err();
        assert!(
            err.contains("m.tsv line 3") && err.contains("feature<TAB>weight"),
            "{err}"
        );
        let err = Model::parse("m.tsv", "bias\tx\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = Model::parse("m.tsv", "bias\t1\nthreshold\t2\n").unwrap_err();
        assert!(err.contains("0 to 1"), "{err}");
        let err = Model::parse("m.tsv", "bias\t1\n").unwrap_err();
        assert!(err.contains("no `threshold`"), "{err}");
        let err = Model::parse("m.tsv", "bias\t1\nthreshold\t0.5\npills\t1\n").unwrap_err();
        assert!(err.contains("x:name"), "{err}");
    }

    #[test]
    fn the_probability_sums_the_weights_of_the_features_present() {
        let m = Model::parse("m.tsv", "bias\t0\nthreshold\t0.5\nw:pills\t4\n").unwrap();
        let d = CrisisDetector::rules_only().with_model(m);
        let p = |t: &str| d.with_evidence(t, |ev, _| d.model_probability(ev));
        // w:pills, 12 letter pieces of <pills> and s:none: 14 features, one weighted.
        let want = 1.0 / (1.0 + (-4.0f32 / 14f32.sqrt()).exp());
        assert!((p("pills") - want).abs() < 1e-6, "{} != {want}", p("pills"));
        assert!((p("cats") - 0.5).abs() < 1e-6, "{}", p("cats"));
    }

    #[test]
    fn training_is_deterministic_and_learns_the_words() {
        let mut cases = Vec::new();
        let lines = [
            ("crisis", "i have a bottle of pills ready for tonight"),
            ("crisis", "pills are counted and ready"),
            ("crisis", "stockpiled the pills already"),
            ("crisis", "got enough pills saved now"),
            ("none", "the cat sat on the mat today"),
            ("none", "going to the shop for bread today"),
            ("none", "the raid boss is on the mat"),
            ("none", "bread and cats all day"),
        ];
        for (n, (label, msg)) in lines.iter().enumerate() {
            let kind = if *label == "crisis" {
                "plan_means"
            } else {
                "ordinary"
            };
            let line = format!("{label}\t{kind}\t{msg}\n");
            let mut c = super::super::crisis_eval::parse("t.tsv", &line).unwrap();
            c[0].origin = format!("t.tsv:{}", n + 1);
            cases.extend(c);
        }
        let rules = CrisisDetector::rules_only();
        let a = train(&rules, &cases, &["t.tsv".to_string()]);
        let b = train(&rules, &cases, &["t.tsv".to_string()]);
        assert_eq!(a.text, b.text);
        let m = Model::parse("t", &a.text).unwrap();
        let d = rules.with_model(m);
        let p = |t: &str| d.with_evidence(t, |ev, _| d.model_probability(ev));
        assert!(p("pills ready") > p("bread today"), "{}", a.text);
    }
}
