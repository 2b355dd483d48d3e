#![allow(dead_code)]
pub mod e2e;
pub mod hub;
pub mod pg;
pub mod receiver;
