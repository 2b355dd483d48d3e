#![allow(dead_code)]
pub mod hub;
pub mod pg;
