//! The evidence of ownership, above the OS: who a process is across namespaces and reboots
//! (`identity`), the names users script against — markers, ids, labels — (`ownership`), the
//! ledger of what guards hold, the run logs, and the escaping of everything printed from it.
//! What every layer above reads and writes to prove a resource ours; nothing here acts on one.

pub mod escape;
pub(crate) mod fixture_files;
pub mod identity;
pub mod ledger;
pub(crate) mod markers;
pub mod ownership;
pub mod run_stats;
