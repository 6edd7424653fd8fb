//! `get` and `unset` for people: a setting changed at run time says so and
//! shows the file's value beside it ("z_rest = 0.3 (run-time; file: 0.2)").

use serde_json::Value;

/// One setting line from a `get NAME` (or `unset NAME`) reply.
pub fn setting_line(r: &Value) -> String {
    let name = super::fmt::scalar(&r["name"]);
    if r["source"] == "run-time" {
        format!("{name} = {} (run-time; file: {})", r["value"], r["file"])
    } else {
        format!("{name} = {}", r["value"])
    }
}

/// Every setting from a `get` reply without a name, one line each, the
/// overridden ones marked, then the enables.
pub fn all_lines(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = r["settings"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| match r["overrides"].get(k) {
            Some(file) => format!("{k} = {v} (run-time; file: {file})"),
            None => format!("{k} = {v}"),
        })
        .collect();
    out.push(format!("enabled = {}", r["enabled"]));
    out
}

/// What `unset NAME` did, in words.
pub fn unset_line(r: &Value) -> String {
    let name = super::fmt::scalar(&r["name"]);
    if r["was_overridden"] == true {
        format!("{name} = {} (file; run-time override dropped)", r["value"])
    } else {
        format!(
            "{name} = {} (file; it had no run-time override)",
            r["value"]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_override_is_marked_with_the_files_value() {
        let r = json!({"name": "z_rest", "value": 0.3, "source": "run-time", "file": 0.2});
        assert_eq!(setting_line(&r), "z_rest = 0.3 (run-time; file: 0.2)");
        let r = json!({"name": "z_rest", "value": 0.2, "source": "file", "file": 0.2});
        assert_eq!(setting_line(&r), "z_rest = 0.2");
    }

    #[test]
    fn the_full_list_marks_only_the_overridden_settings() {
        let r = json!({
            "settings": {"x_rest": 1.0, "z_rest": 0.3},
            "overrides": {"z_rest": 0.2},
            "enabled": [true, false],
        });
        assert_eq!(
            all_lines(&r),
            vec![
                "x_rest = 1.0".to_string(),
                "z_rest = 0.3 (run-time; file: 0.2)".to_string(),
                "enabled = [true,false]".to_string(),
            ]
        );
    }

    #[test]
    fn unset_says_whether_there_was_an_override() {
        let r = json!({"name": "z_rest", "value": 0.2, "was_overridden": true});
        assert_eq!(
            unset_line(&r),
            "z_rest = 0.2 (file; run-time override dropped)"
        );
        let r = json!({"name": "z_rest", "value": 0.2, "was_overridden": false});
        assert_eq!(
            unset_line(&r),
            "z_rest = 0.2 (file; it had no run-time override)"
        );
    }
}
