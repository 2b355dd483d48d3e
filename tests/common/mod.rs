#![allow(dead_code)]
pub mod clients;
pub mod e2e;
pub mod hub;
pub mod pg;
pub mod proxy;
pub mod receiver;
