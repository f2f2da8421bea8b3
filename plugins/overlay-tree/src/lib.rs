//! p2ner overlay-tree (work in progress).
