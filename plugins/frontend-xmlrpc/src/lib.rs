//! Frontend `xmlrpc`: an engine's control over XML-RPC on HTTP.
//!
//! `p2ner run --frontend xmlrpc[:ADDR]` serves the methods of DESIGN's
//! "Control" table at `http://ADDR/RPC2` (127.0.0.1:7780 unless told
//! otherwise), so that Python's `xmlrpc.client.ServerProxy` drives an engine
//! as it is. Every request needs the engine's token as HTTP basic auth with
//! user `p2ner` (`http://p2ner:TOKEN@127.0.0.1:7780/RPC2`); a wrong or
//! missing one is answered 401. Bodies are bounded (`max_body`, 1 MiB), and
//! a body that is not an XML-RPC call gets a fault. Every refusal is counted
//! in the engine's totals (`stats("")`, `engine.frontends.xmlrpc`).
//!
//! XML is read and written by `dxr`, HTTP served by `axum` on a tokio
//! runtime of this plugin's own, on its own thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use dxr::{Fault, FaultResponse, MethodCall, MethodResponse, Value};
use p2ner_plugin_api::prelude::*;
use p2ner_plugin_api::{ControlError, EngineControl};

const LISTEN: ParamDef = ParamDef::new(
    "listen",
    "127.0.0.1:7780",
    "address to serve on (HTTP, path /RPC2); port 0 picks a free one",
);
const MAX_BODY: ParamDef = ParamDef::new(
    "max_body",
    "1048576",
    "largest request body accepted (bytes); larger ones get 413",
);

/// The request is not XML-RPC (the fault codes of the XML-RPC conventions,
/// for what is not the engine's).
pub const PARSE_ERROR: i32 = -32700;
/// The method does not exist.
pub const UNKNOWN_METHOD: i32 = -32601;
/// The parameters do not fit the method.
pub const BAD_PARAMS: i32 = -32602;

/// The methods and their help (`system.listMethods`, `system.methodHelp`).
pub const METHODS: &[(&str, &str)] = &[
    ("servers", "servers() -> array of \"host:port\": the servers this engine knows"),
    ("add_server", "add_server(addr) -> true: adds a server (host:port)"),
    ("remove_server", "remove_server(addr) -> true: forgets a server"),
    (
        "streams",
        "streams(servers) -> array of stream structs (the keys of `p2ner streams --json`); [] asks every known server",
    ),
    (
        "publish",
        "publish(struct) -> session id. Keys as the publish flags: title, input, source, bitrate_kbps, width, height, fps, chunk_ms, buffer_ms, scheduler, overlay, servers (array), input_params, scheduler_params, overlay_params (structs of strings)",
    ),
    (
        "subscribe",
        "subscribe(struct) -> session id. Keys: stream, server (default: the known server that lists it), output, output_params",
    ),
    (
        "sessions",
        "sessions() -> array of {id, role, stream, title, state, reason}; state is starting, playing, ended or failed",
    ),
    ("stop", "stop(id) -> true: ends a session; an unknown id is a fault"),
    (
        "stats",
        "stats(id) -> the session's latest --stats line (its final summary once ended); stats(\"\") -> {engine: totals, sessions: {id: line}}",
    ),
    ("plugins", "plugins() -> array of {group, name, version, library, description}"),
    (
        "events",
        "events(after, wait_ms) -> array of {seq, t_ms, session, kind, detail} after seq `after`, waiting up to wait_ms for one (a long poll to follow the engine live)",
    ),
    ("system.listMethods", "system.listMethods() -> array of method names"),
    ("system.methodHelp", "system.methodHelp(name) -> the help of one method"),
    (
        "system.multicall",
        "system.multicall(array of {methodName, params}) -> array of [result] or fault structs",
    ),
];

/// The `xmlrpc` frontend: the engine's control interface over HTTP, as the original P2NER's frontends spoke it.
pub struct XmlRpc {
    listen: String,
    max_body: usize,
    running: Option<(JoinHandle<()>, tokio::sync::watch::Sender<bool>)>,
}

impl XmlRpc {
    /// A server from its parameters; it binds on `start`.
    pub fn new(params: &Params) -> Result<Self, PluginError> {
        Ok(XmlRpc {
            listen: LISTEN.get(params).to_owned(),
            max_body: MAX_BODY.parse(params)?,
            running: None,
        })
    }
}

impl Frontend for XmlRpc {
    fn start(&mut self, engine: EngineControl) -> Result<(), PluginError> {
        let token = engine.token();
        if token.is_empty() {
            return Err("xmlrpc: the engine has no token (p2ner run --token-file FILE); refusing to serve without one".into());
        }
        let addr: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| format!("xmlrpc: listen '{}' is not IP:PORT", self.listen))?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("xmlrpc: cannot listen on {addr}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("xmlrpc: {e}"))?;
        let local = listener.local_addr().map_err(|e| format!("xmlrpc: {e}"))?;
        let state = Arc::new(Rpc { engine, token });
        let max_body = self.max_body;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(64)
            .thread_name("p2ner-xmlrpc")
            .enable_all()
            .build()
            .map_err(|e| format!("xmlrpc: no runtime: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("p2ner-xmlrpc".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            p2ner_plugin_api::tracing::error!("xmlrpc: {e}");
                            return;
                        }
                    };
                    let app = Router::new()
                        .route("/RPC2", post(rpc))
                        .route("/", post(rpc))
                        .layer(DefaultBodyLimit::max(max_body))
                        .with_state(state);
                    let mut graceful = stop_rx.clone();
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|stop| *stop).await;
                    });
                    // Connections still open (a long poll) get a moment, not more.
                    let mut stop = stop_rx;
                    let bounded = async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    };
                    tokio::select! {
                        served = served => {
                            if let Err(e) = served {
                                p2ner_plugin_api::tracing::error!("xmlrpc: {e}");
                            }
                        }
                        _ = bounded => {}
                    }
                });
                // Long polls still parked in the engine are not waited for.
                rt.shutdown_background();
            })
            .map_err(|e| format!("xmlrpc: no thread: {e}"))?;
        eprintln!(
            "xmlrpc: serving http://{local}/RPC2 (basic auth: user p2ner, the engine's token)"
        );
        self.running = Some((thread, stop_tx));
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        if let Some((thread, stop)) = self.running.take() {
            let _ = stop.send(true);
            let _ = thread.join();
        }
        Ok(())
    }
}

struct Rpc {
    engine: EngineControl,
    token: String,
}

async fn rpc(
    State(rpc): State<Arc<Rpc>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !authorized(&headers, &rpc.token) {
        rpc.engine.count("xmlrpc", "unauthorized");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"p2ner\"")],
            "the engine's token is needed (basic auth, user p2ner)\n",
        )
            .into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let what = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_body"
            };
            rpc.engine.count("xmlrpc", what);
            return (e.status(), e.body_text()).into_response();
        }
    };
    let handler = rpc.clone();
    let xml = tokio::task::spawn_blocking(move || handler.handle(&body))
        .await
        .unwrap_or_else(|_| fault_xml(Fault::new(500, "the call failed".into())));
    ([(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

/// Basic auth `p2ner:TOKEN`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("p2ner:{token}");
    decoded.len() == expected.len()
        && decoded
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn fault_xml(fault: Fault) -> String {
    FaultResponse { fault }
        .to_xml()
        .unwrap_or_else(|_| String::from("<methodResponse><fault/></methodResponse>"))
}

fn control_fault(e: ControlError) -> Fault {
    Fault::new(e.code as i32, e.message.into())
}

impl Rpc {
    /// One HTTP body in, one XML-RPC response out; never panics on input.
    fn handle(&self, body: &[u8]) -> String {
        let call = std::str::from_utf8(body)
            .ok()
            .and_then(|text| MethodCall::from_xml(text).ok());
        let Some(call) = call else {
            self.engine.count("xmlrpc", "malformed");
            return fault_xml(Fault::new(
                PARSE_ERROR,
                "parse error: the body is not an XML-RPC methodCall".into(),
            ));
        };
        let result = if call.name == "system.multicall" {
            match dxr::multicall::from_multicall_params(call.params) {
                Ok(calls) => {
                    let results = calls
                        .into_iter()
                        .map(|c| match c {
                            Ok((name, params)) => self.call(&name, &params),
                            Err(e) => Err(Fault::new(BAD_PARAMS, e.to_string())),
                        })
                        .collect();
                    Ok(dxr::multicall::into_multicall_response(results))
                }
                Err(e) => Err(Fault::new(BAD_PARAMS, e.to_string())),
            }
        } else {
            self.call(&call.name, &call.params)
        };
        match result {
            Ok(value) => MethodResponse { value }
                .to_xml()
                .unwrap_or_else(|e| fault_xml(Fault::new(500, e.to_string()))),
            Err(fault) => fault_xml(fault),
        }
    }

    fn call(&self, name: &str, params: &[Value]) -> Result<Value, Fault> {
        let e = &self.engine;
        let t = Value::Boolean(true);
        match name {
            "servers" => Ok(Value::Array(
                e.servers().into_iter().map(Value::String).collect(),
            )),
            "add_server" => {
                e.add_server(&string(params, 0)?).map_err(control_fault)?;
                Ok(t)
            }
            "remove_server" => {
                e.remove_server(&string(params, 0)?)
                    .map_err(control_fault)?;
                Ok(t)
            }
            "streams" => {
                let servers = match params.first() {
                    None => Vec::new(),
                    Some(Value::Array(a)) => a.iter().map(scalar).collect::<Result<_, _>>()?,
                    Some(v) => vec![scalar(v)?],
                };
                let servers: Vec<&str> = servers
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
                    .collect();
                let found = e.browse(&servers).map_err(control_fault)?;
                Ok(Value::Array(
                    found
                        .iter()
                        .map(|s| {
                            from_json(&serde_json::json!({
                                "id": s.id.as_str(),
                                "title": s.title.as_str(),
                                "server": s.server.as_str(),
                                "publisher": s.publisher.as_str(),
                                "scheduler": s.scheduler.as_str(),
                                "overlay": s.overlay.as_str(),
                                "bitrate_kbps": s.bitrate_kbps,
                                "peers": s.peers,
                            }))
                        })
                        .collect(),
                ))
            }
            "publish" | "subscribe" => {
                let request = to_params(params.first())?;
                e.start_session(name, &request)
                    .map(Value::String)
                    .map_err(control_fault)
            }
            "sessions" => Ok(Value::Array(
                e.sessions()
                    .map_err(control_fault)?
                    .iter()
                    .map(|s| {
                        from_json(&serde_json::json!({
                            "id": s.id.as_str(),
                            "role": s.role.as_str(),
                            "stream": s.stream.as_str(),
                            "title": s.title.as_str(),
                            "state": s.state.as_str(),
                            "reason": s.reason.as_str(),
                        }))
                    })
                    .collect(),
            )),
            "stop" => {
                e.stop_session(&string(params, 0)?).map_err(control_fault)?;
                Ok(t)
            }
            "stats" => {
                let id = match params.first() {
                    None => String::new(),
                    Some(v) => scalar(v)?,
                };
                let text = e.session_stats(&id).map_err(control_fault)?;
                json_value(&text)
            }
            "plugins" => json_value(&e.plugins_json()),
            "events" => {
                let after = match params.first() {
                    None => 0,
                    Some(v) => number(v)?,
                };
                let wait = match params.get(1) {
                    None => 0,
                    Some(v) => number(v)?,
                };
                Ok(Value::Array(
                    e.events(after, wait.min(30_000) as u32)
                        .iter()
                        .map(|ev| {
                            from_json(&serde_json::json!({
                                "seq": ev.seq,
                                "t_ms": ev.t_ms,
                                "session": ev.session.as_str(),
                                "kind": ev.kind.as_str(),
                                "detail": ev.detail.as_str(),
                            }))
                        })
                        .collect(),
                ))
            }
            "system.listMethods" => Ok(Value::Array(
                METHODS
                    .iter()
                    .map(|(m, _)| Value::String((*m).into()))
                    .collect(),
            )),
            "system.methodHelp" => {
                let m = string(params, 0)?;
                METHODS
                    .iter()
                    .find(|(n, _)| *n == m)
                    .map(|(_, h)| Value::String((*h).into()))
                    .ok_or_else(|| Fault::new(UNKNOWN_METHOD, format!("no method '{m}'")))
            }
            other => {
                self.engine.count("xmlrpc", "unknown_method");
                Err(Fault::new(
                    UNKNOWN_METHOD,
                    format!("no method '{other}' (system.listMethods lists them)"),
                ))
            }
        }
    }
}

fn json_value(text: &str) -> Result<Value, Fault> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|v| from_json(&v))
        .map_err(|e| Fault::new(500, format!("the engine's answer is not JSON: {e}")))
}

/// A JSON value as XML-RPC: integers as `int` (or `i8` past 32 bits),
/// objects as structs without their null members.
pub fn from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::String(String::new()),
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => Value::Integer(small),
                Err(_) => Value::Long(i),
            },
            (None, Some(f)) => Value::Double(f),
            (None, None) => Value::String(n.to_string()),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        J::Object(o) => Value::Struct(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), from_json(v)))
                .collect(),
        ),
    }
}

fn scalar(v: &Value) -> Result<String, Fault> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Long(i) => Ok(i.to_string()),
        Value::Double(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(Fault::new(
            BAD_PARAMS,
            format!("expected a string or a number, got {other:?}"),
        )),
    }
}

fn number(v: &Value) -> Result<u64, Fault> {
    scalar(v)?
        .parse()
        .map_err(|_| Fault::new(BAD_PARAMS, "expected a whole number".into()))
}

fn string(params: &[Value], i: usize) -> Result<String, Fault> {
    params
        .get(i)
        .ok_or_else(|| Fault::new(BAD_PARAMS, format!("argument {} is missing", i + 1)))
        .and_then(scalar)
}

/// A request struct as the engine's [`Params`]: scalars as text, arrays
/// joined by commas, `X_params` structs as `X.KEY` keys.
pub fn to_params(v: Option<&Value>) -> Result<Params, Fault> {
    let Some(Value::Struct(members)) = v else {
        return Err(Fault::new(
            BAD_PARAMS,
            "expected one struct argument".into(),
        ));
    };
    let mut params = Params::new();
    for (key, value) in members {
        match value {
            Value::Struct(inner) => {
                let prefix = key.strip_suffix("_params").unwrap_or(key);
                for (k, v) in inner {
                    params.set(&format!("{prefix}.{k}"), scalar(v)?);
                }
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
                params.set(key, items.join(","));
            }
            other => params.set(key, scalar(other)?),
        }
    }
    Ok(params)
}

fn register(lib: &mut Registrar) {
    lib.frontend(
        ComponentSpec::new(
            "xmlrpc",
            env!("CARGO_PKG_VERSION"),
            "remote control over XML-RPC on HTTP (/RPC2, basic auth with the engine's token)",
        )
        .params(&[LISTEN, MAX_BODY]),
        XmlRpc::new,
    );
}

p2ner_plugin_api::export_plugin!(
    name: "p2ner-frontend-xmlrpc",
    version: env!("CARGO_PKG_VERSION"),
    license: "MIT OR Apache-2.0",
    register: register,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_needs_the_exact_token() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "secret"));
        let good = base64::engine::general_purpose::STANDARD.encode("p2ner:secret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {good}").parse().unwrap(),
        );
        assert!(authorized(&h, "secret"));
        assert!(!authorized(&h, "secreT"));
        let bad = base64::engine::general_purpose::STANDARD.encode("root:secret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {bad}").parse().unwrap(),
        );
        assert!(!authorized(&h, "secret"));
    }

    #[test]
    fn request_structs_become_params() {
        let call = MethodCall::from_xml(
            "<?xml version='1.0'?>\n<methodCall>\n<methodName>publish</methodName>\n<params>\n<param>\n<value><struct>\n<member>\n<name>title</name>\n<value><string>a</string></value>\n</member>\n<member>\n<name>bitrate_kbps</name>\n<value><int>300</int></value>\n</member>\n<member>\n<name>input_params</name>\n<value><struct>\n<member>\n<name>chunks</name>\n<value><string>5</string></value>\n</member>\n</struct></value>\n</member>\n<member>\n<name>servers</name>\n<value><array><data>\n<value><string>127.0.0.1:1</string></value>\n</data></array></value>\n</member>\n</struct></value>\n</param>\n</params>\n</methodCall>\n",
        )
        .unwrap();
        assert_eq!(call.name, "publish");
        let p = to_params(call.params.first()).unwrap();
        assert_eq!(p.get("title"), Some("a"));
        assert_eq!(p.get("bitrate_kbps"), Some("300"));
        assert_eq!(p.get("input.chunks"), Some("5"));
        assert_eq!(p.get("servers"), Some("127.0.0.1:1"));
    }

    #[test]
    fn json_numbers_keep_their_size() {
        assert_eq!(from_json(&serde_json::json!(5)), Value::Integer(5));
        assert_eq!(
            from_json(&serde_json::json!(1u64 << 40)),
            Value::Long(1 << 40)
        );
        assert_eq!(from_json(&serde_json::json!(0.5)), Value::Double(0.5));
    }
}
