//! Support for the integration tests (being written).
