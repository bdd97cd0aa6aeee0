//! Integration tests: the real `runner` binary running real guest components built from
//! source (`test-guests`), stopped by real signals.

mod adversarial;
mod bench;
mod cache;
mod chaos;
mod command;
mod container;
mod core_modules;
mod crash;
mod deploy;
mod durable;
mod invalid;
mod js;
mod logs;
mod memory;
mod metrics;
mod net;
mod outcomes;
mod ownership;
mod pid1;
mod redis;
mod resume;
mod s3;
mod sdk;
mod stop;
mod util;
mod worker;
