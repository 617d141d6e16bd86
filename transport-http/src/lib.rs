//! muster-transport-http (filled by later work).
