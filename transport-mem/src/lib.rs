//! muster-transport-mem (filled by later work).
