//! p2ner codec-vlc (work in progress).
