//! The p2ner server (work in progress).
