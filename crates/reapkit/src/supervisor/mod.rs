//! What outlives a test process, at the top: the watchdog (the test binary re-executed, ending
//! what a killed test left), `reapkit run`/`wrap` (`supervise`), and the constructor that turns a
//! re-executed test binary into a watchdog, a keeper or a fixture keeper (`reexec`).

mod reexec;
pub mod supervise;
pub mod watchdog;
