//! When two agent ids look the same to a person: the comparison key the gateway registers
//! ids under, so `Timmy`, `timmy `, `timmy\u{200b}` and `tımmy` (dotless i) are all
//! `timmy`.
//!
//! The key is, in order: trim, drop default-ignorable characters (zero-width spaces and
//! joiners, soft hyphens, bidi controls, variation selectors), Unicode NFKC, full case
//! folding, then the confusable skeleton of Unicode TR 39 (`unicode-security`, the tables
//! rustc itself uses for its confusable-identifier lint), folded once more because some
//! skeleton prototypes are capitals. Two ids with the same key are look-alikes. The key
//! is for comparing only; ids are shown and routed exactly as registered.

use unicode_normalization::UnicodeNormalization;
use unicode_security::confusable_detection::skeleton;

/// The comparison key of an agent id.
pub fn key(id: &str) -> String {
    let visible: String = id.trim().chars().filter(|&c| !ignorable(c)).collect();
    let nfkc: String = visible.nfkc().collect();
    let folded = caseless::default_case_fold_str(&nfkc);
    let skel: String = skeleton(&folded).collect();
    caseless::default_case_fold_str(&skel)
}

/// True when `a` and `b` are different strings that a person could not tell apart.
pub fn confusable(a: &str, b: &str) -> bool {
    a != b && key(a) == key(b)
}

/// Unicode's Default_Ignorable_Code_Point characters: invisible in an id.
fn ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_of_an_id_share_its_key() {
        for look_alike in [
            "timmy",
            "Timmy",
            "TIMMY",
            "timmy ",
            " timmy",
            "timmy\u{200b}",
            "ti\u{200d}mmy",
            "\u{feff}timmy",
            "tımmy",         // dotless i
            "tіmmy",         // Cyrillic і
            "ｔｉｍｍｙ",    // fullwidth
            "timmу",         // Cyrillic у
            "tim\u{00ad}my", // soft hyphen
            "𝐭𝐢𝐦𝐦𝐲",         // mathematical bold
        ] {
            assert_eq!(key(look_alike), key("timmy"), "{look_alike:?}");
        }
    }

    #[test]
    fn different_ids_keep_different_keys() {
        for other in ["tommy", "timmy2", "jimmy", "tim", "alice", "timmy_bot"] {
            assert_ne!(key(other), key("timmy"), "{other:?}");
        }
        assert!(confusable("Timmy", "timmy"));
        assert!(
            !confusable("timmy", "timmy"),
            "the same string is not a look-alike"
        );
        assert!(!confusable("alice", "bob"));
    }

    #[test]
    fn any_input_has_a_key() {
        for s in ["", " ", "\u{200b}", "🙂", "a\u{0301}", "ß", "ﬃ"] {
            let _ = key(s);
        }
        assert_eq!(key("STRASSE"), key("straße"), "full case folding");
    }
}
