//! A private network namespace for tests that want the kernel to impair
//! their traffic: loss from nftables on the namespace's loopback, a
//! bottleneck from `tc tbf`. Used by `p2ner-net`'s link tests and by the
//! end-to-end swarm tests.
//!
//! Making one needs root and iproute2 (nftables, tc for the impairments);
//! where that is missing [`Netns::new`] returns `None` and the test says it
//! skipped.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace with its loopback up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace; `None` where namespaces cannot be made here (not
    /// root, no iproute2).
    pub fn new() -> Option<Netns> {
        let name = format!(
            "p2ns-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns { name };
        let up = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        up.then_some(ns)
    }

    /// The namespace's name (`ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?} failed");
    }

    /// A command that runs `prog` inside the namespace.
    pub fn exec(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// Drops `pct`% of the UDP packets entering the namespace's loopback
    /// (every packet between two local processes passes there once, so data
    /// and acknowledgements both suffer). False if nftables refused.
    pub fn udp_loss(&self, pct: u32) -> bool {
        let rules = format!(
            "table netdev p2ner_loss {{\n chain ingress {{\n  type filter hook ingress device \"lo\" priority 0;\n  meta l4proto udp numgen random mod 100 < {pct} drop\n }}\n}}\n"
        );
        let Ok(mut child) = self
            .exec("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
        else {
            return false;
        };
        let wrote = child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .is_ok();
        child.wait().is_ok_and(|s| s.success()) && wrote
    }

    /// A token-bucket bottleneck of `rate` (`2mbit`) with up to `latency`
    /// (`500ms`) of queue on the loopback. False if tc refused.
    pub fn tbf(&self, rate: &str, latency: &str) -> bool {
        self.exec("tc")
            .args(["qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate])
            .args(["burst", "3000", "latency", latency])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
