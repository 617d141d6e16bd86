//! muster-benches (filled by later work).
