//! See docs/ARCHITECTURE.md.
#![forbid(unsafe_code)]
