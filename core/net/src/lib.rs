//! The p2ner network layer (work in progress).
