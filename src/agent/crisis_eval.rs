//! `worldbridge crisis-eval`: runs the crisis detector over labelled messages and reports
//! recall, false alarms, the hotline-question outcome, which stage fired (rules, model,
//! both), every miss and false alarm, and the cost per message. `worldbridge crisis-train`
//! reuses the report for its cross-validated figures.
//!
//! Eval files are TSV: lines starting with `#` are comments, blank lines are ignored, and
//! every other line is `label<TAB>kind<TAB>message`, where label is `crisis`, `none` or
//! `resources` and kind is one of [`CRISIS_KINDS`], [`NONE_KINDS`] or [`RESOURCES_KINDS`].

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::crisis::{CrisisDetector, Outcome, Stage};

pub const CRISIS_KINDS: &[&str] = &[
    "plan_means",
    "passive_ideation",
    "burden",
    "self_harm",
    "past_attempt",
    "preparation",
    "hopelessness_death",
    "slang",
    "direct",
    "third_person",
    "joking",
];
pub const NONE_KINDS: &[&str] = &[
    "game_fiction",
    "idiom",
    "third_party_past",
    "technical",
    "topic",
    "ordinary",
];
pub const RESOURCES_KINDS: &[&str] = &["hotline_question"];

/// What a message should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// The full protocol.
    Crisis,
    /// An ordinary reply.
    None,
    /// The hotline numbers without the protocol.
    Resources,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Crisis => "crisis",
            Label::None => "none",
            Label::Resources => "resources",
        }
    }
}

/// One labelled message.
#[derive(Debug, Clone)]
pub struct Case {
    /// `file:line`, for error messages and the report.
    pub origin: String,
    pub label: Label,
    pub kind: String,
    pub message: String,
}

/// Parses one eval file. Errors name the file and the 1-based line.
pub fn parse(name: &str, text: &str) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{name}:{}", i + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.splitn(3, '\t');
        let (Some(label), Some(kind), Some(message)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!(
                "{origin}: expected `label<TAB>kind<TAB>message`, got {line:?}"
            ));
        };
        let (label, kinds) = match label.trim() {
            "crisis" => (Label::Crisis, CRISIS_KINDS),
            "none" => (Label::None, NONE_KINDS),
            "resources" => (Label::Resources, RESOURCES_KINDS),
            other => {
                return Err(format!(
                    "{origin}: unknown label {other:?} (expected crisis, none or resources)"
                ))
            }
        };
        let kind = kind.trim();
        if !kinds.contains(&kind) {
            return Err(format!(
                "{origin}: unknown kind {kind:?} for label {} (expected one of {})",
                label.as_str(),
                kinds.join(", ")
            ));
        }
        if message.trim().is_empty() {
            return Err(format!("{origin}: the message is empty"));
        }
        cases.push(Case {
            origin,
            label,
            kind: kind.to_string(),
            message: message.to_string(),
        });
    }
    Ok(cases)
}

/// Per-kind tally: lines, and lines that went wrong (missed, or a false alarm).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub total: usize,
    pub wrong: usize,
}

/// The result of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub crisis: Tally,
    pub none: Tally,
    pub resources: Tally,
    /// Resources lines that got the numbers without the protocol.
    pub resources_answered: usize,
    /// None lines that got the numbers (harmless, reported).
    pub none_got_numbers: usize,
    /// (label, kind) → tally, in first-seen order.
    pub kinds: Vec<(Label, String, Tally)>,
    /// Misses and false alarms: case, and every pattern that matched with the score.
    pub errors: Vec<(Case, Vec<String>)>,
    /// Which stage fired, in [`Stage::ALL`] order: on crisis lines, and on the others.
    pub stages_crisis: [usize; 3],
    pub stages_false: [usize; 3],
    pub mean_us: f64,
    pub p99_us: f64,
    pub us_per_200_chars: f64,
}

impl Report {
    /// Share of crisis lines detected (1.0 when there are none).
    pub fn recall(&self) -> f64 {
        rate(
            self.crisis.total - self.crisis.wrong,
            self.crisis.total,
            1.0,
        )
    }

    /// Share of none + resources lines that got the full protocol.
    pub fn false_positive_rate(&self) -> f64 {
        rate(
            self.none.wrong + self.resources.wrong,
            self.none.total + self.resources.total,
            0.0,
        )
    }

    /// The report as printed by `worldbridge crisis-eval`: the figures, then every miss
    /// and false alarm.
    pub fn render(&self) -> String {
        let mut o = self.render_figures();
        if self.errors.is_empty() {
            let _ = writeln!(o, "\nno misses, no false alarms");
        }
        for (case, features) in &self.errors {
            let what = if case.label == Label::Crisis {
                "MISS"
            } else {
                "FALSE ALARM"
            };
            let _ = writeln!(
                o,
                "{what} {} {}/{}: {:?} features={}",
                case.origin,
                case.label.as_str(),
                case.kind,
                case.message,
                features.join(",")
            );
        }
        o
    }

    /// The figures without the list of misses and false alarms.
    pub fn render_figures(&self) -> String {
        let mut o = String::new();
        let pct = |n: usize, d: usize| 100.0 * rate(n, d, 0.0);
        let _ = writeln!(
            o,
            "lines: {} crisis, {} none, {} resources",
            self.crisis.total, self.none.total, self.resources.total
        );
        let _ = writeln!(
            o,
            "recall (crisis lines given the protocol): {:.1}% ({}/{})",
            100.0 * self.recall(),
            self.crisis.total - self.crisis.wrong,
            self.crisis.total
        );
        let _ = writeln!(
            o,
            "false positives (none + resources lines given the protocol): {:.1}% ({}/{})",
            100.0 * self.false_positive_rate(),
            self.none.wrong + self.resources.wrong,
            self.none.total + self.resources.total
        );
        let _ = writeln!(
            o,
            "resources answered with the numbers only: {}/{}; none lines given the numbers: {}",
            self.resources_answered, self.resources.total, self.none_got_numbers
        );
        let stages = |n: &[usize; 3]| {
            Stage::ALL
                .iter()
                .zip(n)
                .map(|(s, n)| format!("{} {n}", s.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "stage that fired: crisis lines: {}; false alarms: {}",
            stages(&self.stages_crisis),
            stages(&self.stages_false)
        );
        let _ = writeln!(o, "\nper kind:");
        for (label, kind, t) in &self.kinds {
            let (what, value) = match label {
                Label::Crisis => ("recall", pct(t.total - t.wrong, t.total)),
                _ => ("false positives", pct(t.wrong, t.total)),
            };
            let _ = writeln!(
                o,
                "  {:<9} {:<20} {:>4} lines  {what} {value:.1}%",
                label.as_str(),
                kind,
                t.total
            );
        }
        let _ = writeln!(
            o,
            "\ncost: {:.2} µs per message (mean), {:.2} µs p99, {:.2} µs per 200 characters",
            self.mean_us, self.p99_us, self.us_per_200_chars
        );
        o
    }
}

fn rate(n: usize, d: usize, empty: f64) -> f64 {
    if d == 0 {
        empty
    } else {
        n as f64 / d as f64
    }
}

/// Runs `detector` over `cases`, timing each message `passes` times.
pub fn evaluate(detector: &CrisisDetector, cases: &[Case], passes: usize) -> Report {
    evaluate_by(
        cases,
        passes,
        |_, text| detector.assess(text),
        |_, text| {
            let (score, mut features) = detector.explain(text);
            features.push(format!("score={score:.2}"));
            features
        },
    )
}

/// Tallies `cases` by what `assess(index, message)` says (timed `passes` times per
/// message); `explain` lists what matched, for the misses and false alarms.
pub fn evaluate_by(
    cases: &[Case],
    passes: usize,
    assess: impl Fn(usize, &str) -> Outcome,
    explain: impl Fn(usize, &str) -> Vec<String>,
) -> Report {
    let mut r = Report::default();
    let mut times: Vec<Duration> = Vec::with_capacity(cases.len() * passes.max(1));
    let mut total = Duration::ZERO;
    let mut chars = 0usize;
    for (index, case) in cases.iter().enumerate() {
        let mut outcome = Outcome::Nothing;
        for _ in 0..passes.max(1) {
            let t = Instant::now();
            outcome = std::hint::black_box(assess(index, std::hint::black_box(&case.message)));
            let took = t.elapsed();
            times.push(took);
            total += took;
            chars += case.message.chars().count();
        }
        let protocol = matches!(outcome, Outcome::Crisis(_));
        if let Outcome::Crisis(s) = &outcome {
            let at = Stage::ALL.iter().position(|x| *x == s.stage).unwrap_or(0);
            match case.label {
                Label::Crisis => r.stages_crisis[at] += 1,
                _ => r.stages_false[at] += 1,
            }
        }
        let wrong = match case.label {
            Label::Crisis => !protocol,
            Label::None | Label::Resources => protocol,
        };
        let tally = match case.label {
            Label::Crisis => &mut r.crisis,
            Label::None => &mut r.none,
            Label::Resources => &mut r.resources,
        };
        tally.total += 1;
        tally.wrong += usize::from(wrong);
        if let Outcome::Resources(_) = outcome {
            match case.label {
                Label::Resources => r.resources_answered += 1,
                Label::None => r.none_got_numbers += 1,
                Label::Crisis => {}
            }
        }
        let at = match r
            .kinds
            .iter()
            .position(|(l, k, _)| *l == case.label && *k == case.kind)
        {
            Some(at) => at,
            None => {
                r.kinds
                    .push((case.label, case.kind.clone(), Tally::default()));
                r.kinds.len() - 1
            }
        };
        r.kinds[at].2.total += 1;
        r.kinds[at].2.wrong += usize::from(wrong);
        if wrong {
            r.errors.push((case.clone(), explain(index, &case.message)));
        }
    }
    r.kinds
        .sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
    if !times.is_empty() {
        times.sort();
        r.mean_us = total.as_secs_f64() * 1e6 / times.len() as f64;
        let p99 = ((times.len() as f64) * 0.99).ceil() as usize;
        r.p99_us = times[p99.clamp(1, times.len()) - 1].as_secs_f64() * 1e6;
        r.us_per_200_chars = total.as_secs_f64() * 1e6 / chars.max(1) as f64 * 200.0;
    }
    r
}

/// The files `crisis-eval` reads when given none: `fixtures/crisis/eval/*.tsv` under the
/// current directory, sorted by name with numbers in their order (`train.tsv`,
/// `train2.tsv`, …, `train9.tsv`, `train10.tsv`).
pub fn default_files() -> Result<Vec<std::path::PathBuf>, String> {
    let dir = std::path::Path::new("fixtures/crisis/eval");
    let entries = std::fs::read_dir(dir).map_err(|e| {
        format!(
            "no eval files given and cannot read {} ({e}); run from the source tree or name the files",
            dir.display()
        )
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    files.sort_by_key(|p| numbered(p));
    if files.is_empty() {
        return Err(format!("no .tsv files in {}", dir.display()));
    }
    Ok(files)
}

/// A file's name without its digits, and the number they make (1 without any): the
/// order of `train.tsv`, `train2.tsv`, …, `train10.tsv`.
fn numbered(p: &std::path::Path) -> (String, u64) {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    let rest: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
    (rest, digits.parse().unwrap_or(1))
}

/// The files `crisis-train` reads when given none: `fixtures/crisis/eval/train*.tsv`
/// under the current directory, sorted by name (never the held-out `test.tsv`).
pub fn default_train_files() -> Result<Vec<std::path::PathBuf>, String> {
    let files: Vec<_> = default_files()?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("train"))
        })
        .collect();
    if files.is_empty() {
        return Err("no train*.tsv files in fixtures/crisis/eval".to_string());
    }
    Ok(files)
}

/// Reads and parses eval files.
pub fn load(files: &[std::path::PathBuf]) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        cases.extend(parse(&f.display().to_string(), &text)?);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::numbered;
    use std::path::PathBuf;

    #[test]
    fn files_sort_with_their_numbers_in_order() {
        let mut files: Vec<PathBuf> = [
            "train10.tsv",
            "train2.tsv",
            "test.tsv",
            "train.tsv",
            "test9.tsv",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        files.sort_by_key(|p| numbered(p));
        let names: Vec<_> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "test.tsv",
                "test9.tsv",
                "train.tsv",
                "train2.tsv",
                "train10.tsv"
            ]
        );
    }
}
