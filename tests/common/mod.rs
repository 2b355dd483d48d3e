#![allow(dead_code)]
pub mod clients;
pub mod cluster;
pub mod e2e;
pub mod hub;
pub mod node_suite;
pub mod pg;
pub mod proxy;
pub mod receiver;
pub mod webhooks;
