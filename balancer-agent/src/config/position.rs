//! Where each key of a YAML document is: key path → line and column.
//!
//! serde reports type errors with a line; checks made after deserializing
//! (duplicate endpoints, bad regular expressions, Model::validate) only know
//! the key path. This index gives them the line too.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
};

/// A 1-based line and column in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Self {
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Key paths in the form serde_path_to_error prints them:
/// `services[0].endpoints[1].address`.
#[derive(Debug, Default)]
pub struct PositionIndex {
    at: HashMap<String, Position>,
}

enum Frame {
    /// In a mapping; `key` is the path of the entry whose value comes next,
    /// `None` when the next scalar is a key.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl PositionIndex {
    /// Indexes the first document of `text`. A document the YAML parser
    /// rejects gives an empty (or partial) index: serde reports that error.
    pub fn new(text: &str) -> Self {
        let mut index = PositionIndex::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        while let Ok((event, marker)) = parser.next_token() {
            match event {
                Event::StreamEnd | Event::DocumentEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key: key @ None }) = stack.last_mut() {
                        // A block mapping's own marker points past its first
                        // key: the first key marks the mapping.
                        index.at.entry(path.clone()).or_insert(marker.into());
                        let child = join(path, &value);
                        index.at.entry(child.clone()).or_insert(marker.into());
                        *key = Some(child);
                    } else {
                        index.value_at(&mut stack, marker);
                    }
                }
                Event::Alias(_) => {
                    index.value_at(&mut stack, marker);
                }
                Event::MappingStart(..) => {
                    let path = index.value_path(&mut stack);
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = index.value_at(&mut stack, marker);
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    // The collection was the value of its parent's key.
                    if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                        *key = None;
                    }
                }
                _ => {}
            }
        }
        index
    }

    /// Records a value (scalar or collection start) in the current frame and
    /// returns its path.
    fn value_at(&mut self, stack: &mut [Frame], marker: Marker) -> String {
        let path = self.value_path(stack);
        self.at.entry(path.clone()).or_insert(marker.into());
        path
    }

    /// The path of the next value in the current frame.
    fn value_path(&mut self, stack: &mut [Frame]) -> String {
        match stack.last_mut() {
            None => String::new(),
            Some(Frame::Seq { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                child
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => k,
                // A collection used as a key: give it a path nobody asks for.
                None => format!("{path}.?"),
            },
        }
    }

    /// The position of `path`, or of its nearest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.at.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
admin: 127.0.0.1:15000
services:
  - name: greeter
    endpoints:
      - { address: 127.0.0.1:50051, labels: { version: v1 } }
      - address: 127.0.0.1:50052
        labels:
          version: v2
    routes:
      - matches: [ { method: { regex: \"Say.*\" } } ]
";

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn finds_keys_in_block_and_flow_style() {
        let idx = PositionIndex::new(DOC);
        assert_eq!(idx.find("admin"), at(1, 1));
        assert_eq!(idx.find("services"), at(2, 1));
        assert_eq!(idx.find("services[0]"), at(3, 5));
        assert_eq!(idx.find("services[0].name"), at(3, 5));
        assert_eq!(idx.find("services[0].endpoints[0].address"), at(5, 11));
        assert_eq!(idx.find("services[0].endpoints[0].labels.version"), at(5, 47));
        assert_eq!(idx.find("services[0].endpoints[1].address"), at(6, 9));
        assert_eq!(idx.find("services[0].endpoints[1].labels.version"), at(8, 11));
        assert_eq!(idx.find("services[0].routes[0].matches[0].method.regex"), at(10, 32));
    }

    #[test]
    fn a_missing_key_falls_back_to_its_parent() {
        let idx = PositionIndex::new(DOC);
        assert_eq!(idx.find("services[0].routes[0].backends"), at(10, 9));
        assert_eq!(idx.find("nothing"), None);
    }

    #[test]
    fn broken_yaml_gives_no_panic() {
        let idx = PositionIndex::new("a: [1, 2\nb: {");
        let _ = idx.find("a");
    }
}
