//! Timeline charts of a [`crate::Report`] as SVG.
