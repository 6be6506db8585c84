//! Helpers shared by every integration test file, one module per concept: running the real
//! `walship` binary ([`run`]), scratch data directories and reading records back ([`data`]),
//! small file systems mounted for one test ([`mount`]), the records the recycling tests append and read back ([`recycled`]), a TCP proxy that stands between two
//! processes ([`proxy`]), certificates made for TLS tests ([`certs`]), and a local S3-protocol server ([`s3`]). Each test file includes this folder with `mod common;` and uses what
//! it needs; the rest is unused there, hence the allowances.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod data;
pub mod mount;
pub mod proxy;
pub mod recycled;
pub mod run;
pub mod s3;

pub use data::*;
pub use run::*;
