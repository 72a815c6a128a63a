//! The lab's error type.

/// What can go wrong while building or running the reproduction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A setting given by the user is out of range or unknown; the message
    /// names the flag and the value.
    #[error("{flag} {value:?}: {reason}")]
    BadArgument {
        /// The flag, e.g. `--rate`.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Neither a network namespace nor a user namespace may be created; the
    /// message names what is missing.
    #[error("cannot build the box: {0}")]
    NoNamespaces(String),
    /// Setting up or tearing down a namespace failed.
    #[error("namespace: {0}")]
    Namespace(String),
    /// A service or the driver failed (not a call failing, which is data).
    #[error("{0}")]
    Run(String),
    /// Writing the chart failed.
    #[error("chart: {0}")]
    Chart(String),
    /// The run was asked to stop (Ctrl-C) before it finished.
    #[error("interrupted")]
    Interrupted,
}

impl LabError {
    /// True for errors caused by the user's input or environment rather than
    /// a bug or a run failure: bad arguments and missing namespace support.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LabError::BadArgument { .. } | LabError::NoNamespaces(_)
        )
    }
}
