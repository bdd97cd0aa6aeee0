//! Integration tests: the real `runner` binary running real guest components built from
//! source (`test-guests`), stopped by real signals.

mod invalid;
mod outcomes;
mod pid1;
mod resume;
mod stop;
mod util;
