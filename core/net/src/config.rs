//! Knobs of the network layer, with defaults safe on any path.

use std::time::Duration;

/// Configuration of an [`crate::Endpoint`].
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Largest UDP payload (whole datagram: our header included). 1200 bytes
    /// passes any path MTU (IPv6 minimum 1280 minus headers) without
    /// fragmentation.
    pub max_payload: usize,
    /// LEDBAT target queuing delay (25 ms as libswift).
    pub target_delay: Duration,
    /// Upload cap over all neighbours and both channels, kbit/s of UDP payload.
    pub upload_kbps: Option<u64>,
    /// Transmissions of a critical control message before it is reported
    /// failed.
    pub max_tries: u32,
    /// RTO before any RTT sample of a neighbour.
    pub rto_initial: Duration,
    /// The RTO never goes below this, however short the RTT (spurious retransmissions).
    pub rto_min: Duration,
    /// The RTO never grows beyond this, so a lost peer is noticed in bounded time.
    pub rto_max: Duration,
    /// Incomplete chunks are dropped after this long.
    pub reassembly_timeout: Duration,
    /// Bytes all incomplete chunks may hold together.
    pub reassembly_max_bytes: usize,
    /// Largest media chunk accepted for sending or reassembly.
    pub max_chunk: usize,
    /// Transmissions of one data fragment before its chunk is abandoned.
    pub max_data_tries: u32,
    /// Bound of the event channel.
    pub event_capacity: usize,
    /// Largest congestion window.
    pub max_cwnd: usize,
    /// Neighbour states kept at most (protects against spoofed sources).
    pub max_peers: usize,
    /// Half-open handshakes (address proven, keys not yet) kept at most.
    pub max_handshakes: usize,
    /// SO_RCVBUF / SO_SNDBUF requested.
    pub socket_buffer: usize,
    /// Test only: probability of dropping each received datagram.
    pub drop_rate: f64,
    /// Test only: probability of dropping each datagram to be sent.
    pub send_drop_rate: f64,
    /// Seed for the injected loss.
    pub seed: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            max_payload: 1200,
            target_delay: Duration::from_millis(25),
            upload_kbps: None,
            max_tries: 6,
            rto_initial: Duration::from_millis(300),
            rto_min: Duration::from_millis(50),
            rto_max: Duration::from_secs(2),
            reassembly_timeout: Duration::from_secs(5),
            reassembly_max_bytes: 32 << 20,
            max_chunk: 1 << 20,
            max_data_tries: 10,
            event_capacity: 1024,
            max_cwnd: 16 << 20,
            max_peers: 4096,
            max_handshakes: 256,
            socket_buffer: 4 << 20,
            drop_rate: 0.0,
            send_drop_rate: 0.0,
            seed: 0,
        }
    }
}

impl NetConfig {
    /// Largest control payload that fits one datagram.
    pub fn max_control_payload(&self) -> usize {
        self.max_payload
            .saturating_sub(crate::wire::RELIABLE_OVERHEAD)
    }
}
