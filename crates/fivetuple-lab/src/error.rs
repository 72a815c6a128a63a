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
    #[error("namespace: {context}")]
    Namespace {
        /// What was being done.
        context: String,
        /// The cause (an OS error, mostly), when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A service or the driver failed (not a call failing, which is data).
    #[error("{context}")]
    Run {
        /// What was being done.
        context: String,
        /// The cause, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Writing the chart failed.
    #[error("chart: {context}")]
    Chart {
        /// What was being done.
        context: String,
        /// The cause, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The run was asked to stop (Ctrl-C) before it finished.
    #[error("interrupted")]
    Interrupted,
}

/// The cause kept by [`LabError`]'s variants.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl LabError {
    /// The message with every cause, `"a: b: c"`, for passing across a
    /// thread as text.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// [`LabError::Namespace`] caused by `source`.
    pub fn namespace(context: impl Into<String>, source: impl Into<BoxError>) -> LabError {
        LabError::Namespace {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// [`LabError::Namespace`] with no underlying error.
    pub fn namespace_msg(context: impl Into<String>) -> LabError {
        LabError::Namespace {
            context: context.into(),
            source: None,
        }
    }

    /// [`LabError::Run`] caused by `source`.
    pub fn run(context: impl Into<String>, source: impl Into<BoxError>) -> LabError {
        LabError::Run {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// [`LabError::Run`] with no underlying error.
    pub fn run_msg(context: impl Into<String>) -> LabError {
        LabError::Run {
            context: context.into(),
            source: None,
        }
    }

    /// [`LabError::Chart`] with no underlying error (or one that is not `Send`).
    pub fn chart_msg(context: impl Into<String>) -> LabError {
        LabError::Chart {
            context: context.into(),
            source: None,
        }
    }

    /// [`LabError::Chart`] caused by `source`.
    pub fn chart(context: impl Into<String>, source: impl Into<BoxError>) -> LabError {
        LabError::Chart {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// True for errors caused by the user's input or environment rather than
    /// a bug or a run failure: bad arguments and missing namespace support.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LabError::BadArgument { .. } | LabError::NoNamespaces(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_error_is_the_source() {
        let os = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = LabError::namespace("unshare(CLONE_NEWNET)", os);
        assert_eq!(e.to_string(), "namespace: unshare(CLONE_NEWNET)");
        let source = std::error::Error::source(&e).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io::Error itself");
        assert_eq!(io.raw_os_error(), Some(libc::EPERM));
        assert!(
            e.chain().starts_with("namespace: unshare(CLONE_NEWNET): "),
            "{}",
            e.chain()
        );
        assert!(std::error::Error::source(&LabError::run_msg("x")).is_none());
    }
}
