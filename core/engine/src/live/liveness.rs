//! Noticing that a subscription's publisher is gone, sans-IO.
//!
//! A dead publisher sends nothing that says so (kill -9, a crash, a cut
//! cable): its subscribers would drain their buffers and then play nothing,
//! forever. Two signals end such a subscription:
//!
//! - **The server's word.** Once no new chunk has arrived for
//!   [`Liveness::ask_after_us`], the subscriber asks its server about the
//!   stream, once a second. An answer that the stream is gone (removed) or
//!   its publisher offline (stopped heartbeating) ends it. Only asked while
//!   silent, so a restarted server, which sees every stream offline until
//!   the next heartbeats, cannot end a stream that plays.
//! - **Silence.** No new chunk for the stream's `silence_ms` (whatever the
//!   server says, or when it cannot be reached) fails it.
//!
//! The driver feeds it the count of new chunks and the server's answers and
//! does what [`Step`] says; nothing here reads a clock.

/// What the driver should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Carry on.
    Nothing,
    /// Ask the server whether the stream and its publisher are still there.
    AskServer,
    /// The publisher is gone: end the subscription.
    Gone(Gone),
}

/// How a subscription learnt that its publisher is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// The server said so: the stream ended (state `ended`).
    Ended(String),
    /// Nothing arrived for the stream's silence time (state `failed`).
    Failed(String),
}

/// A server's answer about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The publisher heartbeats.
    Online,
    /// The publisher stopped heartbeating.
    Offline,
    /// The stream is not in the catalogue (removed by its publisher, or expired).
    NotFound,
    /// No answer, or an error that says nothing about the stream.
    Unknown,
}

/// The default silence before a publisher is taken for gone: ten seconds,
/// or four play-out buffers if that is longer (a deep buffer is chosen for a
/// bursty source), or ten chunks of a slow stream.
pub fn default_silence_us(buffer_ms: u32, chunk_ms: u32) -> u64 {
    let ms = (10_000u64)
        .max(4 * buffer_ms as u64)
        .max(10 * chunk_ms as u64);
    ms * 1000
}

/// One subscription's watch on its publisher.
#[derive(Debug, Clone)]
pub struct Liveness {
    silence_us: u64,
    /// Silence after which the server is asked.
    pub ask_after_us: u64,
    ask_every_us: u64,
    last_new_us: u64,
    seen: u64,
    asked_us: Option<u64>,
    in_flight: bool,
}

impl Liveness {
    /// Starts counting silence at `now_us` (the subscription's start:
    /// a stream that never delivers is as dead as one that stopped).
    pub fn new(now_us: u64, silence_us: u64, chunk_us: u64) -> Self {
        let silence_us = silence_us.max(1);
        Liveness {
            silence_us,
            ask_after_us: (2_000_000u64).max(3 * chunk_us).min(silence_us),
            ask_every_us: 1_000_000,
            last_new_us: now_us,
            seen: 0,
            asked_us: None,
            in_flight: false,
        }
    }

    /// The silence after which the publisher is taken for gone.
    pub fn silence_us(&self) -> u64 {
        self.silence_us
    }

    /// `received` is the running count of first copies of chunks.
    pub fn chunks(&mut self, now_us: u64, received: u64) {
        if received > self.seen {
            self.seen = received;
            self.last_new_us = now_us;
        }
    }

    fn silent_us(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.last_new_us)
    }

    /// What to do at `now_us` (call every tick).
    pub fn poll(&mut self, now_us: u64) -> Step {
        let silent = self.silent_us(now_us);
        if silent >= self.silence_us {
            return Step::Gone(Gone::Failed(format!(
                "no new chunk for {:.0} s: the publisher is gone or cannot be reached",
                silent as f64 / 1e6
            )));
        }
        if silent >= self.ask_after_us
            && !self.in_flight
            && self
                .asked_us
                .is_none_or(|t| now_us >= t + self.ask_every_us)
        {
            self.asked_us = Some(now_us);
            self.in_flight = true;
            return Step::AskServer;
        }
        Step::Nothing
    }

    /// The server answered (the join answer counts too).
    pub fn server_said(&mut self, now_us: u64, answer: Answer) -> Step {
        self.in_flight = false;
        if self.silent_us(now_us) < self.ask_after_us {
            return Step::Nothing;
        }
        match answer {
            Answer::Offline => Step::Gone(Gone::Ended(
                "the publisher is offline (it stopped heartbeating to the server)".into(),
            )),
            Answer::NotFound => Step::Gone(Gone::Ended("the publisher ended the stream".into())),
            Answer::Online | Answer::Unknown => Step::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn silence_fails_and_asks_the_server_first() {
        let mut l = Liveness::new(0, 10 * S, 100_000);
        l.chunks(S, 5);
        assert_eq!(l.poll(2 * S), Step::Nothing);
        assert_eq!(l.poll(3 * S), Step::AskServer);
        // One question at a time, once a second.
        assert_eq!(l.poll(3 * S + 500_000), Step::Nothing);
        assert_eq!(
            l.server_said(3 * S + 600_000, Answer::Online),
            Step::Nothing
        );
        assert_eq!(l.poll(3 * S + 800_000), Step::Nothing);
        assert_eq!(l.poll(4 * S), Step::AskServer);
        assert_eq!(l.server_said(4 * S, Answer::Unknown), Step::Nothing);
        assert!(matches!(l.poll(11 * S), Step::Gone(Gone::Failed(_))));
    }

    #[test]
    fn the_server_is_believed_only_while_silent() {
        let mut l = Liveness::new(0, 10 * S, 100_000);
        l.chunks(S, 1);
        // A restarted server sees every stream offline for a moment.
        assert_eq!(l.server_said(S, Answer::Offline), Step::Nothing);
        assert_eq!(l.poll(3 * S), Step::AskServer);
        assert!(matches!(
            l.server_said(3 * S, Answer::Offline),
            Step::Gone(Gone::Ended(_))
        ));
        let mut l = Liveness::new(0, 10 * S, 100_000);
        assert_eq!(l.poll(2 * S), Step::AskServer);
        assert!(matches!(
            l.server_said(2 * S, Answer::NotFound),
            Step::Gone(Gone::Ended(_))
        ));
    }

    #[test]
    fn new_chunks_keep_it_alive() {
        let mut l = Liveness::new(0, 10 * S, 100_000);
        for i in 1..100 {
            l.chunks(i * S, i);
            assert_eq!(l.poll(i * S), Step::Nothing);
        }
        // The same count is no news.
        l.chunks(200 * S, 99);
        assert!(matches!(l.poll(200 * S), Step::Gone(_)));
    }

    #[test]
    fn defaults() {
        assert_eq!(default_silence_us(1000, 100), 10 * S);
        assert_eq!(default_silence_us(5000, 100), 20 * S);
        assert_eq!(default_silence_us(0, 2000), 20 * S);
        // A short silence is asked about within it.
        assert_eq!(Liveness::new(0, S, 100_000).ask_after_us, S);
    }
}
