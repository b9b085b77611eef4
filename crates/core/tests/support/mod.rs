//! Helpers shared by the core's integration tests. Each test binary includes this with
//! `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod moto;
