//! The roles a re-executed test binary takes, chosen before `main` by a constructor: the
//! library alone gives every test binary its watchdog and its keepers, with nothing to install.
//!
//! - `REAPKIT_WATCHDOG_OWNER` set: the process is a watchdog ([`crate::supervisor::watchdog`]).
//! - `REAPKIT_KEEPER` set: the process is a keeper ([`crate::containment::keeper`]).
//! - `REAPKIT_SHARED_SPEC` set: the process keeps a shared fixture ([`crate::shared`]).
//! - neither: an ordinary process, where the watchdog listens for the first guard of each
//!   ledger directory ([`crate::registry::listen`]), and the children and descriptors it starts
//!   with are noted (`scope::unpinned`: what a `cargo test` run leaked, no test can be blamed for).
//!
//! Each role exits without returning to `main`; a re-executed binary in which this did not
//! run (no constructor support) gets an argument it does not know and exits.

use crate::containment::keeper;
use crate::evidence::ownership::{ENV_KEEPER, ENV_WATCHDOG_OWNER};
use crate::shared::ENV_SHARED_SPEC;

#[ctor::ctor(unsafe)]
fn entry() {
    if let Some(owner) = std::env::var_os(ENV_WATCHDOG_OWNER) {
        std::process::exit(crate::supervisor::watchdog::watch(&owner.to_string_lossy()));
    }
    if let Some(owner) = std::env::var_os(ENV_KEEPER) {
        keeper::run(&owner.to_string_lossy());
    }
    // A fixture keeper's guard gets a watchdog too, like any test process's first guard.
    crate::registry::listen(crate::supervisor::watchdog::ensure);
    if let Some(spec) = std::env::var_os(ENV_SHARED_SPEC) {
        crate::shared::keeper_main(spec);
    }
    // What the process has before any test runs: what a shared test scope compares against.
    crate::scope::unpinned::take_baseline();
}
