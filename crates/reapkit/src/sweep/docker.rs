//! The Docker side of the sweep: containers, networks and volumes labelled `reapkit.*`.
//!
//! Labels are the proof; a ledger record only adds the engine address to look at. Every call
//! goes through reapkit's engine thread with a time limit, so an engine that hangs makes the
//! sweep unchecked (exit 2), never stuck.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::Docker;

use crate::container::{self, LABEL_CREATED, LABEL_GUARD, LABEL_OWNER, LABEL_OWNER_HOST, LABEL_RUN_ID, LABEL_TEST};
use crate::docker_engine::{Engine, DEFAULT_DOCKER_HOST};
use crate::error::Result;
use crate::ledger::{Record, Resource};

use super::report::{Action, FoundBy, Health, Leak, LeakKind};
use super::{age_of, processes, DockerCheck, Findings, Scope, Sweep, Target};

/// One engine call's worth of time (list, or remove everything found).
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

/// Lists the labelled objects of every engine to check and adds those in scope to `f`.
pub(super) fn find(sweep: &Sweep, records: Vec<(PathBuf, Record)>, f: &mut Findings) {
    let mut hosts: Vec<String> = match &sweep.docker {
        DockerCheck::Off => {
            if !records.is_empty() {
                f.notes
                    .push(format!("Docker not checked (--no-docker): {} container records left alone", records.len()));
            }
            return;
        }
        DockerCheck::Auto => configured_host().into_iter().collect(),
        DockerCheck::Host(h) => vec![h.clone()],
        DockerCheck::RecordsOnly => Vec::new(),
    };
    for (_, r) in &records {
        if let Resource::Container { docker_host, .. } = &r.resource {
            if !hosts.contains(docker_host) {
                hosts.push(docker_host.clone());
            }
        }
    }
    let mut records = records;
    for host in hosts {
        let listed = Engine::get(Some(&host)).and_then(|e| e.run(CALL_LIMIT, "listing reapkit objects", list));
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                f.unchecked.push(format!("{e}. Or pass --no-docker to skip Docker"));
                continue;
            }
        };
        let mut ids = Vec::new();
        for (kind, id, what, labels) in listed {
            ids.push(id.clone());
            let label = |k: &str| labels.get(k).cloned();
            let same_host = label(LABEL_OWNER_HOST).as_deref() == Some(f.host.as_str());
            let in_scope = (same_host || !matches!(sweep.scope, Scope::DeadOwners { .. }))
                && sweep.scope.includes(
                    label(LABEL_RUN_ID).as_deref(),
                    label(LABEL_OWNER).as_deref(),
                    label(LABEL_TEST).as_deref(),
                );
            if !in_scope {
                continue;
            }
            let record = take_record(&mut records, &id);
            let owner_dead = label(LABEL_OWNER).as_deref().and_then(processes::owner_is_dead);
            f.leaks.push(Leak {
                kind,
                test: label(LABEL_TEST),
                run_id: label(LABEL_RUN_ID),
                age_s: label(LABEL_CREATED).as_deref().and_then(age_of),
                action: Action::WouldReap,
                found_by: if record.is_some() { FoundBy::Ledger } else { FoundBy::Label },
                health: if owner_dead == Some(true) { Health::Orphaned } else { Health::Running },
                pid: None,
                id: Some(id.clone()),
                owner: label(LABEL_OWNER),
                guard: label(LABEL_GUARD),
                command: what,
                cwd: None,
                rss_bytes: None,
                fds: None,
                threads: None,
                exe: None,
                detail: Some(format!("on {host}")),
            });
            f.targets.push(Target::Docker(Object { host: host.clone(), kind, id, record }));
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
