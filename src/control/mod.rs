//! The control socket: how operators and programs (`stringdriverctl`, the
//! lab's scripts) talk to the running daemon.
//!
//! # Transport
//!
//! A Unix stream socket at `control.socket` (default
//! `/run/stringdriver/control.sock`). At start a stale socket file (nobody
//! answers on it) is removed; if another daemon answers there the server does
//! not start (logged as an error; the daemon goes on without it). After bind
//! the file gets `control.mode` and, if set, `control.group`. Allowed peers
//! (by `SO_PEERCRED`): root, the daemon's own user, and members of
//! `control.group` (primary group, or supplementary groups by
//! `SO_PEERGROUPS`, which works inside the unit's sandbox where `/proc` of
//! other users is hidden); others get `forbidden` and are closed. The file is
//! removed at shutdown.
//!
//! # Framing
//!
//! Newline-delimited JSON, UTF-8: one request per line, exactly one reply
//! line per request, in order. Many clients at once, one task each. A line
//! over 64 KiB gets `line_too_long` and the connection is closed. A client
//! may make at most 100 requests per second (`rate_limited` beyond). Replies
//! and events wait in a bounded per-client queue: a client that stops reading
//! is disconnected, it never holds up the daemon. At most 64 clients at
//! once; the last slot is kept for root and the daemon's own user, and when
//! every slot is taken such a newcomer closes the client that has waited the
//! longest for its next request (that one gets `idle_timeout`). A client
//! that sends no request for `control.idle_timeout` (default 60 s) is
//! closed the same way, unless it
//! subscribed to `events`.
//!
//! # Requests and replies
//!
//! ```json
//! {"v": 1, "id": 42, "cmd": "move", "stepper": 3, "delta": -10}
//! {"v": 1, "id": 42, "ok": true, "result": {"stepper": 3, "position": 13, "board_positions": [...]}}
//! {"v": 1, "id": 42, "ok": false, "error": {"kind": "refused", "message": "stepper 3 is disabled"}}
//! ```
//!
//! `v` must be 1; `id` is any JSON value and is echoed (`null` when absent or
//! unreadable). Commands:
//!
//! | cmd | arguments | result |
//! |---|---|---|
//! | `status` | | boards, enables, settings, feed, spool, shipper, operation, snapshots |
//! | `snapshot` | | `{state_id}` of an event snapshot, or `no_snapshot` with the reason |
//! | `move` | `stepper`, `delta` or `position`, `announce`? | `{stepper, position, board_positions, rest}` (`rest`: `{waited_s, setting}`, the stepper's rest — `x_rest`, `z_rest` or `tune_rest` — still due when the request came, which the move waited before it was sent; null when none was due). With `announce: true` and a rest due, an interim line `{"v": 1, "id", "interim": {waiting_s, setting, stepper, name, role}}` comes first, as the wait starts (`stringdriverctl move` prints it: "waiting 4.7 s (x_rest) before moving stepper 0 (X)") |
//! | `stop` | — | the emergency stop: cancels the running operation, drops every move waiting in the gate, answers `{operation_cancelled, operation_ended, still_moving, waited_s}` once nothing of ours moves |
//! | `steppers` | — | `{steppers: [{index, name, role, board, board_index, min, max, position, trusted, enabled, touching}]}` |
//! | `set_position` | `stepper`, `position` | as `move` (sets the counter, nothing moves) |
//! | `enable` / `disable` | `stepper` (or `"all"`: every stepper with a role) | `{stepper, enabled}` or `{steppers, enabled}` (persisted, event snapshot) |
//! | `get` | `name`? | `{name, value, source, file}` (`source`: `run-time` for a change made through `set` and kept across restarts, else `file`; `file`: the configuration file's value) or `{settings, enabled, overrides}` (`overrides`: the file's value of each setting changed at run time) |
//! | `set` | `name`, `value` | `{name, value}` (persisted, event snapshot) |
//! | `unset` | `name` | `{name, value, source, file, was_overridden}`: the run-time change dropped (from the state file too), the file's value in force again (event snapshot if it was overridden) |
//! | `op_run` | `kind` (bump_check, z_calibrate, z_adjust, sweep_left_right, sweep_right_left, x_home, x_away, x_calibrate), `stepper`? (Z operations), `wait`?, `repeat`? | `{started}` (`{started, repeat: true}`), or with `wait` the outcome `{kind, operation_id, status, message}` (a repetition's: the last run's, `status` `cancelled` if cancelled between runs, and `repeat: {runs, ended}`) |
//! | `op_cancel` | | `{cancelled}` (whether an operation was running); stops a repetition too |
//! | `op_wait` | | the outcome of the running operation, or of the last one |
//! | `op_report` | `kind`, `status`, `steppers`, `final_positions`, `message`?, `operation_id`? | `{operation_id, status}`: an operation run by another program, recorded |
//! | `motor` | | `{params, boards}`: the motor parameters in force (`x`, `z`, `tuners`: speed, accel, min, max; `stepper`: per-stepper speed/accel) and what each board holds (`holds`: the commands last sent, `null` until sent since its last connect or reset; `sends`) |
//! | `motor_set` | `target` (`x`, `z`, `tuners` or a stepper number), `param` (`speed`, `accel`, `min`, `max`; a stepper takes speed and accel only), `value` | as `motor` (through the motion gate: refused while an operation runs or a board is not connected; checked against the layout and the firmwares; persisted) |
//! | `events` | | `{events: true}`, then the connection is a stream of event lines |
//!
//! A `stepper` is a global index (a number) or a name (a string: `x`,
//! `z2in`, `z2out`, `tuner3`; [`Layout::stepper`](crate::config::Layout::stepper)).
//! Moves and counter writes go through the motion gate as [`Origin::Manual`](crate::motion::Origin).
//! Event lines look like `{"v":1,"event":"snapshot","status":{...},"initial":false}`,
//! `{"v":1,"event":"board","board":"carriage","link":"connected","detail":"connected","initial":false}`
//! (one when the board's link state changes, not its detail),
//! `{"v":1,"event":"touch","stepper":3,"touching":false,"error":null,"initial":false}`
//! (`initial`, on snapshot, board and touch events: the first lines, the
//! state when the subscription began, not a change),
//! `{"v":1,"event":"operation","phase":"started"|"ended","kind":"bump_check",...}`;
//! a sweep adds one event after every pass, `{"v":1,"event":"operation",
//! "phase":"progress","kind":"sweep_left_right","operation_id":...,"x":110,
//! "position":2,"positions":3,"pass":1,"clean":true,"clean_run":1,
//! "adjustment_level":4,"deltas":[...],"skipped":[...],"z_variance":0,
//! "calibrations":0,"next":"pass"|"step_x"|"calibrate"|"done"|"fail","reason":null}`
//! (`clean` null: a calibration called for before the pass); the other
//! operations (and a sweep's nested ones) report their steps,
//! `{"v":1,"event":"operation","phase":"step","kind":"z_calibrate","stepper":5,
//! "name":"z2in","role":"Z in, string 2","done":3,"of":12,"doing":"descending","at":14}`
//! (`doing`: `descending` {at} every 10 steps, `touched` {at, offset},
//! `unreachable`, `lifting` {at}, `lifted` {at}, `still_touching` {at},
//! `adjusting` {channel, delta, verdict}, `at_limit` {channel}, `searching`
//! {end, at, moves} every 10 moves, `switch_found` {end, at, moves},
//! `moving_back` {to}; `done`/`of` null where not counted); a repetition
//! sends `"phase":"run_ended"` with `run` and `outcome` after each run.
//!
//! `op_run` is refused (`refused`, no `operations` row) when what the
//! operation needs is missing (`ops::preconditions`). With `repeat` the
//! operation runs again `lap_rest` after each run until cancelled, a run
//! does not complete, or (bump_check) bump_check_enable is off; the
//! one-operation lock is held across the runs and the rests between them;
//! `status` shows `operation.repeat` and `operation.run`.
//!
//! # Error kinds
//!
//! `bad_json` (serde's message), `bad_request` (names the field),
//! `unsupported_version`, `unknown_command` (lists the known ones),
//! `refused` (the motion gate's message: unknown or disabled stepper, limits,
//! untrusted counter, an operation running), `board_error`, `invalid_setting`,
//! `not_persisted`, `no_snapshot`, `snapshot_failed`, `busy`,
//! `no_operation`, `record_failed`, `line_too_long`, `forbidden`,
//! `rate_limited`, `too_many_clients`, `idle_timeout`, `shutting_down`. Only
//! `line_too_long`, `forbidden`, `too_many_clients` and `idle_timeout` close
//! the connection.

mod handlers;
mod motor;
mod peer;
pub mod protocol;
mod server;

pub use server::{start, ControlError};
