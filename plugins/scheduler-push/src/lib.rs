//! p2ner scheduler-push (work in progress).
