//! The crisis detector against the labelled corpus in `fixtures/crisis/eval/`: the training
//! splits (`train.tsv`, the rules are tuned on it; `train2.tsv` to `train76.tsv`, the
//! classifier is trained on all seventy-six (from `train13.tsv` on, data only, each by an
//! author who saw nothing of the project); the rules were not tuned on them until the round that
//! added `train5.tsv`, which read the rules' errors on all five; `train6.tsv` is short
//! messages, for the classifier; `train7.tsv` is preparations, plans and means, past
//! attempts with the danger now, passive ideation, hopelessness and burden said without a
//! crisis word, with near-pair negatives, and came with three rule-file changes on first-
//! person past attempts: an attempt told as recovered history is distanced, a relapse
//! marker adds back; `train8.tsv` is dark joking, past attempts with the danger now,
//! burden and plans and means, with idioms said lightly and light dark humour as hard
//! negatives, and came with idiom guards for the rules' own false alarms on idioms ("kill
//! me now, my mom signed me up for piano", "i'd rather die than sit through another
//! meeting") and three rules ("cant wait to die lol", "my plan for the weekend: not
//! exist", "is 40 benadryl enough to die"); `train9.tsv` is past attempts with the danger
//! now (actual, interrupted, aborted), self-harm in many wordings, burden and plans and
//! means without a death word, with hard negatives (an attempt or self-harm told as
//! recovered history, self-harm as a topic, game bleeding and burning, kitchen and craft
//! cuts and burns, idioms), and came with rules for them and for recovered history told
//! with a clause break ("i tried to kill myself when i was 16. im 34 now and doing
//! great"): the writer's age now or the years since, together with a sign of being well
//! now, distance a past attempt; either alone does not; `train10.tsv` is someone else at
//! risk now, dark joking that means it, preparations with real possessions, with game
//! farewells, game-mechanic deaths and suicide as a topic as hard negatives, data only;
//! `train11.tsv` is past attempts told without "tried", someone else at risk now,
//! preparations, joking, plans, burden and passive ideation, with game give-aways and
//! farewells, suicide and overdose as a topic and everyday hospital visits as hard
//! negatives, and came with rules for them and game-quitting, moving and topic guards;
//! `train12.tsv` is past attempts, plans and means, preparation, self-harm and someone
//! else at risk now, with in-game deaths, roleplay, NPC and story lines as hard negatives,
//! and came with rules for them and game-world guards)
//! and the held-out splits (`test.tsv` and `test2.tsv`, each written separately by an
//! author who never saw the detector, and never tuned on; `test2.tsv` was added after the
//! classifier was trained, and nobody working on the detector has read it).
//!
//! `train2.tsv`'s to `train5.tsv`'s hard negatives are beyond the rules: on them the rules
//! alone give the protocol to about 4 %, 4 %, 6 % and 3 % of the lines that are not crisis
//! (6 %, 7 %, 12 % and 9 % before that round): idioms such as "i'd rather die than sing
//! karaoke", suicide as a topic, near pairs such as "the pills are in my bag, my allergy
//! pills" or "my friend has a rope in her closet for climbing"; and the classifier
//! overrules the rules only when it is all but sure (its veto). So those splits are held
//! to their measured recall (`TRAINING_SPLITS`) and to the
//! rules' own false positives plus the share the classifier may add
//! (`crisis_train::FP_BUDGET`), not to 98 % and 2 %.
//!
//! The goal (issue 11) is recall >= 98 % on crisis lines and at most 2 % false positives
//! (the full protocol) on ordinary and hotline-question lines, on messages the detector was
//! never tuned on. The training split meets it by construction. The held-out splits do not
//! yet. `test.tsv`: the rules alone caught 70.2 % (151/215) with 1.5 % false positives; with
//! the classifier 89.8 % (193/215), 1.5 %. `test2.tsv`: the rules alone 55.8 % (225/403),
//! 2.9 % false positives; with the classifier 75.4 % (304/403), 2.9 % (the classifier added
//! no false alarm; the rules' own are over the target). With `train3.tsv`, the veto and the
//! rules' new idioms (measured once, after the model was final, by this test's aggregate
//! figures only): `test.tsv` 94.9 % (204/215), 1.0 % (2/199); `test2.tsv` 85.1 %
//! (343/403), 2.6 % (9/350; 8 of them the rules' alone, 1 the classifier's). So these tests
//! hold each held-out split to its measured recall (a regression guard, not the goal) and
//! its false positives to the target (`test.tsv`) or to the rules' own plus the
//! classifier's budget (`test2.tsv`), and print the whole report either way. Raising the
//! floors is the open part of the issue; it must come from rules and training lines that
//! generalise, never from reading these splits' misses.
//!
//! `test3.tsv`, the third held-out split, was written by a third author (blind to the
//! detector, its data and the other splits) and added after the model with `train3.tsv`
//! was final: 87.8 % (389/443), 2.2 % (8/369) false positives, measured once (the detector
//! before `train3.tsv` and the veto: 80.4 %, 2.7 %).
//!
//! `test4.tsv`, by a fourth blind author, added after the model with `train4.tsv` was
//! final: 90.6 % (396/437), 2.2 % (8/360, all the rules' alone), measured once.
//!
//! `test5.tsv`, by a fifth blind author, measured once with the same model: 91.3 %
//! (401/439), 3.6 % (13/360; 11 the rules' alone).
//!
//! `test6.tsv` to `test17.tsv`, by twelve more blind authors, each measured with the model
//! of its day (their headers say how); `test11.tsv`: 92.5 % / 2.6 % after the eleventh
//! round, 93.2 % / 2.6 % after the twelfth; `test12.tsv`: 92.3 % / 1.0 % with the twelfth
//! round's detector; `test10.tsv`: 94.3 % / 1.0 % when
//! written, 94.1 % / 0.8 % with `train11.tsv` in; `test9.tsv` (87.0 % / 3.6 % when written, 88.6 % /
//! 3.1 % with `train9.tsv` and `train10.tsv` in, 87.3 % / 2.6 % with `train11.tsv`) has the
//! hardest game and topic negatives.
//!
//! These tests print a held-out split's figures only, never its misses.
//!
//! The held-out test fails when `test.tsv` is missing: a passing run must have measured it.

use std::path::PathBuf;
use worldbridge::agent::crisis::CrisisDetector;
use worldbridge::agent::crisis_eval::{
    default_files, default_train_files, evaluate, load, Case, Label,
};
use worldbridge::agent::crisis_train::{load_training, train, FP_BUDGET};

const MIN_RECALL: f64 = 0.98;
const MAX_FALSE_POSITIVES: f64 = 0.02;

fn eval_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/crisis/eval")
        .join(name)
}

/// None of `texts` gets the protocol from `detector` (the score and features say why).
fn no_protocol(detector: &CrisisDetector, texts: &[&str]) {
    each_gets(detector, texts, false);
}

/// Each of `texts` gets the protocol from `detector`.
fn protocol(detector: &CrisisDetector, texts: &[&str]) {
    each_gets(detector, texts, true);
}

fn each_gets(detector: &CrisisDetector, texts: &[&str], crisis: bool) {
    for text in texts {
        let (score, features) = detector.explain(text);
        let got = detector.detect(text).is_some();
        assert!(
            got == crisis,
            "{text:?}: protocol {got}, expected {crisis}: {score:.2} {features:?}"
        );
    }
}

fn meets_the_targets(name: &str) {
    meets(name, MIN_RECALL);
}

fn meets(name: &str, min_recall: f64) {
    let path = eval_file(name);
    assert!(
        path.exists(),
        "{} is missing: the crisis figures cannot be measured without it",
        path.display()
    );
    let cases = load(std::slice::from_ref(&path)).unwrap_or_else(|e| panic!("{e}"));
    let report = evaluate(&CrisisDetector::builtin(), &cases, 1);
    assert!(report.crisis.total >= 100, "{name}: too few crisis lines");
    assert!(report.none.total >= 100, "{name}: too few none lines");
    assert!(
        report.recall() >= min_recall && report.false_positive_rate() <= MAX_FALSE_POSITIVES,
        "{name}: recall {:.1}% (need >= {:.0}%), false positives {:.1}% (need <= {:.0}%)\n{}",
        100.0 * report.recall(),
        100.0 * min_recall,
        100.0 * report.false_positive_rate(),
        100.0 * MAX_FALSE_POSITIVES,
        shown(name, &report)
    );
}

/// What a failing or chatty test prints of a report: a held-out split's figures only
/// (its misses are never shown to anyone working on the detector), a training split's
/// misses too.
fn shown(name: &str, report: &worldbridge::agent::crisis_eval::Report) -> String {
    match name.starts_with("test") {
        true => report.render_figures(),
        false => report.render(),
    }
}

#[test]
fn the_training_split_meets_the_targets() {
    meets_the_targets("train.tsv");
}

/// The training splits the rules were not tuned on, with the shipped model (trained on
/// them): per file, at least this many lines, and a recall floor (its in-sample recall when
/// its guard was written, rounded down with a point or two to spare); its false positives
/// stay within the rules' own plus `FP_BUDGET`. The classifier's threshold is chosen out of
/// fold, so it does not fit its own training lines to 98 %: the honest figures are the
/// cross-validated ones `worldbridge crisis-train` prints. Regression guards, not the goal.
/// From `train13.tsv` on (the data-only rounds) each file is by an author who saw nothing
/// of the project, and its header gives its voice and its figures with the detector
/// before it was trained on.
const TRAINING_SPLITS: &[(&str, usize, f64)] = &[
    // `train2.tsv`'s recall with the shipped model (trained on it): 88.0 % (1087/1235) at the
    // commit that added it, 94.1 % (1162/1235) once `train3.tsv` joined the training files and
    // the model got its veto; rounded down with a point to spare.
    ("train2.tsv", 2000, 0.93),
    // `train3.tsv`'s recall with the shipped model (trained on it) at the commit that added
    // it: 88.3 % (1973/2234), rounded down with a point to spare. Its negatives are harder
    // still (near pairs of its crisis lines), so it too is held to the rules' own false
    // positives plus the classifier's budget. A regression guard, not the goal.
    ("train3.tsv", 3000, 0.87),
    // `train4.tsv`'s recall with the shipped model (trained on it) at the commit that added
    // it: 92.8 % (1600/1725), rounded down with a point to spare. Weighted to third person,
    // preparations, joking, past attempts, slang and plans, with near-pair negatives (a
    // friend at risk now beside a friend who is fine now). A regression guard, not the goal.
    ("train4.tsv", 2500, 0.91),
    // `train5.tsv`'s recall with the shipped model (trained on it) at the commit that added
    // it: 97.4 % (451/463), rounded down with a point to spare. Hand-written hard negatives
    // (idioms, other people's past, topics) and the weakest crisis kinds (third person,
    // joking, self-harm, past attempts, burden, preparations). A regression guard, not the
    // goal.
    ("train5.tsv", 900, 0.96),
    // `train6.tsv` (short messages: greetings, names and single letters, chat shorthand,
    // and short crisis lines) with the shipped model, trained on it: recall at least 95 %
    // (98.3 %, 57/58, in sample when it was added). A regression guard, not the goal.
    ("train6.tsv", 300, 0.95),
    // `train7.tsv` (hand-written: preparations, plans and means, past attempts with the danger
    // now, passive ideation, hopelessness, burden, without a crisis word; near-pair negatives:
    // moving house, a pet rehomed for allergies, a will made with a lawyer, a stocked medicine
    // cabinet, a high viewpoint, goodbyes to a guild or a job, an attempt told as recovered
    // history) with the shipped model, trained on it: recall at least 92 % (93.0 %, 441/474,
    // in sample when it was added). Its false positives in sample (15.0 %, 23/153) are all the
    // rules' own: its negatives are near pairs on purpose. A regression guard, not the goal.
    ("train7.tsv", 600, 0.92),
    // `train8.tsv` (hand-written: dark joking that still says the writer wants to die, past
    // attempts with the danger now, burden, plans and means; hard negatives: idioms said
    // lightly and light dark humour about game deaths) with the shipped model, trained on it:
    // recall at least 97 % (98.1 %, 407/415, in sample when it was added; its false
    // positives 1.4 %, 5/361). A regression guard, not the goal.
    ("train8.tsv", 700, 0.97),
    // `train9.tsv` (hand-written: past attempts with the danger now, actual, interrupted and
    // aborted; self-harm in many wordings; burden and plans and means without a death word;
    // hard negatives: an attempt or self-harm told as recovered history, self-harm as a topic,
    // game bleeding and burning, kitchen and craft cuts and burns, idioms) with the shipped
    // model, trained on it: recall at least 94 % (94.8 %, 329/347, in sample when it was
    // added; its false positives 3.1 %, 7/225, the rules alone 3.6 %). The model shipped
    // before it, never trained on it, caught 80.1 % with 26.2 % false positives. A regression
    // guard, not the goal.
    ("train9.tsv", 500, 0.94),
    // `train10.tsv` (hand-written: someone else at risk now, dark joking that means it,
    // past attempts, preparations with real possessions, plans and means, burden; hard
    // negatives: quitting a game and giving its items away, farewells in role-play and
    // stories, deaths and self-damage as game mechanics, suicide and self-harm as a topic,
    // recovered history) with the shipped model, trained on it: recall at least 95 % (95.6 %,
    // 306/320, in sample when it was added; its false positives 1.8 %, 6/333). The model
    // shipped before it, never trained on it, caught 85.6 % with 3.0 % false positives. A
    // regression guard, not the goal.
    ("train10.tsv", 500, 0.95),
    // `train11.tsv` (hand-written: past attempts told without "tried", someone else at risk
    // now, preparations, joking, plans and means, burden, passive ideation; hard negatives:
    // game give-aways and farewells, overdoses as a game mechanic, suicide and overdose as a
    // topic, a third party's attempt long over, everyday hospital visits, wills and
    // give-aways) with the shipped model, trained on it: recall at least 94 % (95.1 %,
    // 312/328, in sample when it was added; its false positives 1.3 %, 4/316). The detector before it, never trained on it, caught
    // 81.4 % (267/328) with 9.8 % (31/316) false positives. A regression guard, not the goal.
    ("train11.tsv", 600, 0.94),
    // `train12.tsv` (hand-written: past attempts, plans and means, preparation, self-harm,
    // someone else at risk now; hard negatives: in-game deaths and respawns, hardcore runs,
    // in-character roleplay, NPC, quest and story lines, guild and server quits) with the
    // shipped model, trained on it: recall at least 97 % (98.8 %, 158/160, in sample when it was
    // added). The detector before it, never tuned or trained on it, caught 83.1 % (133/160)
    // with 4.6 % (9/197) false positives. A regression guard, not the goal.
    ("train12.tsv", 300, 0.97),
    // Past attempts, preparations told as errands, long roleplay lines: 92.6 % (365/394);
    // 82.4 % (346/420) with 2.6 % false positives before it was trained on.
    ("train13.tsv", 700, 0.91),
    // Young game and Discord chat: 96.7 % (404/418); before, 86.1 % / 7.5 %.
    ("train14.tsv", 700, 0.95),
    // Adults, long and careful lines, roleplayers out of character: 93.3 % (361/387);
    // before, 78.0 % / 4.0 %.
    ("train15.tsv", 700, 0.91),
    // Mostly short lines and short near-pair negatives: 96.6 % (286/296); before, 88.8 % /
    // 4.9 %.
    ("train16.tsv", 700, 0.95),
    // Said obliquely (metaphors, euphemisms): 93.0 % (345/371); before, 78.8 % / 3.9 %.
    ("train17.tsv", 700, 0.91),
    // Said through the game: 94.4 % (352/373); before, 80.0 % / 4.7 %.
    ("train18.tsv", 700, 0.92),
    // Worried others and dark joking: 94.5 % (341/361); before, 86.2 % / 8.3 %.
    ("train19.tsv", 700, 0.92),
    // Acute distress, misspelt and fragmented: 97.6 % (369/378); before, 92.0 % / 5.3 %.
    ("train20.tsv", 650, 0.96),
    // Writers whose piece is about them: 92.9 % (325/350); before, 82.1 % / 5.0 %.
    ("train21.tsv", 700, 0.91),
    // English from around the world: 96.8 % (361/373); before, 84.2 % / 6.1 %.
    ("train22.tsv", 700, 0.95),
    // Messages to the game's AI character: 95.6 % (366/383); before, 87.8 % / 3.1 %.
    ("train23.tsv", 700, 0.94),
    // Statuses, bios and one-line posts: 97.8 % (359/367); before, 91.0 % / 2.8 %.
    ("train24.tsv", 650, 0.96),
    // Mostly hard negatives: 94.9 % (169/178); before, 94.5 % / 8.6 %.
    ("train25.tsv", 700, 0.93),
    // Survival and crafting game chat: preparations and joking that means it: 92.5 %
    // (358/387); before, 82.2 % / 5.0 %.
    ("train26.tsv", 700, 0.91),
    // Messages to moderators and staff, reports about someone at risk: 95.5 % (358/375);
    // before, 81.8 % / 3.9 %.
    ("train27.tsv", 700, 0.94),
    // Everyday first-person near pairs (mostly negatives): 97.0 % (288/297); before,
    // 89.3 % / 9.3 %.
    ("train28.tsv", 700, 0.95),
    // Dark humour that means it and that does not (young game and stream chat): 99.6 %
    // (272/273); before, 91.9 % / 3.1 %.
    ("train29.tsv", 650, 0.97),
    // Plans and preparations told as errands and arrangements: 99.7 % (316/317); before,
    // 73.5 % / 6.3 %.
    ("train30.tsv", 650, 0.97),
    // Said to the AI character and in roleplay, in and out of character: 100 % (290/290);
    // before, 93.8 % / 1.8 %.
    ("train31.tsv", 650, 0.97),
    // Plans and preparations told as errands, adults away from games: 99.7 % (320/321);
    // before, 82.2 % / 11.0 %.
    ("train32.tsv", 650, 0.97),
    // Recovery and relapse, against recovery that holds: 100 % (317/317); before, 92.1 % /
    // 7.3 %.
    ("train33.tsv", 650, 0.97),
    // English as a second language, and very short lines: 100 % (307/307); before, 86.3 % /
    // 3.6 %.
    ("train34.tsv", 650, 0.97),
    // Worried others, and dark joking among friends: 100 % (318/318); before, 94.3 % / 3.1 %.
    ("train35.tsv", 650, 0.97),
    // Long messages with the signal buried: 100 % (310/310); before, 92.6 % / 3.1 %.
    ("train36.tsv", 650, 0.97),
    // Poetic, lyrical and spiritual: 100 % (324/324); before, 91.7 % / 3.4 %.
    ("train37.tsv", 650, 0.97),
    // Text-speak and typing under stress: 100 % (304/304); before, 97.4 % / 3.8 %.
    ("train38.tsv", 650, 0.97),
    // School and family: 100 % (328/328); before, 91.5 % / 4.4 %.
    ("train39.tsv", 650, 0.97),
    // Denials and reassurance, and the crisis lines beside them: 100 % (288/288); before,
    // 96.2 % / 10.7 % (the denials drew the protocol).
    ("train40.tsv", 650, 0.97),
    // Chronic pain, illness and disability: 100 % (324/324); before, 90.1 % / 5.9 %.
    ("train41.tsv", 650, 0.97),
    // Queer and questioning young people, and rejection: 100 % (305/305); before, 93.4 % /
    // 7.4 %.
    ("train42.tsv", 650, 0.97),
    // Stoic and understated (veterans, first responders, farmers): 99.7 % (322/323);
    // before, 80.8 % / 6.2 %.
    ("train43.tsv", 650, 0.97),
    // Drink, drugs and overdose: 100 % (322/322); before, 96.0 % / 7.5 %.
    ("train44.tsv", 650, 0.97),
    // Grief: 100 % (326/326); before, 87.7 % / 6.1 %.
    ("train45.tsv", 650, 0.97),
    // Very short chat, mostly ordinary (138 of its lines repeated another file's and were
    // taken out): 100 % (130/130); before, 93.8 % / 4.8 % (78.5 % / 2.2 % with the
    // detector of the session's start).
    ("train46.tsv", 550, 0.97),
    // Money, work and the law (debt, gambling, eviction, court): 99.8 % (414/415); before,
    // 85.1 % / 1.6 %.
    ("train47.tsv", 650, 0.97),
    // Jokes and memes that mean it (weighted to joking, preparation, slang): 99.7 %
    // (385/386); before, 89.4 % / 4.8 %.
    ("train48.tsv", 650, 0.97),
    // Trauma and abuse: 100 % (389/389); before, 90.0 % / 2.4 %.
    ("train49.tsv", 650, 0.97),
    // Bodies: eating, exercise and self-punishment (weighted to self-harm): 100 % (393/393);
    // before, 88.0 % / 1.9 %.
    ("train50.tsv", 650, 0.97),
    // Very short chat, half of it crisis (136 lines repeated another file's and were taken
    // out): 99.6 % (263/264); before, 95.1 % / 3.1 %.
    ("train51.tsv", 500, 0.97),
    // Technical metaphors (programmers and sysadmins): 100 % (397/397); before, 91.7 % /
    // 1.6 %.
    ("train52.tsv", 650, 0.97),
    // Parents and carers: 100 % (407/407); before, 87.7 % / 3.3 %.
    ("train53.tsv", 650, 0.97),
    // Very short chat, mostly ordinary, second author (215 lines repeated another file's and
    // were taken out): 100 % (128/128); before, 98.4 % / 4.7 %.
    ("train54.tsv", 480, 0.97),
    // Sport and competition: 99.7 % (391/392); before, 82.9 % / 1.2 %.
    ("train55.tsv", 650, 0.97),
    // Faith, spirit and culture: 100 % (400/400); before, 94.2 % / 1.2 %.
    ("train56.tsv", 650, 0.97),
    // Online shame and harassment: 99.7 % (371/372); before, 90.1 % / 3.8 %.
    ("train57.tsv", 620, 0.97),
    // Loneliness and late life: 100 % (379/379); before, 88.7 % / 3.3 %.
    ("train58.tsv", 650, 0.97),
    // Love, breakups and betrayal: 99.7 % (383/384); before, 92.2 % / 3.1 %.
    ("train59.tsv", 650, 0.97),
    // Questions (about dying and means, against safe questions with the same words): 100 %
    // (410/410); before, 90.2 % / 3.2 %.
    ("train60.tsv", 650, 0.97),
    // University and first jobs: 100 % (386/386); before, 88.9 % / 0.9 %.
    ("train61.tsv", 650, 0.97),
    // Therapy and clinical words: 100 % (373/373); before, 93.3 % / 1.2 %.
    ("train62.tsv", 640, 0.97),
    // Rural life, guns and the outdoors: 100 % (388/388); before, 91.0 % / 1.5 %.
    ("train63.tsv", 650, 0.97),
    // Sleep and night: 99.7 % (381/382); before, 96.6 % / 2.5 %.
    ("train64.tsv", 650, 0.97),
    // Anger and impulse: 100 % (393/393); before, 96.9 % / 2.8 %.
    ("train65.tsv", 650, 0.97),
    // Displacement, war and loss of home: 99.8 % (405/406); before, 91.1 % / 3.5 %.
    ("train66.tsv", 650, 0.97),
    // Long posts (50 to 106 words): 100 % (300/300); before, 92.0 % / 11.4 % (its false
    // alarms were the rules' own, which the model could not veto on messages of over 40
    // words; with `VETO_MAX_WORDS` at 120, none).
    ("train67.tsv", 550, 0.97),
    // Very short chat, half of it crisis, second author (195 lines repeated another file's
    // and were taken out): 100 % (211/211); before, 97.2 % / 5.3 %.
    ("train68.tsv", 450, 0.97),
    // Long posts, mostly ordinary, second author: 100 % (200/200); before, 94.5 % / 11.2 %.
    ("train69.tsv", 600, 0.97),
    // Healthcare and emergency workers: 100 % (379/379); before, 91.3 % / 2.5 %.
    ("train70.tsv", 650, 0.97),
    // Very short MUD chat, half of it crisis (128 lines repeated another file's and were
    // taken out): 99.6 % (232/233); before, 95.3 % / 4.3 %.
    ("train71.tsv", 520, 0.97),
    // Sarcasm and mixed signals: 100 % (386/386); before, 92.5 % / 0.6 %.
    ("train72.tsv", 650, 0.97),
    // Farewells and preparations (weighted to preparation): 100 % (371/371); before, 94.6 %
    // / 2.3 %.
    ("train73.tsv", 640, 0.97),
    // Gallows humour of adults (weighted to joking): 100 % (374/374); before, 90.6 % /
    // 1.2 %.
    ("train74.tsv", 650, 0.97),
    // Young players, 11 to 15: 100 % (368/368); before, 97.0 % / 3.1 %.
    ("train75.tsv", 650, 0.97),
    // Very short warm and social chat, mostly ordinary (86 lines repeated another file's and
    // were taken out): 100 % (118/118); before, 91.5 % / 9.8 %.
    ("train76.tsv", 450, 0.97),
];

#[test]
fn the_training_splits_keep_their_recall_and_the_rules_false_positives() {
    let failures: Vec<String> = TRAINING_SPLITS
        .iter()
        .filter_map(|&(name, min_lines, floor)| {
            let cases = load(&[eval_file(name)]).unwrap_or_else(|e| panic!("{e}"));
            assert!(cases.len() >= min_lines, "{name}: {} lines", cases.len());
            falls_short(name, &cases, floor, false)
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// How many lines of `cases` are crisis lines, and how many ordinary (`none`) ones.
fn sides(cases: &[Case]) -> (usize, usize) {
    let count = |label: Label| cases.iter().filter(|c| c.label == label).count();
    (count(Label::Crisis), count(Label::None))
}

/// How a split falls short of `floor` recall with the shipped detector, or of its
/// false-positive bound (`None`: it does not). A held-out split's figures are printed
/// either way.
///
/// The bound: a training split's false positives stay within the rules' own plus
/// `FP_BUDGET`, as training chose the threshold. A held-out split's stay at or under
/// [`HELD_OUT_SPLIT_FP_CEILING`]: the 2 % goal itself is asserted over all the held-out
/// splits together, and one split of 360 to 390 ordinary lines moves by a quarter of a
/// point per line.
fn falls_short(name: &str, cases: &[Case], floor: f64, held_out: bool) -> Option<String> {
    let report = evaluate(&CrisisDetector::builtin(), cases, 1);
    let rules = evaluate(&CrisisDetector::rules_only(), cases, 1);
    if held_out {
        eprintln!("{name}: {}", report.render_figures());
    }
    let fp_bound = if held_out {
        HELD_OUT_SPLIT_FP_CEILING
    } else {
        rules.false_positive_rate() + FP_BUDGET
    };
    let kept = report.recall() >= floor && report.false_positive_rate() <= fp_bound;
    (!kept).then(|| {
        format!(
            "{name}: recall {:.1}% (need >= {:.0}%), false positives {:.1}% (need <= {:.1}%; \
             the rules alone: {:.1}%)\n{}",
            100.0 * report.recall(),
            100.0 * floor,
            100.0 * report.false_positive_rate(),
            100.0 * fp_bound,
            100.0 * rules.false_positive_rate(),
            shown(name, &report)
        )
    })
}

/// An NPC's noose, a guild disbanding, potions overdosed on, a will made for a new baby
/// and a leaving cake are not a crisis; a coma after the pills, a day picked, a plan that
/// is a bridge, a blade carried "in case the urge comes" and a friend's pet handed over for
/// good are. None of these lines is in a training file.
#[test]
fn game_world_context_is_distanced_and_plans_and_attempts_fire() {
    let detector = CrisisDetector::builtin();
    no_protocol(
        &detector,
        &[
            "the quest giver has a noose around his neck, creepy npc design",
            "our clan is disbanding so i said goodbye to everyone and gave away my gear",
            "overdosed on mana potions again, the debuff lasts forever",
            "making a will now that our newborn is home, the solicitor was lovely",
            "said bye to everyone on my last day at the shop, they got me a cake",
        ],
    );
    protocol(
        &detector,
        &[
            "i ended up in intensive care after the pills in march and i am saving them again",
            "i have already chosen the date.",
            "my plan is the bridge by the station",
            "i carry a blade in my pocket in case the urge gets bad",
            "my brother asked me to keep his dog for good and now he is not answering",
        ],
    );
}

/// Game farewells and give-aways, a will made for a house, "my attempt at a loaf" and a
/// move are ordinary; a past attempt told without "tried" (a stomach pumped, found in
/// time, resuscitated), a friend's farewell with the phone off and a give-away that denies
/// the move are not. None of these lines is in a training file.
#[test]
fn game_farewells_are_distanced_and_attempts_without_tried_fire() {
    let detector = CrisisDetector::builtin();
    no_protocol(
        &detector,
        &[
            "dropping all my mats in the guild bank, the new patch ruined my class",
            "goodbye tamriel, deleting my save tonight",
            "we made a will because we just bought a house, our financial advisor said to",
            "i survived my attempt at a sourdough loaf",
            "giving away my old clothes, moving to a new flat on saturday",
        ],
    );
    protocol(
        &detector,
        &[
            "they pumped my stomach in june and nobody knows",
            "my sister found me in time last spring. shes away this week",
            "i was resuscitated after the pills in april and i wish they hadnt",
            "my friend sent a voice note saying thanks for everything and now her phone is off",
            "giving away my games and my cat, im not moving anywhere",
        ],
    );
}

/// Short greetings are not a crisis: the classifier alone once gave the protocol to
/// "hi from b" (0.85), "b" (0.90) and "hey it's b" (0.96), its weights for a lone letter
/// and for a three-to-four-word message deciding (train6.tsv fixed it).
#[test]
fn short_greetings_and_names_get_no_protocol() {
    let detector = CrisisDetector::builtin();
    no_protocol(
        &detector,
        &[
            "hi from b",
            "b",
            "hey it's b",
            "good morning from node b",
            "b here, whats up",
            "plan b",
            "fr fr",
            "i'm b",
        ],
    );
    assert!(detector.detect("kms").is_some() && detector.detect("i want to die").is_some());
}

/// Everyday short chat is not a crisis. The nineteenth and the twenty-second rounds' models
/// gave the protocol to 9 and 19 of a hand-written list of 100 such lines ("bye", "please",
/// "please fail", "take care", "love you guys"; the eighteenth round's detector to 2), which
/// the held-out splits, with few one- and two-word ordinary lines, did not show; the
/// guard on messages of one or two words (`SHORT_GUARDED_WORDS`) and a training file of
/// short chat (`train46.tsv`, written without this list) brought it to 1 ("enough"). The
/// twenty-fourth round's model (with `train51.tsv`, short chat half of it crisis) gave it
/// to "never mind" too; the twenty-fifth's, with `train54.tsv` (short chat, mostly
/// ordinary, written blind without the list), took it back to 1. The twenty-seventh
/// round's first model (farewells and short MUD chat) gave it to "love you guys" (0.55);
/// `train76.tsv` (short warm chat, mostly ordinary, written blind without the list) took
/// it back to 1. Of the list, these are the lines no training file holds.
#[test]
fn short_chat_gets_no_protocol() {
    let detector = CrisisDetector::builtin();
    no_protocol(
        &detector,
        &[
            "please",
            "thanks",
            "bye",
            "stop",
            "never mind",
            "please fail",
            "please work",
            "failed again",
            "i failed",
            "try again",
            "not again",
            "why me",
            "please no",
            "please stop",
            "stop it",
            "finished",
            "bye all",
            "take care",
            "love you guys",
            "miss you",
            "logging off",
            "my head hurts",
            "whyyy",
            "noooo",
            "rage quit",
            "one more try",
            "see ya tomorrow",
            "going to bed",
        ],
    );
}

/// Nobody edits the weights by hand: the shipped file is exactly what `worldbridge
/// crisis-train` makes of the shipped training files (and the rules they are read through).
#[test]
fn the_shipped_model_is_what_training_produces() {
    // `crisis-train`'s own choice of files (the test runs in the source tree).
    let files = default_train_files().unwrap_or_else(|e| panic!("{e}"));
    // Every training file: `train.tsv` and the ones `TRAINING_SPLITS` guards.
    assert_eq!(
        files.len(),
        TRAINING_SPLITS.len() + 1,
        "training files: {files:?}"
    );
    let (cases, sources) = load_training(&files).unwrap_or_else(|e| panic!("{e}"));
    let trained = train(&CrisisDetector::rules_only(), &cases, &sources);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/crisis/model.tsv");
    let shipped = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        trained.text == shipped,
        "{} is not what training produces from fixtures/crisis/eval/train*.tsv: run \
         `worldbridge crisis-train` from the source tree (it rewrites the file)",
        path.display()
    );
}

/// Every held-out split together: 95.5 % recall (6,900/7,228) and 1.8 % false positives
/// (112/6,324) with the eighteenth round's detector, when `test17.tsv` was the newest;
/// 97.6 % (7,058/7,228) and 1.8 % (113/6,324) with the nineteenth's (longer word pairs,
/// more passes, the veto chosen by recall); with `test18.tsv`, 97.7 % (7,451/7,625) and
/// 1.7 % (113/6,681) with the twentieth's (`train29.tsv` to `train31.tsv`); with
/// `test19.tsv`, 97.98 % (7,852/8,014) and 1.8 % (127/7,034) with the twenty-first's
/// (`train32.tsv` to `train35.tsv`; the seventeen older splits 98.2 %); with
/// `test20.tsv`, 97.9 % (8,231/8,409) and 1.8 % (136/7,414) with the twenty-second's
/// (`train36.tsv` to `train40.tsv`; the seventeen older splits 98.3 %, the three newest
/// 93.7 to 97.2 %); with `test21.tsv`, 97.8 % (8,635/8,832) and 1.6 % (125/7,795) with
/// the twenty-third's (`train41.tsv` to `train46.tsv`, short messages guarded; the
/// seventeen older splits 98.2 %, the four newest 95.8 %); with `test22.tsv` (short chat
/// only: 90.0 % / 2.7 %), 97.6 % (8,797/9,012) and 1.6 % (132/8,056); with `test23.tsv`
/// and `test24.tsv` (written blind this session: 97.5 % and 98.2 % with the twenty-third
/// round's detector), 97.6 % (9,573/9,805) and 1.6 % (141/8,798) with the twenty-third's,
/// 97.9 % (9,602) and 1.6 % (144) with the twenty-fifth's (`train47.tsv` to `train61.tsv`),
/// **98.2 % (9,625/9,805) and 1.5 % (129/8,798)** with the twenty-sixth's (`train62.tsv` to
/// `train68.tsv`); with `test25.tsv` (written blind after that round: 97.8 % with the
/// twenty-third's, 97.6 % with the twenty-sixth's), 98.1 % (10,032/10,222) and 1.4 %
/// (132/9,181) with the twenty-sixth's, **98.5 % (10,065/10,222) and 1.5 % (142/9,181)**
/// with the twenty-seventh's (`train69.tsv` to `train76.tsv`, the veto on messages of up
/// to 120 words); with `test26.tsv` (written blind after that round: 98.6 % with the
/// twenty-third's), **98.4 % (10,474/10,639) and 1.6 % (152/9,565)** with the
/// twenty-seventh's. (A twenty-eighth round, seven more training files, did better out of
/// fold and over all the held-out splits together, 98.5 % and 1.5 %, but gave `test5.tsv`
/// 3.6 % false positives, over [`HELD_OUT_SPLIT_FP_CEILING`], and was not shipped.) Both
/// goals (recall at least 98 %, false positives at most 2 %) are asserted here, over every
/// held-out split together.
const HELD_OUT_ALL_RECALL_FLOOR: f64 = 0.98;

/// The most false positives one held-out split may show: the 2 % goal plus one point,
/// about one and a half standard deviations of a 2 % rate on a split of 390 ordinary
/// lines. (Until the twenty-second round each split was held to the rules' own plus
/// `FP_BUDGET`, by then plus one line; `test7.tsv`, 1.0 % by the rules alone, went to 9 of
/// 390, 2.3 %, while all the splits together stayed at 1.8 %.)
const HELD_OUT_SPLIT_FP_CEILING: f64 = 0.03;

#[test]
fn the_held_out_splits_together_meet_both_goals() {
    // `crisis-eval`'s own listing (the test runs in the source tree), its held-out part.
    let files: Vec<PathBuf> = (default_files()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter())
    .filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("test"))
    })
    .collect();
    // Every held-out split on disk is one `HELD_OUT_SPLITS` guards, and the other way round.
    let mut names: Vec<&str> = files
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
        .collect();
    let mut listed: Vec<&str> = HELD_OUT_SPLITS.iter().map(|&(n, _, _)| n).collect();
    names.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        names, listed,
        "held-out splits on disk against HELD_OUT_SPLITS"
    );
    let cases = load(&files).unwrap_or_else(|e| panic!("{e}"));
    let report = evaluate(&CrisisDetector::builtin(), &cases, 1);
    eprintln!("{}", report.render_figures());
    assert!(
        report.recall() >= HELD_OUT_ALL_RECALL_FLOOR
            && report.false_positive_rate() <= MAX_FALSE_POSITIVES,
        "all held-out splits: recall {:.1}% (need >= {:.0}%), false positives {:.2}% (need <= \
         {:.0}%)",
        100.0 * report.recall(),
        100.0 * HELD_OUT_ALL_RECALL_FLOOR,
        100.0 * report.false_positive_rate(),
        100.0 * MAX_FALSE_POSITIVES,
    );
}

/// The held-out splits, each written by its own author: per split, at least this many
/// lines on each side, and its measured recall rounded down with lines to spare; its false
/// positives stay at or under [`HELD_OUT_SPLIT_FP_CEILING`]. The test fails when a split is
/// missing: a passing run must have measured every one.
const HELD_OUT_SPLITS: &[(&str, usize, f64)] = &[
    // The first held-out split's recall with the classifier (193/215 = 89.8 % when it was
    // added, 204/215 = 94.9 % with `train3.tsv`, 205/215 = 95.3 % with `train4.tsv`),
    // rounded down to whole percent with a line to spare. (It was held to the 2 % goal on
    // its own until the fourteenth round gave the protocol to a fourth of its 199 other
    // lines, 2.01 %, decided on the training files; the goal is asserted over all the
    // held-out splits together, above.)
    ("test.tsv", 150, 0.94),
    // The second held-out split's recall (304/403 = 75.4 % when it was added, 343/403 =
    // 85.1 % with `train3.tsv`, 355/403 = 88.1 % with `train4.tsv`), rounded down to whole
    // percent with lines to spare.
    ("test2.tsv", 300, 0.87),
    // The third held-out split's recall (389/443 = 87.8 %, measured once when it was added,
    // after the model with `train3.tsv` was final; 402/443 = 90.7 % with `train4.tsv`),
    // rounded down to whole percent with lines to spare.
    ("test3.tsv", 300, 0.89),
    // The fourth held-out split's recall (396/437 = 90.6 %, measured once when it was added,
    // after the model with `train4.tsv` was final), rounded down with lines to spare.
    ("test4.tsv", 300, 0.89),
    // The fifth held-out split's recall (401/439 = 91.3 %, measured once when it was added),
    // rounded down with lines to spare. Its false positives (3.6 %, 11 of the 13 the rules'
    // alone) are over the 2 % target.
    ("test5.tsv", 300, 0.90),
    // The sixth held-out split's recall (94.2 % to 95.1 % over the four models measured on
    // it, figures only: see the file's header; 429/451 with the shipped one), rounded down
    // with lines to spare. Its false positives: 2.0 % (8/396).
    ("test6.tsv", 300, 0.93),
    // The seventh held-out split's recall (402/440 = 91.4 %, measured once, when it was
    // added, with the model trained on `train.tsv` to `train7.tsv`), rounded down with lines
    // to spare. Its false positives: 2.1 % (8/390).
    ("test7.tsv", 300, 0.90),
    // The eighth held-out split's recall (418/440 = 95.0 %, measured when it was added, with
    // the model trained on `train.tsv` to `train8.tsv`), rounded down with lines to spare. Its
    // false positives: 1.5 % (6/390).
    ("test8.tsv", 300, 0.94),
    // The ninth held-out split's recall (390/440 = 88.6 %, measured once with the model trained
    // on `train.tsv` to `train10.tsv` and the ninth round's rules; 87.0 % with the detector
    // shipped when it was written), rounded down with lines to spare. Its false positives:
    // 3.1 % (12/390), over the 2 % goal: its game and topic negatives are the hardest yet.
    // With `train11.tsv` and the eleventh round's rules: 87.3 % (384/440), 2.6 % (10/390).
    ("test9.tsv", 300, 0.87),
    // The tenth held-out split's recall (414/440 = 94.1 %, measured once with the model
    // trained on `train.tsv` to `train11.tsv` and the eleventh round's rules; 94.3 % with the
    // detector shipped when it was written), rounded down with lines to spare. Its false
    // positives: 0.8 % (3/390).
    ("test10.tsv", 300, 0.93),
    // The eleventh held-out split's recall (407/440 = 92.5 %, measured once with the model
    // trained on `train.tsv` to `train11.tsv`, before any change it could judge; 410/440 =
    // 93.2 % once with the twelfth round's), rounded down with lines to spare. Its false
    // positives: 2.6 % (10/390) both times.
    ("test11.tsv", 300, 0.91),
    // The twelfth held-out split's recall (406/440 = 92.3 %, measured once with the model
    // trained on `train.tsv` to `train12.tsv` and the twelfth round's rules, before any
    // change it could judge), rounded down with lines to spare. Its false positives: 1.0 %
    // (4/390).
    ("test12.tsv", 300, 0.91),
    // The thirteenth held-out split's recall (written blind while the rounds after the twelfth
    // were under way; 384/440 = 87.3 % with the twelfth round's detector, 389 with the
    // thirteenth's, 390 with the fourteenth's, 406/440 = 92.3 % with the fifteenth's), rounded
    // down with lines to spare. Its false positives: 2.1 %, 2.1 %, 2.8 %, 2.6 % (10/390).
    ("test13.tsv", 300, 0.90),
    // The fourteenth held-out split's recall (written blind after the thirteenth round;
    // 407/440 = 92.5 % with the twelfth round's detector, 410 with the thirteenth's, 412 with
    // the fourteenth's, 419/440 = 95.2 % with the fifteenth's), rounded down with lines to
    // spare. Its false positives: 3.1 %, 2.8 %, 2.8 %, 3.1 % (12/390).
    ("test14.tsv", 300, 0.93),
    // The fifteenth held-out split's recall (written blind after the fifteenth round; 391/440
    // = 88.9 % with the twelfth round's detector, 412 with the fifteenth's, 422/440 = 95.9 %
    // with the sixteenth's), rounded down with lines to spare. Its false positives: 1.5 %,
    // 1.5 %, 1.0 % (4/390).
    ("test15.tsv", 300, 0.94),
    // The sixteenth held-out split's recall (written blind during the seventeenth round,
    // half of it addressed to the game's AI character; 378/440 = 85.9 % with the twelfth
    // round's detector, 405 with the sixteenth's, 405/440 = 92.0 % with the seventeenth's),
    // rounded down with lines to spare. Its false positives: 3.3 %, 2.8 %, 2.6 % (10/390).
    ("test16.tsv", 300, 0.90),
    // The seventeenth held-out split's recall (written blind after the seventeenth round;
    // 391/440 = 88.9 % with the twelfth round's detector, 409/440 = 93.0 % with the
    // seventeenth's and the eighteenth's), rounded down with lines to spare. Its false
    // positives: 3.3 %, 3.8 %, 3.3 % (13/390).
    ("test17.tsv", 300, 0.91),
    // The eighteenth held-out split's recall (written blind after the nineteenth round; 76
    // lines that repeated a training line taken out unread; 355/397 = 89.4 % with the
    // eighteenth round's detector, 371 with the nineteenth's, 377/397 = 95.0 % with the
    // twentieth's), rounded down with lines to spare. Its false positives: 1.4 %, 1.4 %,
    // 1.7 % (6/357).
    ("test18.tsv", 300, 0.93),
    // The nineteenth held-out split's recall (written blind after the twentieth round,
    // young players' fast and messy chat; 88 lines that repeated a training line taken out
    // unread; 365/389 = 93.8 % with the eighteenth round's detector, 374 with the
    // twentieth's, 377/389 = 96.9 % with the twenty-first's), rounded down with lines to
    // spare. Its false positives: 2.3 %, 2.5 %, 2.5 % (9/353).
    ("test19.tsv", 300, 0.94),
    // The twentieth held-out split's recall (written blind after the twenty-first round,
    // older roleplayers of a MUD and a Morrowind server, many writing English as a second
    // language; 55 lines that repeated a training line taken out unread; 338/395 = 85.6 %
    // with the eighteenth round's detector, 365 with the twenty-first's, 370/395 = 93.7 %
    // with the twenty-second's), rounded down with lines to spare. Its false positives:
    // 2.6 %, 2.6 %, 2.4 % (9/380).
    ("test20.tsv", 300, 0.92),
    // The twenty-first held-out split's recall (written blind after the twenty-second round,
    // adults in a 3D browser hangout; 26 lines that repeated a training line taken out
    // unread; 381/423 = 90.1 % with the eighteenth round's detector, 403 with the
    // twenty-second's and the twenty-third's), rounded down with lines to spare. Its false
    // positives: 1.8 %, 2.6 %, 2.1 % (8/381).
    ("test21.tsv", 300, 0.93),
    // The twenty-second held-out split: short chat only, one to four words (written blind
    // after the twenty-third round; 118 lines that repeated a training line and one
    // mislabelled line taken out; 140/180 = 77.8 % with the eighteenth round's detector,
    // 153 with the nineteenth's, 162/180 = 90.0 % with the twenty-third's), rounded down
    // with lines to spare. Its false positives: 1.1 %, 3.4 %, 2.7 % (7/261).
    ("test22.tsv", 150, 0.88),
    // The twenty-third held-out split's recall (written blind after the twenty-third round,
    // the Discord-style community of a Morrowind roleplay server and an MMO guild, ages 14
    // to 65; 63 lines that repeated a training line taken out unread; 393/403 = 97.5 % with
    // the twenty-third round's detector, 395 with the twenty-fourth's, 396/403 = 98.3 % with
    // the twenty-fifth's and the twenty-sixth's, 397 with the twenty-seventh's), rounded
    // down with lines to spare. Its false positives: 2.2 %, 1.6 %, 1.9 %, 1.6 %, 1.6 %
    // (6/364).
    ("test23.tsv", 300, 0.96),
    // The twenty-fourth held-out split's recall (written blind after the twenty-fifth
    // round, a mobile MMO's world chat and messages, many writing English as a second
    // language; 62 lines that repeated a training line taken out unread; 383/390 = 98.2 %
    // with the twenty-third round's detector, 385/390 = 98.7 % with the twenty-fifth's and
    // the twenty-sixth's and the twenty-seventh's), rounded down with lines to spare. Its
    // false positives: 0.3 % (1/378) with each before the twenty-seventh's, 0.5 % (2/378)
    // with it.
    ("test24.tsv", 300, 0.97),
    // The twenty-fifth held-out split's recall (written blind after the twenty-sixth round,
    // a text MUD whose players are many of them blind and use screen readers, and veterans
    // of the 1990s; 30 lines that repeated a training line taken out unread; 408/417 =
    // 97.8 % with the twenty-third round's detector, 407 with the twenty-sixth's, 410/417 =
    // 98.3 % with the twenty-seventh's), rounded down with lines to spare. Its false
    // positives: 0.3 %, 0.8 %, 0.8 % (3/383).
    ("test25.tsv", 300, 0.96),
    // The twenty-sixth held-out split's recall (written blind after the twenty-seventh
    // round, the live-stream chat of a Morrowind speedrunner and an MMO streamer and private
    // messages to its moderators; 29 lines that repeated a training line taken out unread;
    // 411/417 = 98.6 % with the twenty-third round's detector, 409/417 = 98.1 % with the
    // twenty-seventh's), rounded down with lines to spare. Its false positives: 1.6 %,
    // 2.6 % (10/384).
    ("test26.tsv", 300, 0.96),
];

#[test]
fn the_held_out_splits_keep_their_measured_recall_and_false_positives() {
    let failures: Vec<String> = HELD_OUT_SPLITS
        .iter()
        .filter_map(|&(name, min, floor)| {
            let path = eval_file(name);
            assert!(path.exists(), "{} is missing", path.display());
            let cases = load(std::slice::from_ref(&path)).unwrap_or_else(|e| panic!("{e}"));
            let (crisis, others) = sides(&cases);
            assert!(
                crisis >= min && others >= min,
                "{name}: {crisis} / {others} lines"
            );
            falls_short(name, &cases, floor, true)
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Words of recovery do not hide a wish said now: the writer's own recovered history is
/// distanced (`self_recovered`), but "but i still…", "but tonight…" add back (`still_now`).
#[test]
fn recovery_words_do_not_hide_a_wish_now() {
    let detector = CrisisDetector::builtin();
    protocol(
        &detector,
        &[
            "im doing so much better but i still want to kill myself",
            "i am stable on meds but tonight i am going to end it",
            "i was in a good place for a while but i want to die now",
            "people think im doing well but i want to kill myself",
        ],
    );
    let history = "i tried to kill myself when i was 16, im 34 now and so glad i stayed";
    assert!(detector.detect(history).is_none(), "{history:?}");
}

/// A past attempt told as recovered history, across a clause break, is not a crisis now:
/// the writer's age now or the years since (`self_long_ago`) together with a sign of being
/// well now (`self_well_now`). Either alone is not enough, and a sign that the danger is
/// now adds back, so a past attempt with the thoughts back still fires.
#[test]
fn recovered_history_is_distanced_but_an_attempt_with_the_danger_now_fires() {
    let detector = CrisisDetector::builtin();
    no_protocol(
        &detector,
        &[
            "i tried to kill myself when i was 16. im 34 now and doing great, happy to talk about it",
            "i self harmed as a teen. now im 29 and doing great",
        ],
    );
    protocol(
        &detector,
        &[
            "i tried when i was 16 and im thinking about it again",
            "i tried to kill myself when i was 16. im 34 now and the thoughts are back",
            "i tried to kill myself years ago and now i want to again",
            "i tried to kill myself years ago and i am doing great but i want to die",
            "i was going to jump on saturday but the cops showed up",
            "i told the nurse i fell but i did it myself",
        ],
    );
}

#[test]
fn a_malformed_eval_file_is_an_error_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("worldbridge-crisis-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.tsv");
    std::fs::write(
        &bad,
        "# ok\ncrisis\tdirect\ti want to die\nnone\tnews\tthe server died\n",
    )
    .unwrap();
    let err = load(std::slice::from_ref(&bad)).unwrap_err();
    assert!(err.contains("bad.tsv:3"), "{err}");
    assert!(err.contains("\"news\""), "{err}");
    std::fs::write(&bad, "crisis direct no tabs\n").unwrap();
    let err = load(std::slice::from_ref(&bad)).unwrap_err();
    assert!(
        err.contains("bad.tsv:1") && err.contains("label<TAB>kind<TAB>message"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_prints_the_figures_and_names_a_bad_line() {
    let bin = env!("CARGO_BIN_EXE_worldbridge");
    let out = std::process::Command::new(bin)
        .args(["crisis-eval"])
        .arg(eval_file("train.tsv"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "recall (crisis lines given the protocol):",
        "false positives (none + resources lines given the protocol):",
        "resources answered with the numbers only:",
        "per kind:",
        "stage that fired: crisis lines: rules ",
        "crisis    slang",
        "none      technical",
        "µs per message (mean)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // A held-out split: the figures, never the misses.
    let out = std::process::Command::new(bin)
        .args(["crisis-eval"])
        .arg(eval_file("test.tsv"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recall (crisis lines given the protocol):"),
        "{text}"
    );
    assert!(text.contains("the misses are not listed"), "{text}");
    assert!(!text.contains("MISS"), "a held-out miss was printed");
    let dir = std::env::temp_dir().join(format!("worldbridge-crisis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.tsv");
    std::fs::write(&bad, "crisis\tdirect\tok\nmaybe\tdirect\thm\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["crisis-eval"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.tsv:2") && err.contains("maybe"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
