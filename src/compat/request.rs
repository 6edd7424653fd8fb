//! One line of the stepper GUI's protocol, parsed.

/// A request the stepper GUI's clients send (stepper numbers are the served
/// board's own indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `rel_move <i> <d>`: move stepper i by d steps. No reply.
    RelMove {
        /// The board's stepper index.
        stepper: usize,
        /// Steps to move.
        delta: i32,
    },
    /// `abs_move <i> <p>`: move stepper i to p. No reply.
    AbsMove {
        /// The board's stepper index.
        stepper: usize,
        /// Target position.
        position: i32,
    },
    /// `reset <i> <p>`: set stepper i's counter to p, no motion. No reply.
    Reset {
        /// The board's stepper index.
        stepper: usize,
        /// The counter's new value.
        position: i32,
    },
    /// `get_positions`: one line `positions 0=<p0> 1=<p1> ...`.
    GetPositions,
    /// `get_x_step`: one line, the X jog step as a decimal integer.
    GetXStep,
}

/// Parses one line (without its newline). `Ok(None)` for an empty line
/// (skipped); `Err` says why a line is not a request (it is then logged and
/// ignored). Fields are separated by spaces (any run of whitespace, and a
/// trailing `\r`, are accepted as the old tools' `split()` did).
pub fn parse(line: &str) -> Result<Option<Request>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = fields.split_first() else {
        return Ok(None);
    };
    let req = match cmd {
        "rel_move" => {
            let (stepper, delta) = two(cmd, args, "d")?;
            Request::RelMove { stepper, delta }
        }
        "abs_move" => {
            let (stepper, position) = two(cmd, args, "p")?;
            Request::AbsMove { stepper, position }
        }
        "reset" => {
            let (stepper, position) = two(cmd, args, "p")?;
            Request::Reset { stepper, position }
        }
        "get_positions" | "get_x_step" => {
            if !args.is_empty() {
                return Err(format!("{cmd} takes no arguments"));
            }
            if cmd == "get_positions" {
                Request::GetPositions
            } else {
                Request::GetXStep
            }
        }
        other => {
            return Err(format!(
            "unknown request {:?} (known: rel_move, abs_move, reset, get_positions, get_x_step)",
            shorten(other)
        ))
        }
    };
    Ok(Some(req))
}

/// `<i> <value>` of the moves and reset.
fn two(cmd: &str, args: &[&str], value: &str) -> Result<(usize, i32), String> {
    let [i, v] = args else {
        return Err(format!(
            "{cmd} takes two arguments, `{cmd} <i> <{value}>`, not {}",
            args.len()
        ));
    };
    let stepper = i.parse::<usize>().map_err(|_| {
        format!(
            "{cmd}: stepper {:?} is not a stepper number (0, 1, 2, ...)",
            shorten(i)
        )
    })?;
    let v = v.parse::<i32>().map_err(|_| {
        format!(
            "{cmd}: {:?} is not a whole number of steps that fits 32 bits",
            shorten(v)
        )
    })?;
    Ok((stepper, v))
}

/// At most 40 characters of what a client sent, for messages.
pub fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_requests_parse() {
        assert_eq!(
            parse("rel_move 3 -10"),
            Ok(Some(Request::RelMove {
                stepper: 3,
                delta: -10
            }))
        );
        assert_eq!(
            parse("abs_move 0 2600\r"),
            Ok(Some(Request::AbsMove {
                stepper: 0,
                position: 2600
            }))
        );
        assert_eq!(
            parse("reset  4\t77"),
            Ok(Some(Request::Reset {
                stepper: 4,
                position: 77
            }))
        );
        assert_eq!(parse("get_positions"), Ok(Some(Request::GetPositions)));
        assert_eq!(parse(" get_x_step "), Ok(Some(Request::GetXStep)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  \r"), Ok(None));
    }

    #[test]
    fn anything_else_says_why() {
        let e = |l: &str| parse(l).err().unwrap_or_default();
        assert!(
            e("rel_move 1").contains("two arguments"),
            "{}",
            e("rel_move 1")
        );
        assert!(
            e("rel_move 1 2 3").contains("not 3"),
            "{}",
            e("rel_move 1 2 3")
        );
        assert!(e("abs_move -1 2").contains("not a stepper number"));
        assert!(e("reset 1 x").contains("not a whole number"));
        assert!(e("rel_move 1 99999999999").contains("32 bits"));
        assert!(e("get_positions 1").contains("no arguments"));
        assert!(e("spin 1").contains("unknown request \"spin\""));
        let json = e(r#"{"RelMove":{"stepper":3,"delta":-10}}"#);
        assert!(json.starts_with("unknown request"), "{json}");
        assert!(e(&"x".repeat(100)).contains('…'));
    }
}
