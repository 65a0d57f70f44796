//! tracing with tracing-appender's non-blocking file writer (its worker thread and file), and a
//! rayon pool: library threads and descriptors that end with their guard, or live on harmlessly.

mod common;

use rayon::prelude::*;

#[reapkit::test]
fn logs_through_a_non_blocking_writer() {
    let dir = std::env::temp_dir().join(format!("corpus-logs-{}", std::process::id()));
    let appender = tracing_appender::rolling::never(&dir, "test.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
    tracing::subscriber::with_default(subscriber, || tracing::info!("logged"));
    drop(guard); // flushes and ends the worker, which closes the file
    let _ = std::fs::remove_dir_all(dir);
}

#[reapkit::test]
fn sums_in_parallel_on_the_global_pool() {
    let sum: u64 = (1..=10_000u64).into_par_iter().sum();
    assert_eq!(sum, 50_005_000);
}

#[reapkit::test]
fn a_pool_of_its_own_ends_with_it() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool");
    assert_eq!(pool.install(|| (0..100).into_par_iter().count()), 100);
}

#[reapkit::test]
fn leaks_on_purpose_a_pipe_it_forgets() {
    if common::leak().is_some() {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        std::mem::forget((reader, writer));
    }
}
