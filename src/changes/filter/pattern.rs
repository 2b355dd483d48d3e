//! Text patterns of `like`/`ilike` and `match`/`imatch` filters, compiled once per
//! binding and matched by a finite automaton (the `regex` crate): time linear in the text,
//! whatever the pattern.
//!
//! `match`/`imatch` take a Postgres regular expression (an ARE, what `~` and `~*` read).
//! It is translated into the `regex` crate's syntax, construct by construct, so each keeps
//! its Postgres meaning (`\b` is a backspace, `\y` a word boundary, `\x41B` one character,
//! `{` before a non-digit a literal, `.` matches a newline). What the crate cannot do the
//! same way is refused at join with the construct named: back references, lookahead and
//! lookbehind, embedded options, collating elements and equivalence classes. Character
//! classes (`\w`, `[[:alpha:]]`) and case folding agree with Postgres on ASCII; on other
//! letters the hub follows Unicode and Postgres the database's locale.

use std::fmt::Write;

/// Longest pattern a filter may hold, in characters.
pub const MAX_PATTERN: usize = 256;

/// Most bytes a compiled pattern may take (a bounded repetition such as `(a{99}){99}`
/// compiles to many states).
const COMPILED_LIMIT: usize = 1 << 20;

/// The largest repetition count Postgres accepts in a bound (`RE_DUPMAX`).
const MAX_BOUND: u32 = 255;

/// A compiled `like` pattern or regular expression.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    re: regex::Regex,
    /// The pattern's length in characters (the matcher's work per text byte grows with it).
    len: usize,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PatternError {
    TooLong,
    /// A regular expression Postgres refuses, or one the hub cannot match as Postgres
    /// does; the text says which construct.
    Invalid(String),
}

impl Pattern {
    /// A LIKE pattern: `%` any run, `_` one character, `\` escapes the next one.
    pub(super) fn like(pattern: &str, case_insensitive: bool) -> Result<Pattern, PatternError> {
        let len = checked_len(pattern)?;
        let mut re = String::from("^");
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => re.push_str(".*"),
                '_' => re.push('.'),
                '\\' => literal(&mut re, chars.next().unwrap_or('\\')),
                c => literal(&mut re, c),
            }
        }
        re.push('$');
        Ok(Pattern {
            re: compile(&re, case_insensitive)?,
            len,
        })
    }

    /// A Postgres regular expression, as `~` (or `~*`, case-insensitive) reads it.
    pub(super) fn regex(pattern: &str, case_insensitive: bool) -> Result<Pattern, PatternError> {
        let len = checked_len(pattern)?;
        let re = translate(pattern).map_err(PatternError::Invalid)?;
        Ok(Pattern {
            re: compile(&re, case_insensitive)?,
            len,
        })
    }

    /// The pattern's length in characters.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        self.re.is_match(text)
    }
}

fn checked_len(pattern: &str) -> Result<usize, PatternError> {
    let len = pattern.chars().count();
    if len > MAX_PATTERN {
        return Err(PatternError::TooLong);
    }
    Ok(len)
}

/// `.` matches a newline and `^`/`$` only the text's ends, as in Postgres.
fn compile(re: &str, case_insensitive: bool) -> Result<regex::Regex, PatternError> {
    regex::RegexBuilder::new(re)
        .dot_matches_new_line(true)
        .case_insensitive(case_insensitive)
        .size_limit(COMPILED_LIMIT)
        .build()
        .map_err(|e| {
            PatternError::Invalid(match e {
                regex::Error::CompiledTooBig(_) => "pattern too complex".to_owned(),
                other => other
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            })
        })
}

/// Translates a Postgres ARE into the `regex` crate's syntax (see the module).
fn translate(pattern: &str) -> Result<String, String> {
    if let Some(rest) = pattern.strip_prefix("***=") {
        let mut out = String::new();
        rest.chars().for_each(|c| literal(&mut out, c));
        return Ok(out);
    }
    let pattern = pattern.strip_prefix("***:").unwrap_or(pattern);
    if pattern.starts_with("***") {
        return Err("invalid director prefix `***`".into());
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    // Whether the last thing written can take a quantifier (an atom, not an anchor, a
    // group's start, `|`, or another quantifier).
    let mut quantifiable = false;
    let mut depth = 0usize;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' => {
                let (text, atom) = escape(&chars, &mut i, false)?;
                out.push_str(&text);
                quantifiable = atom;
            }
            '[' => {
                bracket(&chars, &mut i, &mut out)?;
                quantifiable = true;
            }
            '(' => {
                if chars.get(i) == Some(&'?') {
                    match chars.get(i + 1) {
                        Some(':') => i += 2,
                        Some('=' | '!') => {
                            return Err("lookahead constraints are not supported".into())
                        }
                        Some('<') => return Err("lookbehind constraints are not supported".into()),
                        _ => return Err("embedded options `(?...)` are not supported".into()),
                    }
                    out.push_str("(?:");
                } else {
                    out.push('(');
                }
                depth += 1;
                quantifiable = false;
            }
            ')' => {
                if depth == 0 {
                    return Err("parentheses () not balanced".into());
                }
                depth -= 1;
                out.push(')');
                quantifiable = true;
            }
            '|' => {
                out.push('|');
                quantifiable = false;
            }
            '^' | '$' => {
                out.push(c);
                quantifiable = false;
            }
            '.' => {
                out.push('.');
                quantifiable = true;
            }
            '*' | '+' | '?' => {
                if !quantifiable {
                    return Err("quantifier operand invalid".into());
                }
                out.push(c);
                lazy(&chars, &mut i, &mut out);
                quantifiable = false;
            }
            '{' if chars.get(i).is_some_and(char::is_ascii_digit) => {
                if !quantifiable {
                    return Err("quantifier operand invalid".into());
                }
                bound(&chars, &mut i, &mut out)?;
                lazy(&chars, &mut i, &mut out);
                quantifiable = false;
            }
            c => {
                literal(&mut out, c);
                quantifiable = true;
            }
        }
    }
    if depth != 0 {
        return Err("parentheses () not balanced".into());
    }
    Ok(out)
}

/// A `?` after a quantifier makes it non-greedy; the match/no-match answer is the same.
fn lazy(chars: &[char], i: &mut usize, out: &mut String) {
    if chars.get(*i) == Some(&'?') {
        *i += 1;
        out.push('?');
    }
}

/// `{m}`, `{m,}` or `{m,n}` after the `{`, counts at most [`MAX_BOUND`].
fn bound(chars: &[char], i: &mut usize, out: &mut String) -> Result<(), String> {
    let invalid = || "invalid repetition count(s)".to_owned();
    let number = |i: &mut usize| -> Option<u32> {
        let start = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        let digits: String = chars[start..*i].iter().collect();
        digits.parse().ok().filter(|n| *n <= MAX_BOUND)
    };
    let low = number(i).ok_or_else(invalid)?;
    let high = if chars.get(*i) == Some(&',') {
        *i += 1;
        if chars.get(*i).is_some_and(char::is_ascii_digit) {
            Some(number(i).ok_or_else(invalid)?)
        } else {
            None
        }
    } else {
        Some(low)
    };
    if chars.get(*i) != Some(&'}') {
        return Err("braces {} not balanced".into());
    }
    *i += 1;
    match high {
        Some(h) if h < low => return Err(invalid()),
        Some(h) if h == low => write!(out, "{{{low}}}"),
        Some(h) => write!(out, "{{{low},{h}}}"),
        None => write!(out, "{{{low},}}"),
    }
    .expect("write to a String");
    Ok(())
}

/// The escape after a `\` (at `chars[*i]`): its translation, and whether it is an atom
/// (a quantifier may follow it). Inside a bracket only character escapes and `\d \s \w`.
fn escape(chars: &[char], i: &mut usize, in_bracket: bool) -> Result<(String, bool), String> {
    let Some(&c) = chars.get(*i) else {
        return Err("invalid escape \\ sequence".into());
    };
    *i += 1;
    let class = |s: &str| Ok((s.to_owned(), true));
    let constraint = |s: &str| {
        if in_bracket {
            Err(format!("invalid escape \\{c} in a bracket expression"))
        } else {
            Ok((s.to_owned(), false))
        }
    };
    let character = |ch: Option<char>| {
        let mut s = String::new();
        match ch {
            Some(ch) => literal(&mut s, ch),
            // A code no character has: Postgres takes it, and it matches no text.
            None => s.push_str(NO_CHARACTER),
        }
        Ok((s, true))
    };
    match c {
        'd' | 's' | 'w' => class(&format!("\\{c}")),
        'D' | 'S' | 'W' => class(&format!("\\{c}")),
        'A' => constraint("\\A"),
        'Z' => constraint("\\z"),
        'm' => constraint("\\b{start}"),
        'M' => constraint("\\b{end}"),
        'y' => constraint("\\b"),
        'Y' => constraint("\\B"),
        'a' => character(Some('\u{7}')),
        'b' => character(Some('\u{8}')),
        'B' => character(Some('\\')),
        'e' => character(Some('\u{1B}')),
        'f' => character(Some('\u{C}')),
        'n' => character(Some('\n')),
        'r' => character(Some('\r')),
        't' => character(Some('\t')),
        'v' => character(Some('\u{B}')),
        'c' => {
            let x = chars.get(*i).ok_or("invalid escape \\ sequence")?;
            *i += 1;
            character(char::from_u32(*x as u32 & 0x1F))
        }
        'x' => {
            let start = *i;
            while chars.get(*i).is_some_and(char::is_ascii_hexdigit) {
                *i += 1;
            }
            code_point(&chars[start..*i]).and_then(character)
        }
        'u' | 'U' => {
            let n = if c == 'u' { 4 } else { 8 };
            let digits = chars.get(*i..*i + n).unwrap_or(&[]);
            if digits.len() != n || !digits.iter().all(char::is_ascii_hexdigit) {
                return Err("invalid escape \\ sequence".into());
            }
            *i += n;
            code_point(digits).and_then(character)
        }
        '0'..='9' => Err("back references and octal escapes are not supported".into()),
        c if c.is_ascii_alphanumeric() => Err(format!("invalid escape \\{c}")),
        c => character(Some(c)),
    }
}

/// A character written as hex digits (`None`: a code no character has). Postgres refuses
/// no digits, zero, and codes past its largest.
fn code_point(digits: &[char]) -> Result<Option<char>, String> {
    let text: String = digits.iter().collect();
    match u32::from_str_radix(&text, 16) {
        Ok(code) if code != 0 && code < 0x7FFF_FFFF => Ok(char::from_u32(code)),
        _ => Err("invalid escape \\ sequence".to_owned()),
    }
}

/// A class no character is in, in or out of a bracket.
const NO_CHARACTER: &str = "[^\\x{0}-\\x{10FFFF}]";

/// Appends `c` as a literal that means itself in and out of classes.
fn literal(out: &mut String, c: char) {
    if c.is_ascii_punctuation() || c.is_whitespace() || c.is_control() {
        let _ = write!(out, "\\x{{{:X}}}", c as u32);
    } else {
        out.push(c);
    }
}

/// A bracket expression after its `[`, written to `out` as a class.
fn bracket(chars: &[char], i: &mut usize, out: &mut String) -> Result<(), String> {
    let unbalanced = || "brackets [] not balanced".to_owned();
    out.push('[');
    if chars.get(*i) == Some(&'^') {
        *i += 1;
        out.push('^');
    }
    let mut first = true;
    loop {
        let c = *chars.get(*i).ok_or_else(unbalanced)?;
        if c == ']' && !first {
            *i += 1;
            out.push(']');
            return Ok(());
        }
        first = false;
        if c == '[' {
            match chars.get(*i + 1) {
                Some(':') => {
                    let rest = &chars[*i + 2..];
                    let end = rest
                        .windows(2)
                        .position(|w| w == [':', ']'])
                        .ok_or_else(unbalanced)?;
                    let name: String = rest[..end].iter().collect();
                    if !CLASSES.contains(&name.as_str()) {
                        return Err(format!("invalid character class {name}"));
                    }
                    let _ = write!(out, "[:{name}:]");
                    *i += 2 + end + 2;
                    continue;
                }
                Some('.' | '=') => {
                    return Err(
                        "collating elements and equivalence classes are not supported".into(),
                    )
                }
                _ => {}
            }
        }
        // One member: a character (perhaps a range's start) or a class escape.
        *i += 1;
        let (low, low_is_class) = if c == '\\' {
            let (text, _) = escape(chars, i, true)?;
            let class = is_class(&text);
            (text, class)
        } else {
            let mut s = String::new();
            literal(&mut s, c);
            (s, false)
        };
        out.push_str(&low);
        let range = chars.get(*i) == Some(&'-') && chars.get(*i + 1).is_some_and(|n| *n != ']');
        if range {
            if low_is_class {
                return Err("invalid character range".into());
            }
            *i += 1;
            let end = *chars.get(*i).ok_or_else(unbalanced)?;
            *i += 1;
            let high = if end == '\\' {
                let (text, _) = escape(chars, i, true)?;
                if is_class(&text) {
                    return Err("invalid character range".into());
                }
                text
            } else if end == '[' {
                return Err("invalid character range".into());
            } else {
                let mut s = String::new();
                literal(&mut s, end);
                s
            };
            out.push('-');
            out.push_str(&high);
        }
    }
}

/// Whether a translated escape is a class (no range may start or end at one).
fn is_class(text: &str) -> bool {
    matches!(text, "\\d" | "\\s" | "\\w" | "\\D" | "\\S" | "\\W") || text == NO_CHARACTER
}

/// The character classes Postgres knows by name (`[[:name:]]`).
const CLASSES: &[&str] = &[
    "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
    "upper", "xdigit", "word",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> Pattern {
        Pattern::regex(p, false).unwrap_or_else(|e| panic!("{p:?}: {e:?}"))
    }

    fn refused(p: &str) -> String {
        match Pattern::regex(p, false) {
            Err(PatternError::Invalid(why)) => why,
            other => panic!("{p:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn constructs_keep_their_postgres_meaning() {
        let cases: &[(&str, &str, bool)] = &[
            ("^ab+c$", "abbbc", true),
            ("b", "abc", true),
            ("a.c", "a\nc", true),
            ("^a$", "a\nb", false),
            ("\\b", "\u{8}", true),
            ("\\b", "a b", false),
            ("\\yfoo\\y", "a foo b", true),
            ("\\mfoo", "xfoo", false),
            ("foo\\M", "foo bar", true),
            ("\\x41B", "\u{41B}", true),
            ("\\x41B", "AB", false),
            ("\\u0041", "A", true),
            ("a{", "a{", true),
            ("a{2}", "aa", true),
            ("a{2,}?", "a", false),
            ("\\Bx", "\\x", true),
            ("\\.", "a", false),
            ("***=a.b", "a.b", true),
            ("***=a.b", "axb", false),
            ("***:a.b", "axb", true),
            ("[]a]", "]", true),
            ("[^]a]", "b", true),
            ("[a-c]", "b", true),
            ("[[:digit:]x]", "7", true),
            ("[\\d]", "7", true),
            ("[\\W]", ",", true),
            ("[\\W]", "a", false),
            ("\\x61bbaa", "a", false),
            ("[^\\x61bbaa]", "a", true),
            ("[&&a]", "&", true),
            ("[a-]", "-", true),
            ("[[]", "[", true),
            ("(?:ab)+$", "abab", true),
            ("}", "}", true),
            ("a|", "zzz", true),
            ("", "anything", true),
        ];
        for (p, text, want) in cases {
            assert_eq!(re(p).matches(text), *want, "{p:?} on {text:?}");
        }
        assert!(Pattern::regex("^ABC", true).unwrap().matches("abcd"));
    }

    #[test]
    fn what_cannot_be_matched_as_postgres_does_is_refused_by_name() {
        for (p, why) in [
            ("(a)\\1", "back references"),
            ("a(?=b)", "lookahead"),
            ("(?<=a)b", "lookbehind"),
            ("(?i)a", "embedded options"),
            ("[[.a.]]", "collating elements"),
            ("[[=a=]]", "collating elements"),
            ("\\q", "invalid escape \\q"),
            ("a\\", "invalid escape"),
            ("*a", "quantifier operand invalid"),
            ("a**", "quantifier operand invalid"),
            ("(a", "parentheses"),
            ("a)", "parentheses"),
            ("[a", "brackets"),
            ("a{3,2}", "invalid repetition"),
            ("a{256}", "invalid repetition"),
            ("a{2", "braces"),
            ("[[:nope:]]", "invalid character class"),
            ("[c-a]", "invalid"),
            ("***?", "director"),
        ] {
            let got = refused(p);
            assert!(got.contains(why), "{p:?}: {got:?}");
        }
        assert_eq!(
            Pattern::regex(&"a".repeat(MAX_PATTERN + 1), false).unwrap_err(),
            PatternError::TooLong
        );
        assert!(matches!(
            Pattern::regex("((((a{255}){255}){255}){255})", false),
            Err(PatternError::Invalid(_))
        ));
    }
}
