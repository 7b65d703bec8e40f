//! Traffic tools for tests and benchmarks, not the switch: the generator
//! ([`gen`], `dataplane gen`) and the bare XDP redirect and guest echo
//! ([`forward`], `dataplane forward`, `dataplane echo`), and the echo on a
//! TAP ([`tap_echo`], `dataplane echo --tap`).

pub mod forward;
pub mod gen;
pub mod tap_echo;
