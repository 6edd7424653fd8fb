//! Manual pages of both programs, generated from their clap definitions
//! (`stringdriverd man`, `stringdriverctl man`): one source for `--help`,
//! the man pages and the completions, so they never disagree.

use std::io::Write;
use std::path::Path;

/// Writes the manual page of `cmd` to `out`, or with `dir` every page (the
/// program's and one per visible subcommand, `NAME-SUB.1`, as the program's
/// page refers to them) into that directory.
pub fn man(cmd: clap::Command, dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        None => {
            clap_mangen::Man::new(cmd).render(out)?;
            out.flush()
        }
    }
}
