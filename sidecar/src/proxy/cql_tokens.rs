//! CQL text as tokens: words, quoted names, strings, numbers and
//! punctuation, each with where it starts. What classifying a statement,
//! rewriting its non-deterministic calls and following its schema change
//! read.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Str,
    Number,
    Punct(char),
}

pub(crate) fn tokenize(text: &str) -> Vec<Token<'_>> {
    tokenize_spans(text).into_iter().map(|(t, _)| t).collect()
}

/// Tokens with the byte offset where each starts.
pub(crate) fn tokenize_spans(text: &str) -> Vec<(Token<'_>, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push((Token::Str, at));
            }
            b'$' if bytes.get(i + 1) == Some(&b'$') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'$' && bytes[i + 1] == b'$') {
                    i += 1;
                }
                i += 2;
                out.push((Token::Str, at));
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'"' {
                        if bytes.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                let end = i.min(bytes.len());
                out.push((Token::Quoted(text.get(start..end).unwrap_or("")), at));
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((Token::Word(&text[start..i]), at));
            }
            c if c.is_ascii_digit() => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'-')
                {
                    i += 1;
                }
                out.push((Token::Number, at));
            }
            _ => {
                // Multi-byte UTF-8 outside quotes is not valid CQL; skip it.
                let ch = text[i..].chars().next().unwrap_or(' ');
                out.push((Token::Punct(ch), at));
                i += ch.len_utf8().max(1);
            }
        }
    }
    out
}
