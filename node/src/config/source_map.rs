//! Where each field of a YAML document is: a map from field path
//! (`["functions", "hello", "http", "path"]`) to the line and column of its key
//! and of its value, built from saphyr-parser events.
//!
//! serde_yaml_ng locates the errors it finds itself; this map locates the
//! errors found after deserializing (bad names, duplicate routes, missing
//! files). It also finds YAML syntax errors and duplicate keys, which serde
//! would report poorly or, for maps, not at all.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser, ScanError, Span, StrInput};

/// Nesting deeper than this is not a project file; the limit keeps the
/// recursive walk far from the stack's end on hostile input.
const MAX_DEPTH: usize = 64;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The first character of the file.
    pub const START: Position = Position { line: 1, column: 1 };

    fn from_span(span: &Span) -> Self {
        // saphyr: lines are 1-based, columns 0-based.
        Position {
            line: span.start.line().max(1),
            column: span.start.col() + 1,
        }
    }
}

/// What the document's root node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootKind {
    /// No document, or a document that is only `null`/`~`/nothing.
    Empty,
    Mapping,
    Sequence,
    Scalar,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Where the key is; `None` for the root and for sequence items.
    key: Option<Position>,
    value: Position,
    value_is_scalar: bool,
}

/// A key that appears twice in one mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the mapping that holds the key.
    pub parent: Vec<String>,
    pub key: String,
    pub first: Position,
    pub second: Position,
}

/// Why the map could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceMapError {
    /// The text is not YAML.
    Syntax { info: String, at: Position },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep { at: Position },
}

impl From<ScanError> for SourceMapError {
    fn from(error: ScanError) -> Self {
        let marker = error.marker();
        SourceMapError::Syntax {
            info: error.info().to_string(),
            at: Position {
                line: marker.line().max(1),
                column: marker.col() + 1,
            },
        }
    }
}

/// Positions of every key and value in the first document of a YAML text.
#[derive(Clone, Debug)]
pub struct SourceMap {
    entries: BTreeMap<Vec<String>, Entry>,
    root: RootKind,
    duplicates: Vec<DuplicateKey>,
}

impl SourceMap {
    /// Parse `text` and record where everything is.
    pub fn build(text: &str) -> Result<Self, SourceMapError> {
        let mut walker = Walker {
            parser: Parser::new_from_str(text),
            map: SourceMap {
                entries: BTreeMap::new(),
                root: RootKind::Empty,
                duplicates: Vec::new(),
            },
            last: Position::START,
        };
        walker.document()?;
        Ok(walker.map)
    }

    /// What the root node is.
    pub fn root(&self) -> RootKind {
        self.root
    }

    /// Keys that appear twice in one mapping, in file order.
    pub fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    /// Where to point for an error about `path`: the value when it is a
    /// scalar, else its key (a block mapping's "value" starts on the next
    /// line, which reads as pointing at the wrong field). A path that is not
    /// in the file (a missing field) falls back to its nearest ancestor.
    pub fn locate(&self, path: &[&str]) -> Position {
        for len in (0..=path.len()).rev() {
            if let Some(entry) = self.entry(&path[..len]) {
                if entry.value_is_scalar {
                    return entry.value;
                }
                return entry.key.unwrap_or(entry.value);
            }
        }
        Position::START
    }

    /// Where the key of `path` is, if it is in the file.
    pub fn key(&self, path: &[&str]) -> Option<Position> {
        self.entry(path).and_then(|e| e.key)
    }

    fn entry(&self, path: &[&str]) -> Option<&Entry> {
        let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        self.entries.get(&key)
    }
}

struct Walker<'a> {
    parser: Parser<'a, StrInput<'a>>,
    map: SourceMap,
    /// Position of the last event, for errors at the end of the input.
    last: Position,
}

impl<'a> Walker<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SourceMapError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => {
                self.last = Position::from_span(&span);
                Ok((event, span))
            }
            Some(Err(error)) => Err(error.into()),
            None => Err(SourceMapError::Syntax {
                info: "unexpected end of input".to_string(),
                at: self.last,
            }),
        }
    }

    /// Walk the first document; later documents are serde's to reject.
    fn document(&mut self) -> Result<(), SourceMapError> {
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::Nothing => continue,
                Event::StreamEnd => return Ok(()),
                Event::DocumentStart(_) => break,
                other => {
                    // The parser always opens a document before any node.
                    debug_assert!(false, "unexpected event before a document: {other:?}");
                    return Err(SourceMapError::Syntax {
                        info: "unexpected content before the document".to_string(),
                        at: Position::from_span(&span),
                    });
                }
            }
        }
        let (event, span) = self.next()?;
        if matches!(event, Event::DocumentEnd) {
            return Ok(());
        }
        self.map.root = match &event {
            Event::MappingStart(..) => RootKind::Mapping,
            Event::SequenceStart(..) => RootKind::Sequence,
            Event::Scalar(value, style, _, _)
                if *style == saphyr_parser::ScalarStyle::Plain
                    && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL") =>
            {
                RootKind::Empty
            }
            _ => RootKind::Scalar,
        };
        let mut path = Vec::new();
        self.node(event, span, &mut path, None, 0)
    }

    /// Record the node that starts with `event`, and everything inside it.
    fn node(
        &mut self,
        event: Event<'a>,
        span: Span,
        path: &mut Vec<String>,
        key: Option<Position>,
        depth: usize,
    ) -> Result<(), SourceMapError> {
        let at = Position::from_span(&span);
        if depth > MAX_DEPTH {
            return Err(SourceMapError::TooDeep { at });
        }
        let is_scalar = matches!(event, Event::Scalar(..) | Event::Alias(..));
        // The first occurrence wins; later duplicates are reported separately.
        self.map.entries.entry(path.clone()).or_insert(Entry {
            key,
            value: at,
            value_is_scalar: is_scalar,
        });
        match event {
            Event::Scalar(..) | Event::Alias(..) => Ok(()),
            Event::SequenceStart(..) => {
                let mut index = 0usize;
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        return Ok(());
                    }
                    path.push(index.to_string());
                    let result = self.node(event, span, path, None, depth + 1);
                    path.pop();
                    result?;
                    index += 1;
                }
            }
            Event::MappingStart(..) => {
                let mut seen: BTreeMap<String, Position> = BTreeMap::new();
                loop {
                    let (key_event, key_span) = self.next()?;
                    if matches!(key_event, Event::MappingEnd) {
                        return Ok(());
                    }
                    let key_at = Position::from_span(&key_span);
                    let key_name = match &key_event {
                        Event::Scalar(value, ..) => value.to_string(),
                        // A mapping or sequence used as a key: walk it so the
                        // event stream stays in step; serde rejects it.
                        _ => {
                            let mut ignored = vec!["?".to_string()];
                            self.node(key_event, key_span, &mut ignored, None, depth + 1)?;
                            "?".to_string()
                        }
                    };
                    if let Some(first) = seen.get(&key_name) {
                        self.map.duplicates.push(DuplicateKey {
                            parent: path.clone(),
                            key: key_name.clone(),
                            first: *first,
                            second: key_at,
                        });
                    } else {
                        seen.insert(key_name.clone(), key_at);
                    }
                    let (value_event, value_span) = self.next()?;
                    path.push(key_name);
                    let result = self.node(value_event, value_span, path, Some(key_at), depth + 1);
                    path.pop();
                    result?;
                }
            }
            other => {
                debug_assert!(false, "a node cannot start with {other:?}");
                Err(SourceMapError::Syntax {
                    info: format!("unexpected YAML event {other:?}"),
                    at,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_and_values() {
        let text = "project: shop\nfunctions:\n  hello:\n    wasm: a.wasm\n    http: { path: /hello, methods: [GET] }\n";
        let map = SourceMap::build(text).unwrap();
        assert_eq!(map.root(), RootKind::Mapping);
        assert_eq!(
            map.locate(&["project"]),
            Position {
                line: 1,
                column: 10
            }
        );
        assert_eq!(
            map.key(&["functions", "hello"]),
            Some(Position { line: 3, column: 3 })
        );
        // A mapping value: point at its key.
        assert_eq!(
            map.locate(&["functions", "hello"]),
            Position { line: 3, column: 3 }
        );
        assert_eq!(
            map.locate(&["functions", "hello", "http", "path"]),
            Position {
                line: 5,
                column: 19
            }
        );
        assert_eq!(
            map.locate(&["functions", "hello", "http", "methods", "0"]),
            Position {
                line: 5,
                column: 37
            }
        );
        // Missing: the nearest ancestor.
        assert_eq!(
            map.locate(&["functions", "hello", "limits", "memory"]),
            Position { line: 3, column: 3 }
        );
    }

    #[test]
    fn finds_duplicate_keys() {
        let map = SourceMap::build("functions:\n  a: {}\n  b: {}\n  a: {}\n").unwrap();
        assert_eq!(
            map.duplicates(),
            &[DuplicateKey {
                parent: vec!["functions".to_string()],
                key: "a".to_string(),
                first: Position { line: 2, column: 3 },
                second: Position { line: 4, column: 3 },
            }]
        );
    }

    #[test]
    fn empty_and_non_mapping_roots() {
        assert_eq!(SourceMap::build("").unwrap().root(), RootKind::Empty);
        assert_eq!(
            SourceMap::build("# only a comment\n").unwrap().root(),
            RootKind::Empty
        );
        assert_eq!(SourceMap::build("---\n").unwrap().root(), RootKind::Empty);
        assert_eq!(
            SourceMap::build("- a\n").unwrap().root(),
            RootKind::Sequence
        );
        assert_eq!(
            SourceMap::build("hello\n").unwrap().root(),
            RootKind::Scalar
        );
    }

    #[test]
    fn syntax_errors_and_depth() {
        assert!(matches!(
            SourceMap::build("a: [1, 2\n"),
            Err(SourceMapError::Syntax { .. })
        ));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            SourceMap::build(&deep),
            Err(SourceMapError::TooDeep { .. })
        ));
    }
}
