//! `fixture-server`: a small MCP stdio server that misbehaves on request.
//!
//! It speaks MCP over stdio: newline-delimited JSON-RPC 2.0, one object per
//! line on stdin/stdout. Logs go to stderr only. It answers `initialize`,
//! `ping`, `tools/list` and `tools/call`, and offers four tools:
//!
//! * `echo` (`text`: string): returns `text` unchanged.
//! * `server_info`: returns `{"pid", "fds", "children"}` as JSON text: its pid,
//!   how many entries `/proc/self/fd` lists (the directory handle used to
//!   list them included), and how many direct children it has.
//! * `fail`: fails the MCP way, with a result marked `isError`.
//! * `spawn_child`: starts one more `--sleep-forever` child in the server's
//!   process group and returns that child's pid.
//!
//! Without flags it is a well-behaved server that exits 0 as soon as stdin
//! reaches EOF. Each flag reproduces a real-world misbehaviour that the
//! guards in `reapkit` must survive. Flags combine freely.
//!
//! * `--ignore-eof`: keep running after stdin EOF, like a server whose timer
//!   or open socket keeps the event loop alive. Closing stdin is not enough.
//! * `--ignore-sigterm`: set SIGTERM to SIG_IGN at start, so only SIGKILL
//!   ends it. Children inherit SIG_IGN across exec and also get the flag.
//! * `--children N`: start N `--sleep-forever` children at start, in the same
//!   process group, never waited for. If the server dies they become orphans,
//!   like the helper processes of `npx` or a language runtime.
//! * `--escape`: start a grandchild that calls `setsid()` and is re-parented
//!   away from the server (a daemon). Killing the process group or walking
//!   the process tree will not find it. Only the environment it inherited
//!   unchanged can identify it.
//! * `--crash-at-start`: print a message to stderr and exit 3 before reading
//!   anything, like a server with a missing dependency. Any children from
//!   `--children`/`--escape` are started first and so are left behind.
//! * `--stderr-mb N`: write N MiB to stderr at start, before serving. If the
//!   client does not drain stderr, the pipe fills and the server blocks
//!   forever, like a chatty server with debug logging on.
//! * `--delay-ms N`: sleep N ms before answering each request, like a slow
//!   server.
//! * `--leak-fds K`: open K file descriptors on every request and never close
//!   them, like a server that leaks handles.
//! * `--garbage`: answer `initialize` with a line that is not JSON-RPC, like a
//!   server that prints a banner to stdout. Reading continues.
//! * `--exit-after-init`: answer `initialize`, then exit 4 at once, like a
//!   server that dies as soon as the handshake starts.
//! * `--flood-pings`: never read stdin; write server-to-client `ping` requests
//!   to stdout as fast as the pipe takes them, like a server stuck in a loop.
//!   A client that writes to it without a deadline blocks forever.
//! * `--flood-pings-after-init`: answer `initialize`, then do as
//!   `--flood-pings`: a server that stops reading in the middle of a session.
//! * `--escape-clean-env TOKEN`: start `sleep TOKEN` through `setsid sh -c '… &'` with a
//!   cleared environment (only `PATH`, as the MCP SDKs' stdio clients give a server): a
//!   double-forked daemon in a session of its own that carries no marker at all.
//! * `--escape-clean-env-group TOKEN`: the same without `setsid`: it stays in the group.
//! * `--leave-group`: move into the parent's process group at start (before any child).
//! * `--drop-uid TOKEN`: start `sleep TOKEN` as user `nobody` (through `setpriv`).
//! * `--fork-storm TOKEN`: start a child that forks `sleep TOKEN` every 5 ms, forever (at
//!   most 2000), like a server respawning workers while it is torn down.
//! * `--rendezvous DIR N`: before answering `initialize`, create `DIR/<pid>` and wait until
//!   `DIR` holds N entries (at most 60 s, then exit 5): N servers answer only if a client
//!   handshakes with all of them at once, so a client that starts servers one after the other
//!   times out on the first.
//! * `--listen-tcp PORT`: after `--listen-delay-ms` (default 0), bind `127.0.0.1:PORT` (0: any
//!   port) and answer every connection with one line, `fixture-server <pid>`, then close it.
//!   It logs `listening on http://127.0.0.1:3001/` to stderr whatever it bound, like servers
//!   that log the port they were asked for rather than the one they got.
//! * `--listen-in-child`: bind in a child process instead (`--listen-tcp` with
//!   `--sleep-forever`), as `npx` leaves the listening to the `node` it starts.
//! * `--sleep-forever` (internal): block forever without reading stdin. The
//!   children of `--children`, `--escape` and `spawn_child` run this mode.
//! * `--daemonize` (internal): call `setsid()`, start a `--sleep-forever`
//!   child and exit at once. This is how `--escape` does its double fork.
//!
//! If a write to stdout fails with EPIPE the server exits 0, as a Node server
//! would. An unknown flag or a bad number prints the usage and exits 2.

use std::fs::File;
use std::io::{self, BufRead, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{pause, setsid};
use serde_json::{json, Value};

const USAGE: &str = "usage: fixture-server [--ignore-eof] [--ignore-sigterm] [--children N] \
[--escape] [--crash-at-start] [--stderr-mb N] [--delay-ms N] [--leak-fds K] [--garbage] \
[--exit-after-init] [--flood-pings] [--flood-pings-after-init] [--escape-clean-env TOKEN] \
[--escape-clean-env-group TOKEN] [--leave-group] [--drop-uid TOKEN] [--fork-storm TOKEN] [--rendezvous DIR N] \
[--listen-tcp PORT] [--listen-delay-ms N] [--listen-in-child] [--sleep-forever] [--daemonize]";

/// The command-line flags; see the module documentation.
#[derive(Default)]
struct Config {
    ignore_eof: bool,
    ignore_sigterm: bool,
    children: usize,
    escape: bool,
    crash_at_start: bool,
    stderr_mb: usize,
    delay_ms: u64,
    leak_fds: usize,
    garbage: bool,
    exit_after_init: bool,
    flood_pings: bool,
    flood_pings_after_init: bool,
    escape_clean_env: Option<String>,
    escape_clean_env_group: Option<String>,
    leave_group: bool,
    drop_uid: Option<String>,
    fork_storm: Option<String>,
    rendezvous: Option<(PathBuf, usize)>,
    forker: Option<String>,
    listen_tcp: Option<u16>,
    listen_delay_ms: u64,
    listen_in_child: bool,
    sleep_forever: bool,
    daemonize: bool,
}

impl Config {
    /// Parses `std::env::args` by hand; prints the usage and exits 2 on error.
    fn from_args() -> Config {
        let mut cfg = Config::default();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--ignore-eof" => cfg.ignore_eof = true,
                "--ignore-sigterm" => cfg.ignore_sigterm = true,
                "--children" => cfg.children = number(&flag, args.next()),
                "--escape" => cfg.escape = true,
                "--crash-at-start" => cfg.crash_at_start = true,
                "--stderr-mb" => cfg.stderr_mb = number(&flag, args.next()),
                "--delay-ms" => cfg.delay_ms = number(&flag, args.next()),
                "--leak-fds" => cfg.leak_fds = number(&flag, args.next()),
                "--garbage" => cfg.garbage = true,
                "--exit-after-init" => cfg.exit_after_init = true,
                "--flood-pings" => cfg.flood_pings = true,
                "--flood-pings-after-init" => cfg.flood_pings_after_init = true,
                "--escape-clean-env" => cfg.escape_clean_env = Some(token(&flag, args.next())),
                "--escape-clean-env-group" => cfg.escape_clean_env_group = Some(token(&flag, args.next())),
                "--leave-group" => cfg.leave_group = true,
                "--drop-uid" => cfg.drop_uid = Some(token(&flag, args.next())),
                "--fork-storm" => cfg.fork_storm = Some(token(&flag, args.next())),
                "--rendezvous" => {
                    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| usage_error("--rendezvous needs DIR N"));
                    cfg.rendezvous = Some((dir, number(&flag, args.next())));
                }
                "--forker" => cfg.forker = Some(token(&flag, args.next())),
                "--listen-tcp" => cfg.listen_tcp = Some(number(&flag, args.next())),
                "--listen-delay-ms" => cfg.listen_delay_ms = number(&flag, args.next()),
                "--listen-in-child" => cfg.listen_in_child = true,
                "--sleep-forever" => cfg.sleep_forever = true,
                "--daemonize" => cfg.daemonize = true,
                _ => usage_error(&format!("unknown flag {flag:?}")),
            }
        }
        cfg
    }
}

/// Parses the value that follows `flag`, or exits 2.
fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    match value.as_deref().map(str::parse) {
        Some(Ok(n)) => n,
        _ => {
            let got = value.as_deref().unwrap_or("nothing");
            usage_error(&format!("{flag} needs a non-negative number, got {got:?}"))
        }
    }
}

/// The token that follows `flag`: a number `sleep` accepts (`1301.42`), or exits 2.
fn token(flag: &str, value: Option<String>) -> String {
    match value {
        Some(t) if t.parse::<f64>().is_ok() => t,
        _ => usage_error(&format!("{flag} needs a number for `sleep`, got {value:?}")),
    }
}

fn usage_error(msg: &str) -> ! {
    eprintln!("fixture-server: {msg}\n{USAGE}");
    process::exit(2)
}

/// Joins the rendezvous in `dir` and waits for `n` members. A test fixture polling a
/// directory it shares with its peers: there is no event to wait on.
fn rendezvous(dir: &Path, n: usize) {
    if let Err(e) = File::create(dir.join(process::id().to_string())) {
        eprintln!("fixture-server: cannot join the rendezvous in {}: {e}", dir.display());
        process::exit(5);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0) < n {
        if std::time::Instant::now() > deadline {
            eprintln!("fixture-server: fewer than {n} servers came to the rendezvous in 60 s");
            process::exit(5);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Binds `127.0.0.1:port` after `delay_ms` on a thread of its own, which answers every
/// connection with this process's pid; logs a port that is not the one bound.
fn listen(port: u16, delay_ms: u64) {
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(delay_ms));
        let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fixture-server: cannot listen on port {port}: {e}");
                process::exit(6);
            }
        };
        eprintln!("fixture-server: listening on http://127.0.0.1:3001/");
        for mut conn in listener.incoming().flatten() {
            let _ = writeln!(conn, "fixture-server {}", process::id());
        }
    });
}

/// Starts a child that listens (see [`listen`]) and sleeps, in our group.
fn listen_in_child(port: u16, delay_ms: u64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        eprintln!("fixture-server: cannot find own executable: {e}");
        process::exit(1);
    });
    let mut cmd = fixture_command(&exe, "--sleep-forever", false);
    cmd.args(["--listen-tcp", &port.to_string(), "--listen-delay-ms", &delay_ms.to_string()]);
    cmd.stderr(Stdio::inherit());
    if let Err(e) = cmd.spawn() {
        eprintln!("fixture-server: cannot start the listening child: {e}");
        process::exit(1);
    }
}

/// Blocks until killed. `pause()` returns after a handled signal, so loop.
fn block_forever() -> ! {
    loop {
        pause();
    }
}

/// `<this exe> <mode> [--ignore-sigterm]` with null stdio. The environment is
/// inherited unchanged, so `reapkit` can find the process by its marker.
fn fixture_command(exe: &Path, mode: &str, ignore_sigterm: bool) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg(mode);
    if ignore_sigterm {
        cmd.arg("--ignore-sigterm");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Starts a `--sleep-forever` child in our process group and returns its pid.
/// It is never waited for: dropping a `Child` neither kills nor reaps it, so
/// it outlives us on purpose.
fn spawn_sleeper(exe: &Path, ignore_sigterm: bool) -> io::Result<u32> {
    let child = fixture_command(exe, "--sleep-forever", ignore_sigterm).spawn()?;
    Ok(child.id())
}

/// Counts the processes whose parent is `pid` by scanning `/proc/*/stat`.
/// (`/proc/self/task/*/children` needs CONFIG_PROC_CHILDREN, scanning does not.)
fn count_children(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // "pid (comm) state ppid ...": comm may hold spaces and ')'.
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1) == Some(pid.to_string().as_str())
        })
        .count()
}

/// Writes one line to stdout and flushes. EPIPE means the client is gone:
/// exit 0 like a real server would.
fn write_line(line: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(line).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            process::exit(0);
        }
        eprintln!("fixture-server: cannot write to stdout: {e}");
        process::exit(1);
    }
}

/// Sends one JSON-RPC message as a single line.
fn send(msg: &Value) {
    let mut line = msg.to_string().into_bytes();
    line.push(b'\n');
    write_line(&line);
}

fn error_reply(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn text_content(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

/// A JSON-RPC error: code and message.
type RpcError = (i64, String);

struct Server {
    cfg: Config,
    exe: PathBuf,
    /// File descriptors leaked by `--leak-fds`; kept open until exit.
    leaked: Vec<File>,
}

impl Server {
    /// Reads stdin line by line until EOF, then exits (or blocks forever).
    fn serve(&mut self) -> ! {
        for line in io::stdin().lock().split(b'\n') {
            match line {
                Ok(line) => self.handle_line(&line),
                Err(e) => {
                    eprintln!("fixture-server: cannot read stdin: {e}");
                    break;
                }
            }
        }
        if self.cfg.ignore_eof {
            eprintln!("fixture-server: stdin closed, staying alive (--ignore-eof)");
            block_forever();
        }
        process::exit(0)
    }

    fn handle_line(&mut self, line: &[u8]) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let msg: Value = match serde_json::from_slice(line) {
            Ok(msg) => msg,
            Err(e) => return send(&error_reply(Value::Null, -32700, &format!("Parse error: {e}"))),
        };
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // A response from the client needs no answer; anything else is invalid.
            if msg.get("result").is_none() && msg.get("error").is_none() {
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                send(&error_reply(id, -32600, "Invalid Request"));
            }
            return;
        };
        let Some(id) = msg.get("id").cloned() else {
            return; // a notification, e.g. notifications/initialized
        };

        if self.cfg.delay_ms > 0 {
            thread::sleep(Duration::from_millis(self.cfg.delay_ms));
        }
        self.leak_fds();

        if let Some((dir, n)) = self.cfg.rendezvous.as_ref().filter(|_| method == "initialize") {
            rendezvous(dir, *n);
        }
        if method == "initialize" && self.cfg.garbage {
            write_line(b"this is not json-rpc\n");
        } else {
            send(&match self.dispatch(method, msg.get("params")) {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => error_reply(id, code, &message),
            });
        }

        if method == "initialize" && self.cfg.flood_pings_after_init {
            flood_pings();
        }
        if method == "initialize" && self.cfg.exit_after_init {
            eprintln!("fixture-server: exiting after initialize as asked (--exit-after-init)");
            process::exit(4);
        }
    }

    fn leak_fds(&mut self) {
        for _ in 0..self.cfg.leak_fds {
            match File::open("/dev/null") {
                Ok(f) => self.leaked.push(f),
                Err(e) => eprintln!("fixture-server: cannot leak an fd: {e}"),
            }
        }
    }

    fn dispatch(&mut self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        match method {
            "initialize" => {
                let version =
                    params.and_then(|p| p.get("protocolVersion")).cloned().unwrap_or_else(|| json!("2025-06-18"));
                Ok(json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "reapkit-fixture", "version": "0.1.0"},
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": [
                {
                    "name": "echo",
                    "description": "Returns the given text unchanged.",
                    "inputSchema": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
                {
                    "name": "server_info",
                    "description": "Returns the server's pid, open fd count and direct child count as JSON.",
                    "inputSchema": {"type": "object", "properties": {}},
                },
                {
                    "name": "spawn_child",
                    "description": "Starts one more sleeping child process and returns its pid.",
                    "inputSchema": {"type": "object", "properties": {}},
                },
                {
                    "name": "fail",
                    "description": "Fails: its result is marked isError.",
                    "inputSchema": {"type": "object", "properties": {}},
                },
            ]})),
            "tools/call" => self.call_tool(params),
            _ => Err((-32601, "Method not found".to_string())),
        }
    }

    fn call_tool(&mut self, params: Option<&Value>) -> Result<Value, RpcError> {
        let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
        let args = params.and_then(|p| p.get("arguments"));
        match name {
            Some("echo") => match args.and_then(|a| a.get("text")).and_then(Value::as_str) {
                Some(text) => Ok(text_content(text.to_string())),
                None => Err((-32602, "echo needs a string argument \"text\"".to_string())),
            },
            Some("server_info") => {
                let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
                let info = json!({
                    "pid": process::id(),
                    "fds": fds,
                    "children": count_children(process::id()),
                });
                Ok(text_content(info.to_string()))
            }
            // A tool that fails the MCP way: a result marked `isError`.
            Some("fail") => {
                Ok(json!({"content": [{"type": "text", "text": "the fixture's fail tool failed"}], "isError": true}))
            }
            Some("spawn_child") => match spawn_sleeper(&self.exe, self.cfg.ignore_sigterm) {
                Ok(pid) => Ok(text_content(pid.to_string())),
                Err(e) => Err((-32603, format!("cannot spawn child: {e}"))),
            },
            Some(other) => Err((-32602, format!("Unknown tool: {other}"))),
            None => Err((-32602, "tools/call needs a string \"name\"".to_string())),
        }
    }
}

/// Writes `mb` MiB of 64-byte lines to stderr with blocking writes.
fn flood_stderr(mb: usize) {
    let lines = mb * 1024 * 1024 / 64;
    let mut err = io::stderr().lock();
    for i in 0..lines {
        let text = format!("fixture-server: stderr flood line {i} of {lines}");
        if writeln!(err, "{text:<63}").is_err() {
            return; // nobody is reading any more; nothing to flood
        }
    }
}

/// `--escape`: start a `--daemonize` intermediate and reap it; the daemon it
/// leaves behind has its own session and is re-parented away from us.
fn escape(exe: &Path, ignore_sigterm: bool) -> io::Result<()> {
    let mut intermediate = fixture_command(exe, "--daemonize", ignore_sigterm).spawn()?;
    let status = intermediate.wait()?;
    if !status.success() {
        eprintln!("fixture-server: --daemonize intermediate failed: {status}");
    }
    Ok(())
}

/// The escape classes: processes that leave the tree by every route a marker-based reaper
/// cannot follow.
fn start_escapes(cfg: &Config, exe: &Path) -> io::Result<()> {
    let clean_sh = |token: &str, setsid: bool| {
        let mut cmd = Command::new(if setsid { "setsid" } else { "sh" });
        if setsid {
            cmd.arg("sh");
        }
        cmd.arg("-c").arg(format!("sleep {token} &")).env_clear().env("PATH", "/usr/bin:/bin");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    if let Some(token) = &cfg.escape_clean_env {
        clean_sh(token, true).status()?;
    }
    if let Some(token) = &cfg.escape_clean_env_group {
        clean_sh(token, false).status()?;
    }
    if let Some(token) = &cfg.drop_uid {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", token]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    }
    if let Some(token) = &cfg.fork_storm {
        let mut cmd = Command::new(exe);
        cmd.args(["--forker", token]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    }
    Ok(())
}

/// `--forker TOKEN` (internal): a new `sleep TOKEN` every 5 ms, its exited children reaped.
fn fork_storm(token: &str) -> ! {
    for _ in 0..2000 {
        let _ =
            Command::new("sleep").arg(token).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        // SAFETY: reaps our own exited children, never blocks.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        thread::sleep(Duration::from_millis(5));
    }
    block_forever()
}

/// `--flood-pings`: server-to-client pings until the client goes away (EPIPE exits 0); stdin
/// is never read again.
fn flood_pings() -> ! {
    for id in 1u64.. {
        send(&json!({"jsonrpc": "2.0", "id": format!("flood-{id}"), "method": "ping"}));
    }
    unreachable!("pings until EPIPE")
}

fn main() {
    let cfg = Config::from_args();

    if cfg.ignore_sigterm {
        // SAFETY: SIG_IGN installs no handler, and no other thread exists yet.
        if let Err(e) = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) } {
            eprintln!("fixture-server: cannot ignore SIGTERM: {e}");
            process::exit(1);
        }
    }
    if let Some(port) = cfg.listen_tcp {
        if cfg.listen_in_child && !cfg.sleep_forever {
            listen_in_child(port, cfg.listen_delay_ms);
        } else {
            listen(port, cfg.listen_delay_ms);
        }
    }
    if cfg.sleep_forever {
        block_forever();
    }
    if let Some(token) = &cfg.forker {
        fork_storm(token);
    }
    if cfg.leave_group {
        // SAFETY: plain syscalls on our own process.
        let rc = unsafe { libc::setpgid(0, libc::getpgid(libc::getppid())) };
        if rc != 0 {
            eprintln!("fixture-server: cannot leave the group: {}", io::Error::last_os_error());
        }
    }

    let exe = std::env::current_exe().unwrap_or_else(|e| {
        eprintln!("fixture-server: cannot find own executable: {e}");
        process::exit(1);
    });

    if cfg.daemonize {
        // A Command child is never a group leader, so setsid() succeeds.
        if let Err(e) = setsid() {
            eprintln!("fixture-server: setsid failed: {e}");
            process::exit(1);
        }
        // Exit without waiting: the sleeper is re-parented to init/subreaper.
        let code = i32::from(spawn_sleeper(&exe, cfg.ignore_sigterm).is_err());
        process::exit(code);
    }

    for _ in 0..cfg.children {
        if let Err(e) = spawn_sleeper(&exe, cfg.ignore_sigterm) {
            eprintln!("fixture-server: cannot spawn child: {e}");
        }
    }
    if cfg.escape {
        if let Err(e) = escape(&exe, cfg.ignore_sigterm) {
            eprintln!("fixture-server: cannot escape: {e}");
        }
    }
    if let Err(e) = start_escapes(&cfg, &exe) {
        eprintln!("fixture-server: cannot start an escapee: {e}");
    }
    if cfg.stderr_mb > 0 {
        flood_stderr(cfg.stderr_mb);
    }
    if cfg.crash_at_start {
        eprintln!("fixture-server: crashing at start as asked (--crash-at-start)");
        process::exit(3);
    }
    if cfg.flood_pings {
        flood_pings();
    }

    let mut server = Server { cfg, exe, leaked: Vec::new() };
    server.serve()
}
