//! The catalogue on disk: an embedded SQLite database.
//!
//! Only what must survive a crash lives here: each stream's owner and
//! parameters, and each publisher key's last accepted counter (replay
//! protection must survive a restart, or a recorded message could be played
//! back to a freshly restarted server). Who is online is soft state
//! ([`crate::live`]) that heartbeats rebuild.
//!
//! WAL with `synchronous=NORMAL`: a committed change survives the server
//! process being killed at any point (it is in the WAL, which the OS has);
//! only a power cut may lose the last few commits.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use p2ner_proto::identity::PublicKey;
use p2ner_proto::server::{StreamId, StreamParams};

/// The schema this build writes; `PRAGMA user_version` in the file.
pub const SCHEMA_VERSION: i32 = 1;

/// What went wrong with the catalogue's database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    /// Written by a newer build: refused rather than misread.
    #[error("database schema version {found} is newer than this build's {SCHEMA_VERSION}")]
    NewerSchema {
        /// The file's schema version.
        found: i32,
    },
    /// A row that does not decode (a damaged or hand-edited file).
    #[error("stored parameters of stream {id} are unreadable: {error}")]
    BadParams {
        /// The stream.
        id: String,
        /// Why.
        error: String,
    },
}

/// A catalogue entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredStream {
    /// The stream's id.
    pub id: StreamId,
    /// Whose stream it is: only this key may change or remove it.
    pub publisher: PublicKey,
    /// What the stream runs.
    pub params: StreamParams,
}

/// The persistent catalogue, in SQLite: streams outlive a server restart, liveness does not.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::setup(Connection::open(path)?)
    }

    /// A database in memory (unit tests, benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // journal_mode answers a row; in memory it stays "memory", which is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS publishers (
                     key     BLOB PRIMARY KEY,
                     counter INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS streams (
                     id        TEXT PRIMARY KEY,
                     publisher BLOB NOT NULL REFERENCES publishers(key),
                     params    TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS streams_by_publisher ON streams(publisher);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        Ok(Store { conn })
    }

    /// Every stream, for the in-memory index built at start-up.
    pub fn streams(&self) -> Result<Vec<StoredStream>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, publisher, params FROM streams ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, key, params) = row?;
            let bad = |error: String| StoreError::BadParams {
                id: id.clone(),
                error,
            };
            let key: [u8; 32] = key
                .try_into()
                .map_err(|_| bad("publisher key is not 32 bytes".into()))?;
            let params = serde_json::from_str(&params).map_err(|e| bad(e.to_string()))?;
            out.push(StoredStream {
                id: StreamId(id),
                publisher: PublicKey(key),
                params,
            });
        }
        Ok(out)
    }

    /// The last counter accepted from `key` (0 if none).
    pub fn counter(&self, key: &PublicKey) -> Result<u64, StoreError> {
        let c: Option<i64> = self
            .conn
            .query_row(
                "SELECT counter FROM publishers WHERE key = ?1",
                [&key.0[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(c.map_or(0, |c| c as u64))
    }

    /// Every key's counter, loaded once at start-up.
    pub fn counters(&self) -> Result<Vec<(PublicKey, u64)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT key, counter FROM publishers")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, counter) = row?;
            if let Ok(key) = <[u8; 32]>::try_from(key) {
                out.push((PublicKey(key), counter as u64));
            }
        }
        Ok(out)
    }

    /// Records `counter` as the last accepted from `key`.
    pub fn set_counter(&self, key: &PublicKey, counter: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO publishers (key, counter) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET counter = excluded.counter",
            params![&key.0[..], counter as i64],
        )?;
        Ok(())
    }

    /// Inserts or replaces a stream and moves its owner's counter, in one
    /// transaction (a crash never leaves one without the other).
    pub fn put(&mut self, stream: &StoredStream, counter: u64) -> Result<(), StoreError> {
        let params = serde_json::to_string(&stream.params).expect("params serialize");
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO publishers (key, counter) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET counter = excluded.counter",
            params![&stream.publisher.0[..], counter as i64],
        )?;
        tx.execute(
            "INSERT INTO streams (id, publisher, params) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET params = excluded.params
             WHERE publisher = excluded.publisher",
            params![stream.id.as_str(), &stream.publisher.0[..], params],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a stream (and, when `counter` is given, records it as its
    /// owner's last, in the same transaction).
    pub fn delete(
        &mut self,
        id: &StreamId,
        owner_counter: Option<(&PublicKey, u64)>,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        if let Some((key, counter)) = owner_counter {
            tx.execute(
                "UPDATE publishers SET counter = ?2 WHERE key = ?1",
                params![&key.0[..], counter as i64],
            )?;
        }
        let n = tx.execute("DELETE FROM streams WHERE id = ?1", [id.as_str()])?;
        tx.commit()?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ner_proto::identity::Identity;

    fn stream(id: &str, key: PublicKey, title: &str) -> StoredStream {
        StoredStream {
            id: id.into(),
            publisher: key,
            params: StreamParams {
                title: title.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn crud_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let key = Identity::from_secret([1; 32]).public_key();
        {
            let mut s = Store::open(&path).unwrap();
            s.put(&stream("a", key, "one"), 10).unwrap();
            s.put(&stream("b", key, "two"), 11).unwrap();
            s.put(&stream("a", key, "uno"), 12).unwrap();
            assert!(s.delete(&"b".into(), Some((&key, 13))).unwrap());
            assert!(!s.delete(&"b".into(), None).unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.streams().unwrap(), vec![stream("a", key, "uno")]);
        assert_eq!(s.counter(&key).unwrap(), 13);
        assert_eq!(s.counters().unwrap(), vec![(key, 13)]);
        let v: i32 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn put_never_moves_a_stream_to_another_owner() {
        let mut s = Store::in_memory().unwrap();
        let a = Identity::from_secret([1; 32]).public_key();
        let b = Identity::from_secret([2; 32]).public_key();
        s.put(&stream("x", a, "mine"), 1).unwrap();
        s.put(&stream("x", b, "theirs"), 1).unwrap();
        assert_eq!(s.streams().unwrap(), vec![stream("x", a, "mine")]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::NewerSchema { found: 7 })
        ));
    }
}
