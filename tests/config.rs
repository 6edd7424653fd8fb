//! Integration tests of the configuration: the shipped files, every
//! validation rule, error positions, and the layouts of the machines in service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use stringdriverd::board::BoardSpec;
use stringdriverd::config::{
    self, Config, ConfigError, DatabaseTarget, GpioSensorsConfig, LineBias, Position, Role,
    SensorBackend, SensorsConfig, SnapshotLink, XSwitchLines, XSwitchWiring,
};
use stringdriverd::config::{AxisParams, MotorWrite};
use stringdriverd::protocol::commands::{Firmware, IntWidth};
use stringdriverd::protocol::Op;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

fn example_text() -> String {
    std::fs::read_to_string(shipped("stringdriver.example.toml")).unwrap()
}

fn demo_text() -> String {
    std::fs::read_to_string(shipped("demo.toml")).unwrap()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    config::parse(text, Path::new("t.toml"))
}

/// `text` with the first `from` that starts a line replaced by `to` (the
/// example's comments repeat keys of other hosts, which must stay as they
/// are); fails the test if there is none, so a stale edit cannot make a test
/// pass vacuously.
fn edit(text: &str, from: &str, to: &str) -> String {
    let at = if text.starts_with(from) {
        0
    } else {
        1 + text
            .find(&format!("\n{from}"))
            .unwrap_or_else(|| panic!("no line starts with `{from}`"))
    };
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

/// The example with one edit, expected to fail validation at `key`.
fn rejects(text: &str, key: &str, fragment: &str) -> ConfigError {
    let e = parse(text).expect_err("should be rejected");
    assert_eq!(e.key(), Some(key), "{e}");
    assert!(e.to_string().contains(fragment), "`{fragment}` not in: {e}");
    e
}

/// 1-based line and column of the first `needle` in `text`.
fn pos(text: &str, needle: &str) -> Position {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in text"));
    pos_at(text, offset)
}

/// 1-based line and column of byte `offset` in `text`.
fn pos_at(text: &str, offset: usize) -> Position {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

const SD1: &str = r#"
host = "stringdriver-1"
[[boards]]
name = "carriage"
port = "/dev/ttyACM0"
int_bytes = 2
firmware = "v1"
steppers = 7

[layout]
strings = 2
tuner_first_index = 0
tuner_min = -25000
tuner_max = 25000
x_index = 2
x_max = 2396
z_first_index = 3
"#;

const SD3: &str = r#"
host = "stringdriver-3"
[[boards]]
name = "carriage"
port = "/dev/ttyUSB0"
int_bytes = 2
firmware = "v2"
steppers = 13

[layout]
strings = 4
x_index = 0
x_max = 0
z_first_index = 1
"#;

// ---------------------------------------------------------------- shipped files

#[test]
fn example_loads_as_stringdriver_2() {
    let c = config::load(&shipped("stringdriver.example.toml")).unwrap();
    assert_eq!(c.host, "stringdriver-2");
    assert_eq!(c.boards.len(), 2);
    let (carriage, tuner) = (&c.boards[0], &c.boards[1]);
    assert_eq!(carriage.name, "carriage");
    assert!(carriage.port.starts_with("/dev/serial/by-id/"));
    assert_eq!(carriage.int_bytes, IntWidth::Two);
    assert_eq!(carriage.firmware, Firmware::V2);
    assert_eq!(carriage.steppers, 13);
    assert_eq!(tuner.int_bytes, IntWidth::Four);
    assert_eq!(tuner.firmware, Firmware::Tuner);
    assert_eq!(tuner.steppers, 6);
    let l = &c.layout;
    assert_eq!(l.strings(), 6);
    assert_eq!(l.total_steppers(), 19);
    assert_eq!(l.role(0), Role::X);
    assert_eq!(l.role(1), Role::ZIn { string: 0 });
    assert_eq!(l.role(2), Role::ZOut { string: 0 });
    assert_eq!(l.role(11), Role::ZIn { string: 5 });
    assert_eq!(l.role(12), Role::ZOut { string: 5 });
    assert_eq!(l.role(13), Role::Tuner { string: 0 });
    assert_eq!(l.role(18), Role::Tuner { string: 5 });
    assert_eq!(l.role(19), Role::Unused);
    assert_eq!(l.limits(3), (-100, 80), "the example's override");
    assert_eq!(l.limits(4), (-100, 100));
    assert_eq!(l.limits(13), (-100_000, 100_000));
    assert_eq!(l.locate(12), Some((0, 12)));
    assert_eq!(l.locate(13), Some((1, 0)));
    assert_eq!(l.locate(19), None);
    assert_eq!(l.global(1, 5), 18);
    assert_eq!(l.try_global(1, 6), None);
    assert_eq!(l.board_range(1), Some(13..19));
    assert_eq!(l.z_pair(2), (5, 6));
    assert_eq!(
        c.database.target,
        DatabaseTarget::Url("postgres://stringdriver@db.lab:5432/audmon".into())
    );
    // Under systemd the password arrives as a credential, not from this file.
    assert_eq!(c.database.password_file, None);
    assert_eq!(c.control.group.as_deref(), Some("stringdriver"));
    assert_eq!(c.spool.max_bytes, 1 << 30);
    assert_eq!(c.thresholds.amp_sum_min, vec![20; 6]);
    assert_eq!(c.thresholds.amp_sum_max, vec![250; 6]);
}

#[test]
fn example_documents_every_key() {
    // Every key of the fully resolved configuration (which writes out every
    // key there is, the `[database]` parts aside) is in the example, active
    // or commented out, and each active key line has a comment above it
    // somewhere in its table.
    let text = example_text();
    let mut c = parse(&text).unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut collect = |c: &Config| {
        for line in c.to_toml_string().lines() {
            if let Some((k, _)) = line.split_once(" = ") {
                if !line.starts_with('#') && !keys.contains(&k.to_string()) {
                    keys.push(k.to_string());
                }
            }
        }
    };
    collect(&c);
    c.database.target = DatabaseTarget::Parts {
        host: "h".into(),
        port: 1,
        user: "u".into(),
        dbname: "d".into(),
    };
    collect(&c);
    assert!(keys.len() > 50, "{keys:?}");
    for k in &keys {
        let active = format!("\n{k} = ");
        let commented = format!("\n# {k} = ");
        assert!(
            text.contains(&active) || text.contains(&commented),
            "key `{k}` is not in the example"
        );
    }
    assert!(text.contains("stringdriver-1") && text.contains("stringdriver-3"));
}

/// Issue 16 item 8: the demo's configuration names no database, since
/// `stringdriverd demo` ships only where `--database-url` or `DATABASE_URL`
/// says (`demo::choose_database`); its comment says how to give one.
#[test]
fn demo_config_names_no_database_and_says_how_to_give_one() {
    let text = demo_text();
    let table: toml::Table = text.parse().expect("TOML");
    assert!(!table.contains_key("database"), "{table:?}");
    assert!(text.contains("--database-url postgres://"), "{text}");
    assert!(text.contains("DATABASE_URL"), "{text}");
}

#[test]
fn demo_loads_with_the_example_layout_on_simulated_ports() {
    let c = config::load(&shipped("demo.toml")).unwrap();
    let example = parse(&example_text()).unwrap();
    assert_eq!(c.host, "stringdriver-demo");
    assert_eq!(
        c.boards[0].port,
        Path::new("/tmp/stringdriverd-demo/carriage")
    );
    assert_eq!(c.boards[1].port, Path::new("/tmp/stringdriverd-demo/tuner"));
    for b in &c.boards {
        assert_eq!(b.reset_wait, Duration::from_millis(300));
    }
    assert_eq!(
        c.spool.path,
        Path::new("/tmp/stringdriverd-demo/spool.sqlite")
    );
    assert_eq!(
        c.control.socket,
        Path::new("/tmp/stringdriverd-demo/control.sock")
    );
    assert_eq!(c.feed.dir, Path::new("/tmp/stringdriverd-demo/shm"));
    assert_eq!(c.operations.z_rest, 0.2);
    assert!(c.operations.lap_rest < example.operations.lap_rest);
    assert_eq!(c.layout.total_steppers(), example.layout.total_steppers());
    for g in 0..c.layout.total_steppers() {
        assert_eq!(c.layout.role(g), example.layout.role(g), "stepper {g}");
        assert_eq!(c.layout.locate(g), example.layout.locate(g), "stepper {g}");
    }
    for (d, e) in c.boards.iter().zip(&example.boards) {
        assert_eq!(
            (d.int_bytes, d.firmware, d.steppers),
            (e.int_bytes, e.firmware, e.steppers)
        );
    }
}

// ---------------------------------------------------------------- layouts of the hosts

#[test]
fn stringdriver_1_layout() {
    let c = parse(SD1).unwrap();
    let l = &c.layout;
    assert_eq!(c.boards[0].firmware, Firmware::V1);
    assert_eq!(l.total_steppers(), 7);
    let roles: Vec<Role> = (0..7).map(|g| l.role(g)).collect();
    assert_eq!(
        roles,
        [
            Role::Tuner { string: 0 },
            Role::Tuner { string: 1 },
            Role::X,
            Role::ZIn { string: 0 },
            Role::ZOut { string: 0 },
            Role::ZIn { string: 1 },
            Role::ZOut { string: 1 },
        ]
    );
    assert_eq!(l.limits(2), (0, 2396));
    assert_eq!(l.limits(0), (-25000, 25000));
    assert_eq!(l.limits(6), (-100, 100));
    assert_eq!(l.z_pair(0), (3, 4));
    assert_eq!(l.z_pair(1), (5, 6));
    assert_eq!(c.motor.speed_of(l, 2), Some(500));
    assert_eq!(c.motor.speed_of(l, 0), Some(250));
    assert_eq!(l.locate(6), Some((0, 6)));
    assert_eq!(l.locate(7), None);
    assert_eq!(
        c.thresholds.voice_count_min,
        vec![2, 2],
        "the operators' default"
    );
}

#[test]
fn stringdriver_1_needs_tuner_limits_that_fit_its_two_byte_ints() {
    let text = SD1.replace("tuner_min = -25000\n", "");
    let e = rejects(&text, "layout.tuner_min", "does not fit the 2-byte ints");
    assert!(e.to_string().contains("-100000"), "{e}");
    let text = edit(SD1, "tuner_max = 25000", "tuner_max = 40000");
    let e = rejects(&text, "layout.tuner_max", "board `carriage`");
    assert_eq!(e.position(), Some(pos(&text, "40000")));
}

#[test]
fn stringdriver_3_layout_has_unused_steppers() {
    let c = parse(SD3).unwrap();
    let l = &c.layout;
    assert_eq!(l.total_steppers(), 13);
    assert_eq!(l.role(0), Role::X);
    assert_eq!(l.limits(0), (0, 0), "the X placeholder must not move");
    for s in 0..4 {
        assert_eq!(l.role(1 + 2 * s), Role::ZIn { string: s });
        assert_eq!(l.role(2 + 2 * s), Role::ZOut { string: s });
    }
    for g in 9..=12 {
        assert_eq!(l.role(g), Role::Unused, "stepper {g}");
        assert_eq!(l.limits(g), (0, 0));
        assert_eq!(c.motor.speed_of(l, g), None, "stepper {g}: nothing sent");
        let spec = BoardSpec::from_config(&c, 0).unwrap();
        assert_eq!(spec.speeds[g], 100.0, "slowest of X 500 and Z 100");
    }
    assert!(l.tuners().is_none());
    assert_eq!(
        c.thresholds.amp_sum_max,
        vec![250; 4],
        "the operators' default"
    );

    // The slowest configured speed is taken, whichever group has it.
    let slow_x = format!("{SD3}\n[motor.x]\nspeed = 50\nmax = 0\n");
    let c = parse(&slow_x).unwrap();
    assert_eq!(BoardSpec::from_config(&c, 0).unwrap().speeds[10], 50.0);

    // An override may let an unused stepper move.
    let text = format!("{SD3}\n[[layout.stepper]]\nindex = 10\nmin = -5\nmax = 5\n");
    assert_eq!(parse(&text).unwrap().layout.limits(10), (-5, 5));
}

#[test]
fn sweep_range_defaults_follow_each_hosts_x_travel() {
    // operations.md: x_start 100, x_finish X max - 100.
    let sd2 = parse(&example_text()).unwrap().operations;
    assert_eq!(
        (sd2.x_start, sd2.x_finish, sd2.x_step, sd2.tuner_step),
        (100, 2500, 10, 100)
    );
    let sd1 = parse(SD1).unwrap().operations;
    assert_eq!((sd1.x_start, sd1.x_finish), (100, 2296), "X max 2396");
    // A placeholder X (max 0) has nowhere to sweep: both ends at 0.
    let sd3 = parse(SD3).unwrap().operations;
    assert_eq!((sd3.x_start, sd3.x_finish, sd3.x_travel), (0, 0, (0, 0)));
}

#[test]
fn sweep_positions_must_lie_inside_the_x_travel() {
    let t = example_text();
    let e = rejects(
        &edit(&t, "x_finish = 2500", "x_finish = 2700"),
        "operations.x_finish",
        "travel 0 to 2600",
    );
    assert!(e.to_string().contains("2700"), "{e}");
    rejects(
        &edit(&t, "x_start = 100", "x_start = -1"),
        "operations.x_start",
        "travel 0 to 2600",
    );
    rejects(
        &edit(&t, "x_step = 10", "x_step = 0"),
        "operations.x_step",
        ">= 1",
    );
    rejects(
        &edit(&t, "tuner_step = 100", "tuner_step = -5"),
        "operations.tuner_step",
        ">= 1",
    );
}

#[test]
fn sweep_bounds_are_configured_validated_and_default_out_of_a_real_sweeps_reach() {
    let t = example_text();
    let o = parse(&t).unwrap().operations;
    assert_eq!((o.sweep_max_passes, o.sweep_max_calibrations), (500, 100));
    assert!(o.sweep_max_passes > o.retry_threshold);
    let o = parse(&edit(
        &t,
        "sweep_max_calibrations = 100",
        "sweep_max_calibrations = 0",
    ))
    .unwrap()
    .operations;
    assert_eq!(o.sweep_max_calibrations, 0, "0: a sweep never calibrates");
    rejects(
        &edit(&t, "sweep_max_passes = 500", "sweep_max_passes = 0"),
        "operations.sweep_max_passes",
        ">= 1",
    );
    rejects(
        &edit(
            &t,
            "sweep_max_calibrations = 100",
            "sweep_max_calibrations = -1",
        ),
        "operations.sweep_max_calibrations",
        ">= 0",
    );
}

#[test]
#[should_panic(expected = "does not exist")]
fn global_panics_past_a_board() {
    let c = parse(SD3).unwrap();
    let _ = c.layout.global(0, 13);
}

// ---------------------------------------------------------------- errors: parse level

#[test]
fn display_has_file_line_column_key_and_message() {
    let text = edit(&demo_text(), "int_bytes = 2", "int_bytes = 3");
    let e = config::parse(&text, Path::new("config/demo.toml")).unwrap_err();
    let p = pos(&text, "int_bytes = 3");
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "config/demo.toml:{}:{}: boards[0].int_bytes: int width must be 2 or 4 bytes, not 3",
            p.line,
            p.column + "int_bytes = ".len()
        )
    );
}

#[test]
fn type_errors_have_line_and_column() {
    let base = example_text();
    let cases = [
        (
            "firmware = \"tuner\"",
            "firmware = \"v3\"",
            "\"v3\"",
            "boards[1].firmware",
            "v3",
        ),
        (
            "steppers = 13",
            "steppers = \"13\"",
            "\"13\"",
            "boards[0].steppers",
            "string",
        ),
        (
            "reset_wait = \"2s\"",
            "reset_wait = 2",
            "2\n",
            "boards[0].reset_wait",
            "needs a unit",
        ),
        (
            "poll_interval = \"500ms\"",
            "poll_interval = \"fast\"",
            "\"fast\"",
            "boards[0].poll_interval",
            "invalid duration",
        ),
        (
            "z_up_step = 2",
            "z_up_step = 2.5",
            "2.5",
            "operations.z_up_step",
            "floating point",
        ),
        (
            "link = \"none\"",
            "link = \"sometimes\"",
            "\"sometimes\"",
            "snapshot.link",
            "sometimes",
        ),
        (
            "bump_check_enable = true",
            "bump_check_enable = \"yes\"",
            "\"yes\"",
            "operations.bump_check_enable",
            "bool",
        ),
        (
            "max_bytes = \"1GiB\"",
            "max_bytes = \"12 parsecs\"",
            "\"12 parsecs\"",
            "spool.max_bytes",
            "unknown size unit",
        ),
        (
            "mode = \"0660\"",
            "mode = \"0680\"",
            "\"0680\"",
            "control.mode",
            "not an octal number",
        ),
        (
            "mode = \"0660\"",
            "mode = \"01777\"",
            "\"01777\"",
            "control.mode",
            "larger than 0777",
        ),
        (
            "mode = \"0660\"",
            "mode = 660",
            "660\n",
            "control.mode",
            "not read as octal",
        ),
    ];
    for (from, to, at, key, fragment) in cases {
        let text = edit(&base, from, to);
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{to}: {e:?}");
        assert_eq!(e.key(), Some(key), "{to}: {e}");
        assert!(e.to_string().contains(fragment), "{to}: {e}");
        // Search from the edited line on, so that an earlier identical value
        // (the tuner board repeats the carriage's keys) is not taken.
        let line_at = text.find(to).unwrap();
        let value_at = line_at + text[line_at..].find(at).unwrap();
        assert_eq!(e.position(), Some(pos_at(&text, value_at)), "{to}: {e}");
    }
}

#[test]
fn threshold_element_errors_name_the_element() {
    let text = edit(
        &example_text(),
        "amp_sum_min = 20",
        "amp_sum_min = [20, 20, 20, 2.5, 20, 20]",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key(), Some("thresholds.amp_sum_min[3]"), "{e}");
    assert_eq!(e.position(), Some(pos(&text, "2.5")));
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let base = example_text();
    let cases = [
        // top level
        (
            "host = \"stringdriver-2\"",
            "host = \"stringdriver-2\"\ncolour = \"red\"",
            "colour",
            "colour",
        ),
        // inside a board
        (
            "firmware = \"tuner\"",
            "firmware = \"tuner\"\nspeed = 3",
            "speed",
            "boards[1].speed",
        ),
        // inside layout
        (
            "z_first_index = 1",
            "z_first_index = 1\nz_count = 12",
            "z_count",
            "layout.z_count",
        ),
        // inside a per-stepper override
        (
            "index = 3",
            "index = 3\nmaxx = 80",
            "maxx",
            "layout.stepper[0].maxx",
        ),
        // a whole unknown table
        (
            "[log]",
            "[logging]\nlevel = \"x\"\n[log]",
            "[logging]",
            "logging",
        ),
        // a mistyped table name inside [operations]
        (
            "z_rest = 1.0",
            "z_rest = 1.0\nzrest = 1.0",
            "zrest",
            "operations.zrest",
        ),
    ];
    for (from, to, needle, key) in cases {
        let text = edit(&base, from, to);
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{key}: {e:?}");
        assert_eq!(e.key(), Some(key), "{e}");
        let name = key.rsplit('.').next().unwrap();
        assert!(
            e.to_string().contains(&format!("unknown field `{name}`")),
            "{e}"
        );
        let expected = pos(&text, &format!("\n{needle}"));
        assert_eq!(e.position().map(|p| p.line), Some(expected.line + 1), "{e}");
    }
}

#[test]
fn missing_required_keys_are_named_without_a_position() {
    let text = edit(&demo_text(), "z_first_index = 1\n", "");
    let e = config::parse(&text, Path::new("config/demo.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config/demo.toml: layout.z_first_index: required, but not set"
    );
    let text = edit(&demo_text(), "int_bytes = 4\n", "");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key(), Some("boards[1].int_bytes"));
    let text = SD3.split("[layout]").next().unwrap().to_string();
    assert_eq!(parse(&text).unwrap_err().key(), Some("layout"));
}

#[test]
fn toml_syntax_errors_have_a_position_and_no_key() {
    let text = edit(&example_text(), "strings = 6", "strings = = 6");
    let e = parse(&text).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { key: None, .. }), "{e:?}");
    assert_eq!(
        e.position().map(|p| p.line),
        Some(pos(&text, "strings = = 6").line)
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let path = Path::new("/nonexistent/stringdriver.toml");
    let e = config::load(path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/stringdriver.toml: "),
        "{e}"
    );
}

// ---------------------------------------------------------------- validation rules

#[test]
fn z_steps_must_point_the_right_way() {
    let t = example_text();
    rejects(
        &edit(&t, "z_up_step = 2", "z_up_step = 0"),
        "operations.z_up_step",
        "> 0",
    );
    rejects(
        &edit(&t, "z_up_step = 2", "z_up_step = -2"),
        "operations.z_up_step",
        "> 0",
    );
    rejects(
        &edit(&t, "z_down_step = -2", "z_down_step = 0"),
        "operations.z_down_step",
        "< 0",
    );
    let text = edit(&t, "z_down_step = -2", "z_down_step = 2");
    let e = rejects(&text, "operations.z_down_step", "< 0");
    assert_eq!(e.position(), Some(pos(&text, "2\n# Rests")));
}

#[test]
fn operation_counts_have_lower_bounds() {
    let t = example_text();
    rejects(
        &edit(&t, "adjustment_level = 4", "adjustment_level = 0"),
        "operations.adjustment_level",
        ">= 1",
    );
    rejects(
        &edit(&t, "retry_threshold = 50", "retry_threshold = 0"),
        "operations.retry_threshold",
        ">= 1",
    );
    rejects(
        &edit(&t, "delta_threshold = 50", "delta_threshold = -1"),
        "operations.delta_threshold",
        ">= 0",
    );
    rejects(
        &edit(
            &t,
            "z_variance_threshold = 50",
            "z_variance_threshold = 3000000000",
        ),
        "operations.z_variance_threshold",
        "32-bit",
    );
}

#[test]
fn rests_must_be_finite_and_not_negative() {
    let t = example_text();
    rejects(
        &edit(&t, "z_rest = 1.0", "z_rest = nan"),
        "operations.z_rest",
        "finite",
    );
    rejects(
        &edit(&t, "tune_rest = 5.0", "tune_rest = inf"),
        "operations.tune_rest",
        "finite",
    );
    rejects(
        &edit(&t, "x_rest = 5.0", "x_rest = -1.0"),
        "operations.x_rest",
        "negative",
    );
    rejects(
        &edit(&t, "lap_rest = 4.0", "lap_rest = 4000"),
        "operations.lap_rest",
        "seconds",
    );
    let c = parse(&edit(&t, "lap_rest = 4.0", "lap_rest = 0")).unwrap();
    assert_eq!(c.operations.lap_rest, 0.0);
}

#[test]
fn board_rules() {
    let t = example_text();
    let text = edit(&t, "name = \"tuner\"", "name = \"carriage\"");
    let e = rejects(&text, "boards[1].name", "already used by boards[0]");
    assert_eq!(
        e.position().map(|p| p.line),
        Some(
            pos(
                &text,
                "name = \"carriage\"\nport = \"/dev/serial/by-id/usb-Rasp"
            )
            .line
        )
    );
    rejects(
        &edit(&t, "name = \"tuner\"", "name = \"\""),
        "boards[1].name",
        "empty",
    );
    rejects(
        &edit(&t, "steppers = 13", "steppers = 0"),
        "boards[0].steppers",
        "1 to 64",
    );
    rejects(
        &edit(&t, "steppers = 6", "steppers = 65"),
        "boards[1].steppers",
        "1 to 64",
    );
    rejects(
        &edit(&t, "baud = 115200", "baud = 0"),
        "boards[0].baud",
        "positive",
    );
    rejects(
        &edit(
            &t,
            "port = \"/dev/serial/by-id/usb-Arduino_Mega-if00\"",
            "port = \"\"",
        ),
        "boards[0].port",
        "empty",
    );
    rejects(
        &edit(&t, "reply_timeout = \"1s\"", "reply_timeout = \"0s\""),
        "boards[0].reply_timeout",
        "longer than 0",
    );
    rejects(
        &edit(&t, "poll_interval = \"500ms\"", "poll_interval = \"5ms\""),
        "boards[0].poll_interval",
        "at least 10ms",
    );
    // Zero is fine where it means something: a board that does not reset.
    let c = parse(&edit(&t, "reset_wait = \"2s\"", "reset_wait = \"0s\"")).unwrap();
    assert_eq!(c.boards[0].reset_wait, Duration::ZERO);

    let none = "host = \"h\"\nboards = []\n[layout]\nstrings = 1\nz_first_index = 0\n";
    rejects(none, "boards", "at least one");
}

#[test]
fn ranges_must_lie_within_the_boards() {
    let t = example_text();
    rejects(
        &edit(&t, "x_index = 0", "x_index = 19"),
        "layout.x_index",
        "19 steppers in total",
    );
    rejects(
        &edit(&t, "x_index = 0", "x_index = -1"),
        "layout.x_index",
        "negative",
    );
    rejects(
        &edit(&t, "tuner_first_index = 13", "tuner_first_index = 14"),
        "layout.tuner_first_index",
        "steppers 14 to 19",
    );
    // More Z steppers than the boards hold: 7 strings on a 13-stepper board.
    let text = edit(SD3, "strings = 4", "strings = 7");
    let e = rejects(&text, "layout.z_first_index", "steppers 1 to 14");
    assert!(e.to_string().contains("13 steppers in total"), "{e}");
    rejects(
        &edit(SD3, "strings = 4", "strings = 0"),
        "layout.strings",
        "1 to 12",
    );
    rejects(
        &edit(SD3, "strings = 4", "strings = 13"),
        "layout.strings",
        "1 to 12",
    );
}

#[test]
fn ranges_must_not_overlap() {
    let t = example_text();
    let text = edit(&t, "z_first_index = 1", "z_first_index = 0");
    let e = rejects(&text, "layout.z_first_index", "overlap the X steppers");
    assert_eq!(e.position(), Some(pos(&text, "0\n# Z position")));
    rejects(
        &edit(&t, "tuner_first_index = 13", "tuner_first_index = 12"),
        "layout.tuner_first_index",
        "overlap the Z steppers (steppers 1 to 12",
    );
    let text = edit(SD1, "x_index = 2", "x_index = 1");
    rejects(
        &text,
        "layout.tuner_first_index",
        "overlap the X steppers (stepper 1, layout.x_index)",
    );
}

#[test]
fn limits_without_their_range_are_refused() {
    let text = edit(SD3, "x_max = 0", "x_max = 0\ntuner_max = 5");
    rejects(&text, "layout.tuner_max", "layout.tuner_first_index is not");
    let text = SD3.replace("x_index = 0\n", "");
    rejects(&text, "layout.x_max", "no X steppers");
}

#[test]
fn role_and_override_limits() {
    let t = example_text();
    rejects(
        &edit(&t, "z_min = -100", "z_min = 200"),
        "layout.z_min",
        "above its maximum 100",
    );
    rejects(
        &edit(SD3, "x_max = 0", "x_max = -1"),
        "layout.x_max",
        "above its maximum -1",
    );
    rejects(
        &edit(&t, "index = 3\nmax = 80", "index = 3\nmax = -150"),
        "layout.stepper[0].max",
        "minimum -100 is above maximum -150",
    );
    rejects(
        &edit(&t, "index = 3\nmax = 80", "index = 19\nmax = 80"),
        "layout.stepper[0].index",
        "does not exist",
    );
    let text = edit(
        &t,
        "index = 3\nmax = 80",
        "index = 3\nmax = 80\n[[layout.stepper]]\nindex = 3\nmin = 0",
    );
    let e = rejects(
        &text,
        "layout.stepper[1].index",
        "already overridden by layout.stepper[0]",
    );
    assert!(e.position().is_some());
    rejects(
        &edit(&t, "index = 3\nmax = 80", "index = 3\nmax = 40000"),
        "layout.stepper[0].max",
        "2-byte",
    );
    rejects(
        &edit(&t, "speed = 100\n", "speed = 0\n"),
        "motor.z.speed",
        "at least 1",
    );
}

/// The example writes each threshold as one integer for every channel, so
/// that changing layout.strings leaves the [thresholds] table valid.
#[test]
fn example_thresholds_are_scalars_that_survive_a_changed_string_count() {
    let t = example_text();
    let table: toml::Table = t.parse().expect("TOML");
    let thresholds = table["thresholds"].as_table().expect("[thresholds]");
    for key in [
        "voice_count_min",
        "voice_count_max",
        "amp_sum_min",
        "amp_sum_max",
    ] {
        assert!(thresholds[key].is_integer(), "{key} = {}", thresholds[key]);
    }
    // The first error of the example with one string fewer is about the
    // sensor wiring (one line per Z stepper), not about thresholds.
    let e = parse(&edit(&t, "strings = 6", "strings = 5")).unwrap_err();
    assert!(!e.to_string().contains("thresholds"), "{e}");
}

#[test]
fn thresholds_scalar_or_array() {
    let t = example_text();
    let c = parse(&edit(&t, "voice_count_max = 12", "voice_count_max = 10")).unwrap();
    assert_eq!(c.thresholds.voice_count_max, vec![10; 6]);
    let c = parse(&edit(
        &t,
        "amp_sum_min = 20",
        "amp_sum_min = [1, 2, 3, 4, 5, 6]",
    ))
    .unwrap();
    assert_eq!(c.thresholds.amp_sum_min, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(c.thresholds.amp_sum_max, vec![250; 6]);

    let text = edit(&t, "amp_sum_min = 20", "amp_sum_min = [20, 20]");
    let e = rejects(
        &text,
        "thresholds.amp_sum_min",
        "has 2 values but layout.strings is 6",
    );
    assert_eq!(e.position(), Some(pos(&text, "[20, 20]")));

    let text = edit(
        &t,
        "amp_sum_min = 20",
        "amp_sum_min = [20, 20, 20, 300, 20, 20]",
    );
    let e = rejects(
        &text,
        "thresholds.amp_sum_min",
        "channel 3: minimum 300 is above thresholds.amp_sum_max 250",
    );
    assert_eq!(
        e.position(),
        Some(pos(&text, "300, 20, 20]")),
        "points at the element"
    );

    let text = edit(&t, "voice_count_min = 2", "voice_count_min = 13");
    let e = rejects(&text, "thresholds.voice_count_min", "channel 0: minimum 13");
    let line = pos(&text, "\nvoice_count_min = 13").line + 1;
    assert_eq!(
        e.position(),
        Some(Position { line, column: 19 }),
        "points at the scalar"
    );
}

#[test]
fn durations_that_cannot_be_zero() {
    let t = example_text();
    rejects(
        &edit(&t, "interval = \"1s\"", "interval = \"0s\""),
        "snapshot.interval",
        "at least 10ms",
    );
    rejects(
        &edit(&t, "link_max_age = \"2s\"", "link_max_age = \"0s\""),
        "snapshot.link_max_age",
        "longer than 0",
    );
    rejects(
        &edit(&t, "interval = \"200ms\"", "interval = \"0s\""),
        "feed.interval",
        "longer than 0",
    );
    rejects(
        &edit(&t, "stale_after = \"2s\"", "stale_after = \"100ms\""),
        "feed.stale_after",
        "shorter than feed.interval",
    );
    rejects(
        &edit(&t, "connect_timeout = \"5s\"", "connect_timeout = \"0s\""),
        "database.connect_timeout",
        "longer than 0",
    );
}

#[test]
fn database_passwords_never_enter_the_configuration() {
    let t = example_text();
    let text = edit(
        &t,
        "# password_file = ",
        "password = \"hunter2\"\n# password_file = ",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key(), Some("database.password"), "{e}");
    assert!(e.to_string().contains("database.password_file"), "{e}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    assert_eq!(
        e.position().map(|p| p.line),
        Some(pos(&text, "password = ").line)
    );

    let url_line = "url = \"postgres://stringdriver@db.lab:5432/audmon\"";
    let text = edit(
        &t,
        url_line,
        "url = \"postgres://stringdriver:hunter2@db.lab:5432/audmon\"",
    );
    let e = rejects(&text, "database.url", "password_file");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
    let text = edit(
        &t,
        url_line,
        "url = \"postgres://db.lab:5432/audmon?password=hunter2\"",
    );
    let e = rejects(&text, "database.url", "contains a password");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");

    rejects(
        &edit(&t, "# host = \"db.lab\"", "host = \"db.lab\""),
        "database.host",
        "not both",
    );
    rejects(
        &edit(&t, url_line, "url = \"mysql://db.lab/audmon\""),
        "database.url",
        "postgres://",
    );

    // Parts instead of a URL.
    let text = edit(&t, url_line, "host = \"db.lab\"\nport = 5433");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.database.target,
        DatabaseTarget::Parts {
            host: "db.lab".into(),
            port: 5433,
            user: "stringdriver".into(),
            dbname: "audmon".into()
        }
    );
    rejects(
        &edit(&text, "port = 5433", "port = 70000"),
        "database.port",
        "1 to 65535",
    );
}

#[test]
fn password_file_is_read_and_trimmed_of_one_newline() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = parse(&example_text()).unwrap();
    let file = dir.path().join("pw");
    c.database.password_file = Some(file.clone());

    std::fs::write(&file, "s3cret\n").unwrap();
    assert_eq!(c.database.password().unwrap().as_deref(), Some("s3cret"));
    std::fs::write(&file, "s3 cret \r\n").unwrap();
    assert_eq!(c.database.password().unwrap().as_deref(), Some("s3 cret "));
    std::fs::write(&file, "s3cret\n\n").unwrap();
    assert_eq!(c.database.password().unwrap().as_deref(), Some("s3cret\n"));
    std::fs::write(&file, "s3cret").unwrap();
    assert_eq!(c.database.password().unwrap().as_deref(), Some("s3cret"));

    std::fs::write(&file, "\n").unwrap();
    let e = c.database.password().unwrap_err();
    assert!(matches!(e, ConfigError::PasswordFile { .. }), "{e:?}");
    assert!(e.to_string().contains("empty"), "{e}");

    let missing = dir.path().join("missing");
    c.database.password_file = Some(missing.clone());
    let e = c.database.password().unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing.display())),
        "{e}"
    );
    assert!(e.to_string().contains("database.password_file"), "{e}");

    c.database.password_file = None;
    assert_eq!(c.database.password().unwrap(), None);
}

#[test]
fn spool_sizes_and_control_modes() {
    let t = example_text();
    for (written, bytes) in [
        ("\"512MiB\"", 512 << 20),
        ("\"800MB\"", 800_000_000),
        ("\"1 GiB\"", 1 << 30),
        ("2097152", 2 << 20),
    ] {
        let c = parse(&edit(
            &t,
            "max_bytes = \"1GiB\"",
            &format!("max_bytes = {written}"),
        ))
        .unwrap();
        assert_eq!(c.spool.max_bytes, bytes, "{written}");
    }
    rejects(
        &edit(&t, "max_bytes = \"1GiB\"", "max_bytes = \"10KiB\""),
        "spool.max_bytes",
        "1MiB",
    );
    rejects(
        &edit(&t, "max_bytes = \"1GiB\"", "max_bytes = -5"),
        "spool.max_bytes",
        "negative",
    );
    for (written, mode) in [
        ("\"0600\"", 0o600),
        ("\"770\"", 0o770),
        ("\"0o640\"", 0o640),
    ] {
        let c = parse(&edit(&t, "mode = \"0660\"", &format!("mode = {written}"))).unwrap();
        assert_eq!(c.control.mode, mode, "{written}");
    }
    rejects(
        &edit(&t, "group = \"stringdriver\"", "group = \"\""),
        "control.group",
        "empty",
    );
}

#[test]
fn compat_section_defaults_keys_and_round_trip() {
    let t = example_text();
    let c = parse(&t).unwrap();
    assert!(!c.compat.enabled);
    assert_eq!(c.compat.board, "carriage");
    assert_eq!(c.compat.port, Path::new("/dev/ttyACM0"));
    assert_eq!(c.compat.dir, Path::new("/run/stringdriver"));
    assert_eq!(
        c.compat.socket(),
        Path::new("/run/stringdriver/stepper_gui__dev_ttyACM0.sock")
    );
    let printed = c.to_toml_string();
    assert!(printed.contains("[compat]"), "{printed}");
    assert_eq!(parse(&printed).unwrap(), c);

    // Absent: off, the first board, its configured port, /run/stringdriver.
    let mut bare = t.clone();
    for line in [
        "board = \"carriage\"\n",
        "port = \"/dev/ttyACM0\"\n",
        "dir = \"/run/stringdriver\"\n",
    ] {
        bare = edit(&bare, line, "");
    }
    let d = parse(&bare).unwrap().compat;
    assert_eq!(d.board, "carriage");
    assert_eq!(d.port, parse(&bare).unwrap().boards[0].port);
    assert_eq!(d.dir, Path::new("/run/stringdriver"));

    // Another board, another name, another place.
    let other = edit(
        &edit(
            &edit(&t, "board = \"carriage\"", "board = \"tuner\""),
            "port = \"/dev/ttyACM0\"",
            "port = \"/dev/ttyACM1\"",
        ),
        "dir = \"/run/stringdriver\"",
        "dir = \"/tmp\"",
    );
    let c = parse(&other).unwrap().compat;
    assert_eq!(c.board, "tuner");
    assert_eq!(c.socket(), Path::new("/tmp/stepper_gui__dev_ttyACM1.sock"));

    rejects(
        &edit(&t, "dir = \"/run/stringdriver\"", "dir = \"\""),
        "compat.dir",
        "empty",
    );
    rejects(
        &edit(&t, "board = \"carriage\"", "board = \"x\""),
        "compat.board",
        "no board is named \"x\" (the boards are carriage, tuner)",
    );
    rejects(
        &edit(&t, "port = \"/dev/ttyACM0\"", "port = \"\""),
        "compat.port",
        "empty",
    );
    let long = format!("dir = \"/{}\"", "d".repeat(90));
    rejects(
        &edit(&t, "dir = \"/run/stringdriver\"", &long),
        "compat",
        "more than the 107 a Unix socket path may have",
    );
    let e = parse(&edit(
        &t,
        "board = \"carriage\"",
        "board = \"carriage\"\nboards = 3",
    ))
    .unwrap_err();
    assert_eq!(e.key(), Some("compat.boards"), "{e}");
    assert!(e.to_string().contains("unknown field `boards`"), "{e}");
}

#[test]
fn host_and_log_level() {
    let t = example_text();
    rejects(
        &edit(&t, "host = \"stringdriver-2\"", "host = \"\""),
        "host",
        "empty",
    );
    rejects(
        &edit(&t, "host = \"stringdriver-2\"", "host = \"a b\""),
        "host",
        "whitespace",
    );
    rejects(
        &edit(&t, "level = \"info\"", "level = \"chatty\""),
        "log.level",
        "EnvFilter",
    );
    let c = parse(&edit(
        &t,
        "level = \"info\"",
        "level = \"info,stringdriverd::board=debug\"",
    ))
    .unwrap();
    assert_eq!(c.log.level, "info,stringdriverd::board=debug");
    let c = parse(&edit(&t, "link = \"none\"", "link = \"latest\"")).unwrap();
    assert_eq!(c.snapshot.link, SnapshotLink::Latest);
}

// ---------------------------------------------------------------- touch sensors

/// The lines of stringdriver-2 (hosts.md), in Z stepper order.
const SD2_LINES: [u32; 12] = [8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20];
const SD2_LINES_TEXT: &str = "lines = [8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20]";

#[test]
fn example_reads_stringdriver_2_sensors_on_gpio() {
    let c = parse(&example_text()).unwrap();
    assert_eq!(c.sensors.backend(), SensorBackend::Gpio);
    assert_eq!(
        c.sensors,
        SensorsConfig::Gpio(GpioSensorsConfig {
            chip: None,
            lines: SD2_LINES.to_vec(),
            active_low: true,
            bias: LineBias::PullUp,
            x_switches: XSwitchLines::Two { home: 16, away: 26 },
        })
    );
    let c = parse(&edit(
        &example_text(),
        "active_low = true",
        "active_low = false",
    ))
    .unwrap();
    assert!(matches!(
        c.sensors,
        SensorsConfig::Gpio(GpioSensorsConfig {
            active_low: false,
            ..
        })
    ));
    let c = parse(&edit(
        &edit(&example_text(), "active_low = true\n", ""),
        "bias = \"pull-up\"\n",
        "",
    ))
    .unwrap();
    assert!(
        matches!(
            c.sensors,
            SensorsConfig::Gpio(GpioSensorsConfig {
                active_low: true,
                bias: LineBias::PullUp,
                ..
            })
        ),
        "active_low defaults to true, bias to pull-up (contacts to ground)"
    );
}

#[test]
fn demo_sensors_are_simulated_and_the_default_is_none() {
    assert_eq!(
        parse(&demo_text()).unwrap().sensors,
        SensorsConfig::Simulated {
            sockets: Vec::new(),
            x_switches: XSwitchWiring::Two,
        }
    );
    for text in [SD1, SD3] {
        let c = parse(text).unwrap();
        assert_eq!(c.sensors, SensorsConfig::None);
        assert_eq!(c.sensors.backend(), SensorBackend::None);
    }
    let c = parse(&format!("{SD3}\n[sensors]\n")).unwrap();
    assert_eq!(c.sensors, SensorsConfig::None);
}

#[test]
fn other_hosts_sensor_lines_as_in_the_example_comments() {
    let sd1 = format!(
        "{SD1}\n[sensors]\nbackend = \"gpio\"\nchip = \"/dev/gpiochip0\"\nlines = [6, 26, 19, 5]\n"
    );
    let c = parse(&sd1).unwrap();
    assert_eq!(
        c.sensors,
        SensorsConfig::Gpio(GpioSensorsConfig {
            chip: Some("/dev/gpiochip0".into()),
            lines: vec![6, 26, 19, 5],
            active_low: true,
            bias: LineBias::PullUp,
            x_switches: XSwitchLines::None,
        })
    );
    let sd3 = format!(
        "{SD3}\n[sensors]\nbackend = \"gpio\"\nchip = \"/dev/gpiochip0\"\n\
         lines = [8, 17, 18, 27, 10, 13, 24, 21]\nactive_low = true\n"
    );
    let c = parse(&sd3).unwrap();
    assert!(matches!(&c.sensors, SensorsConfig::Gpio(g) if g.lines.len() == 8 && g.active_low));
    // The example's comments say the same.
    let t = example_text();
    assert!(t.contains("#   lines = [6, 26, 19, 5]"));
    assert!(t.contains("#   lines = [8, 17, 18, 27, 10, 13, 24, 21]"));
}

#[test]
fn gpio_lines_one_per_z_stepper_all_different() {
    let t = example_text();
    let text = edit(
        &t,
        SD2_LINES_TEXT,
        "lines = [8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11]",
    );
    let e = rejects(
        &text,
        "sensors.lines",
        "has 11 lines but there are 12 Z steppers",
    );
    assert_eq!(
        e.position(),
        Some(pos(&text, "[8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11]"))
    );
    rejects(
        &edit(
            &t,
            SD2_LINES_TEXT,
            "lines = [8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 11, 20, 22]",
        ),
        "sensors.lines",
        "has 13 lines",
    );
    rejects(
        &edit(&t, SD2_LINES_TEXT, "lines = []"),
        "sensors.lines",
        "has 0 lines",
    );
    // A duplicate is pointed at where it is written the second time.
    let text = edit(
        &t,
        SD2_LINES_TEXT,
        "lines = [8, 17, 18, 27, 10, 13, 24, 21, 5, 19, 17, 20]",
    );
    let e = rejects(&text, "sensors.lines", "line 17 is given twice");
    assert!(
        e.to_string()
            .contains("sensors.lines[1] and sensors.lines[10]"),
        "{e}"
    );
    let offset = text.find("19, 17").unwrap() + "19, ".len();
    assert_eq!(e.position(), Some(pos_at(&text, offset)));
    // Negative and oversized offsets name the element.
    let text = edit(
        &t,
        SD2_LINES_TEXT,
        "lines = [8, 17, 18, -27, 10, 13, 24, 21, 5, 19, 11, 20]",
    );
    let e = rejects(&text, "sensors.lines[3]", "not -27");
    assert_eq!(e.position(), Some(pos(&text, "-27")));
    rejects(
        &edit(
            &t,
            SD2_LINES_TEXT,
            "lines = [8, 17, 18, 4294967296, 10, 13, 24, 21, 5, 19, 11, 20]",
        ),
        "sensors.lines[3]",
        "32 bits",
    );
    // Elements must be integers.
    let text = edit(
        &t,
        SD2_LINES_TEXT,
        "lines = [8, 17, 18, \"27\", 10, 13, 24, 21, 5, 19, 11, 20]",
    );
    let e = parse(&text).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_eq!(e.key(), Some("sensors.lines[3]"), "{e}");
}

#[test]
fn gpio_needs_lines_and_finds_its_chip_when_none_is_given() {
    let t = example_text();
    assert!(
        matches!(&parse(&t).unwrap().sensors, SensorsConfig::Gpio(g) if g.chip.is_none()),
        "the example leaves the chip to be found by its lines"
    );
    let with_chip = edit(
        &t,
        "#   chip = \"/dev/gpiochip0\"",
        "chip = \"/dev/gpiochip4\"",
    );
    assert!(matches!(
        &parse(&with_chip).unwrap().sensors,
        SensorsConfig::Gpio(g) if g.chip.as_deref() == Some(Path::new("/dev/gpiochip4"))
    ));
    rejects(
        &edit(&t, "#   chip = \"/dev/gpiochip0\"", "chip = \"\""),
        "sensors.chip",
        "empty path",
    );
    let e = rejects(&edit(&t, SD2_LINES_TEXT, ""), "sensors.lines", "required");
    assert!(e.to_string().contains("12 for layout.strings = 6"), "{e}");
}

#[test]
fn gpio_keys_are_refused_with_other_backends() {
    let t = example_text();
    for backend in ["none", "simulated"] {
        let text = edit(
            &t,
            "backend = \"gpio\"",
            &format!("backend = \"{backend}\""),
        );
        let e = rejects(
            &text,
            "sensors.lines",
            "only used with sensors.backend = \"gpio\"",
        );
        assert!(
            e.to_string()
                .contains(&format!("the backend is \"{backend}\"")),
            "{e}"
        );
        let chip = edit(
            &text,
            "#   chip = \"/dev/gpiochip0\"",
            "chip = \"/dev/gpiochip0\"",
        );
        let e = rejects(&chip, "sensors.chip", "only used with");
        let chip_at = chip.rfind("\"/dev/gpiochip0\"").unwrap();
        assert_eq!(e.position(), Some(pos_at(&chip, chip_at)));
        let text = edit(&text, &format!("{SD2_LINES_TEXT}\n"), "");
        rejects(
            &text,
            "sensors.active_low",
            "remove it, or set backend = \"gpio\"",
        );
        let text = edit(&text, "active_low = true\n", "");
        rejects(
            &text,
            "sensors.bias",
            "remove it, or set backend = \"gpio\"",
        );
        let text = edit(&text, "bias = \"pull-up\"\n", "");
        rejects(
            &text,
            "sensors.x_home_line",
            "remove it, or set backend = \"gpio\"",
        );
        let text = edit(&text, "x_home_line = 16\n", "");
        rejects(
            &text,
            "sensors.x_away_line",
            "remove it, or set backend = \"gpio\"",
        );
        let text = edit(&text, "x_away_line = 26\n", "");
        assert_eq!(parse(&text).unwrap().sensors.backend().to_string(), backend);
    }
    // Leaving the backend out means "none", so the gpio keys are refused too.
    rejects(
        &edit(&t, "backend = \"gpio\"\n", ""),
        "sensors.lines",
        "the backend is \"none\"",
    );
}

#[test]
fn sensor_backend_names_and_unknown_keys() {
    let t = example_text();
    let text = edit(&t, "backend = \"gpio\"", "backend = \"i2c\"");
    let e = parse(&text).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    assert_eq!(e.key(), Some("sensors.backend"), "{e}");
    assert!(e.to_string().contains("i2c"), "{e}");
    assert_eq!(e.position(), Some(pos(&text, "\"i2c\"")));
    let text = edit(&t, "active_low = true", "active_low = true\npull_up = true");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.key(), Some("sensors.pull_up"), "{e}");
    assert!(e.to_string().contains("unknown field `pull_up`"), "{e}");
    let e = parse(&edit(&t, "active_low = true", "active_low = \"no\"")).unwrap_err();
    assert_eq!(e.key(), Some("sensors.active_low"), "{e}");
}

#[test]
fn sensors_round_trip_for_every_backend() {
    let t = example_text();
    let low = edit(
        &t,
        "#   chip = \"/dev/gpiochip0\"",
        "chip = \"/dev/gpiochip0\"",
    );
    let printed = parse(&low).unwrap().to_toml_string();
    assert!(
        printed.contains("[sensors]\nbackend = \"gpio\"\nchip = \"/dev/gpiochip0\"\n"),
        "{printed}"
    );
    assert!(printed.contains(SD2_LINES_TEXT), "{printed}");
    assert!(printed.contains("active_low = true"), "{printed}");
    assert!(printed.contains("bias = \"pull-up\""), "{printed}");
    for text in [low, t.clone(), demo_text(), SD1.to_string()] {
        let c = parse(&text).unwrap();
        let printed = c.to_toml_string();
        assert!(
            printed.contains(&format!("backend = \"{}\"", c.sensors.backend())),
            "{printed}"
        );
        assert_eq!(
            parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}")),
            c
        );
    }
    let none = parse(SD1).unwrap().to_toml_string();
    assert!(
        !none.contains("chip =") && !none.contains("active_low"),
        "{none}"
    );
}

// ---------------------------------------------------------------- round trip

#[test]
fn resolved_configuration_round_trips() {
    for text in [
        example_text(),
        demo_text(),
        SD1.to_string(),
        SD3.to_string(),
    ] {
        let c = parse(&text).unwrap();
        let printed = c.to_toml_string();
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again, c, "{printed}");
        assert_eq!(again.to_toml_string(), printed);
        assert!(!printed.contains("password ="), "{printed}");
        assert!(printed.contains(&format!("host = \"{}\"", c.host)));
    }
    let with_file = edit(&example_text(), "# password_file = ", "password_file = ");
    let printed = parse(&with_file).unwrap().to_toml_string();
    assert!(printed.contains("password_file = \"/etc/stringdriver/db-password\""));
    assert!(printed.contains("move_margin = \"250ms\""));
    assert!(printed.contains("voice_count_max = [12, 12, 12, 12, 12, 12]"));
    assert!(printed.contains("#  13: tuner:0"), "{printed}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_valid_settings_round_trip(
        up in 1i32..1000,
        down in -1000i32..0,
        rests in proptest::array::uniform4(0.0f64..3600.0),
        poll_ms in 10u64..100_000,
        margin_ns in 0u64..10_000_000_000,
        mins in proptest::collection::vec(-1000i32..1000, 6),
        spans in proptest::collection::vec(0i32..1000, 6),
        max_bytes in (1u64 << 20)..(1u64 << 50),
        mode in 0u32..=0o777,
    ) {
        let maxes: Vec<i32> = mins.iter().zip(&spans).map(|(m, s)| m + s).collect();
        let text = format!(
            "host = \"p\"\n\
             [[boards]]\nname = \"c\"\nport = \"/dev/x\"\nint_bytes = 2\nfirmware = \"v2\"\n\
             steppers = 13\npoll_interval = \"{poll_ms}ms\"\nmove_margin = \"{margin_ns}ns\"\n\
             [layout]\nstrings = 6\nx_index = 0\nz_first_index = 1\n\
             [operations]\nz_up_step = {up}\nz_down_step = {down}\ntune_rest = {:?}\n\
             x_rest = {:?}\nz_rest = {:?}\nlap_rest = {:?}\n\
             [thresholds]\namp_sum_min = {mins:?}\namp_sum_max = {maxes:?}\n\
             [spool]\nmax_bytes = {max_bytes}\n[control]\nmode = \"{mode:o}\"\n",
            rests[0], rests[1], rests[2], rests[3],
        );
        let c = parse(&text).unwrap();
        prop_assert_eq!(c.operations.z_rest, rests[2]);
        prop_assert_eq!(c.boards[0].move_margin, Duration::from_nanos(margin_ns));
        prop_assert_eq!(c.spool.max_bytes, max_bytes);
        prop_assert_eq!(c.control.mode, mode);
        prop_assert_eq!(&c.thresholds.amp_sum_max, &maxes);
        let again = parse(&c.to_toml_string()).unwrap();
        prop_assert_eq!(again, c);
    }
}

// ---------------------------------------------------------------- X limit switches

/// stringdriver-1 with its touch sensors on GPIO and `extra` in `[sensors]`.
fn sd1_gpio(extra: &str) -> String {
    format!("{SD1}\n[sensors]\nbackend = \"gpio\"\nlines = [6, 26, 19, 5]\n{extra}")
}

#[test]
fn x_limit_switches_as_wired_on_each_host() {
    // stringdriver-2: a switch per end (the example).
    let c = parse(&example_text()).unwrap();
    assert_eq!(c.sensors.x_switch_wiring(), XSwitchWiring::Two);
    // stringdriver-1: one switch for both ends.
    let c = parse(&sd1_gpio("x_switch_line = 16\n")).unwrap();
    assert!(matches!(
        &c.sensors,
        SensorsConfig::Gpio(g) if g.x_switches == XSwitchLines::One(16)
    ));
    assert_eq!(c.sensors.x_switch_wiring(), XSwitchWiring::One);
    // stringdriver-3 and any file without them: none.
    assert_eq!(
        parse(SD3).unwrap().sensors.x_switch_wiring(),
        XSwitchWiring::None
    );
    assert_eq!(
        parse(&sd1_gpio("")).unwrap().sensors.x_switch_wiring(),
        XSwitchWiring::None
    );
    // Simulated: the wiring is named.
    let c = parse(&format!(
        "{SD1}\n[sensors]\nbackend = \"simulated\"\nx_switches = \"one\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.sensors,
        SensorsConfig::Simulated {
            sockets: vec![],
            x_switches: XSwitchWiring::One
        }
    );
    // What check-config prints reads back the same.
    for text in [
        sd1_gpio("x_switch_line = 16\n"),
        example_text(),
        format!("{SD1}\n[sensors]\nbackend = \"simulated\"\nx_switches = \"two\"\n"),
    ] {
        let c = parse(&text).unwrap();
        let printed = c.to_toml_string();
        assert_eq!(
            parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}")),
            c
        );
    }
}

#[test]
fn x_limit_switch_mistakes_are_refused_with_the_key_and_the_fix() {
    let bad = |extra: &str, key: &str, fragment: &str| {
        let e = parse(&sd1_gpio(extra)).expect_err(extra);
        assert_eq!(e.key(), Some(key), "{extra}: {e}");
        assert!(e.to_string().contains(fragment), "{extra}: {e}");
    };
    bad(
        "x_switch_line = 16\nx_home_line = 20\n",
        "sensors.x_switch_line",
        "not both",
    );
    bad(
        "x_home_line = 16\n",
        "sensors.x_home_line",
        "without sensors.x_away_line",
    );
    bad(
        "x_away_line = 16\n",
        "sensors.x_away_line",
        "without sensors.x_home_line",
    );
    bad(
        "x_home_line = 16\nx_away_line = 16\n",
        "sensors.x_away_line",
        "set x_switch_line = 16 instead",
    );
    // A touch sensor's line (26 is stringdriver-1's second sensor).
    bad(
        "x_switch_line = 26\n",
        "sensors.x_switch_line",
        "the touch sensor's of sensors.lines[1]",
    );
    bad(
        "x_home_line = 16\nx_away_line = 5\n",
        "sensors.x_away_line",
        "sensors.lines[3]",
    );
    bad(
        "x_switch_line = -1\n",
        "sensors.x_switch_line",
        "a GPIO line offset is 0 or more",
    );
    bad(
        "x_switches = \"two\"\n",
        "sensors.x_switches",
        "only used with sensors.backend = \"simulated\"",
    );
    // No X to home: stringdriver-3's X max is 0.
    let e = parse(&format!(
        "{SD3}\n[sensors]\nbackend = \"gpio\"\nlines = [8, 17, 18, 27, 10, 13, 24, 21]\n\
         x_switch_line = 16\n"
    ))
    .expect_err("x_max 0");
    assert_eq!(e.key(), Some("sensors.x_switch_line"), "{e}");
    assert!(e.to_string().contains("X max is 0"), "{e}");
    let e = parse(&format!(
        "{SD3}\n[sensors]\nbackend = \"simulated\"\nx_switches = \"two\"\n"
    ))
    .expect_err("x_max 0");
    assert_eq!(e.key(), Some("sensors.x_switches"), "{e}");
    // The line keys belong to gpio.
    let e = parse(&format!(
        "{SD1}\n[sensors]\nbackend = \"simulated\"\nx_switch_line = 16\n"
    ))
    .expect_err("gpio only");
    assert_eq!(e.key(), Some("sensors.x_switch_line"), "{e}");
}

// ---------------------------------------------------------------- motor parameters

fn w(op: Op, index: usize, value: i32) -> MotorWrite {
    MotorWrite { op, index, value }
}

#[test]
fn motor_defaults_are_those_of_hosts_md_for_each_host() {
    let c = parse(&example_text()).unwrap();
    let (x, z, t) = (c.motor.x.unwrap(), c.motor.z, c.motor.tuners.unwrap());
    let p = |speed, accel, min, max| AxisParams {
        speed,
        accel,
        min,
        max,
    };
    assert_eq!(x, p(500, 10_000, 0, 2600));
    assert_eq!(z, p(100, 10_000, -100, 100));
    assert_eq!(
        t,
        p(250, 10_000, -100_000, 100_000),
        "tuners on a tuner board"
    );
    // The tuner board (RP2040) has one axis group, 0; 4-byte values.
    let tuner = c.motor_writes(&c.motor, 1);
    assert_eq!(
        &tuner[..2],
        &[w(Op::SetMin, 0, -100_000), w(Op::SetMax, 0, 100_000)]
    );
    assert!(tuner[2..].iter().all(|w| w.index < 6));
    // stringdriver-3: X max 0, the placeholder's board limits too.
    let c = parse(SD3).unwrap();
    assert_eq!((c.motor.x.unwrap().min, c.motor.x.unwrap().max), (0, 0));
}

#[test]
fn stringdriver_1_motor_parameters_use_v1_axis_groups() {
    // v1: 0 = tuners, 1 = carriage X, 2 = coils Z; tuners -25000..25000.
    let c = parse(SD1).unwrap();
    let t = c.motor.tuners.unwrap();
    assert_eq!((t.speed, t.min, t.max), (250, -25_000, 25_000));
    let writes = c.motor_writes(&c.motor, 0);
    assert_eq!(
        &writes[..6],
        &[
            w(Op::SetMin, 1, 0),
            w(Op::SetMax, 1, 2396),
            w(Op::SetMin, 2, -100),
            w(Op::SetMax, 2, 100),
            w(Op::SetMin, 0, -25_000),
            w(Op::SetMax, 0, 25_000),
        ]
    );
    let speeds: Vec<(usize, i32)> = writes
        .iter()
        .filter(|w| w.op == Op::SetSpeed)
        .map(|w| (w.index, w.value))
        .collect();
    assert_eq!(
        speeds,
        [
            (0, 250),
            (1, 250),
            (2, 500),
            (3, 100),
            (4, 100),
            (5, 100),
            (6, 100)
        ]
    );
    // v1 reads the values as 4-byte longs: an acceleration beyond 32767 fits.
    let text = format!("{SD1}\n[motor.z]\naccel = 40000\n");
    assert_eq!(parse(&text).unwrap().motor.z.accel, 40_000);
}

#[test]
fn motor_parameters_are_checked_against_firmware_and_layout() {
    let sd3 = |extra: &str| format!("{SD3}\n{extra}");
    // The host's limits must lie inside the board's.
    let e = rejects(
        &sd3("[motor.z]\nmax = 50\n"),
        "motor.z.max",
        "outside the z limits -100 to 50",
    );
    assert!(e.to_string().contains("silently ignore"), "{e}");
    rejects(
        &sd3("[motor.z]\nspeed = 0\n"),
        "motor.z.speed",
        "at least 1",
    );
    rejects(
        &sd3("[motor.z]\nmin = 10\nmax = 5\n"),
        "motor.z.min",
        "above its maximum",
    );
    // v2 on the Mega reads every value as a 2-byte int.
    rejects(
        &sd3("[motor.z]\naccel = 40000\n"),
        "motor.z.accel",
        "does not fit the 2-byte set_accel argument of board `carriage` (v2 firmware)",
    );
    rejects(
        &sd3("[motor.tuners]\nspeed = 10\n"),
        "motor.tuners",
        "no tuners steppers",
    );
    rejects(
        &sd3("[[motor.stepper]]\nindex = 13\nspeed = 5\n"),
        "motor.stepper[0].index",
        "does not exist",
    );
    rejects(
        &sd3("[[motor.stepper]]\nindex = 1\nspeed = 5\n[[motor.stepper]]\nindex = 1\naccel = 5\n"),
        "motor.stepper[1].index",
        "already has its own",
    );
    // Tuners on a v2 carriage board: its set_min/set_max have no group for them.
    let text = edit(
        SD3,
        "x_max = 0",
        "x_max = 0\ntuner_first_index = 9\ntuner_min = -10\ntuner_max = 10",
    );
    let e = rejects(
        &text,
        "motor.tuners",
        "no axis group for them (0 = x, 1 = z)",
    );
    assert!(e.to_string().contains("v2 firmware"), "{e}");
    // The old per-role speed keys say where the speed went.
    rejects(
        &edit(SD3, "x_max = 0", "x_max = 0\nx_speed = 50.0"),
        "layout.x_speed",
        "moved to motor.x.speed",
    );
    // A stepper of its own: a speed, sent with its stepper index.
    let c = parse(&sd3("[[motor.stepper]]\nindex = 3\nspeed = 80\n")).unwrap();
    assert!(c
        .motor_writes(&c.motor, 0)
        .contains(&w(Op::SetSpeed, 3, 80)));
    assert_eq!(BoardSpec::from_config(&c, 0).unwrap().speeds[3], 80.0);
}
