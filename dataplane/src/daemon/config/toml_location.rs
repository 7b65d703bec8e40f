//! Where in a TOML file a key is: errors found after parsing (a range, a
//! duplicate port) carry the line and column of the value they are about,
//! as the parser's own syntax errors do.

/// Where in a config file an error is: table keys, and the index of the
/// `[[port]]` table for port fields. Empty: nowhere in particular.
#[derive(Debug, Default)]
pub(super) struct KeyPath(Vec<KeySeg>);

#[derive(Debug)]
pub(super) enum KeySeg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub(super) fn top(key: &str) -> KeyPath {
        KeyPath(vec![KeySeg::Key(key.to_string())])
    }

    /// `fdb.max_age` -> table `fdb`, key `max_age`.
    pub(super) fn dotted(field: &str) -> KeyPath {
        KeyPath(
            field
                .split('.')
                .map(|k| KeySeg::Key(k.to_string()))
                .collect(),
        )
    }

    /// Key `key` of the `index`-th `[[port]]` table.
    pub(super) fn port(index: usize, key: &str) -> KeyPath {
        KeyPath(vec![
            KeySeg::Key("port".into()),
            KeySeg::Index(index),
            KeySeg::Key(key.into()),
        ])
    }
}

/// Line and column (1-based) of the value at `key` in `text`, or of the
/// nearest enclosing table that is there (a missing key: its table).
pub(super) fn locate(text: &str, key: &KeyPath) -> Option<(usize, usize)> {
    if key.0.is_empty() {
        return None;
    }
    // toml_edit keeps the spans toml's serde interface drops; the text has
    // parsed once already, so this parse succeeds.
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for seg in &key.0 {
        let next = match seg {
            KeySeg::Key(k) => item.get(k.as_str()),
            KeySeg::Index(i) => item.get(*i),
        };
        match next {
            Some(next) => {
                item = next;
                span = item.span().or(span);
            }
            None => break,
        }
    }
    let start = span?.start;
    Some(line_column(text, start))
}

/// 1-based line and column of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// toml's error with the line and column spelled out first.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    // One line, as every error of the CLI.
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}
