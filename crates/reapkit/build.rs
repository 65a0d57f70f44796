//! `REAPKIT_PORTABLE_BACKEND=1` builds the portable POSIX backend (what macOS and the BSDs get)
//! on Linux: how reapkit's own suite runs the code those systems compile. An environment
//! switch, not a feature, so that no user is offered it (`cargo add` lists every feature): it
//! gives up pidfds, cgroups, keepers and `/proc`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(reapkit_portable_backend)");
    println!("cargo::rerun-if-env-changed=REAPKIT_PORTABLE_BACKEND");
    if std::env::var_os("REAPKIT_PORTABLE_BACKEND").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=reapkit_portable_backend");
    }
}
