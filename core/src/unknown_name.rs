//! The error for a name that is not one of a list (a method, a preset, a device, an optimiser…):
//! what was being named, the name given and the fix. One shape for every parser of the vocabulary,
//! so each message reads `unknown <what> "<given>": <fix>`.

/// A name that is not one of the values `what` can take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: {fix}")]
pub struct UnknownName {
    /// What the name names ("method", "preset", "balance formula").
    pub what: &'static str,
    /// The name as given (or as normalised by the parser).
    pub given: String,
    /// What to use instead, e.g. "use guarded or raw".
    pub fix: String,
}

impl UnknownName {
    pub fn new(what: &'static str, given: &str, fix: impl Into<String>) -> Self {
        Self {
            what,
            given: given.to_string(),
            fix: fix.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_names_the_kind_the_value_and_the_fix() {
        let e = super::UnknownName::new("optimizer", "lbfgs", "use sgd, adam or adamw");
        assert_eq!(
            e.to_string(),
            "unknown optimizer \"lbfgs\": use sgd, adam or adamw"
        );
    }
}
