//! Traffic tools for tests and benchmarks, not the switch: the generator
//! ([`gen`], `dataplane gen`) and the bare XDP redirect and guest echo
//! ([`forward`], `dataplane forward`, `dataplane echo`).

pub mod forward;
pub mod gen;
