//! One connection of the stepper GUI's socket: its lines, one at a time, in
//! order.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

use super::lines::{Lines, Next, MAX_LINE};
use super::request::{parse, shorten, Request};
use super::{Ctx, Problem, ORIGIN};
use crate::board::LinkState;

/// How long writing one reply may take before the connection is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What handling a line asks of the connection.
enum After {
    /// Go on with the next line.
    Next,
    /// End the replies: a `get_*` could not be answered, or a reply could
    /// not be written. The writing side is shut down, so a client waiting
    /// for its line reads the end instead of hanging; the lines it wrote
    /// are still all read and handled (none is dropped), and later `get_*`
    /// on this connection are refused.
    EndReplies,
}

/// Serves one connection until the client closes it: every line it wrote
/// is handled, in order.
pub(super) async fn serve(stream: UnixStream, ctx: Arc<Ctx>) {
    let (read, mut write) = stream.into_split();
    let mut lines = Lines::new(read);
    let mut replies = true;
    loop {
        let next = match lines.next().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "stepper GUI socket: read failed; closing the connection");
                return;
            }
        };
        let after = match next {
            Next::Line(bytes) => line(&bytes, &mut write, replies, &ctx).await,
            Next::TooLong(head) => {
                let head = String::from_utf8_lossy(&head).into_owned();
                let log = ctx.may_log();
                ctx.status(|s| s.long_lines += 1);
                if log {
                    tracing::warn!(start = %head, "stepper GUI socket: a line longer than {MAX_LINE} bytes was skipped (it began {head:?})");
                }
                After::Next
            }
            Next::End(rest) => {
                if let Some(rest) = rest {
                    unknown(
                        &ctx,
                        &String::from_utf8_lossy(&rest),
                        "the connection ended in the middle of this line (no newline): not acted on"
                            .into(),
                    );
                }
                return;
            }
        };
        if let (After::EndReplies, true) = (after, replies) {
            replies = false;
            // Bounded like a reply: a client that reads nothing cannot hold it.
            let _ = tokio::time::timeout(WRITE_TIMEOUT, write.shutdown()).await;
        }
    }
}

/// Handles one line; `replies` is false once this connection's replies
/// ended.
async fn line(bytes: &[u8], write: &mut OwnedWriteHalf, replies: bool, ctx: &Ctx) -> After {
    let Ok(text) = std::str::from_utf8(bytes) else {
        unknown(
            ctx,
            &String::from_utf8_lossy(bytes),
            "not UTF-8 text".into(),
        );
        return After::Next;
    };
    let req = match parse(text) {
        Ok(None) => return After::Next,
        Ok(Some(r)) => r,
        Err(why) => {
            unknown(ctx, text, why);
            return After::Next;
        }
    };
    ctx.status(|s| s.requests += 1);
    match req {
        Request::GetPositions | Request::GetXStep if !replies => {
            refused(
                ctx,
                text,
                "this connection's replies ended after an earlier request could not be answered",
            );
            After::Next
        }
        Request::GetPositions => match positions(ctx) {
            Ok(reply) => answer(write, ctx, &reply).await,
            Err(why) => {
                refused(ctx, text, &why);
                After::EndReplies
            }
        },
        Request::GetXStep => {
            let x_step = ctx.parts.settings.borrow().operations.x_step;
            answer(write, ctx, &x_step.to_string()).await
        }
        Request::RelMove { stepper, .. }
        | Request::AbsMove { stepper, .. }
        | Request::Reset { stepper, .. } => {
            motion(ctx, text, req, stepper).await;
            After::Next
        }
    }
}

/// A move or a reset through the gate; no reply whatever happens.
async fn motion(ctx: &Ctx, text: &str, req: Request, local: usize) {
    let layout = &ctx.parts.machine.layout;
    let board = &ctx.parts.boards[ctx.board];
    let Some(global) = layout.try_global(ctx.board, local) else {
        refused(
            ctx,
            text,
            &format!(
                "stepper {local} does not exist on board {} (it has {} steppers)",
                board.name(),
                board.steppers()
            ),
        );
        return;
    };
    let gate = &ctx.parts.gate;
    let done = match req {
        Request::RelMove { delta, .. } => gate.move_rel(&ORIGIN, global, delta).await,
        Request::AbsMove { position, .. } => gate.move_abs(&ORIGIN, global, position).await,
        Request::Reset { position, .. } => gate.set_counter(&ORIGIN, global, position).await,
        Request::GetPositions | Request::GetXStep => return,
    };
    match done {
        Ok(_) => ctx.status(|s| s.done += 1),
        Err(e) => {
            let on = if global == local {
                String::new()
            } else {
                format!(
                    " (stepper {local} of board {} is stepper {global} of the host)",
                    board.name()
                )
            };
            let why = format!("{e}{on}");
            if e.is_refusal() {
                refused(ctx, text, &why);
            } else {
                let log = ctx.may_log();
                ctx.status(|s| {
                    s.failed += 1;
                    s.last_refusal = Some(problem(text, &format!("failed: {why}")));
                });
                if log {
                    tracing::error!(request = %shorten(text), error = %why, "stepper GUI socket: {} failed: {why}", shorten(text));
                }
            }
        }
    }
}

/// The `positions` line from the board's live counters, or why there is
/// none.
fn positions(ctx: &Ctx) -> Result<String, String> {
    let s = ctx.parts.boards[ctx.board].status();
    if s.link != LinkState::Connected {
        return Err(format!("board {} is {}", s.name, s.link));
    }
    let Some(p) = s.positions else {
        return Err(format!("the counters of board {} are not read yet", s.name));
    };
    let untrusted: Vec<String> = s
        .trusted
        .iter()
        .enumerate()
        .filter(|(_, t)| !**t)
        .map(|(i, _)| i.to_string())
        .collect();
    if !untrusted.is_empty() || s.trusted.len() != p.len() {
        return Err(format!(
            "the counters of board {} are untrusted (steppers {}): set them (reset <i> <p>) or calibrate",
            s.name,
            untrusted.join(", ")
        ));
    }
    let fields: Vec<String> = p
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{i}={v}"))
        .collect();
    Ok(format!("positions {}", fields.join(" ")))
}

/// Writes one reply line.
async fn answer(write: &mut OwnedWriteHalf, ctx: &Ctx, reply: &str) -> After {
    let line = format!("{reply}\n");
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes())).await {
        Ok(Ok(())) => {
            ctx.status(|s| s.answered += 1);
            After::Next
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "stepper GUI socket: reply not delivered; no more replies on this connection");
            After::EndReplies
        }
        Err(_) => {
            tracing::warn!(
                "stepper GUI socket: a reply could not be written within {} s (the client reads nothing); no more replies on this connection",
                WRITE_TIMEOUT.as_secs()
            );
            After::EndReplies
        }
    }
}

fn problem(line: &str, error: &str) -> Problem {
    Problem {
        at: chrono::Utc::now(),
        line: shorten(line),
        error: error.to_string(),
    }
}

fn refused(ctx: &Ctx, text: &str, why: &str) {
    let log = ctx.may_log();
    ctx.status(|s| {
        s.refused += 1;
        s.last_refusal = Some(problem(text, &format!("refused: {why}")));
    });
    if log {
        tracing::warn!(request = %shorten(text), reason = %why, "stepper GUI socket: {} refused: {why}", shorten(text));
    }
}

fn unknown(ctx: &Ctx, text: &str, why: String) {
    let log = ctx.may_log();
    ctx.status(|s| {
        s.unknown += 1;
        s.last_unknown = Some(problem(text, &why));
    });
    if log {
        tracing::warn!(line = %shorten(text), reason = %why, "stepper GUI socket: ignored {:?}: {why}", shorten(text));
    }
}
