//! Consul's `filter` query parameter: the boolean expressions of Consul's `go-bexpr` language,
//! parsed once per request and evaluated on each item of a list response as the JSON Consul's
//! clients receive, so a selector names exactly a field the response shows.
//!
//! Grammar (`not` binds tighter than `and`, `and` tighter than `or`):
//!
//! ```text
//! expr     := and ("or" and)*
//! and      := unary ("and" unary)*
//! unary    := "not" unary | "(" expr ")" | match
//! match    := selector ("==" | "!=") value
//!           | selector "is" ["not"] "empty"
//!           | selector ["not"] ("contains" | "matches") value
//!           | value ["not"] "in" selector
//! selector := ident ("." ident | "[" string "]")*
//! value    := "string" | `raw string` | number | true | false | ident
//! ```
//!
//! A selector that walks through a list (`Checks.Status`) selects the field of every element;
//! `==`, `contains`, `in` and `matches` then hold when one element does. A field that is absent
//! (a `Meta` key the item lacks) is empty: `==` is false, `!=` true. Names match exactly, then
//! regardless of case. Errors name their place as Consul does: `line:column (offset)`.
//!
//! Bounds: the expression is at most [`MAX_FILTER_LEN`] bytes, parentheses and `not` nest at
//! most [`MAX_DEPTH`] deep (the parser and the evaluator recurse only there), and a `matches`
//! pattern is compiled by `regex` (linear-time matching) within [`MAX_REGEX_SIZE`].

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// The longest expression read.
pub const MAX_FILTER_LEN: usize = 2048;
/// The deepest nesting of parentheses and `not`.
pub const MAX_DEPTH: usize = 32;
/// The most memory a compiled `matches` pattern may take.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

/// A parsed expression.
#[derive(Debug)]
pub struct Filter(Expr);

#[derive(Debug)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match { selector: Vec<String>, op: Op },
}

#[derive(Debug)]
enum Op {
    Eq(Lit),
    Ne(Lit),
    /// `value in selector`, and `selector contains value`.
    Contains(Lit),
    NotContains(Lit),
    IsEmpty,
    IsNotEmpty,
    Matches(Regex),
    NotMatches(Regex),
}

/// A literal, kept as written: how it compares depends on the field it meets.
#[derive(Debug, Clone, PartialEq)]
struct Lit(String);

/// A malformed expression: the message names the position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Filter {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError(format!(
                "filter longer than {MAX_FILTER_LEN} bytes"
            )));
        }
        let tokens = lex(text)?;
        let mut p = Parser {
            text,
            tokens,
            at: 0,
            depth: 0,
        };
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return Err(p.error_at(t.start, format!("unexpected {}", t.kind.describe())));
        }
        Ok(Filter(expr))
    }

    /// Whether `item` passes.
    pub fn matches(&self, item: &Value) -> bool {
        eval(&self.0, item)
    }
}

/// The fields of an endpoint's items, for refusing a selector that names none (Consul answers
/// `Selector "Foo" is not valid` before it filters anything, even an empty list).
#[derive(Debug)]
pub enum Field {
    /// A value with nothing under it.
    Leaf,
    /// A map: any key, then the map's values.
    MapOf(&'static Field),
    /// Settings Cairn never fills (Connect, proxies, tagged service addresses): any path under
    /// it is accepted, and selects nothing.
    Open,
    /// An object, or a list of objects, with these fields.
    Struct(&'static [(&'static str, Field)]),
}

impl Field {
    /// Where `path` stops naming a field: the length of the invalid prefix, `None` when valid.
    /// Names match regardless of case, as evaluation does.
    fn invalid_prefix(&self, path: &[String]) -> Option<usize> {
        let mut at = self;
        for (i, part) in path.iter().enumerate() {
            at = match at {
                Field::Leaf => return Some(i + 1),
                Field::Open => return None,
                Field::MapOf(values) => values,
                Field::Struct(fields) => {
                    match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(part)) {
                        Some((_, f)) => f,
                        None => return Some(i + 1),
                    }
                }
            };
        }
        None
    }
}

impl Filter {
    /// Refuses the first selector that names no field of `fields`, with Consul's message.
    pub fn check_selectors(&self, fields: &Field) -> Result<(), FilterError> {
        check_selectors(&self.0, fields)
    }
}

fn check_selectors(e: &Expr, fields: &Field) -> Result<(), FilterError> {
    match e {
        Expr::Or(terms) | Expr::And(terms) => {
            terms.iter().try_for_each(|t| check_selectors(t, fields))
        }
        Expr::Not(inner) => check_selectors(inner, fields),
        Expr::Match { selector, .. } => match fields.invalid_prefix(selector) {
            None => Ok(()),
            Some(n) => Err(FilterError(format!(
                "Selector {:?} is not valid",
                selector[..n].join(".")
            ))),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Eq,
    Ne,
    Str(String),
    Num(String),
    Word(String),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "\"(\"".into(),
            Kind::RParen => "\")\"".into(),
            Kind::LBracket => "\"[\"".into(),
            Kind::RBracket => "\"]\"".into(),
            Kind::Dot => "\".\"".into(),
            Kind::Eq => "\"==\"".into(),
            Kind::Ne => "\"!=\"".into(),
            Kind::Str(s) => format!("string {s:?}"),
            Kind::Num(n) => format!("number {n}"),
            Kind::Word(w) => format!("{w:?}"),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self, Kind::Word(x) if x == w)
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Byte offset in the expression.
    start: usize,
}

/// `line:column (offset)` of byte `at` in `text`, 1-based line and column, as Consul reports.
fn position(text: &str, at: usize) -> String {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("{line}:{col} ({at})")
}

fn lex_error(text: &str, at: usize, msg: impl std::fmt::Display) -> FilterError {
    FilterError(format!("{}: {msg}", position(text, at)))
}

fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        let single = |kind| Token { kind, start: i };
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' | '.' => {
                chars.next();
                out.push(single(match c {
                    '(' => Kind::LParen,
                    ')' => Kind::RParen,
                    '[' => Kind::LBracket,
                    ']' => Kind::RBracket,
                    _ => Kind::Dot,
                }));
            }
            '=' | '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) => out.push(single(if c == '=' { Kind::Eq } else { Kind::Ne })),
                    _ => return Err(lex_error(text, i, format!("expected \"{c}=\""))),
                }
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(lex_error(text, i, "unterminated string")),
                        Some((_, '"')) => break,
                        Some((j, '\\')) => match chars.next() {
                            Some((_, '"')) => s.push('"'),
                            Some((_, '\\')) => s.push('\\'),
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, 'r')) => s.push('\r'),
                            _ => return Err(lex_error(text, j, "unknown escape in a string")),
                        },
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(single(Kind::Str(s)));
            }
            '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(lex_error(text, i, "unterminated raw string")),
                        Some((_, '`')) => break,
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(single(Kind::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || matches!(d, '.' | '-' | '+' | '_') {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if s.parse::<f64>().is_err() {
                    return Err(lex_error(text, i, format!("{s:?} is not a number")));
                }
                out.push(single(Kind::Num(s)));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_alphanumeric() || matches!(d, '_' | '-' | '/' | ':') {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(single(Kind::Word(s)));
            }
            other => {
                return Err(lex_error(
                    text,
                    i,
                    format!("unexpected character {other:?}"),
                ))
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "is", "empty", "contains", "matches",
];

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_word(&self, w: &str) -> bool {
        self.peek().is_some_and(|t| t.kind.is_word(w))
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn error_at(&self, at: usize, msg: impl std::fmt::Display) -> FilterError {
        lex_error(self.text, at, msg)
    }

    /// An error at the next token (or the end): `expected <what>, found <it>`.
    fn expected(&self, what: &str) -> FilterError {
        match self.peek() {
            Some(t) => self.error_at(
                t.start,
                format!("expected {what}, found {}", t.kind.describe()),
            ),
            None => self.error_at(
                self.text.len(),
                format!("expected {what}, found the end of the filter"),
            ),
        }
    }

    fn deeper(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let at = self.peek().map_or(self.text.len(), |t| t.start);
            return Err(self.error_at(
                at,
                format!("parentheses and \"not\" nest deeper than {MAX_DEPTH}"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.and()?];
        while self.peek_word("or") {
            self.next();
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.unary()?];
        while self.peek_word("and") {
            self.next();
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.peek_word("not") {
            self.next();
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.peek().is_some_and(|t| t.kind == Kind::LParen) {
            self.next();
            self.deeper()?;
            let inner = self.or()?;
            self.depth -= 1;
            if self.peek().is_some_and(|t| t.kind == Kind::RParen) {
                self.next();
                return Ok(inner);
            }
            return Err(self.expected("\")\""));
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<Expr, FilterError> {
        // `value [not] in selector`: a literal first.
        let literal_first = match self.peek().map(|t| &t.kind) {
            Some(Kind::Str(_) | Kind::Num(_)) => true,
            Some(Kind::Word(_)) => {
                let after = self.tokens.get(self.at + 1).map(|t| &t.kind);
                let after2 = self.tokens.get(self.at + 2).map(|t| &t.kind);
                after.is_some_and(|k| k.is_word("in"))
                    || (after.is_some_and(|k| k.is_word("not"))
                        && after2.is_some_and(|k| k.is_word("in")))
            }
            _ => false,
        };
        if literal_first {
            let lit = self.value()?;
            let negated = self.peek_word("not");
            if negated {
                self.next();
            }
            if !self.peek_word("in") {
                return Err(self.expected("\"in\""));
            }
            self.next();
            let selector = self.selector()?;
            let op = if negated {
                Op::NotContains(lit)
            } else {
                Op::Contains(lit)
            };
            return Ok(Expr::Match { selector, op });
        }
        let selector = self.selector()?;
        let Some(t) = self.next() else {
            return Err(self.error_at(
                self.text.len(),
                "expected an operator (==, !=, is, contains, matches, not), found the end of the filter",
            ));
        };
        let op = match &t.kind {
            Kind::Eq => Op::Eq(self.value()?),
            Kind::Ne => Op::Ne(self.value()?),
            Kind::Word(w) if w == "is" => {
                let negated = self.peek_word("not");
                if negated {
                    self.next();
                }
                if !self.peek_word("empty") {
                    return Err(self.expected("\"empty\""));
                }
                self.next();
                if negated {
                    Op::IsNotEmpty
                } else {
                    Op::IsEmpty
                }
            }
            Kind::Word(w) if w == "contains" => Op::Contains(self.value()?),
            Kind::Word(w) if w == "matches" => Op::Matches(self.pattern()?),
            Kind::Word(w) if w == "not" => {
                let Some(t2) = self.next() else {
                    return Err(self.error_at(
                        self.text.len(),
                        "expected \"contains\" or \"matches\", found the end of the filter",
                    ));
                };
                match &t2.kind {
                    Kind::Word(w) if w == "contains" => Op::NotContains(self.value()?),
                    Kind::Word(w) if w == "matches" => Op::NotMatches(self.pattern()?),
                    other => {
                        return Err(self.error_at(
                            t2.start,
                            format!(
                                "expected \"contains\" or \"matches\", found {}",
                                other.describe()
                            ),
                        ))
                    }
                }
            }
            other => {
                return Err(self.error_at(
                    t.start,
                    format!(
                        "expected an operator (==, !=, is, contains, matches, not), found {}",
                        other.describe()
                    ),
                ))
            }
        };
        Ok(Expr::Match { selector, op })
    }

    fn ident(&mut self) -> Result<String, FilterError> {
        match self.peek().map(|t| &t.kind) {
            Some(Kind::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                let w = w.clone();
                self.next();
                Ok(w)
            }
            _ => Err(self.expected("a selector")),
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.ident()?];
        loop {
            match self.peek().map(|t| &t.kind) {
                Some(Kind::Dot) => {
                    self.next();
                    // After a dot any word is a field name (`Meta.empty`, `Meta.in`).
                    match self.peek().map(|t| &t.kind) {
                        Some(Kind::Word(w)) => {
                            let w = w.clone();
                            self.next();
                            path.push(w);
                        }
                        _ => return Err(self.expected("a field name")),
                    }
                }
                Some(Kind::LBracket) => {
                    self.next();
                    let Some(Kind::Str(key)) = self.peek().map(|t| t.kind.clone()) else {
                        return Err(self.expected("a quoted key"));
                    };
                    self.next();
                    if !self.peek().is_some_and(|t| t.kind == Kind::RBracket) {
                        return Err(self.expected("\"]\""));
                    }
                    self.next();
                    path.push(key);
                }
                _ => return Ok(path),
            }
        }
    }

    fn value(&mut self) -> Result<Lit, FilterError> {
        match self.peek().map(|t| &t.kind) {
            Some(Kind::Str(s) | Kind::Num(s)) => {
                let s = s.clone();
                self.next();
                Ok(Lit(s))
            }
            Some(Kind::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                let w = w.clone();
                self.next();
                Ok(Lit(w))
            }
            _ => Err(self.expected("a value")),
        }
    }

    fn pattern(&mut self) -> Result<Regex, FilterError> {
        let at = self.peek().map_or(self.text.len(), |t| t.start);
        let Some(Kind::Str(p)) = self.peek().map(|t| t.kind.clone()) else {
            return Err(self.expected("a quoted regular expression"));
        };
        self.next();
        RegexBuilder::new(&p)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map_err(|e| {
                let first = e.to_string();
                let first = first.lines().last().unwrap_or("").trim().to_owned();
                self.error_at(at, format!("invalid regular expression: {first}"))
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// The values `path` selects in `item`: none when a field is absent, several through lists.
fn select<'a>(item: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(item);
        return;
    };
    match item {
        Value::Object(map) => {
            let found = map.get(first).or_else(|| {
                map.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(first))
                    .map(|(_, v)| v)
            });
            if let Some(v) = found {
                select(v, rest, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                select(v, path, out);
            }
        }
        _ => {}
    }
}

/// Whether a scalar field equals the literal, compared as the field's type.
fn equals(v: &Value, lit: &Lit) -> bool {
    match v {
        Value::String(s) => *s == lit.0,
        Value::Number(n) => match (n.as_f64(), lit.0.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => false,
        },
        Value::Bool(b) => lit.0.parse::<bool>().is_ok_and(|l| l == *b),
        Value::Null => false,
        // A list selected whole (`Service.Tags == "v1"`): one element equal.
        Value::Array(items) => items.iter().any(|i| equals(i, lit)),
        Value::Object(_) => false,
    }
}

/// `v contains lit`: an element of a list, a key of a map, a substring of a string.
fn contains(v: &Value, lit: &Lit) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| equals(i, lit)),
        Value::Object(map) => map.contains_key(&lit.0),
        Value::String(s) => s.contains(lit.0.as_str()),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(_) => false,
    }
}

fn regex_matches(v: &Value, re: &Regex) -> bool {
    match v {
        Value::String(s) => re.is_match(s),
        Value::Array(items) => items.iter().any(|i| regex_matches(i, re)),
        _ => false,
    }
}

fn eval(e: &Expr, item: &Value) -> bool {
    match e {
        Expr::Or(terms) => terms.iter().any(|t| eval(t, item)),
        Expr::And(terms) => terms.iter().all(|t| eval(t, item)),
        Expr::Not(inner) => !eval(inner, item),
        Expr::Match { selector, op } => {
            let mut found = Vec::new();
            select(item, selector, &mut found);
            let any = |f: &dyn Fn(&Value) -> bool| found.iter().any(|v| f(v));
            match op {
                Op::Eq(l) => any(&|v| equals(v, l)),
                Op::Ne(l) => !any(&|v| equals(v, l)),
                Op::Contains(l) => any(&|v| contains(v, l)),
                Op::NotContains(l) => !any(&|v| contains(v, l)),
                Op::IsEmpty => found.iter().all(|v| is_empty(v)),
                Op::IsNotEmpty => !found.iter().all(|v| is_empty(v)),
                Op::Matches(re) => any(&|v| regex_matches(v, re)),
                Op::NotMatches(re) => !any(&|v| regex_matches(v, re)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "Node": {"Node": "10.0.0.1", "Address": "10.0.0.1", "Meta": {"rack": "r1"}},
            "Service": {
                "ID": "web-1", "Service": "web", "Tags": ["v1", "eu"], "Port": 8080,
                "Meta": {"zone": "a", "version": "1.2.3", "empty": ""},
                "EnableTagOverride": false,
            },
            "Checks": [
                {"CheckID": "service:web-1", "Status": "passing", "Output": "HTTP 200 OK"},
                {"CheckID": "disk", "Status": "warning", "Output": ""},
            ],
        })
    }

    fn eval_on(expr: &str, item: &Value) -> bool {
        Filter::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .matches(item)
    }

    fn yes(expr: &str) {
        assert!(eval_on(expr, &entry()), "{expr} should match");
    }

    fn no(expr: &str) {
        assert!(!eval_on(expr, &entry()), "{expr} should not match");
    }

    fn err(expr: &str) -> String {
        Filter::parse(expr)
            .err()
            .unwrap_or_else(|| panic!("{expr} should be refused"))
            .0
    }

    #[test]
    fn equality_on_strings_numbers_booleans_and_absent_fields() {
        yes(r#"Service.Service == "web""#);
        yes("Service.Service == web");
        yes(r#"Service.Service != "db""#);
        no(r#"Service.Service == "Web""#);
        yes("Service.Port == 8080");
        yes(r#"Service.Port == "8080""#);
        no("Service.Port == 80");
        yes("Service.Port != 80");
        yes("Service.EnableTagOverride == false");
        no("Service.EnableTagOverride == true");
        yes(r#"Service.Meta.zone == "a""#);
        yes(r#"Service.Meta["zone"] == "a""#);
        yes("Service.Meta.version == `1.2.3`");
        no(r#"Service.Meta.missing == "a""#);
        yes(r#"Service.Meta.missing != "a""#);
        yes(r#"service.service == "web""#);
        no(r#"Nope.Deeper == "x""#);
    }

    #[test]
    fn in_and_contains_on_lists_maps_and_strings() {
        yes(r#""v1" in Service.Tags"#);
        yes(r#"Service.Tags contains "eu""#);
        no(r#""v2" in Service.Tags"#);
        yes(r#""v2" not in Service.Tags"#);
        no(r#""v1" not in Service.Tags"#);
        yes(r#"Service.Tags not contains "v2""#);
        no(r#"Service.Tags not contains "v1""#);
        yes(r#""zone" in Service.Meta"#);
        no(r#""rack" in Service.Meta"#);
        yes(r#"Service.Service contains "eb""#);
        yes(r#""eb" in Service.Service"#);
        yes(r#"Service.Tags == "v1""#);
        yes("v1 in Service.Tags");
        yes("v2 not in Service.Tags");
    }

    #[test]
    fn selectors_through_lists_match_any_element() {
        yes(r#"Checks.Status == "warning""#);
        yes(r#"Checks.Status contains "passing""#);
        yes(r#""passing" in Checks.Status"#);
        no(r#"Checks.Status == "critical""#);
        yes(r#"Checks.Status != "critical""#);
        no(r#"Checks.Status != "passing""#);
        yes(r#"Checks.CheckID matches "^service:""#);
        yes("Checks.Output is not empty");
    }

    #[test]
    fn empty_and_matches() {
        yes("Service.Meta.empty is empty");
        no("Service.Meta.in is not empty");
        yes("Service.Meta.missing is empty");
        no("Service.Meta.zone is empty");
        yes("Service.Tags is not empty");
        yes("Node.Meta is not empty");
        no("Service.Tags is empty");
        yes(r#"Service.Meta.version matches "^1\\.[0-9]+""#);
        yes(r#"Service.Tags matches "^e""#);
        no(r#"Service.ID matches "^db""#);
        yes(r#"Service.ID not matches "^db""#);
        no(r#"Service.ID not matches "web""#);
        no(r#"Service.Meta.missing matches ".*""#);
    }

    #[test]
    fn and_or_not_and_parentheses_with_precedence() {
        yes(r#"Service.Tags contains "v1" and Service.Meta.zone == "a""#);
        no(r#"Service.Tags contains "v2" and Service.Meta.zone == "a""#);
        yes(r#"Service.Tags contains "v2" or Service.Meta.zone == "a""#);
        no(r#"not Service.Service == "web""#);
        yes(r#"not (Service.Service == "db")"#);
        // and binds tighter than or: true or (false and false).
        yes(r#"Service.Port == 8080 or Service.Port == 1 and Service.Port == 2"#);
        // (true or false) and false.
        no(r#"(Service.Port == 8080 or Service.Port == 1) and Service.Port == 2"#);
        // not binds tighter than and.
        no(r#"not Service.Port == 8080 and Service.Port == 8080"#);
        yes("not not Service.Port == 8080");
        yes(r#"((("v1" in Service.Tags)))"#);
    }

    #[test]
    fn malformed_expressions_name_the_position() {
        assert_eq!(
            err("Service.Port =="),
            "1:16 (15): expected a value, found the end of the filter"
        );
        assert_eq!(err("Service.Port = 80"), "1:14 (13): expected \"==\"");
        assert_eq!(
            err("Service.Port == 80 and"),
            "1:23 (22): expected a selector, found the end of the filter"
        );
        assert_eq!(
            err("(Service.Port == 80"),
            "1:20 (19): expected \")\", found the end of the filter"
        );
        assert_eq!(err("Service.Port == 80)"), "1:19 (18): unexpected \")\"");
        assert_eq!(
            err("Service.Tags has \"x\""),
            "1:14 (13): expected an operator (==, !=, is, contains, matches, not), found \"has\""
        );
        assert_eq!(
            err("Service.Tags is full"),
            "1:17 (16): expected \"empty\", found \"full\""
        );
        assert_eq!(
            err("Service.Meta.x == \"open"),
            "1:19 (18): unterminated string"
        );
        assert_eq!(
            err("Service.Port == 80\nand ~"),
            "2:5 (23): unexpected character '~'"
        );
        assert!(
            err("Service.ID matches \"(\"").starts_with("1:20 (19): invalid regular expression")
        );
        assert_eq!(
            err("Service.Tags not in \"x\""),
            "1:18 (17): expected \"contains\" or \"matches\", found \"in\""
        );
        assert_eq!(
            err(""),
            "1:1 (0): expected a selector, found the end of the filter"
        );
        assert_eq!(
            err("\"v1\" in"),
            "1:8 (7): expected a selector, found the end of the filter"
        );
        assert_eq!(
            err("Service.Meta[zone] == \"a\""),
            "1:14 (13): expected a quoted key, found \"zone\""
        );
    }

    #[test]
    fn length_nesting_and_pattern_size_are_bounded() {
        let ok = format!(
            "{}Service.Port == 1{}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        assert!(Filter::parse(&ok).is_ok());
        let deep = format!(
            "{}Service.Port == 1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(err(&deep).contains("nest deeper than 32"), "{}", err(&deep));
        let nots = format!("{}Service.Port == 1", "not ".repeat(MAX_DEPTH + 1));
        assert!(err(&nots).contains("nest deeper than 32"));
        // A flat chain is not nesting: long but shallow expressions are fine up to the length.
        let chain = vec!["Service.Port == 1"; 90].join(" or ");
        assert!(chain.len() <= MAX_FILTER_LEN && Filter::parse(&chain).is_ok());
        let long = "a".repeat(MAX_FILTER_LEN + 1);
        assert_eq!(err(&long), "filter longer than 2048 bytes");
        assert!(err(r#"Service.ID matches "a{1000}{1000}""#).contains("invalid regular expression"));
    }

    #[test]
    fn selectors_are_checked_against_the_fields_and_map_keys_stay_free() {
        const META: Field = Field::MapOf(&Field::Leaf);
        const FIELDS: Field = Field::Struct(&[
            ("ID", Field::Leaf),
            ("Meta", META),
            ("Proxy", Field::Open),
            ("Checks", Field::Struct(&[("Status", Field::Leaf)])),
        ]);
        let check = |text: &str| {
            Filter::parse(text)
                .and_then(|f| f.check_selectors(&FIELDS))
                .map_err(|e| e.0)
        };
        for ok in [
            r#"ID == "a""#,
            r#"id == "a""#,
            r#"Meta.anything == "x""#,
            r#"Meta["a key"] is empty"#,
            r#"Proxy.Upstreams.Datacenter == "dc""#,
            r#"Checks.Status == critical"#,
            r#""v1" in Checks.Status"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, named) in [
            (r#"Foo.Bar == "x""#, "Foo"),
            (r#"ID.Deeper == "x""#, "ID.Deeper"),
            (r#"Meta.zone.deeper == "x""#, "Meta.zone.deeper"),
            (r#"Checks.Output is empty"#, "Checks.Output"),
            (
                r#"ID == "a" and not (Meta.x == "y" or Nope is empty)"#,
                "Nope",
            ),
        ] {
            assert_eq!(
                check(bad),
                Err(format!("Selector {named:?} is not valid")),
                "{bad}"
            );
        }
    }
}
