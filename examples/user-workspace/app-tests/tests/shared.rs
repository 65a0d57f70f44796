//! Twenty tests that share one server and one container per run: the first test to ask starts
//! each, the others attach, and both are gone once the run (nextest, or `cargo test`) is over.

use std::io::Write;

use reapkit::{Container, Listen, Ready, Shared, SharedFixture};

/// A web server on a port of its choosing: `port()` says which.
fn web_server() -> Shared {
    Shared::command("web", ["python3", "-m", "http.server", "0", "--bind", "127.0.0.1"]).listen(Listen::Tcp(0))
}

fn database() -> Shared {
    let builder = Container::builder("reapkit-busybox:latest")
        .cmd(["sh", "-c", "trap 'exit 0' TERM; echo ready; sleep 3600 & wait"])
        .network_mode("none")
        .wait_for(Ready::LogLine("ready".into()));
    Shared::container("db", builder)
}

/// What each test saw, for reapkit's own suite (`APP_TESTS_SHARED_OUT`): one line per test.
fn note(test: &str, web: &SharedFixture, db: &SharedFixture) {
    let Ok(path) = std::env::var("APP_TESTS_SHARED_OUT") else { return };
    let line = format!(
        "{test} {} {} {} {} {} {}\n",
        web.info().keeper.pid,
        web.pid().unwrap_or(0),
        web.port().unwrap_or(0),
        db.info().keeper.pid,
        db.container_id().unwrap_or("-"),
        web.info().run_id,
    );
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path).expect("the notes file");
    file.write_all(line.as_bytes()).expect("a note");
}

fn uses_both(test: &str) -> Result<(), reapkit::Error> {
    let (web, db) = (web_server().attach()?, database().attach()?);
    let port = web.port().expect("the server listens");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the shared server answers");
    note(test, &web, &db);
    // reapkit's suite SIGKILLs one test process mid-run (`APP_TESTS_KILL=<test>`), or holds one
    // until the run is killed under it (`APP_TESTS_HOLD=<test>`).
    if std::env::var("APP_TESTS_KILL").is_ok_and(|t| t == test) {
        sigkill_self();
    }
    if std::env::var("APP_TESTS_HOLD").is_ok_and(|t| t == test) {
        assert!(web.wait_ended(std::time::Duration::from_secs(60)), "the run was not ended under it");
    }
    Ok(())
}

fn sigkill_self() {
    let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

macro_rules! tests_sharing_the_fixtures {
    ($($name:ident)*) => {$(
        #[reapkit::test]
        fn $name() -> Result<(), reapkit::Error> {
            uses_both(stringify!($name))
        }
    )*};
}

tests_sharing_the_fixtures!(t01 t02 t03 t04 t05 t06 t07 t08 t09 t10 t11 t12 t13 t14 t15 t16 t17 t18 t19 t20);
