//! Python-style `repr` of strings, so printed results read exactly like MindFormers' output.

/// `repr(s)` as CPython writes it: single quotes unless the text holds a single quote and no
/// double quote.
pub fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `repr(value)` of a JSON value as Python prints the equivalent dict / list / float, so
/// results read like MindFormers' printed output.
pub fn py_repr(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !n.is_f64() => i.to_string(),
            (_, Some(f)) => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's float repr: shortest round-trip digits, exponent form below 1e-4 or from 1e16.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::{py_float, py_repr, py_str};

    #[test]
    fn floats_and_dicts_like_python() {
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(3.0), "3.0");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(2e20), "2e+20");
        let v = serde_json::json!([{"label": "pos", "score": 0.25, "n": 3, "ok": true}]);
        assert_eq!(
            py_repr(&v),
            "[{'label': 'pos', 'n': 3, 'ok': True, 'score': 0.25}]"
        );
    }

    #[test]
    fn quotes_like_python() {
        assert_eq!(py_str("abc"), "'abc'");
        assert_eq!(py_str("it's"), "\"it's\"");
        assert_eq!(py_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_str("x\ny"), "'x\\ny'");
    }
}
