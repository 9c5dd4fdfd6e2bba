//! Training the crisis detector's learned stage (`worldbridge crisis-train`): features from
//! the rule engine's normalisation ([`super::crisis_model`]), logistic regression with a
//! fixed seed, a threshold chosen by cross-validation on the training files only, and the
//! weight file `fixtures/crisis/model.tsv` written deterministically.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::crisis::{CrisisDetector, Outcome};
use super::crisis_eval::{evaluate_by, load, Case, Label, Report};
use super::crisis_model::*;

/// Folds of the cross-validation that chooses the threshold.
pub const FOLDS: usize = 5;
/// The largest share of ordinary and hotline lines the model may add the protocol to
/// (beyond the rules' own false alarms) in cross-validation.
pub const FP_BUDGET: f64 = 0.01;
/// The vetoes training tries besides none (see [`cuts`]), up to `MAX_VETO`.
const VETO_STEPS: [f32; 7] = [0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05];
/// A feature must occur in at least this many training messages to get a weight.
const MIN_DOCS: usize = 3;
/// Passes over the training messages. The fit keeps improving out of fold well past the
/// dozen that once served (on the nineteenth round's twenty-eight files, at the same false
/// positives: with word pairs reaching 3, 12 passes caught 92.2 % of the crisis lines and
/// 100 passes 93.7 %; reaching 8, 60 passes 94.2 % and 100 94.5 %; 150 no more than 100).
/// Training on the seventy-six files of the twenty-seventh round takes about 40 s in a
/// release build.
pub(super) const EPOCHS: usize = 100;
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
    /// Below this probability the model overrules the rules (0: never).
    pub veto: f32,
    pub oof: Vec<(Outcome, f32)>,
    /// The rules' outcome of every case and whether the model needs `GUARDED_MIN` there.
    pub rules: Vec<(Outcome, bool)>,
    /// Whether the veto may apply to each case (short enough: `VETO_MAX_WORDS`).
    pub vetoable: Vec<bool>,
    /// Every veto tried, out of fold (the chosen one among them).
    pub cuts: Vec<Cut>,
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
    let (rule_outcomes, short): (Vec<(Outcome, bool)>, Vec<bool>) = cases
        .iter()
        .map(|c| rules.with_evidence(&c.message, |ev, o| (o, vetoable(ev))))
        .unzip();
    let cuts = cuts(cases, &rule_outcomes, &short, &oof_p);
    let best = best_cut(&cuts);
    let (veto, threshold) = (best.veto, best.threshold);
    let oof = rule_outcomes
        .iter()
        .cloned()
        .zip(&oof_p)
        .zip(&short)
        .map(|(((outcome, guarded), &p), &v)| {
            let p = p as f32;
            let veto = if v { veto } else { 0.0 };
            (
                CrisisDetector::combine(outcome, guarded, p, threshold as f32, veto),
                p,
            )
        })
        .collect();

    let f = fit(&examples, &(0..cases.len()).collect::<Vec<_>>(), dims, SEED);
    let text = render(&f, &kept, threshold, veto, cases, sources);
    Trained {
        text,
        threshold,
        veto,
        oof,
        rules: rule_outcomes,
        vetoable: short,
        cuts,
    }
}

/// One veto training tried, with the threshold the budget allows beside it and what the
/// pair does out of fold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    pub veto: f32,
    pub threshold: f64,
    /// Crisis lines caught.
    pub caught: usize,
    /// Crisis lines the rules caught that the veto overrules.
    pub overruled: usize,
}

/// Every veto (none, then [`VETO_STEPS`]) with the lowest threshold [`choose_threshold`]
/// allows beside it, scored out of fold.
///
/// A larger veto overrules more of the rules' false alarms, and what it saves of the
/// false-positive budget goes to a lower threshold; it can also overrule a crisis line the
/// rules caught. Both count in `caught`, so the veto is chosen by the one figure that
/// matters, crisis lines caught within the budget, not by a rule that it may never lose
/// one (which, once the fit grew sure of itself, allowed no veto at all: on the forty
/// files of the twenty-second round, 89.1 % of the crisis lines instead of 94.7 %).
fn cuts(cases: &[Case], rules: &[(Outcome, bool)], vetoable: &[bool], p: &[f64]) -> Vec<Cut> {
    std::iter::once(0.0)
        .chain(VETO_STEPS)
        .map(|veto| {
            let threshold = choose_threshold(cases, rules, vetoable, p, veto);
            let (mut caught, mut overruled) = (0, 0);
            for (((c, (o, guarded)), &p), &v) in cases.iter().zip(rules).zip(p).zip(vetoable) {
                if c.label != Label::Crisis {
                    continue;
                }
                let veto = if v { veto } else { 0.0 };
                if fires(o, *guarded, p as f32, threshold as f32, veto) {
                    caught += 1;
                } else if matches!(o, Outcome::Crisis(_)) {
                    overruled += 1;
                }
            }
            Cut {
                veto,
                threshold,
                caught,
                overruled,
            }
        })
        .collect()
}

/// The cut that catches the most crisis lines; the smaller veto on a tie.
fn best_cut(cuts: &[Cut]) -> Cut {
    cuts.iter()
        .copied()
        .reduce(|best, c| if c.caught > best.caught { c } else { best })
        .expect("cuts always holds the cut without a veto")
}

/// The lowest threshold (most recall) on a 0.01 grid at which the model, out of fold,
/// changes the false positives by at most `FP_BUDGET` of the lines that are not crisis:
/// the ones it adds (lines the rules left alone) less the ones its `veto` removes.
fn choose_threshold(
    cases: &[Case],
    rules: &[(Outcome, bool)],
    vetoable: &[bool],
    p: &[f64],
    veto: f32,
) -> f64 {
    let negatives = cases
        .iter()
        .filter(|c| c.label != Label::Crisis)
        .count()
        .max(1);
    let rules_fp = cases
        .iter()
        .zip(rules)
        .filter(|(c, (o, _))| c.label != Label::Crisis && matches!(o, Outcome::Crisis(_)))
        .count();
    for step in 5..=99 {
        let t = step as f64 / 100.0;
        let fp = cases
            .iter()
            .zip(rules)
            .zip(p)
            .zip(vetoable)
            .filter(|(((c, (o, guarded)), &p), &v)| {
                let veto = if v { veto } else { 0.0 };
                c.label != Label::Crisis && fires(o, *guarded, p as f32, t as f32, veto)
            })
            .count();
        if fp as f64 <= rules_fp as f64 + FP_BUDGET * negatives as f64 {
            return t;
        }
    }
    0.99
}

fn fires(rules: &Outcome, guarded: bool, p: f32, t: f32, veto: f32) -> bool {
    matches!(
        CrisisDetector::combine(rules.clone(), guarded, p, t, veto),
        Outcome::Crisis(_)
    )
}

/// The model file: the documented header, then `bias`, `threshold` and the weights
/// (rounded to 4 places, the ones below `MIN_WEIGHT` left out), sorted by feature.
fn render(
    f: &Fit,
    names: &[&String],
    threshold: f64,
    veto: f32,
    cases: &[Case],
    sources: &[String],
) -> String {
    let mut o = String::new();
    let crisis = cases.iter().filter(|c| c.label == Label::Crisis).count();
    o.push_str(HEADER);
    let _ = writeln!(
        o,
        "# Trained by `worldbridge crisis-train` on {} ({} lines: {} crisis, {} not);\n\
         # threshold: for each veto tried (none, 0.005 to 0.05), the lowest at which the\n\
         # model, {FOLDS}-fold cross-validated, adds the protocol to at most {:.0} % of the lines\n\
         # that are not crisis beyond the rules' own false alarms (net of those its veto\n\
         # removes); veto and threshold: the pair that, cross-validated, catches the most\n\
         # crisis lines.",
        sources.join(", "),
        cases.len(),
        crisis,
        cases.len() - crisis,
        FP_BUDGET * 100.0
    );
    let _ = writeln!(o, "bias\t{:.4}", f.bias);
    let _ = writeln!(o, "threshold\t{threshold:.2}");
    let _ = writeln!(o, "veto\t{veto:.3}");
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
        "threshold {:.2}, veto {:.3} ({FOLDS}-fold cross-validation, false-positive budget {:.0} %)",
        t.threshold,
        t.veto,
        FP_BUDGET * 100.0
    );
    let crisis = cases.iter().filter(|c| c.label == Label::Crisis).count();
    let _ = writeln!(o, "the vetoes tried, out of fold:");
    for c in &t.cuts {
        let _ = writeln!(
            o,
            "  veto {:.3}: threshold {:.2}, {} of {crisis} crisis lines caught ({:.2} %), {} the rules caught overruled{}",
            c.veto,
            c.threshold,
            c.caught,
            100.0 * c.caught as f64 / crisis.max(1) as f64,
            c.overruled,
            if c.veto == t.veto { "  <- chosen" } else { "" }
        );
    }
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
                let veto = if t.vetoable[i] { t.veto } else { 0.0 };
                let fired = fires(&t.rules[i].0, t.rules[i].1, t.oof[i].1, th, veto);
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
    let _ = writeln!(
        o,
        "\n== the veto, out of fold, per file (crisis lines / false alarms of the rules it would \
         remove) at other values:"
    );
    for v in [0.01f32, 0.02, 0.03, 0.05, 0.1, 0.2] {
        let mut line = format!("  veto {v:.2}:");
        for f in &files {
            let (mut lost, mut removed) = (0, 0);
            for (i, c) in cases.iter().enumerate().filter(|(_, c)| file_of(c) == *f) {
                if matches!(t.rules[i].0, Outcome::Crisis(_)) && t.vetoable[i] && t.oof[i].1 < v {
                    if c.label == Label::Crisis {
                        lost += 1;
                    } else {
                        removed += 1;
                    }
                }
            }
            let _ = write!(line, "  {f} {lost} / {removed}");
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
#   veto<TAB>V          below this probability the model overrules a crisis the rules
#                       found (0 to 0.05; optional, 0 = never)
#   x:feature<TAB>W     a feature's weight, where x is
#     w  a word as the detector understands it (lower case, contractions expanded, slang
#        read as its meaning, a typo corrected to a rule word), e.g. `w:pills`
#     b  two neighbouring words of one clause, space-separated, e.g. `b:not wake`
#     k  two words of one clause with one or two words between, e.g. `k:saving pills`
#     c  a 3-5 letter piece of a word as typed, padded with < and >, e.g. `c:<pil`
#     r  a rule that matched (fixtures/crisis/rules.txt), a  an adjustment,
#     q  a resources pattern, i  an idiom, s  the best rule score (none/neg/low/mid/fire)
#        or `s:negated` (a rule matched where a negation blocked it)
#     n  a word at most 3 words after a negation (not, never, no, nor, without) in its
#        clause, e.g. `n:hurt`
#     l  the message's length in words, bucketed: 1, 2, 3-4, 5-8, 9-16, 17+
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
        // Words after a negation, within its clause, and the length in words.
        let neg = names("i would never hurt myself. tired");
        for want in ["n:hurt", "n:myself", "l:5-8"] {
            assert!(neg.contains(&want.to_string()), "{want} not in {neg:?}");
        }
        assert!(!neg.contains(&"n:tired".to_string()), "{neg:?}");
        assert!(!neg.contains(&"n:would".to_string()), "{neg:?}");
        assert!(names("sure").contains(&"l:1".to_string()));
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
        // The veto is optional (0: the model never overrules the rules) and small.
        assert_eq!(Model::parse("m.tsv", ok).unwrap().veto(), 0.0);
        let m = Model::parse("m.tsv", "bias\t1\nthreshold\t0.5\nveto\t0.03\n").unwrap();
        assert!((m.veto() - 0.03).abs() < 1e-6);
        let err = Model::parse("m.tsv", "bias\t1\nthreshold\t0.5\nveto\t0.5\n").unwrap_err();
        assert!(err.contains("line 3") && err.contains("veto"), "{err}");
    }

    #[test]
    fn the_probability_sums_the_weights_of_the_features_present() {
        let m = Model::parse("m.tsv", "bias\t0\nthreshold\t0.5\nw:pills\t4\n").unwrap();
        let d = CrisisDetector::rules_only().with_model(m);
        let p = |t: &str| d.with_evidence(t, |ev, _| d.model_probability(ev));
        // w:pills, 12 letter pieces of <pills>, s:none and l:1: 15 features, one weighted.
        let want = 1.0 / (1.0 + (-4.0f32 / 15f32.sqrt()).exp());
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
        // Every veto was tried, and the one chosen catches the most crisis lines.
        assert_eq!(a.cuts.len(), VETO_STEPS.len() + 1);
        let most = a.cuts.iter().map(|c| c.caught).max().unwrap();
        assert!(a.cuts.iter().any(|c| c.veto == a.veto && c.caught == most));
    }

    /// The veto is chosen by the crisis lines caught, even when it overrules one the rules
    /// caught; on a tie the smaller veto stays.
    #[test]
    fn the_cut_that_catches_the_most_wins_and_a_tie_keeps_the_smaller_veto() {
        let cut = |veto: f32, caught: usize, overruled: usize| Cut {
            veto,
            threshold: 0.5,
            caught,
            overruled,
        };
        let cuts = [
            cut(0.0, 90, 0),
            cut(0.01, 95, 0),
            cut(0.02, 97, 1),
            cut(0.03, 97, 2),
        ];
        assert_eq!(best_cut(&cuts), cuts[2]);
        assert_eq!(best_cut(&cuts[..1]), cuts[0]);
        assert_eq!(best_cut(&[cut(0.0, 5, 0), cut(0.01, 5, 0)]).veto, 0.0);
    }
}
