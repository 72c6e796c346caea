//! Test bed for integration tests: hosts as network namespaces. See docs/ARCHITECTURE.md.
