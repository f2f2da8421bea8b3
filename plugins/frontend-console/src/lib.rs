//! Frontend `console`: the engine's local command line.
//!
//! `p2ner run --frontend console` reads commands at a prompt on the
//! terminal (line editing and history by `rustyline`; Tab completes
//! commands, session ids, stream ids and plugin names; `help CMD` explains
//! each) and answers on stdout. `quit` (or end of input) ends the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::EngineControl;
use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

const HISTORY: ParamDef = ParamDef::new(
    "history",
    "",
    "file to keep the command history in (empty: this run only)",
);
const PROMPT: ParamDef = ParamDef::new("prompt", "p2ner> ", "the prompt");

/// Every command, its arguments and what it does (`help`).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("help", "[COMMAND]", "lists the commands, or explains one"),
    ("servers", "", "the servers this engine knows"),
    ("add-server", "HOST:PORT", "adds a server"),
    ("remove-server", "HOST:PORT", "forgets a server"),
    ("streams", "[HOST:PORT ...]", "browses the servers (every known one by default)"),
    (
        "publish",
        "TITLE [KEY=VALUE ...]",
        "publishes a stream; keys as the publish flags (input=synthetic, source=, bitrate_kbps=, chunk_ms=, buffer_ms=, scheduler=, overlay=, servers=A,B) and input.KEY= scheduler.KEY= overlay.KEY= for plugin parameters",
    ),
    (
        "subscribe",
        "STREAM [KEY=VALUE ...]",
        "subscribes to a stream (server=HOST:PORT, output=null, output.KEY=VALUE)",
    ),
    ("sessions", "", "every session: id, role, state, stream, title, reason"),
    ("stop", "SESSION", "ends a session"),
    ("stats", "[SESSION]", "a session's latest stats line, or the engine's totals"),
    (
        "watch",
        "SESSION [SECONDS]",
        "prints the session's stats lines as they come (10 s by default)",
    ),
    ("plugins", "[GROUP]", "installed components (group: scheduler, overlay, input, output, frontend)"),
    ("quit", "", "ends every session and the engine"),
];

/// The `console` frontend: a line editor on the terminal, driving the engine through its control interface.
pub struct Console {
    history: String,
    prompt: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Console {
    /// A console from its parameters; the terminal is taken on `start`.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        Ok(Console {
            history: HISTORY.get(params).to_owned(),
            prompt: PROMPT.get(params).to_owned(),
            stop: Arc::default(),
            thread: None,
        })
    }
}

impl Frontend for Console {
    fn start(&mut self, engine: EngineControl) -> Result<(), PluginError> {
        let helper = Completion {
            engine: engine.clone(),
            streams: Arc::default(),
        };
        let mut editor: Editor<Completion, DefaultHistory> =
            Editor::new().map_err(|e| format!("console: {e}"))?;
        editor.set_helper(Some(helper));
        if !self.history.is_empty() {
            let _ = editor.load_history(&self.history);
        }
        let (history, prompt, stop) =
            (self.history.clone(), self.prompt.clone(), self.stop.clone());
        let thread = std::thread::Builder::new()
            .name("p2ner-console".into())
            .spawn(move || {
                println!("p2ner console: 'help' lists the commands, Tab completes, 'quit' ends the engine");
                while !stop.load(Ordering::Relaxed) {
                    match editor.readline(&prompt) {
                        Ok(line) => {
                            let line = line.trim();
                            if line.is_empty() {
                                continue;
                            }
                            let _ = editor.add_history_entry(line);
                            let streams = editor.helper().map(|h| h.streams.clone()).unwrap_or_default();
                            if !run(&engine, line, &streams, &stop) {
                                break;
                            }
                        }
                        Err(rustyline::error::ReadlineError::Interrupted) => {
                            println!("(Ctrl-C: 'quit' ends the engine)");
                        }
                        Err(_) => {
                            // End of input: the console's user is gone.
                            engine.shutdown();
                            break;
                        }
                    }
                }
                if !history.is_empty() {
                    let _ = editor.save_history(&history);
                }
            })
            .map_err(|e| format!("console: no thread: {e}"))?;
        self.thread = Some(thread);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.stop.store(true, Ordering::Relaxed);
        // A prompt waiting for a line cannot be interrupted; the thread ends
        // with the process (joined only if it already finished).
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

/// Runs one command line; false ends the console.
fn run(
    engine: &EngineControl,
    line: &str,
    streams: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (cmd, args) = (words[0], &words[1..]);
    let result: Result<(), String> = (|| {
        match cmd {
            "help" | "?" => help(args.first().copied()),
            "servers" => {
                let servers = engine.servers();
                if servers.is_empty() {
                    println!("no servers (add-server HOST:PORT)");
                }
                for s in servers {
                    println!("{s}");
                }
            }
            "add-server" => {
                engine
                    .add_server(arg(args, 0, "HOST:PORT")?)
                    .map_err(|e| e.to_string())?;
                println!("ok");
            }
            "remove-server" => {
                engine
                    .remove_server(arg(args, 0, "HOST:PORT")?)
                    .map_err(|e| e.to_string())?;
                println!("ok");
            }
            "streams" => {
                let found = engine.browse(args).map_err(|e| e.to_string())?;
                if found.is_empty() {
                    println!("no streams");
                }
                let mut known = streams.lock().unwrap();
                for s in &found {
                    println!(
                        "{:<16}  {:<24}  {:>5} kbit/s  {:>3} peers  {}/{}  {}",
                        s.id, s.title, s.bitrate_kbps, s.peers, s.scheduler, s.overlay, s.server
                    );
                    if !known.iter().any(|k| k.as_str() == s.id.as_str()) {
                        known.push(s.id.to_string());
                    }
                }
            }
            "publish" => {
                let title = arg(args, 0, "TITLE")?;
                let mut request = key_values(&args[1..])?;
                request.set("title", title);
                let id = engine
                    .start_session("publish", &request)
                    .map_err(|e| e.to_string())?;
                let stream = session(engine, &id)
                    .map(|s| s.stream.to_string())
                    .unwrap_or_default();
                println!("{id} publishing '{title}' as {stream}");
            }
            "subscribe" => {
                let stream = arg(args, 0, "STREAM")?;
                let mut request = key_values(&args[1..])?;
                request.set("stream", stream);
                let id = engine
                    .start_session("subscribe", &request)
                    .map_err(|e| e.to_string())?;
                println!("{id} subscribed to {stream}");
            }
            "sessions" => {
                let sessions = engine.sessions().map_err(|e| e.to_string())?;
                if sessions.is_empty() {
                    println!("no sessions");
                }
                for s in sessions {
                    println!(
                        "{:<5} {:<9} {:<8} {:<16} {:<24} {}",
                        s.id, s.role, s.state, s.stream, s.title, s.reason
                    );
                }
            }
            "stop" => {
                let id = arg(args, 0, "SESSION")?;
                engine.stop_session(id).map_err(|e| e.to_string())?;
                println!("stopping {id}");
            }
            "stats" => {
                let id = args.first().copied().unwrap_or("");
                println!("{}", engine.session_stats(id).map_err(|e| e.to_string())?);
            }
            "watch" => {
                let id = arg(args, 0, "SESSION")?;
                let secs: u64 = match args.get(1) {
                    Some(s) => s
                        .parse()
                        .map_err(|_| format!("'{s}' is not a number of seconds"))?,
                    None => 10,
                };
                watch(engine, id, Duration::from_secs(secs), stop)?;
            }
            "plugins" => {
                let all: serde_json::Value =
                    serde_json::from_str(&engine.plugins_json()).unwrap_or_default();
                let group = args
                    .first()
                    .map(|g| format!("p2ner.{}", g.trim_start_matches("p2ner.")));
                for c in all.as_array().into_iter().flatten() {
                    let g = c["group"].as_str().unwrap_or("");
                    if group.as_deref().is_some_and(|want| want != g) {
                        continue;
                    }
                    println!(
                        "{:<16} {:<12} {:<8} {}",
                        g,
                        c["name"].as_str().unwrap_or(""),
                        c["version"].as_str().unwrap_or(""),
                        c["description"].as_str().unwrap_or("")
                    );
                }
            }
            "quit" | "exit" => {
                println!("ending the engine");
                engine.shutdown();
                return Err(String::new());
            }
            other => return Err(format!("no command '{other}' ('help' lists them)")),
        }
        Ok(())
    })();
    match result {
        Ok(()) => true,
        Err(e) if e.is_empty() => false,
        Err(e) => {
            println!("error: {e}");
            true
        }
    }
}

fn help(cmd: Option<&str>) {
    match cmd {
        None => {
            for (name, args, what) in COMMANDS {
                let first = what.split(';').next().unwrap_or(what);
                println!("  {:<34} {}", format!("{name} {args}"), first);
            }
        }
        Some(c) => match COMMANDS.iter().find(|(n, _, _)| *n == c) {
            Some((name, args, what)) => println!("{name} {args}\n  {what}"),
            None => println!("no command '{c}' ('help' lists them)"),
        },
    }
}

fn arg<'a>(args: &[&'a str], i: usize, what: &str) -> Result<&'a str, String> {
    args.get(i)
        .copied()
        .ok_or_else(|| format!("missing {what} ('help' explains)"))
}

fn key_values(words: &[&str]) -> Result<Params, String> {
    let mut p = Params::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("'{w}' is not KEY=VALUE"))?;
        p.set(k, v);
    }
    Ok(p)
}

fn session(engine: &EngineControl, id: &str) -> Option<p2ner_plugin_api::SessionInfo> {
    engine
        .sessions()
        .ok()?
        .into_iter()
        .find(|s| s.id.as_str() == id)
}

/// Follows the engine's events: the session's stats lines, until it ends
/// or `how_long` is up.
fn watch(
    engine: &EngineControl,
    id: &str,
    how_long: Duration,
    stop: &AtomicBool,
) -> Result<(), String> {
    if session(engine, id).is_none() {
        return Err(format!("no session '{id}' in this engine"));
    }
    let start = Instant::now();
    let mut after = engine.events(u64::MAX - 1, 0).last().map_or(0, |e| e.seq);
    // Start from the newest event: the latest line first.
    if let Ok(line) = engine.session_stats(id) {
        println!("{line}");
    }
    if let Some(last) = engine.events(0, 0).last() {
        after = after.max(last.seq);
    }
    while start.elapsed() < how_long && !stop.load(Ordering::Relaxed) {
        for ev in engine.events(after, 500) {
            after = ev.seq;
            if ev.session.as_str() != id {
                continue;
            }
            match ev.kind.as_str() {
                "stats" => println!("{}", ev.detail),
                "ended" | "failed" => {
                    println!("{id} {}: {}", ev.kind, ev.detail);
                    return Ok(());
                }
                other => println!("{id} {other} {}", ev.detail),
            }
        }
    }
    Ok(())
}

/// Tab completion: commands, then what each command takes.
struct Completion {
    engine: EngineControl,
    /// Stream ids seen by `streams` (the engine's sessions add theirs).
    streams: Arc<Mutex<Vec<String>>>,
}

impl Completion {
    fn plugins(&self, group: &str) -> Vec<String> {
        let all: serde_json::Value =
            serde_json::from_str(&self.engine.plugins_json()).unwrap_or_default();
        all.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["group"].as_str() == Some(group))
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    }

    fn candidates(&self, before: &[&str], word: &str) -> Vec<String> {
        let Some(cmd) = before.first() else {
            return COMMANDS.iter().map(|(n, _, _)| n.to_string()).collect();
        };
        let sessions = || -> Vec<String> {
            self.engine
                .sessions()
                .unwrap_or_default()
                .iter()
                .map(|s| s.id.to_string())
                .collect()
        };
        if let Some((key, _)) = word.split_once('=') {
            let group = match key {
                "input" => "p2ner.input",
                "output" => "p2ner.output",
                "scheduler" => "p2ner.scheduler",
                "overlay" => "p2ner.overlay",
                _ => return Vec::new(),
            };
            return self
                .plugins(group)
                .into_iter()
                .map(|n| format!("{key}={n}"))
                .collect();
        }
        match (*cmd, before.len()) {
            ("help", 1) => COMMANDS.iter().map(|(n, _, _)| n.to_string()).collect(),
            ("stop" | "stats" | "watch", 1) => sessions(),
            ("subscribe", 1) => {
                let mut ids = self.streams.lock().unwrap().clone();
                for s in self.engine.sessions().unwrap_or_default() {
                    if !s.stream.is_empty() && !ids.iter().any(|i| i.as_str() == s.stream.as_str())
                    {
                        ids.push(s.stream.to_string());
                    }
                }
                ids
            }
            ("subscribe", _) => ["server=", "output=", "output."].map(String::from).to_vec(),
            ("publish", n) if n > 1 => [
                "input=",
                "source=",
                "bitrate_kbps=",
                "chunk_ms=",
                "buffer_ms=",
                "scheduler=",
                "overlay=",
                "servers=",
                "input.",
                "scheduler.",
                "overlay.",
            ]
            .map(String::from)
            .to_vec(),
            ("plugins", 1) => ["scheduler", "overlay", "input", "output", "frontend"]
                .map(String::from)
                .to_vec(),
            _ => Vec::new(),
        }
    }
}

impl Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let line = &line[..pos];
        let start = line.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &line[start..];
        let before: Vec<&str> = line[..start].split_whitespace().collect();
        let found = self
            .candidates(&before, word)
            .into_iter()
            .filter(|c| c.starts_with(word))
            .collect();
        Ok((start, found))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

fn register(lib: &mut Registrar) {
    lib.frontend(
        ComponentSpec::new(
            "console",
            env!("CARGO_PKG_VERSION"),
            "an interactive prompt on the terminal: browse, publish, subscribe, stop, watch stats",
        )
        .params(&[HISTORY, PROMPT]),
        Console::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-frontend-console",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_parse() {
        let p = key_values(&["input=synthetic", "input.chunks=5"]).unwrap();
        assert_eq!(p.get("input"), Some("synthetic"));
        assert_eq!(p.get("input.chunks"), Some("5"));
        assert!(key_values(&["oops"]).is_err());
    }

    #[test]
    fn every_command_has_help() {
        for (name, _, what) in COMMANDS {
            assert!(!name.is_empty() && !what.is_empty());
        }
    }
}
