//! The tools shipped in the `walship` binary, built on the library's public API only: the
//! benchmark behind `walship bench` (`bench/`) and the whole-system demo behind `walship demo`
//! (`demo/`, which starts this same binary as its child processes).

pub mod bench;
pub mod demo;
