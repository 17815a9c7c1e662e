//! Tokens with byte offsets. sqlparser reports locations as line and
//! character column; splicing needs byte offsets into the original text.

use std::collections::HashMap;
use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// The significant (non-whitespace, non-comment) tokens of a text.
#[derive(Debug)]
pub struct Source<'a> {
    /// The text.
    pub text: &'a str,
    /// Tokens with their byte ranges.
    pub tokens: Vec<(Token, Range<usize>)>,
    /// Token index by the parser's (line, column) of its start.
    by_loc: HashMap<(u64, u64), usize>,
}

/// Walks the text forward to each location in turn, so converting every
/// token's location costs one pass over the text, not one per token (a
/// long single-line statement would otherwise be quadratic).
struct Cursor {
    line: u64,
    column: u64,
    byte: usize,
}

impl Cursor {
    fn advance(&mut self, text: &str, starts: &[usize], loc: Location) -> Option<usize> {
        if (loc.line, loc.column) < (self.line, self.column) {
            return offset(text, starts, loc);
        }
        if loc.line > self.line {
            self.byte = *starts.get(usize::try_from(loc.line).ok()?.checked_sub(1)?)?;
            self.line = loc.line;
            self.column = 1;
        }
        for _ in self.column..loc.column {
            let c = text.get(self.byte..)?.chars().next()?;
            self.byte += c.len_utf8();
        }
        self.column = loc.column;
        Some(self.byte)
    }
}

/// Byte offsets of line starts.
fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    starts
}

/// Byte offset of a 1-based line/character-column location.
fn offset(text: &str, starts: &[usize], loc: Location) -> Option<usize> {
    let line = usize::try_from(loc.line).ok()?.checked_sub(1)?;
    let col = usize::try_from(loc.column).ok()?.checked_sub(1)?;
    let start = *starts.get(line)?;
    let rest = text.get(start..)?;
    match rest.char_indices().nth(col) {
        Some((i, _)) => Some(start + i),
        None if rest.chars().count() == col => Some(text.len()),
        None => None,
    }
}

impl<'a> Source<'a> {
    /// Tokenizes `text` as PostgreSQL does (standard conforming strings).
    pub fn new(text: &'a str) -> Option<Source<'a>> {
        let dialect = PostgreSqlDialect {};
        let raw = Tokenizer::new(&dialect, text)
            .tokenize_with_location()
            .ok()?;
        let starts = line_starts(text);
        let mut tokens = Vec::with_capacity(raw.len());
        let mut by_loc = HashMap::new();
        let mut cursor = Cursor {
            line: 1,
            column: 1,
            byte: 0,
        };
        for t in raw {
            if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
                continue;
            }
            let a = cursor.advance(text, &starts, t.span.start)?;
            let b = cursor.advance(text, &starts, t.span.end)?;
            by_loc.insert((t.span.start.line, t.span.start.column), tokens.len());
            tokens.push((t.token, a..b));
        }
        Some(Source {
            text,
            tokens,
            by_loc,
        })
    }

    /// Index of the token starting at a parser location.
    pub fn token_at(&self, loc: Location) -> Option<usize> {
        self.by_loc.get(&(loc.line, loc.column)).copied()
    }

    /// The token at an index.
    pub fn token(&self, i: usize) -> Option<&Token> {
        self.tokens.get(i).map(|(t, _)| t)
    }

    /// Byte range from token `a` to token `b` inclusive.
    pub fn range(&self, a: usize, b: usize) -> Option<Range<usize>> {
        Some(self.tokens.get(a)?.1.start..self.tokens.get(b)?.1.end)
    }

    /// Byte ranges of the statements, split at top-level semicolons;
    /// empty statements are skipped, as PostgreSQL skips them.
    pub fn statements(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut first: Option<usize> = None;
        let mut depth = 0i32;
        for (i, (tok, _)) in self.tokens.iter().enumerate() {
            match tok {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            if matches!(tok, Token::SemiColon) && depth <= 0 {
                if let (Some(f), Some(r)) = (first.take(), self.range(0, 0)) {
                    let _ = r;
                    if let Some(range) = self.range(f, i.saturating_sub(1)) {
                        out.push(range);
                    }
                }
                continue;
            }
            if first.is_none() {
                first = Some(i);
            }
        }
        if let Some(f) = first
            && let Some(range) = self.range(f, self.tokens.len() - 1)
        {
            out.push(range);
        }
        out
    }
}

/// Tokens of a standalone snippet (a type name), for comparison.
pub fn snippet_tokens(text: &str) -> Option<Vec<Token>> {
    let dialect = PostgreSqlDialect {};
    let raw = Tokenizer::new(&dialect, text).tokenize().ok()?;
    Some(
        raw.into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
            .collect(),
    )
}

/// Whether two tokens are the same up to keyword case.
pub fn same_token(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Word(x), Token::Word(y)) => {
            if x.quote_style.is_some() || y.quote_style.is_some() {
                x.value == y.value
            } else {
                x.value.eq_ignore_ascii_case(&y.value)
            }
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_characters_not_bytes() {
        let text = "select 'é',\n  'ü' ; select 2";
        let s = Source::new(text).unwrap();
        let lits: Vec<&str> = s
            .tokens
            .iter()
            .filter(|(t, _)| matches!(t, Token::SingleQuotedString(_)))
            .map(|(_, r)| &text[r.clone()])
            .collect();
        assert_eq!(lits, vec!["'é'", "'ü'"]);
        let stmts: Vec<&str> = s.statements().iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(stmts, vec!["select 'é',\n  'ü'", "select 2"]);
    }

    #[test]
    fn skips_empty_statements() {
        let text = ";; select 1;;";
        let s = Source::new(text).unwrap();
        assert_eq!(s.statements().len(), 1);
    }
}
