//! serde's deserialization messages in the words of a configuration file:
//! "did you mean" for a mistyped key, the accepted keys as a comma list, and
//! "an integer" where serde says `i64`.

/// Least Jaro-Winkler similarity for a key to be suggested (clap's own
/// threshold for subcommands is 0.7; keys are longer and share prefixes such
/// as `z_`, so a stricter one avoids suggesting a different setting).
const SIMILAR: f64 = 0.8;

/// `message` from serde rewritten for people; messages it does not know are
/// returned unchanged.
pub(super) fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            return unknown_key(name, expected);
        }
    }
    rust_types(message)
}

/// "unknown field `tune_rset`, did you mean `tune_rest`? (keys here: a, b)".
/// `expected` is the rest of serde's message: ", expected one of `a`, `b`",
/// ", expected `a` or `b`", ", expected `a`" or ", there are no fields".
fn unknown_key(name: &str, expected: &str) -> String {
    let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let mut out = format!("unknown field `{name}`");
    let best = keys
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score >= SIMILAR)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, key)) = best {
        out.push_str(&format!(", did you mean `{key}`?"));
    }
    if keys.is_empty() {
        out.push_str(" (this table takes no keys)");
    } else {
        out.push_str(&format!(" (keys here: {})", keys.join(", ")));
    }
    out
}

/// "expected i64" and its kind as "expected an integer".
fn rust_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, plain) in [
        ("i64", "an integer"),
        ("i32", "an integer"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("u16", "a whole number"),
        ("u8", "a whole number"),
        ("usize", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
    ] {
        if let Some(head) = out.strip_suffix(&format!("expected {rust}")) {
            out = format!("{head}expected {plain}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_key_gets_the_nearest_one() {
        let m = plain("unknown field `tune_rset`, expected one of `x_rest`, `tune_rest`, `z_rest`");
        assert_eq!(
            m,
            "unknown field `tune_rset`, did you mean `tune_rest`? (keys here: x_rest, tune_rest, z_rest)"
        );
        let m = plain("unknown field `colour`, expected `name` or `port`");
        assert_eq!(m, "unknown field `colour` (keys here: name, port)");
        let m = plain("unknown field `a`, there are no fields");
        assert_eq!(m, "unknown field `a` (this table takes no keys)");
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            plain("invalid type: string \"big\", expected i64"),
            "invalid type: string \"big\", expected an integer"
        );
        assert_eq!(plain("something else"), "something else");
    }
}
