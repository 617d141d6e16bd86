//! muster-harness (filled by later work).
