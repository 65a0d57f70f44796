//! The Docker side of the sweep: containers, networks and volumes labelled `reapkit.*`.
//!
//! Labels are the proof; a ledger record only adds the engine address to look at. Every call
//! goes through reapkit's engine thread with a time limit, so an engine that hangs makes the
//! sweep unchecked (exit 2), never stuck.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::Docker;

use crate::evidence::ownership::{
    LABEL_CREATED, LABEL_GUARD, LABEL_OWNER, LABEL_OWNER_HOST, LABEL_RUN_ID, LABEL_SUPERVISOR, LABEL_TEST,
};
use crate::guard::container;
use crate::guard::docker_engine::{Engine, DEFAULT_DOCKER_HOST};
use crate::error::Result;
use crate::evidence::escape::evidence;
use crate::evidence::identity::OwnerId;
use crate::evidence::ledger::{Record, Resource};
use crate::evidence::ownership;

use super::report::{Action, FoundBy, Leak, LeakKind};
use super::{age_of, Claim, DockerCheck, Findings, Sweep, Target, Verdict};

/// One engine call's worth of time (remove everything found).
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// A labelled Docker object the sweep may remove.
#[derive(Debug)]
pub(super) struct Object {
    host: String,
    kind: LeakKind,
    id: String,
    pub(super) record: Option<super::Recorded>,
}

/// What a label listing returns: kind, id, description, labels.
type Listed = (LeakKind, String, Option<String>, HashMap<String, String>);

/// Lists the labelled objects of every engine to check — all at once, under one deadline — and
/// adds those in scope to `f`.
pub(super) fn find(sweep: &Sweep, records: Vec<(PathBuf, Record)>, f: &mut Findings) {
    let (mut hosts, records_too) = match &sweep.docker {
        DockerCheck::Off => (Vec::new(), false),
        DockerCheck::Auto => (configured_host().into_iter().collect(), true),
        DockerCheck::Host(h) => (vec![h.clone()], false),
        DockerCheck::HostAndRecords(h) => (vec![h.clone()], true),
        DockerCheck::RecordsOnly => (Vec::new(), true),
    };
    let mut left_alone = 0;
    for (_, r) in &records {
        if let Resource::Container { docker_host, .. } = &r.resource {
            if hosts.contains(docker_host) {
                continue;
            }
            if records_too {
                hosts.push(docker_host.clone());
            } else {
                left_alone += 1;
            }
        }
    }
    if left_alone > 0 {
        let why = if sweep.docker == DockerCheck::Off { "--no-docker" } else { "--docker-host names another engine" };
        f.notes.push(format!("Docker not checked ({why}): {left_alone} container records left alone"));
    }
    // An engine that did not answer lately is not waited for again on every run; the one
    // `--docker-host` names is always asked.
    let mut silent = SilentEngines::read();
    let asked_for = match &sweep.docker {
        DockerCheck::Host(h) | DockerCheck::HostAndRecords(h) => Some(h.clone()),
        _ => None,
    };
    hosts.retain(|host| match silent.since(host).filter(|_| asked_for.as_ref() != Some(host)) {
        Some(at) => {
            f.unchecked.push(format!(
                "the Docker engine {host} did not answer at {at}: not asked again for {SILENT_FOR:?} (ask it now \
                 with --docker-host {host}, or skip Docker with --no-docker)",
                at = humantime::format_rfc3339_seconds(at)
            ));
            false
        }
        None => true,
    });
    let mut records = records;
    for (host, answer) in list_all(hosts, sweep.docker_timeout) {
        let listed = match answer {
            Answer::Listed(listed) => {
                silent.answered(&host);
                listed
            }
            Answer::Silent(e) => {
                silent.silent(&host);
                f.unchecked.push(format!("{e}. Or pass --no-docker to skip Docker"));
                continue;
            }
            Answer::Failed(e) => {
                f.unchecked.push(format!("{e}. Or pass --no-docker to skip Docker"));
                continue;
            }
        };
        let mut ids = Vec::new();
        for (kind, id, what, labels) in listed {
            ids.push(id.clone());
            push_object(f, &mut records, &host, kind, id, what, &labels);
        }
        // A record of a container this engine no longer has is stale.
        records.retain(|(path, r)| match &r.resource {
            Resource::Container { id, docker_host, .. } if *docker_host == host && !ids.contains(id) => {
                f.stale.push(path.clone());
                false
            }
            _ => true,
        });
    }
}

/// Judges one labelled object by what its labels claim, and adds it to `f` if it is in scope.
fn push_object(
    f: &mut Findings,
    records: &mut Vec<(PathBuf, Record)>,
    host: &str,
    kind: LeakKind,
    id: String,
    what: Option<String>,
    labels: &HashMap<String, String>,
) {
    let label = |k: &str| labels.get(k).map(String::as_str);
    let labels_ok = (|| {
        let owner =
            label(LABEL_OWNER).map(str::parse::<OwnerId>).transpose().map_err(|e| format!("{LABEL_OWNER}: {e}"))?;
        let supervisor = label(LABEL_SUPERVISOR)
            .map(str::parse::<OwnerId>)
            .transpose()
            .map_err(|e| format!("{LABEL_SUPERVISOR}: {e}"))?;
        for key in [LABEL_RUN_ID, LABEL_GUARD] {
            if let Some(v) = label(key).filter(|v| !ownership::valid_id(v)) {
                return Err(format!("{key}={:?} is not a reapkit id", evidence(v)));
            }
        }
        for key in [LABEL_TEST, LABEL_OWNER_HOST] {
            if let Some(v) = label(key).filter(|v| !ownership::valid_test_name(v)) {
                return Err(format!("{key}={:?} is malformed", evidence(v)));
            }
        }
        Ok((owner, supervisor))
    })();
    let (owner, supervisor) = match labels_ok {
        Ok(parsed) => parsed,
        Err(why) => {
            if f.judge.scope.reports_malformed(label(LABEL_RUN_ID)) {
                f.unchecked.push(format!(
                    "{kind:?} {id} on {host} carries malformed reapkit labels ({why}): reapkit never wrote them; \
                     not touched"
                ));
            }
            return;
        }
    };
    let claim = Claim {
        run_id: label(LABEL_RUN_ID),
        owner: owner.as_ref(),
        test: label(LABEL_TEST),
        host: label(LABEL_OWNER_HOST),
        supervisor: supervisor.as_ref(),
    };
    if f.elsewhere(label(LABEL_GUARD), owner.as_ref(), &claim) {
        return;
    }
    let owner_health = match f.judge.verdict(&claim) {
        Verdict::Take(health) => health,
        Verdict::Leave => return,
        Verdict::Unchecked(why) => {
            f.unchecked
                .push(format!("{kind:?} {id} on {host} of test {}: {why}; not touched", claim.test.unwrap_or("?")));
            return;
        }
        Verdict::Collision => {
            f.notes.push(format!(
                "{kind:?} {id} on {host} carries this run's id but was not created under this supervisor: \
                 another job's (a run-id collision); not touched"
            ));
            return;
        }
    };
    let record = take_record(records, &id);
    f.leaks.push(Leak {
        kind,
        test: claim.test.map(str::to_owned),
        run_id: claim.run_id.map(str::to_owned),
        age_s: label(LABEL_CREATED).and_then(age_of),
        action: Action::WouldReap,
        found_by: if record.is_some() { FoundBy::Ledger } else { FoundBy::Label },
        health: owner_health.health(),
        pid: None,
        id: Some(id.clone()),
        owner: owner.as_ref().map(OwnerId::to_string),
        guard: label(LABEL_GUARD).map(str::to_owned),
        command: what,
        cwd: None,
        rss_bytes: None,
        fds: None,
        threads: None,
        exe: None,
        detail: Some(format!("on {host}")),
        listening: Vec::new(),
    });
    f.targets.push(Target::Docker(Object { host: host.to_owned(), kind, id, record }));
}

/// How long an engine that did not answer is not asked again.
const SILENT_FOR: Duration = Duration::from_secs(3600);

/// The engines that did not answer a sweep lately, in this user's state
/// (`$XDG_STATE_HOME/reapkit/silent-engines`, one `<unix seconds> <host>` per line): a sweep
/// skips them for [`SILENT_FOR`] instead of waiting out its deadline on every run. Hostile input
/// like every file reapkit reads: bounded, and a line that does not parse is dropped.
struct SilentEngines {
    entries: Vec<(u64, String)>,
    changed: bool,
}

impl SilentEngines {
    fn path() -> PathBuf {
        crate::evidence::ledger::index::path().with_file_name("silent-engines")
    }

    fn read() -> SilentEngines {
        let text = crate::os::safe_fs::read_bounded(&Self::path(), 64 << 10).unwrap_or_default();
        let entries = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_once(' ').and_then(|(t, h)| Some((t.parse().ok()?, h.to_owned()))))
            .collect();
        SilentEngines { entries, changed: false }
    }

    /// When `host` last did not answer, if within [`SILENT_FOR`].
    fn since(&self, host: &str) -> Option<std::time::SystemTime> {
        let (at, _) = self.entries.iter().find(|(_, h)| h == host)?;
        let at = std::time::UNIX_EPOCH + Duration::from_secs(*at);
        (at.elapsed().unwrap_or_default() < SILENT_FOR).then_some(at)
    }

    fn silent(&mut self, host: &str) {
        self.answered(host);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.entries.push((now.as_secs(), host.to_owned()));
        self.changed = true;
    }

    fn answered(&mut self, host: &str) {
        let before = self.entries.len();
        self.entries.retain(|(_, h)| h != host);
        self.changed |= self.entries.len() != before;
    }
}

impl Drop for SilentEngines {
    fn drop(&mut self) {
        if self.changed {
            let body: String = self.entries.iter().map(|(t, h)| format!("{t} {h}\n")).collect();
            let _ = std::fs::create_dir_all(Self::path().parent().unwrap_or(Path::new("/")));
            let _ = crate::os::safe_fs::write_atomic(&Self::path(), body.as_bytes());
        }
    }
}

/// What an engine said to a listing.
enum Answer {
    Listed(Vec<Listed>),
    /// It answered with an error (refused, not an engine): quick, so asked again next time.
    Failed(crate::error::Error),
    /// It did not answer within the deadline.
    Silent(crate::error::Error),
}

/// Lists every engine in `hosts` concurrently, each on a thread of its own, and collects what
/// answered within `timeout`; an engine that did not is an error of its own, not a wait.
fn list_all(hosts: Vec<String>, timeout: Duration) -> Vec<(String, Answer)> {
    let deadline = std::time::Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel();
    for host in &hosts {
        let (sender, name) = (tx.clone(), host.clone());
        let started = std::thread::Builder::new().name("reapkit-sweep-docker".into()).spawn(move || {
            let listed =
                Engine::get_within(Some(&name), timeout).and_then(|e| e.run(timeout, "listing reapkit objects", list));
            let _ = sender.send((name, listed.map_or_else(Answer::Failed, Answer::Listed)));
        });
        if let Err(e) = started {
            let reason = format!("could not start a thread to ask it: {e}");
            let _ = tx.send((host.clone(), Answer::Failed(crate::error::Error::Docker { context: "listing".into(), reason })));
        }
    }
    drop(tx);
    let mut answers: Vec<(String, Answer)> = Vec::new();
    while answers.len() < hosts.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(answer) => answers.push(answer),
            Err(_) => break,
        }
    }
    for host in hosts {
        if !answers.iter().any(|(h, _)| *h == host) {
            let reason = format!("no answer within {timeout:?} (every engine was asked at once)");
            answers.push((host.clone(), Answer::Silent(crate::error::Error::DockerUnreachable { host, reason })));
        }
    }
    answers
}

/// Removes every Docker leak: containers first (with their anonymous volumes), then
/// networks, then volumes, each engine in one call.
pub(super) fn remove(leaks: &mut [Leak], targets: &[Target], unchecked: &mut Vec<String>) {
    let mut by_host: HashMap<&str, Vec<(usize, &Object)>> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let Target::Docker(o) = t {
            by_host.entry(o.host.as_str()).or_default().push((i, o));
        }
    }
    for (host, objects) in by_host {
        let work: Vec<(LeakKind, String)> = objects.iter().map(|(_, o)| (o.kind, o.id.clone())).collect();
        let results = Engine::get(Some(host))
            .and_then(|e| e.run(CALL_LIMIT, "removing leaked objects", move |d| remove_all(d, work)));
        match results {
            Ok(results) => {
                for ((i, _), result) in objects.iter().zip(results) {
                    match result {
                        Ok(()) => leaks[*i].action = Action::Removed,
                        Err(reason) => {
                            leaks[*i].action = Action::Failed;
                            leaks[*i].detail = Some(reason);
                        }
                    }
                }
            }
            Err(e) => unchecked.push(format!("{e}. The Docker leaks found on it are still there")),
        }
    }
}

/// `DOCKER_HOST`, else the local socket if it exists; `None` means no engine is configured.
fn configured_host() -> Option<String> {
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return Some(host);
    }
    let socket = DEFAULT_DOCKER_HOST.trim_start_matches("unix://");
    std::path::Path::new(socket).exists().then(|| DEFAULT_DOCKER_HOST.to_owned())
}

fn take_record(records: &mut Vec<(PathBuf, Record)>, id: &str) -> Option<super::Recorded> {
    let at =
        records.iter().position(|(_, r)| matches!(&r.resource, Resource::Container { id: rid, .. } if rid == id))?;
    Some(records.remove(at))
}

async fn list(docker: Docker) -> Result<Vec<Listed>> {
    let filters = HashMap::from([("label", vec![LABEL_RUN_ID])]);
    let err = |what: &str, e: bollard::errors::Error| container::docker_error(what, e);
    let mut out = Vec::new();
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    for c in docker.list_containers(Some(options)).await.map_err(|e| err("listing containers", e))? {
        let what = format!("{} {}", c.image.unwrap_or_default(), c.command.unwrap_or_default());
        out.push((LeakKind::Container, c.id.unwrap_or_default(), Some(what), c.labels.unwrap_or_default()));
    }
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    for n in docker.list_networks(Some(options)).await.map_err(|e| err("listing networks", e))? {
        out.push((LeakKind::Network, n.name.unwrap_or_default(), None, n.labels.unwrap_or_default()));
    }
    let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let volumes = docker.list_volumes(Some(options)).await.map_err(|e| err("listing volumes", e))?;
    for v in volumes.volumes.unwrap_or_default() {
        out.push((LeakKind::Volume, v.name, None, v.labels));
    }
    Ok(out)
}

async fn remove_all(docker: Docker, objects: Vec<(LeakKind, String)>) -> Result<Vec<std::result::Result<(), String>>> {
    let mut results = Vec::with_capacity(objects.len());
    // Containers first: a network or volume in use cannot go before its container.
    let order = [LeakKind::Container, LeakKind::Network, LeakKind::Volume];
    let mut indexed: Vec<(usize, &(LeakKind, String))> = objects.iter().enumerate().collect();
    indexed.sort_by_key(|(_, (k, _))| order.iter().position(|o| o == k));
    let mut by_index = vec![None; objects.len()];
    let containers: Vec<_> = indexed.iter().filter(|(_, (k, _))| *k == LeakKind::Container).collect();
    let removed = futures_util::future::join_all(
        containers.iter().map(|(_, (_, id))| container::Removal::forced(id.clone()).run(docker.clone())),
    )
    .await;
    for ((i, _), r) in containers.iter().zip(removed) {
        by_index[*i] = Some(r.map(drop).map_err(|e| e.to_string()));
    }
    for (i, (kind, id)) in indexed.iter().filter(|(_, (k, _))| *k != LeakKind::Container) {
        let result = match kind {
            LeakKind::Network => docker.remove_network(id).await,
            _ => docker.remove_volume(id, Some(RemoveVolumeOptionsBuilder::new().force(true).build())).await,
        };
        by_index[*i] = Some(match result {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
    }
    results.extend(by_index.into_iter().map(|r| r.unwrap_or(Ok(()))));
    Ok(results)
}
