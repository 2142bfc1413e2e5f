//! Finding `line:column` for a JSON path in the source text.
//!
//! serde_json gives positions only for syntax and type errors; semantic checks run on
//! the typed value, which has none. So the source is parsed a second time into a
//! syntax tree with byte ranges (the `jsonc-parser` crate), and a JSON path is walked
//! down that tree to the key or value it names.

use std::fmt;

use jsonc_parser::ast::{ObjectPropName, Value};
use jsonc_parser::common::Ranged;
use jsonc_parser::{CollectOptions, ParseOptions};

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A JSON path such as `masters[1].nodeName`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JsonPath(pub Vec<Seg>);

impl JsonPath {
    pub fn key(&self, key: &str) -> JsonPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        JsonPath(segs)
    }

    pub fn index(&self, index: usize) -> JsonPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        JsonPath(segs)
    }

    /// Parses the dotted form `a.b[2].c` (tests write paths that way).
    #[cfg(test)]
    pub fn parse(text: &str) -> JsonPath {
        let mut segs = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty() && *p != "?") {
            let (name, rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_string()));
            }
            for index in rest.split('[').filter(|s| !s.is_empty()) {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    segs.push(Seg::Index(i));
                }
            }
        }
        JsonPath(segs)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The source text, its name, (when it is syntactically valid) its syntax tree, and where
/// each line starts. Built once per text, so that locating a path costs its depth (times
/// the keys of each object on the way) plus a binary search, however many diagnostics
/// there are: the first version walked the text from its start for each one, and 32,000
/// bad nodes took 7.8 s.
pub(crate) struct SourceMap<'a> {
    pub origin: &'a str,
    text: &'a str,
    tree: Option<Value<'a>>,
    /// Byte offset of the start of each line; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub fn new(origin: &'a str, text: &'a str) -> Self {
        let tree = jsonc_parser::parse_to_ast(text, &CollectOptions::default(), &ParseOptions::default())
            .ok()
            .and_then(|r| r.value);
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceMap { origin, text, tree, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The last line starting at or before `offset`.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    /// Position of the value at `path`; when the path runs out of the document (a
    /// missing field), the position of the deepest part that exists.
    pub fn value_position(&self, path: &JsonPath) -> Option<(usize, usize)> {
        self.find(path, false)
    }

    /// Position of the key of the last path step (for unknown fields); falls back like
    /// [`SourceMap::value_position`].
    pub fn key_position(&self, path: &JsonPath) -> Option<(usize, usize)> {
        self.find(path, true)
    }

    fn find(&self, path: &JsonPath, want_key: bool) -> Option<(usize, usize)> {
        let mut node = self.tree.as_ref()?;
        let mut offset = node.start();
        for (i, seg) in path.0.iter().enumerate() {
            let last = i + 1 == path.0.len();
            match (seg, node) {
                (Seg::Key(key), Value::Object(object)) => {
                    let Some(prop) = object.properties.iter().find(|p| prop_name(&p.name) == key) else {
                        break;
                    };
                    if last && want_key {
                        offset = prop.range.start;
                        break;
                    }
                    node = &prop.value;
                }
                (Seg::Index(index), Value::Array(array)) => match array.elements.get(*index) {
                    Some(element) => node = element,
                    None => break,
                },
                _ => break,
            }
            offset = node.start();
        }
        Some(self.line_column(offset))
    }
}

fn prop_name<'b>(name: &'b ObjectPropName<'_>) -> &'b str {
    match name {
        ObjectPropName::String(lit) => lit.value.as_ref(),
        ObjectPropName::Word(lit) => lit.value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_and_keys_by_path() {
        let text = "{\n  \"masters\": [\n    {\"nodeName\": \"a b\"}\n  ]\n}\n";
        let map = SourceMap::new("c.json", text);
        let path = JsonPath::parse("masters[0].nodeName");
        assert_eq!(path.to_string(), "masters[0].nodeName");
        assert_eq!(map.value_position(&path), Some((3, 18)));
        assert_eq!(map.key_position(&path), Some((3, 6)));
        // A missing field points at the deepest part that exists.
        assert_eq!(map.value_position(&JsonPath::parse("masters[0].privateIP")), Some((3, 5)));
        assert_eq!(map.value_position(&JsonPath::parse("masters[5]")), Some((2, 14)));
    }

    #[test]
    fn line_columns_from_the_index() {
        let text = "ab\n\ncé\nd";
        let map = SourceMap::new("c.json", text);
        let expected = [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (3, 2), (3, 2), (3, 3), (4, 1), (4, 2)];
        for (offset, want) in expected.iter().enumerate() {
            assert_eq!(map.line_column(offset), *want, "offset {offset}");
        }
        assert_eq!(map.line_column(999), (4, 2), "past the end: the end");
        assert_eq!(SourceMap::new("e", "").line_column(0), (1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let map = SourceMap::new("c.json", "{\"é\": 1, \"x\": 2}");
        assert_eq!(map.value_position(&JsonPath::parse("x")), Some((1, 15)));
    }
}
