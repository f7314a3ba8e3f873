//! Which of the four modalities a PACS series holds, guessed from its SeriesDescription with the
//! names the upload already knows (`cggm_core::data::Modality::suffixes`) plus the words scanners
//! write for contrast ("T1 post", "T1 Gd", "T1+C"). Only a default: the PACS page shows the guess
//! and the user corrects it.

use cggm_core::data::Modality;

/// Words that mark a T1 series as contrast-enhanced.
const CONTRAST_WORDS: [&str; 8] = ["post", "gd", "gad", "gado", "contrast", "ce", "c", "pc"];

/// `"AX T2 FLAIR"` -> flair, `"T1 post"` / `"T1CE"` / `"T1 Gd"` -> t1ce, `"t1_mprage"` -> t1.
pub fn guess_modality(description: &str) -> Option<&'static str> {
    let lower = description.to_ascii_lowercase();
    // "T1+C" and "T1 +C": the plus is the contrast mark.
    let lower = lower.replace('+', " post ");
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let joined: String = words.concat();
    if let Some(m) = Modality::parse(&joined) {
        return Some(m.name());
    }
    let has = |m: Modality| words.iter().any(|w| Modality::parse(w) == Some(m));
    if words.contains(&"flair") || has(Modality::Flair) {
        return Some(Modality::Flair.name());
    }
    if has(Modality::T1ce)
        || (has(Modality::T1) && words.iter().any(|w| CONTRAST_WORDS.contains(w)))
    {
        return Some(Modality::T1ce.name());
    }
    if has(Modality::T1) || words.iter().any(|w| w.starts_with("t1")) {
        return Some(Modality::T1.name());
    }
    if has(Modality::T2) || words.iter().any(|w| w.starts_with("t2")) {
        return Some(Modality::T2.name());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_descriptions_map_to_the_four_modalities() {
        for (description, want) in [
            ("FLAIR", Some("flair")),
            ("AX T2 FLAIR", Some("flair")),
            ("t2_tirm_tra_dark-fluid FLAIR", Some("flair")),
            ("T1", Some("t1")),
            ("t1_mprage_sag", Some("t1")),
            ("T1 post", Some("t1ce")),
            ("T1CE", Some("t1ce")),
            ("T1C", Some("t1ce")),
            ("T1 Gd", Some("t1ce")),
            ("AX T1 +C", Some("t1ce")),
            ("t1ce", Some("t1ce")),
            ("T2", Some("t2")),
            ("T2W_TSE", Some("t2")),
            ("t2", Some("t2")),
            ("DWI b1000", None),
            ("", None),
        ] {
            assert_eq!(guess_modality(description), want, "{description:?}");
        }
    }
}
