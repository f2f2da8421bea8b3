//! The command line as a remote client: `--engine URL` (or `P2NER_ENGINE`)
//! sends `publish`, `subscribe`, `streams`, `sessions`, `stop` and `stats`
//! to a running engine's `xmlrpc` frontend instead of running one here.
//!
//! The URL is the frontend's (`http://p2ner:TOKEN@127.0.0.1:7780/RPC2`);
//! without a token in it, the engine's default token file is used.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use dxr::{FaultResponse, MethodCall, MethodResponse, Value};
use serde_json::Value as Json;

pub struct Remote {
    agent: ureq::Agent,
    url: String,
    auth: Option<String>,
}

impl Remote {
    pub fn new(url: &str) -> Result<Remote> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow!("--engine '{url}': not an http://HOST:PORT/RPC2 URL"))?;
        if scheme != "http" {
            bail!("--engine '{url}': only http:// is served by the xmlrpc frontend");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/RPC2"),
        };
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let token = match userinfo {
            Some(u) => Some(u.split_once(':').map_or(u, |(_, t)| t).to_owned()),
            None => crate::run::default_token_file()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|t| t.trim().to_owned()),
        };
        let auth = token.map(|t| {
            let pair = format!("p2ner:{t}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Remote {
            agent,
            url: format!("http://{host}{path}"),
            auth,
        })
    }

    /// One call; a fault is an error with the engine's one-line message.
    pub fn call(&self, method: &str, params: Vec<Value>) -> Result<Json> {
        let body = MethodCall {
            name: method.into(),
            params,
        }
        .to_xml()
        .map_err(|e| anyhow!("{e}"))?;
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "text/xml");
        if let Some(auth) = &self.auth {
            req = req.header("Authorization", auth);
        }
        let mut resp = req
            .send(body)
            .with_context(|| format!("no engine answers at {}", self.url))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the engine's answer from {}", self.url))?;
        if status.as_u16() == 401 {
            bail!(
                "the engine at {} refused the token (HTTP 401): use http://p2ner:TOKEN@HOST:PORT/RPC2",
                self.url
            );
        }
        if !status.is_success() {
            bail!("the engine at {} answered HTTP {status}", self.url);
        }
        if let Ok(ok) = MethodResponse::from_xml(&text) {
            return Ok(to_json(&ok.value));
        }
        if let Ok(fault) = FaultResponse::from_xml(&text) {
            bail!("{}", fault.fault.string());
        }
        bail!("the engine's answer is not XML-RPC")
    }
}

pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Integer(i) => Json::from(*i),
        Value::Long(i) => Json::from(*i),
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Double(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Struct(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        other => Json::String(format!("{other:?}")),
    }
}

pub fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// A struct of strings (and nested structs of strings for `*_params`).
pub struct Request(std::collections::BTreeMap<String, Value>);

impl Request {
    pub fn new() -> Self {
        Request(Default::default())
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.0
            .insert(key.to_owned(), Value::String(value.to_string()));
        self
    }

    pub fn int(&mut self, key: &str, value: Option<u32>) -> &mut Self {
        if let Some(v) = value {
            self.0.insert(key.to_owned(), Value::Integer(v as i32));
        }
        self
    }

    pub fn params(&mut self, key: &str, pairs: &[(String, String)]) -> &mut Self {
        if !pairs.is_empty() {
            let inner = pairs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            self.0.insert(key.to_owned(), Value::Struct(inner));
        }
        self
    }

    pub fn array(&mut self, key: &str, items: &[String]) -> &mut Self {
        if !items.is_empty() {
            self.0.insert(
                key.to_owned(),
                Value::Array(items.iter().map(|s| string(s)).collect()),
            );
        }
        self
    }

    pub fn value(&self) -> Value {
        Value::Struct(self.0.clone())
    }
}

/// The session's entry in `sessions()`.
pub fn session(remote: &Remote, id: &str) -> Result<Json> {
    let all = remote.call("sessions", vec![])?;
    all.as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"].as_str() == Some(id))
        .cloned()
        .ok_or_else(|| anyhow!("no session '{id}' in the engine"))
}

fn running(s: &Json) -> bool {
    matches!(s["state"].as_str(), Some("starting" | "playing"))
}

/// Waits while a session runs (at most `run_for`), writing its stats lines
/// to `stats` as they change; stops it when the time is up. Returns the
/// final line and the session's entry.
pub fn follow(
    remote: &Remote,
    id: &str,
    run_for: Option<Duration>,
    mut stats: Option<Box<dyn std::io::Write>>,
) -> Result<(Json, Json)> {
    let start = std::time::Instant::now();
    let mut last_t = None;
    loop {
        let s = session(remote, id)?;
        let line = remote.call("stats", vec![string(id)])?;
        if let Some(out) = &mut stats {
            let t = line.get("t_ms").cloned();
            if t.is_some() && t != last_t && line.get("final").is_none() {
                writeln!(out, "{line}")?;
                last_t = t;
            }
        }
        if !running(&s) {
            if let Some(out) = &mut stats {
                writeln!(out, "{line}")?;
            }
            return Ok((line, s));
        }
        if run_for.is_some_and(|d| start.elapsed() >= d) {
            remote.call("stop", vec![string(id)])?;
            // The session winds down (leaves its servers) and keeps its summary.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let s = session(remote, id)?;
                if !running(&s) || std::time::Instant::now() > deadline {
                    let line = remote.call("stats", vec![string(id)])?;
                    if let Some(out) = &mut stats {
                        writeln!(out, "{line}")?;
                    }
                    return Ok((line, s));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
