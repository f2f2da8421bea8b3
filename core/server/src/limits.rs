//! Everything that keeps one client (or a flood of garbage) from taking the
//! server down: bounds on every field and count, and a per-source-IP token
//! bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use p2ner_proto::server::{encoded_len, PluginRef, StreamParams};

/// Upper bounds on what a client may store on the server. The field bounds
/// keep a stream's full description within one datagram with room for a
/// peer sample beside it.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// A stream's title, bytes.
    pub title: usize,
    /// A stream's description, bytes.
    pub description: usize,
    /// Input and container descriptions.
    pub codec: usize,
    /// A scheduler's or overlay's name.
    pub plugin_name: usize,
    /// A scheduler's or overlay's version requirement.
    pub plugin_version: usize,
    /// Parameters per plugin.
    pub plugin_params: usize,
    /// A parameter's name.
    pub param_key: usize,
    /// A parameter's value.
    pub param_value: usize,
    /// The encoded [`StreamParams`] as a whole.
    pub params_bytes: usize,
    /// A browse filter.
    pub filter: usize,
    /// Live peers one swarm may list.
    pub peers_per_stream: usize,
    /// Live peers all swarms may list together.
    pub peers_total: usize,
    /// Streams one publisher key may keep in the catalogue.
    pub streams_per_publisher: usize,
    /// Streams the catalogue may hold.
    pub streams_total: usize,
    /// Source addresses the rate limiter remembers at once.
    pub rate_sources: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            title: 100,
            description: 300,
            codec: 100,
            plugin_name: 32,
            plugin_version: 16,
            plugin_params: 8,
            param_key: 32,
            param_value: 64,
            params_bytes: 640,
            filter: 64,
            peers_per_stream: 10_000,
            peers_total: 1_000_000,
            streams_per_publisher: 16,
            streams_total: 10_000,
            rate_sources: 100_000,
        }
    }
}

impl Bounds {
    /// Checks a stream's parameters; the error names the offending field.
    pub fn check_params(&self, p: &StreamParams) -> Result<(), String> {
        let text = |name: &str, value: &str, max: usize| {
            if value.len() > max {
                Err(format!("{name} is {} bytes, at most {max}", value.len()))
            } else if value.chars().any(|c| c.is_control() && c != '\n') {
                Err(format!("{name} contains control characters"))
            } else {
                Ok(())
            }
        };
        if p.title.trim().is_empty() {
            return Err("title is empty".into());
        }
        text("title", &p.title, self.title)?;
        text("description", &p.description, self.description)?;
        text("input", &p.input, self.codec)?;
        text("container", &p.container, self.codec)?;
        for (what, plugin) in [("scheduler", &p.scheduler), ("overlay", &p.overlay)] {
            self.check_plugin(what, plugin, &text)?;
        }
        if p.chunk_ms == 0 || p.chunk_ms > 60_000 {
            return Err(format!("chunk_ms {} is outside 1..=60000", p.chunk_ms));
        }
        if p.buffer_ms > 600_000 {
            return Err(format!("buffer_ms {} is over 600000", p.buffer_ms));
        }
        let size = encoded_len(p);
        if size > self.params_bytes {
            return Err(format!(
                "parameters take {size} bytes, at most {}",
                self.params_bytes
            ));
        }
        Ok(())
    }

    fn check_plugin(
        &self,
        what: &str,
        plugin: &PluginRef,
        text: &impl Fn(&str, &str, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        if plugin.name.is_empty() {
            return Err(format!("{what} name is empty"));
        }
        text(&format!("{what} name"), &plugin.name, self.plugin_name)?;
        text(
            &format!("{what} version"),
            &plugin.version,
            self.plugin_version,
        )?;
        if plugin.params.len() > self.plugin_params {
            return Err(format!(
                "{what} has {} parameters, at most {}",
                plugin.params.len(),
                self.plugin_params
            ));
        }
        for (k, v) in &plugin.params {
            text(&format!("{what} parameter name"), k, self.param_key)?;
            text(&format!("{what} parameter {k}"), v, self.param_value)?;
        }
        Ok(())
    }
}

/// Requests per second a source IP may send, and the burst it may save up.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may come at once after a quiet spell.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 200.0,
            burst: 400.0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per source IP (not per port: a port is free to change).
///
/// The table is bounded: idle buckets (refilled to the brim) carry no
/// information and are dropped on [`sweep`](Self::sweep) or when the table is
/// full; if it is still full, unknown sources are refused until it drains,
/// which bounds memory under a spoofed-source flood.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// A limiter that remembers at most `max_sources` addresses (bounded state under a flood of spoofed sources).
    pub fn new(limit: RateLimit, max_sources: usize) -> Self {
        RateLimiter {
            limit,
            max_sources,
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens from `ip`'s bucket; false if it has not got them.
    pub fn allow(&mut self, ip: IpAddr, cost: f64, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            self.sweep(now);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let limit = self.limit;
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limit.per_second).min(limit.burst);
        b.last = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Forgets the sources whose bucket has refilled.
    pub fn sweep(&mut self, now: Instant) {
        let limit = self.limit;
        let full_after = Duration::from_secs_f64(limit.burst / limit.per_second.max(1e-9));
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }

    /// Source addresses remembered now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StreamParams {
        StreamParams {
            title: "t".into(),
            bitrate_kbps: 500,
            chunk_ms: 500,
            buffer_ms: 5000,
            scheduler: PluginRef::new("pull", "0.1.0"),
            overlay: PluginRef::new("mesh", "0.1.0"),
            input: "h264".into(),
            container: "mpegts".into(),
            ..Default::default()
        }
    }

    #[test]
    fn params_bounds() {
        let b = Bounds::default();
        b.check_params(&params()).unwrap();
        let mut p = params();
        p.title = "x".repeat(101);
        assert!(b.check_params(&p).unwrap_err().contains("title"));
        let mut p = params();
        p.title = "a\u{7}b".into();
        assert!(b.check_params(&p).unwrap_err().contains("control"));
        let mut p = params();
        for i in 0..9 {
            p.scheduler.params.insert(format!("k{i}"), "v".into());
        }
        assert!(b.check_params(&p).unwrap_err().contains("scheduler has 9"));
        // Every field at its bound still fits the overall budget check.
        let mut p = params();
        p.description = "d".repeat(300);
        p.title = "t".repeat(100);
        for i in 0..8 {
            p.overlay.params.insert(format!("k{i}"), "v".repeat(64));
        }
        assert!(b
            .check_params(&p)
            .unwrap_err()
            .contains("bytes, at most 640"));
    }

    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(
            RateLimit {
                per_second: 10.0,
                burst: 5.0,
            },
            2,
        );
        let a: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..5 {
            assert!(r.allow(a, 1.0, t0));
        }
        assert!(!r.allow(a, 1.0, t0));
        assert!(r.allow(a, 1.0, t0 + Duration::from_millis(100)));
        // Table full: a third source is refused until the others are idle.
        assert!(r.allow([10, 0, 0, 2].into(), 1.0, t0));
        assert!(!r.allow([10, 0, 0, 3].into(), 1.0, t0));
        assert!(r.allow([10, 0, 0, 3].into(), 1.0, t0 + Duration::from_secs(2)));
        assert_eq!(r.sources(), 1);
    }
}
